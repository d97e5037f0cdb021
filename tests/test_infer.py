"""geoseg infer: georeferencing kept exactly, nodata, COG output, atomicity, TTA, dask, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from helpers import assert_one_line_error, make_geotiff
from rasterio.transform import from_origin
from typer.testing import CliRunner

from geoseg import checkpoint, infer, models
from geoseg.cli.main import app
from geoseg.errors import RasterError

runner = CliRunner()


def make_checkpoint(
    path: Path,
    *,
    in_channels: int = 3,
    band_indexes: list[int] | None = None,
    mean: float = 100.0,
    std: float = 50.0,
    res: float | None = 0.5,
    patch_size: int = 32,
    classes: int = 2,
    seed: int = 0,
    crs: str | None = None,
    dtype: str | None = None,
    architecture: str = "unet",
) -> Path:
    """A tiny plain-UNet checkpoint (width 2; or another architecture) with a card that matches
    the given bands."""
    torch.manual_seed(seed)
    args = {"width": 2} if architecture == "unet" else {}
    model = models.build(architecture, in_channels=in_channels, num_classes=classes, **args)
    names = ["background", "building", "road", "water"][:classes]
    card = checkpoint.ModelCard(
        architecture=architecture,
        model_args=args,
        in_channels=in_channels,
        band_names=[f"b{i}" for i in range(in_channels)],
        band_indexes=band_indexes or list(range(1, in_channels + 1)),
        mean=[mean] * in_channels,
        std=[std] * in_channels,
        class_names=names,
        class_ids=list(range(classes)),
        patch_size=patch_size,
        res=res,
        crs_wkt=rasterio.crs.CRS.from_user_input(crs).to_wkt() if crs else None,
        dtype=dtype,
    )
    checkpoint.save(path, model=model, card=card)
    return path


@pytest.fixture
def ckpt3(tmp_path: Path) -> Path:
    return make_checkpoint(tmp_path / "rgb.ckpt")


def _run(*args: object):
    return runner.invoke(app, ["infer", *map(str, args), "--quiet"])


def _same_grid(out: Path, src: Path) -> None:
    with rasterio.open(out) as d, rasterio.open(src) as s:
        assert (d.width, d.height) == (s.width, s.height)
        assert d.transform == s.transform
        if s.crs is None:
            assert d.crs is None
        else:
            assert d.crs.to_wkt() == s.crs.to_wkt()
        assert d.dtypes == ("uint8",) and d.nodata == 255
        valid = s.dataset_mask() > 0
        mask = d.read(1)
        assert ((mask == 255) == ~valid).all()  # nodata exactly where the input has none
        assert set(np.unique(mask[valid])) <= {0, 1}


# ------------------------------------------------------------------------ real samples


def test_real_utm_rgb_keeps_grid_and_is_a_cog(tmp_path: Path, real_data: Path, ckpt3: Path) -> None:
    src = real_data / "rgb_utm31_4p5m.tif"
    out = tmp_path / "mask.tif"
    res = _run(ckpt3, src, "--out", out, "--overlap", 8, "--probabilities")
    assert res.exit_code == 0, res.stderr
    assert res.stdout.strip() == str(out)
    _same_grid(out, src)
    with rasterio.open(out) as d:
        assert d.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert d.profile["tiled"] and d.block_shapes[0] == (512, 512)
        assert d.tags()["class_names"] == '["background", "building"]'
        assert d.descriptions == ("class",)
        assert d.colormap(1)[1][3] == 255
    prob = tmp_path / "mask_prob.tif"
    with rasterio.open(prob) as p:
        assert p.count == 2 and p.crs == rasterio.open(src).crs
        v = p.read().astype(int)
        assert np.abs(v.sum(0) - 254).max() <= 1  # p(background) + p(building) = 1
        assert p.scales == (1 / 254, 1 / 254)


def test_real_custom_albers_wkt_and_int16_nodata(tmp_path: Path, real_data: Path) -> None:
    # The sample declares nodata -9999 but has none: a copy gets a corner of it (read-only source).
    real = real_data / "albers_custom_crs_30m.tif"
    src = tmp_path / "albers.tif"
    with rasterio.open(real) as s:
        assert s.crs.to_epsg() is None and s.nodata == -9999
        profile, data = s.profile, s.read()
    data[:, :40, :100] = -9999
    with rasterio.open(src, "w", **profile) as d:
        d.write(data)
    ck = make_checkpoint(tmp_path / "albers.ckpt", mean=500, std=300, res=30.0)
    out = tmp_path / "albers_mask.tif"
    infer.predict_raster(src, out, checkpoint=ck, overlap=8)
    _same_grid(out, src)
    with rasterio.open(out) as d, rasterio.open(real) as s:
        assert d.crs.to_wkt() == s.crs.to_wkt() and d.transform == s.transform
        m = d.read(1)
        assert (m[:40, :100] == 255).all() and (m[40:] != 255).all()


def test_real_uint16_single_band(tmp_path: Path, real_data: Path) -> None:
    src = real_data / "atlanta_pan_0p5m.tif"
    ck = make_checkpoint(tmp_path / "pan.ckpt", in_channels=1, mean=300, std=200, patch_size=64)
    out = tmp_path / "pan_mask.tif"
    infer.predict_raster(src, out, checkpoint=ck, overlap=16, cog=False)
    _same_grid(out, src)


# ------------------------------------------------------------------------ behaviour


def test_cog_has_overviews_on_a_bigger_raster(tmp_path: Path, make_geotiff, ckpt3: Path) -> None:
    src = make_geotiff("big.tif", size=(700, 1100), seed=3)
    out = tmp_path / "big_mask.tif"
    infer.predict_raster(src, out, checkpoint=ckpt3, patch_size=64, overlap=8, batch_size=16)
    with rasterio.open(out) as d:
        assert d.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert d.overviews(1)[:1] == [2]  # overviews down to one 512 block
        assert d.profile["tiled"]
    _same_grid(out, src)


def test_nodata_propagates_and_border_is_never_blank(
    tmp_path: Path, make_geotiff, ckpt3: Path
) -> None:
    data = np.random.default_rng(0).integers(1, 255, (3, 90, 70)).astype("uint8")
    data[:, 30:40, 20:50] = 0  # all bands nodata: output 255
    data[0, 60:70, 10:20] = 0  # one band only: still data
    src = make_geotiff("nd.tif", data=data, nodata=0)
    out = tmp_path / "nd_mask.tif"
    infer.predict_raster(src, out, checkpoint=ckpt3, overlap=12, probabilities=tmp_path / "p.tif")
    _same_grid(out, src)
    with rasterio.open(out) as d, rasterio.open(tmp_path / "p.tif") as p:
        m, pr = d.read(1), p.read()
        assert (m[30:40, 20:50] == 255).all() and (m[60:70, 10:20] != 255).all()
        for edge in (pr[:, 0], pr[:, -1], pr[:, :, 0], pr[:, :, -1]):
            assert np.abs(edge.astype(int).sum(0) - 254).max() <= 1  # outer rows/cols: real values


def test_smaller_than_one_patch(tmp_path: Path, make_geotiff, ckpt3: Path) -> None:
    src = make_geotiff("tiny.tif", size=(5, 9))
    out = tmp_path / "tiny_mask.tif"
    infer.predict_raster(src, out, checkpoint=ckpt3, overlap=8)
    _same_grid(out, src)


def test_no_final_file_when_a_run_fails(
    tmp_path: Path, make_geotiff, ckpt3: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = make_geotiff("img.tif", size=(200, 200))
    out = tmp_path / "out" / "mask.tif"
    out.parent.mkdir()
    calls = {"n": 0}
    real = infer._finalize

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] > 2:
            raise RuntimeError("killed")
        return real(*a, **k)

    monkeypatch.setattr(infer, "_finalize", failing)
    with pytest.raises(RuntimeError, match="killed"):
        infer.predict_raster(
            src,
            out,
            checkpoint=ckpt3,
            overlap=8,
            batch_size=2,
            probabilities=out.with_name("p.tif"),
        )
    assert list(out.parent.iterdir()) == []  # no mask, no probabilities, no temp files


class _Pointwise(torch.nn.Module):
    """A 1x1-conv model: equivariant to every flip and rotation."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


@pytest.mark.parametrize("tta", ["flip", "d4"])
def test_tta_of_an_equivariant_model_changes_nothing(
    tmp_path: Path, make_geotiff, ckpt3: Path, monkeypatch: pytest.MonkeyPatch, tta: str
) -> None:
    monkeypatch.setattr(infer, "_cached_model", lambda s: _Pointwise().eval())
    src = make_geotiff("img.tif", size=(80, 75), seed=5)
    outs = {}
    for mode in ("none", tta):
        out = tmp_path / f"{mode}.tif"
        infer.predict_raster(
            src,
            out,
            checkpoint=ckpt3,
            overlap=8,
            tta=mode,
            cog=False,
            probabilities=tmp_path / f"{mode}_p.tif",
        )
        with rasterio.open(out) as d, rasterio.open(tmp_path / f"{mode}_p.tif") as p:
            outs[mode] = (d.read(1), p.read().astype(int))
    assert (outs["none"][0] == outs[tta][0]).all()
    assert np.abs(outs["none"][1] - outs[tta][1]).max() <= 1


def test_tta_inverts_each_transform() -> None:
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    for tta in ("flip", "d4"):
        ops = infer._tta_ops(tta)
        assert len(ops) == (4 if tta == "flip" else 8)
        assert len({fwd(x).numpy().tobytes() for fwd, _ in ops}) == len(ops)
        for fwd, inv in ops:
            assert torch.equal(inv(fwd(x)), x)


def test_d4_runs_with_a_real_model(tmp_path: Path, make_geotiff, ckpt3: Path) -> None:
    src = make_geotiff("img.tif", size=(40, 40))
    out = tmp_path / "d4.tif"
    assert _run(ckpt3, src, "--out", out, "--tta", "d4", "--overlap", 8).exit_code == 0
    _same_grid(out, src)


def test_several_inputs_go_to_a_folder(tmp_path: Path, make_geotiff, ckpt3: Path) -> None:
    a = make_geotiff("in/a.tif", size=(40, 50))
    b = make_geotiff("in/sub/b.tiff", size=(30, 20), seed=2)
    res = _run(ckpt3, tmp_path / "in", "--out", tmp_path / "masks", "--no-cog")  # overlap 32/4
    assert res.exit_code == 0, res.stderr
    _same_grid(tmp_path / "masks" / "a.tif", a)
    _same_grid(tmp_path / "masks" / "b.tif", b)


def test_resolution_mismatch_warns_or_resamples(tmp_path: Path, make_geotiff, caplog) -> None:
    ck = make_checkpoint(tmp_path / "r.ckpt", res=1.0)
    src = make_geotiff("fine.tif", size=(64, 48), transform=from_origin(500000, 5000000, 0.5, 0.5))
    with caplog.at_level("WARNING", logger="geoseg.infer"):
        infer.predict_raster(src, tmp_path / "a.tif", checkpoint=ck, overlap=8)
    assert "--resample" in caplog.text
    out = tmp_path / "b.tif"
    infer.predict_raster(
        src, out, checkpoint=ck, overlap=8, resample=True, probabilities=tmp_path / "b_p.tif"
    )
    _same_grid(out, src)
    with rasterio.open(out) as d:
        assert d.tags()["resampled_from"] == "1.0"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_ungeoreferenced_only_when_allowed(tmp_path: Path, make_geotiff, ckpt3: Path) -> None:
    src = make_geotiff("nocrs.tif", size=(40, 40), crs=None)
    out = tmp_path / "nocrs_mask.tif"
    res = _run(ckpt3, src, "--out", out)
    assert_one_line_error(res, "has no CRS", "nocrs.tif")
    assert not out.exists()
    res = _run(ckpt3, src, "--out", out, "--allow-ungeoreferenced", "--overlap", 8)
    assert res.exit_code == 0, res.stderr
    _same_grid(out, src)


# ------------------------------------------------------------------------ errors


def test_band_count_mismatch_is_one_line(tmp_path: Path, make_geotiff, ckpt3: Path) -> None:
    # (a 4-band uint8 GeoTIFF is RGBA by GDAL's default, and its alpha band is accepted)
    src = make_geotiff("five.tif", count=5)
    res = _run(ckpt3, src, "--out", tmp_path / "m.tif")
    assert_one_line_error(res, "five.tif", "5 band(s)", "expects 3")


@pytest.mark.parametrize("content", [b"not a checkpoint at all", "pickle"])
def test_not_a_checkpoint(tmp_path: Path, make_geotiff, content: object) -> None:
    bad = tmp_path / "bad.ckpt"
    if content == "pickle":
        torch.save({"model": torch.nn.Linear(2, 2)}, bad)  # a whole module: unsafe to load
    else:
        bad.write_bytes(content)  # type: ignore[arg-type]
    res = _run(bad, make_geotiff(), "--out", tmp_path / "m.tif")
    assert_one_line_error(res, "bad.ckpt")


def test_output_exists(tmp_path: Path, make_geotiff, ckpt3: Path) -> None:
    out = tmp_path / "m.tif"
    out.write_bytes(b"keep me")
    res = _run(ckpt3, make_geotiff(), "--out", out)
    assert_one_line_error(res, "--overwrite")
    assert out.read_bytes() == b"keep me"
    res = _run(ckpt3, make_geotiff(), "--out", out, "--overwrite", "--overlap", 8)
    assert res.exit_code == 0 and out.read_bytes() != b"keep me"


def test_unreachable_scheduler(tmp_path: Path, make_geotiff, ckpt3: Path) -> None:
    res = _run(
        ckpt3, make_geotiff(), "--out", tmp_path / "m.tif", "--scheduler", "tcp://127.0.0.1:9"
    )
    assert_one_line_error(res, "tcp://127.0.0.1:9")
    assert not (tmp_path / "m.tif").exists()


# ------------------------------------------------------------------------ dask


@pytest.mark.slow
def test_two_dask_workers_write_byte_identical_files(
    tmp_path: Path, make_geotiff, ckpt3: Path
) -> None:
    src = make_geotiff("img.tif", size=(300, 130), seed=7, nodata=0)
    one, two = tmp_path / "one.tif", tmp_path / "two.tif"
    kw = dict(checkpoint=ckpt3, overlap=8, batch_size=3, precision="32")
    infer.predict_raster(src, one, probabilities=tmp_path / "one_p.tif", **kw)
    infer.predict_raster(src, two, probabilities=tmp_path / "two_p.tif", workers=2, **kw)
    with rasterio.open(one) as a, rasterio.open(two) as b:
        assert (a.read() == b.read()).all()
    assert one.read_bytes() == two.read_bytes()
    assert (tmp_path / "one_p.tif").read_bytes() == (tmp_path / "two_p.tif").read_bytes()


class _Threshold(torch.nn.Module):
    """Class 1 where band 1 is above the card's mean: buildings = bright squares."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x[:, :1]), 4 * x[:, :1]], 1)


def test_vectorize_writes_footprints_on_the_mask_grid(
    tmp_path: Path, make_geotiff, ckpt3: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import geopandas as gpd

    monkeypatch.setattr(infer, "_cached_model", lambda s: _Threshold().eval())
    data = np.full((3, 64, 64), 20, np.uint8)
    data[:, 10:30, 12:40] = 250
    src = make_geotiff("scene.tif", data=data)
    out, gpkg = tmp_path / "m.tif", tmp_path / "fp.gpkg"
    res = _run(ckpt3, src, "--out", out, "--vectorize", gpkg, "--probabilities", "--overlap", 8)
    assert res.exit_code == 0, res.stderr
    gdf = gpd.read_file(gpkg)
    assert len(gdf) == 1 and gdf.crs.to_epsg() == 32631
    assert gdf.geometry.iloc[0].area == pytest.approx(20 * 28 * 0.25)  # 0.5 m pixels
    assert gdf["confidence"].iloc[0] > 0.9


def test_vectorize_takes_the_footprint_settings(
    tmp_path: Path, make_geotiff, ckpt3: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import geopandas as gpd

    monkeypatch.setattr(infer, "_cached_model", lambda s: _Threshold().eval())
    data = np.full((3, 64, 64), 20, np.uint8)
    data[:, 4:24, 4:24] = 250  # sure: p(building) ~ 1, 100 m2
    data[:, 40:60, 40:60] = 105  # unsure: 0.1 std above the mean, p ~ 0.6, 100 m2
    data[:, 50:53, 4:7] = 250  # a speck: 2.25 m2
    src = make_geotiff("scene.tif", data=data)
    areas = {}
    for name, extra in {
        "default": [],
        "filtered": ["--min-confidence", 0.8, "--min-area", 1],
    }.items():
        out, gpkg = tmp_path / f"{name}.tif", tmp_path / f"{name}.gpkg"
        res = _run(ckpt3, src, "--out", out, "--vectorize", gpkg, "--overlap", 8, *extra)
        assert res.exit_code == 0, res.stderr
        gdf = gpd.read_file(gpkg)
        areas[name] = sorted(gdf.geometry.area.round(2))
        # the confidence is measured on probabilities, written next to the mask when asked for
        assert infer.probability_path(out).is_file() == (name == "filtered")
    assert areas == {"default": [100.0, 100.0], "filtered": [2.25, 100.0]}

    # footprint settings without footprints: one line, nothing written
    out = tmp_path / "none.tif"
    res = _run(ckpt3, src, "--out", out, "--min-confidence", 0.8, "--seed-erosion", 1)
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines() == [
        "Error: --seed-erosion, --min-confidence: footprint settings need --vectorize "
        "OUT.gpkg; add it"
    ]
    assert not out.exists()


# ------------------------------------------------------------------------ units (issue 11, #4)


def _square_scene(size: int = 120) -> np.ndarray:
    data = np.full((3, size, size), 20, np.uint8)
    data[:, size // 3 : 2 * size // 3, size // 3 : 2 * size // 3] = 250
    return data


def test_resample_of_a_geographic_raster_goes_through_metres(
    tmp_path: Path, make_geotiff, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    # 0.3 m pixels at 48.85° N in longitude/latitude, a model trained at 0.5 m in UTM 31N: the
    # card's 0.5 is metres, never 0.5° (which made a one-pixel grid and an all-nodata mask).
    monkeypatch.setattr(infer, "_cached_model", lambda s: _Threshold().eval())
    dlon, dlat = 0.3 / (111_320 * np.cos(np.radians(48.85))), 0.3 / 111_200
    src = make_geotiff(
        "lonlat.tif",
        data=_square_scene(),
        crs="EPSG:4326",
        transform=from_origin(2.35, 48.85, dlon, dlat),
    )
    ck = make_checkpoint(tmp_path / "utm.ckpt", res=0.5, crs="EPSG:32631")
    with caplog.at_level("WARNING", logger="geoseg.infer"):
        infer.predict_raster(src, tmp_path / "plain.tif", checkpoint=ck, overlap=8, cog=False)
    warning = next(r.getMessage() for r in caplog.records if "--resample" in r.getMessage())
    assert "0.3 x 0.3 m" in warning and "0.5 m" in warning  # metres, not degrees

    out = tmp_path / "resampled.tif"
    res = _run(ck, src, "--out", out, "--resample", "--overlap", 8, "--no-cog")
    assert res.exit_code == 0, res.stderr
    _same_grid(out, src)  # the input's exact grid, CRS and size; nodata only where it has none
    with rasterio.open(out) as d:
        mask = d.read(1)
        assert d.tags()["resampled_crs"] == "EPSG:32631"
        assert float(d.tags()["resampled_from"]) == pytest.approx(0.5)
    truth = _square_scene()[0] > 128
    inter, union = (truth & (mask == 1)).sum(), (truth | (mask == 1)).sum()
    assert inter / union > 0.9  # the square is found where it is, at the input's pixels
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no work files left


def test_resample_across_projected_units(tmp_path: Path, make_geotiff, monkeypatch) -> None:
    # A raster in US survey feet (NY Long Island) against a metre model: 0.5 m = 1.64 ft.
    monkeypatch.setattr(infer, "_cached_model", lambda s: _Threshold().eval())
    src = make_geotiff(
        "feet.tif",
        data=_square_scene(96),
        crs="EPSG:2263",
        transform=from_origin(1_000_000, 200_000, 1.0, 1.0),
    )
    ck = make_checkpoint(tmp_path / "utm.ckpt", res=0.5, crs="EPSG:32618")
    out = tmp_path / "m.tif"
    infer.predict_raster(src, out, checkpoint=ck, overlap=8, resample=True, cog=False)
    _same_grid(out, src)
    with rasterio.open(out) as d:
        assert float(d.tags()["resampled_from"]) == pytest.approx(0.5 / 0.3048006, rel=1e-3)
        assert (d.read(1) == 1).sum() == pytest.approx(32 * 32, rel=0.1)


# ------------------------------------------------------------------------ nodata and bands (#6)


def test_nan_pixels_of_a_float_input_are_nodata(tmp_path: Path, make_geotiff) -> None:
    # NaN (and inf) pixels of a float raster without a declared nodata are nodata (255), and do
    # not spread into their neighbours: the mask equals that of the same image with the
    # pixels declared nodata (-9999).
    ck = make_checkpoint(tmp_path / "f.ckpt", dtype="float32")
    data = np.random.default_rng(0).uniform(20, 230, (3, 70, 90)).astype("float32")
    data[:, 20:30, 40:55] = np.nan
    data[1, 50, 10] = np.nan  # one band only
    data[0, 5, 80] = np.inf
    bad = ~np.isfinite(data).all(0)
    src = make_geotiff("nan.tif", data=data)
    declared = make_geotiff("declared.tif", data=np.where(bad, -9999, data), nodata=-9999)
    for path in (src, declared):
        out = tmp_path / f"{path.stem}_mask.tif"
        res = _run(ck, path, "--out", out, "--overlap", 8, "--no-cog")
        assert res.exit_code == 0, res.stderr
    with (
        rasterio.open(tmp_path / "nan_mask.tif") as a,
        rasterio.open(tmp_path / "declared_mask.tif") as b,
    ):
        mask = a.read(1)
        assert ((mask == 255) == bad).all()
        assert set(np.unique(mask[~bad])) <= {0, 1}
        assert (mask == b.read(1)).all()


def test_nan_pixels_with_resample_and_probabilities(tmp_path: Path, make_geotiff) -> None:
    ck = make_checkpoint(tmp_path / "f.ckpt", res=1.0)
    data = np.random.default_rng(1).uniform(20, 230, (3, 64, 64)).astype("float64")
    data[:, :10, :] = np.nan
    src = make_geotiff("nan.tif", data=data)
    out = tmp_path / "m.tif"
    infer.predict_raster(
        src, out, checkpoint=ck, overlap=8, resample=True, probabilities=tmp_path / "p.tif"
    )
    with rasterio.open(out) as m, rasterio.open(tmp_path / "p.tif") as p:
        mask, prob = m.read(1), p.read()
    assert (mask[:10] == 255).all() and (mask[10:] != 255).all()
    assert (prob[:, :10] == 255).all() and (prob[:, 10:] <= 254).all()


def _rgba(path: Path, size: tuple[int, int] = (64, 80), seed: int = 0) -> Path:
    """An RGBA GeoTIFF (band 4 is alpha: 0 over the first 12 rows and 20 columns)."""
    from rasterio.enums import ColorInterp

    rng = np.random.default_rng(seed)
    data = rng.integers(1, 255, (4, *size)).astype(np.uint8)
    data[3] = 255
    data[3, :12, :20] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(
        driver="GTiff",
        width=size[1],
        height=size[0],
        count=4,
        dtype="uint8",
        crs="EPSG:32631",
        transform=from_origin(500000, 5000000, 0.5, 0.5),
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    return path


def test_rgba_input_is_accepted_and_alpha_is_the_validity_mask(tmp_path: Path, ckpt3: Path) -> None:
    # Training leaves an alpha band out (the card lists bands 1-3); infer takes the same files
    # and writes nodata where alpha is 0.
    src = _rgba(tmp_path / "rgba.tif")
    out = tmp_path / "m.tif"
    res = _run(ckpt3, src, "--out", out, "--overlap", 8)
    assert res.exit_code == 0, res.stderr
    _same_grid(out, src)
    with rasterio.open(out) as d:
        mask = d.read(1)
    assert (mask[:12, :20] == 255).all() and (mask[12:] != 255).all()
    # A fourth band that is not alpha is still refused (the model never saw it)
    four = tmp_path / "four.tif"
    with rasterio.open(src) as s:
        profile, data = s.profile, s.read()
    with rasterio.open(four, "w", **profile, photometric="MINISBLACK") as d:
        d.write(data)
    with rasterio.open(four) as d:
        assert rasterio.enums.ColorInterp.alpha not in d.colorinterp
    assert_one_line_error(_run(ckpt3, four, "--out", tmp_path / "f.tif"), "4 band(s)", "expects 3")


# ------------------------------------------------------------------------ value ranges (#6)


@pytest.mark.parametrize(
    ("dtype", "low", "high", "card_dtype", "needles"),
    [
        ("uint16", 300, 4000, "uint8", ["uint16", "outside the uint8 range 0..255"]),
        ("int16", -500, 200, "uint8", ["int16", "outside the uint8 range 0..255"]),
        ("uint16", 2000, 4000, None, ["band 1", "standard deviations"]),  # a card without dtype
        ("float32", 0.0, 0.6, "uint8", ["float32", "scaled differently"]),  # reflectance 0-1
    ],
)
def test_values_a_model_cannot_have_seen_are_refused(
    tmp_path: Path, make_geotiff, dtype, low, high, card_dtype, needles
) -> None:
    ck = make_checkpoint(tmp_path / "u8.ckpt", mean=100, std=50, dtype=card_dtype)
    data = np.random.default_rng(0).uniform(low, high, (3, 48, 48)).astype(dtype)
    src = make_geotiff("odd.tif", data=data)
    out = tmp_path / "out" / "m.tif"
    line = assert_one_line_error(_run(ck, src, "--out", out), "odd.tif", "--no-check-values")
    for needle in needles:
        assert needle in line
    assert not out.parent.exists() or not list(out.parent.iterdir())  # nothing written
    res = _run(ck, src, "--out", out, "--no-check-values", "--overlap", 8)
    assert res.exit_code == 0, res.stderr
    _same_grid(out, src)


def test_values_of_the_training_kind_pass(tmp_path: Path, make_geotiff) -> None:
    ck = make_checkpoint(tmp_path / "u8.ckpt", mean=100, std=50, dtype="uint8")
    dark = np.random.default_rng(0).integers(10, 30, (3, 40, 40)).astype("uint8")  # water
    black = np.zeros((3, 40, 40), "uint8")  # an empty tile of a mosaic, no nodata declared
    as_float = np.random.default_rng(1).uniform(0, 255, (3, 40, 40)).astype("float32")
    for name, data in (("dark", dark), ("black", black), ("float", as_float)):
        src = make_geotiff(f"{name}.tif", data=data)
        infer.predict_raster(src, tmp_path / f"{name}_m.tif", checkpoint=ck, overlap=8)
    # a big 16-bit raster with overviews is sampled from them, and passes when its values fit
    src = make_geotiff("big.tif", size=(1200, 900), dtype="uint16", tiled=True)  # 1..999
    with rasterio.open(src, "r+") as d:
        d.build_overviews([2, 4])
    ck16 = make_checkpoint(tmp_path / "u16.ckpt", mean=500, std=290, dtype="uint16")
    with rasterio.open(src) as d:
        infer.check_values(d, src, checkpoint.load(ck16).card)
    with rasterio.open(src) as d, pytest.raises(RasterError, match="outside the uint8 range"):
        infer.check_values(d, src, checkpoint.load(ck).card)


@pytest.mark.slow
def test_rgba_files_a_model_was_trained_on_are_predicted(demo_data, tmp_path: Path) -> None:
    # Train on RGBA copies of the demo tiles (alpha 0 = outside the image), then predict the
    # same files: the card lists bands 1-3 and the training dtype; alpha 0 becomes nodata.
    from rasterio.enums import ColorInterp

    rgba = tmp_path / "rgba"
    rgba.mkdir()
    for image in demo_data.images:
        with rasterio.open(image) as src:
            profile, data, valid = src.profile, src.read(), src.dataset_mask()
        valid[:32, :48] = 0
        profile.update(count=4, nodata=None)
        with rasterio.open(rgba / image.name, "w", **profile) as dst:
            dst.write(np.concatenate([data, valid[None]]))
            dst.colorinterp = [
                ColorInterp.red,
                ColorInterp.green,
                ColorInterp.blue,
                ColorInterp.alpha,
            ]
    cfg = tmp_path / "small.yaml"
    cfg.write_text(
        "data:\n  split: {method: blocks, block_size: 128, ratios: [0.6, 0.2, 0.2], seed: 0}\n"
        "train:\n  patches_per_epoch: 8\n"
    )
    run = tmp_path / "run"
    tiny = ["--width", "8", "--patch-size", "64", "--batch-size", "4", "--epochs", "1"]
    res = runner.invoke(
        app,
        ["-q", "train", str(rgba), "--labels", str(demo_data.masks[0].parent), "--out", str(run)]
        + ["--config", str(cfg), *tiny],
    )
    assert res.exit_code == 0, (res.output, res.exception)
    card = checkpoint.load(run / "best.ckpt").card
    assert card.band_indexes == [1, 2, 3] and card.in_channels == 3 and card.dtype == "uint8"
    src = rgba / demo_data.images[0].name
    out = tmp_path / "m.tif"
    res = _run(run / "best.ckpt", src, "--out", out, "--overlap", 16)
    assert res.exit_code == 0, res.stderr
    _same_grid(out, src)
    with rasterio.open(out) as d:
        assert (d.read(1)[:32, :48] == 255).all()


def test_per_patch_normalised_model_sees_a_duller_image_alike(tmp_path: Path) -> None:
    """A model trained with data.normalization: patch (recorded in its card) normalises each
    inference patch by its own mean/std: a darker, flatter copy of an image gets the same
    probabilities; a model with the training data's mean/std does not."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (3, 96, 96)).astype(np.uint8)
    src = make_geotiff(tmp_path / "img.tif", img, crs="EPSG:32631")
    dull = make_geotiff(tmp_path / "dull.tif", (img * 0.5 + 60).astype(np.uint8), crs="EPSG:32631")
    ck = make_checkpoint(tmp_path / "patch.ckpt", mean=0.0, std=1e-3, crs="EPSG:32631")
    model, card = checkpoint.load_model(ck)
    card.normalization = "patch"
    checkpoint.save(ck, model=model, card=card)
    plain = make_checkpoint(tmp_path / "plain.ckpt", mean=128.0, std=4.0, crs="EPSG:32631")

    def probs(model: Path, image: Path) -> np.ndarray:
        out = tmp_path / f"{model.stem}_{image.stem}.tif"
        prob = tmp_path / f"{model.stem}_{image.stem}_prob.tif"
        infer.predict_raster(image, out, checkpoint=model, overlap=8, probabilities=prob)
        with rasterio.open(prob) as p:
            return p.read().astype(int)

    same = probs(ck, src)
    assert np.abs(same - probs(ck, dull)).max() <= 3
    assert same.max() - same.min() > 30  # the model does look at the pixels
    assert np.abs(probs(plain, src) - probs(plain, dull)).max() > 3


@pytest.mark.parametrize(
    ("architecture", "normalization"), [("linear", "stats"), ("linear", "patch"), ("unet", "stats")]
)
def test_light_models_go_patch_by_patch_to_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, architecture: str, normalization: str
) -> None:
    """A light model normalises and runs one patch at a time in the model thread; a heavier
    one gets batches normalised ahead. The same masks and probabilities, nodata included."""
    data = np.random.default_rng(3).integers(1, 255, (3, 100, 90)).astype(np.uint8)
    data[:, 10:30, 20:50] = 0
    image = make_geotiff(tmp_path / "in.tif", data, crs="EPSG:32631", nodata=0)
    ck = make_checkpoint(
        tmp_path / "m.ckpt", crs="EPSG:32631", classes=3, architecture=architecture
    )
    model, card = checkpoint.load_model(ck)
    card.normalization = normalization
    checkpoint.save(ck, model=model, card=card)
    outputs = {}
    for light in (True, False):
        monkeypatch.setattr(infer, "LIGHT_MODEL_PARAMS", 10**9 if light else 0)
        mask, prob = tmp_path / f"mask_{light}.tif", tmp_path / f"prob_{light}.tif"
        infer.predict_raster(
            image, mask, checkpoint=ck, overlap=8, batch_size=3, probabilities=prob
        )
        with rasterio.open(mask) as m, rasterio.open(prob) as p:
            outputs[light] = (m.read(), p.read())
    (mask_light, prob_light), (mask_batched, prob_batched) = outputs[True], outputs[False]
    assert (mask_light[0, 10:30, 20:50] == 255).all() and len(np.unique(prob_light)) > 5
    assert np.array_equal(mask_light, mask_batched) and np.array_equal(prob_light, prob_batched)


def test_a_light_model_runs_on_one_torch_thread_and_the_setting_comes_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Memory-bound ops of a tiny model lose to OpenMP's fork/join on cores the pipeline's other
    # threads share: such a model streams on one torch thread; the caller's setting is restored.
    from helpers import make_geotiff

    seen: list[int] = []
    real_forward = infer._make_forward

    def spying_forward(model, settings):
        forward = real_forward(model, settings)

        def run(batch, invalid):
            seen.append(torch.get_num_threads())
            return forward.run(batch, invalid)

        return infer._Forward(run, forward.torch_threads, forward.release)

    monkeypatch.setattr(infer, "_make_forward", spying_forward)
    ckpt = make_checkpoint(tmp_path / "linear.ckpt", architecture="linear")
    image = make_geotiff(tmp_path / "in.tif", size=(96, 96))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        infer.predict_raster(image, tmp_path / "m.tif", checkpoint=ckpt, device="cpu")
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    _same_grid(tmp_path / "m.tif", image)


@pytest.mark.parametrize("pieces", [[64] * 19, [300, 500, 1, 415], [1216]])
def test_row_buffered_writer_writes_every_row_once_in_place(tmp_path: Path, pieces) -> None:
    """Pieces of any height, straddling rows of tiles, land where they belong (masks and
    probabilities), with the grid's CRS and transform."""
    height, width = sum(pieces), 700
    rng = np.random.default_rng(1)
    classes = rng.integers(0, 3, (height, width), dtype=np.uint8)
    probs = rng.integers(0, 201, (3, height, width), dtype=np.uint8)
    grid = dict(
        width=width, height=height, transform=from_origin(5e5, 5e6, 0.5, 0.5), crs="EPSG:32631"
    )
    names, values = ["a", "b", "c"], [0, 1, 2]
    mask, prob = tmp_path / "mask.tif", tmp_path / "prob.tif"
    with infer._Outputs(grid, mask, prob, names, values, {}, final=True) as outputs:
        y0 = 0
        for h in pieces:
            outputs.write(y0, classes[y0 : y0 + h].copy(), probs[:, y0 : y0 + h].copy())
            y0 += h
    with rasterio.open(mask) as m, rasterio.open(prob) as p:
        assert m.crs.to_epsg() == 32631 and m.transform == grid["transform"]
        np.testing.assert_array_equal(m.read(1), classes)
        np.testing.assert_array_equal(p.read(), probs)


def test_input_read_in_pieces_gives_the_bytes_of_whole_strips(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The input is read in pieces of a few patches side by side: pieces of one, two and three
    patches give the masks and probabilities of one piece per strip, nodata included."""
    data = np.random.default_rng(4).integers(1, 255, (3, 150, 170)).astype(np.uint8)
    data[:, 40:70, 0:60] = 0
    image = make_geotiff(tmp_path / "in.tif", data, crs="EPSG:32631", nodata=0)
    ck = make_checkpoint(tmp_path / "m.ckpt", crs="EPSG:32631", classes=3, architecture="unet")
    outputs = {}
    for pieces in (1, 2, 3, 1000):
        monkeypatch.setattr(infer, "PIECE_PATCHES", pieces)
        mask, prob = tmp_path / f"mask_{pieces}.tif", tmp_path / f"prob_{pieces}.tif"
        infer.predict_raster(
            image, mask, checkpoint=ck, patch_size=32, overlap=8, batch_size=5, probabilities=prob
        )
        with rasterio.open(mask) as m, rasterio.open(prob) as p:
            outputs[pieces] = (m.read(), p.read())
    whole_mask, whole_prob = outputs.pop(1000)
    assert (whole_mask[0, 40:70, 0:60] == 255).all() and len(np.unique(whole_prob)) > 5
    for mask, prob in outputs.values():
        assert np.array_equal(mask, whole_mask) and np.array_equal(prob, whole_prob)


# ------------------------------------------------------------------------ multi-scale TTA


def test_scales_of_one_twice_average_to_the_plain_probabilities(
    tmp_path: Path, make_geotiff, ckpt3: Path
) -> None:
    # Two identical predictions average to themselves: the averaging and its class choice are
    # checked against the plain path, byte for byte on the probabilities.
    src = make_geotiff("s.tif", size=(48, 72))
    plain, twice = tmp_path / "plain.tif", tmp_path / "twice.tif"
    infer.predict_raster(src, plain, checkpoint=ckpt3, overlap=8, probabilities=tmp_path / "pp.tif")
    infer.predict_raster(
        src, twice, checkpoint=ckpt3, overlap=8, scales=[1, 1], probabilities=tmp_path / "tp.tif"
    )
    _same_grid(twice, src)
    with rasterio.open(tmp_path / "pp.tif") as a, rasterio.open(tmp_path / "tp.tif") as b:
        assert np.array_equal(a.read(), b.read())
        prob = b.read()
    with rasterio.open(twice) as m:
        assert np.array_equal(m.read(1), prob.argmax(0))
        assert m.tags()["tta_scales"] == "1,1"


def test_multi_scale_prediction_lands_on_the_input_grid(tmp_path: Path, make_geotiff) -> None:
    # Trained at 1 m, the input is 0.5 m with nodata rows: resampled to 1 m, then zoomed 0.5x
    # and 2x; the averaged mask and probabilities are on the input's exact grid.
    ck = make_checkpoint(tmp_path / "r.ckpt", res=1.0)
    data = np.random.default_rng(2).integers(20, 230, (3, 70, 90)).astype("uint8")
    data[:, :9, :] = 0
    src = make_geotiff("half.tif", data=data, nodata=0)
    out = tmp_path / "m.tif"
    infer.predict_raster(
        src,
        out,
        checkpoint=ck,
        overlap=8,
        resample=True,
        scales=[0.5, 1, 2],
        probabilities=tmp_path / "p.tif",
    )
    _same_grid(out, src)
    with rasterio.open(out) as m, rasterio.open(tmp_path / "p.tif") as p:
        mask, prob, tags = m.read(1), p.read(), m.tags()
        assert p.crs == m.crs and p.transform == m.transform and p.count == 2
    assert tags["tta_scales"] == "0.5,1,2" and tags["resampled_from"] == "1.0"
    assert (mask[:9] == 255).all() and (prob[:, :9] == 255).all()
    body = prob[:, 9:].astype(int)
    assert (body <= 254).all() and (abs(body.sum(0) - 254) <= 3).all()
    assert np.array_equal(mask[9:], body.argmax(0))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_scales_need_a_crs_and_positive_factors(tmp_path: Path, make_geotiff, ckpt3: Path) -> None:
    src = make_geotiff("nocrs.tif", size=(40, 40), crs=None)
    out = tmp_path / "m.tif"
    res = _run(ckpt3, src, "--out", out, "--allow-ungeoreferenced", "--scales", "0.8,1")
    assert_one_line_error(res, "nocrs.tif", "several scales", "infer.scales")
    assert not out.exists()
    res = _run(ckpt3, make_geotiff("ok.tif"), "--out", out, "--scales", "0,1")
    assert res.exit_code != 0 and "Traceback" not in res.output and not out.exists()
