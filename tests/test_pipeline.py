"""`geoseg run` on every recipe in pipelines/, on tiny generated data that mimics its layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from typer.testing import CliRunner

from geoseg import config, pipeline
from geoseg.cli.main import app
from geoseg.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "pipelines").glob("*.yaml"))
runner = CliRunner()

# A 1-epoch, width-8 run on 64 px patches: enough to exercise every stage, not to learn much.
TINY = [
    "train.epochs=1",
    "model.width=8",
    "train.patch_size=64",
    "train.batch_size=4",
    "infer.overlap=16",
    "train.workers=0",
    "model.name=unet",
]


def test_every_recipe_loads_and_has_a_header_comment() -> None:
    assert {p.name for p in RECIPES} >= {
        "demo.yaml",
        "whu_building.yaml",
        "loveda.yaml",
        "atlanta_real.yaml",
    }
    for recipe in RECIPES:
        text = recipe.read_text()
        assert text.startswith("#"), f"{recipe.name} has no header comment"
        config.load(recipe)  # validates every key


def test_seed_recipes_keep_the_seed_settings() -> None:
    whu = config.load(REPO / "pipelines" / "whu_building.yaml")
    assert (whu.model.name, whu.train.batch_size, whu.train.epochs, whu.train.lr) == (
        "unet",
        8,
        100,
        1e-3,
    )
    assert (whu.train.optimizer, whu.train.scheduler, whu.train.loss, whu.train.patch_size) == (
        "adamw",
        "cosine",
        "ce",
        512,
    )
    assert whu.model.num_classes == 2 and whu.data.mask_mapping == {255: 1}
    love = config.load(REPO / "pipelines" / "loveda.yaml")
    assert (love.train.loss, love.train.patch_size, love.model.num_classes) == ("focal", 256, 7)
    assert love.data.split.ratios == (0.7, 0.1, 0.2) and love.data.mask_mapping[0] == 255


def _run(recipe: str, *overrides: str) -> tuple[int, str]:
    result = runner.invoke(
        app,
        [
            "run",
            str(REPO / "pipelines" / recipe),
            "--quiet",
            *sum((["--set", o] for o in [*TINY, *overrides]), []),
        ],
    )
    return result.exit_code, result.output + (result.stderr or "")


def _check_outputs(run_dir: Path, *, georeferenced: bool = True) -> dict:
    assert (run_dir / "train" / "best.ckpt").is_file()
    preds = sorted((run_dir / "predictions").glob("*.tif"))
    preds = [p for p in preds if not p.stem.endswith("_prob")]
    assert preds, "no prediction written"
    with rasterio.open(preds[0]) as src:
        assert src.dtypes[0] == "uint8" and src.nodata == 255
        if georeferenced:
            assert src.crs is not None
    assert (run_dir / "footprints.gpkg").is_file()
    report = json.loads((run_dir / "report.json").read_text())
    assert 0.0 <= report["pixels"]["accuracy"] <= 1.0
    return report


@pytest.mark.slow
def test_demo_recipe_runs_end_to_end_and_resumes(demo_data, tmp_path: Path) -> None:
    out = tmp_path / "run"
    data = Path(demo_data.images[0]).parents[1]
    sets = [
        f"out={out}",
        f"data.images=[{data / 'images'}]",
        f"data.labels={data / 'buildings.gpkg'}",
        f"evaluate.truth={data / 'buildings.gpkg'}",
        "data.split.block_size=128",
    ]
    code, output = _run("demo.yaml", *sets)
    assert code == 0, output
    report = _check_outputs(out)
    assert "building_iou" in report and "building_f1" in report
    # instance targets: building scored on interior + edge; the masks are tagged as instances
    assert "building" in report["pixels"]["per_class"]
    with rasterio.open(next((out / "predictions").glob("*.tif"))) as src:
        assert src.tags()["geoseg_target"] == "instances"
    assert "building IoU" in output
    # Nothing changed: every stage is skipped.
    code, output = _run("demo.yaml", *sets)
    assert code == 0, output
    assert output.count("skipped") == 4, output
    # A vectorize setting changed: only vectorize and evaluate run again.
    code, output = _run("demo.yaml", *sets, "vectorize.min_area_m2=50")
    assert code == 0, output
    lines = {line.split()[0]: line for line in output.splitlines() if line.split()}
    assert "skipped" in lines["train"] and "skipped" in lines["infer"]
    assert "skipped" not in lines["vectorize"] and "skipped" not in lines["evaluate"]


@pytest.mark.slow
def test_demo_recipe_with_vector_labels(demo_data, tmp_path: Path) -> None:
    data = Path(demo_data.images[0]).parents[1]
    code, output = _run(
        "demo.yaml",
        f"out={tmp_path / 'run'}",
        f"data.images=[{data / 'images'}]",
        f"data.labels={data / 'buildings.gpkg'}",
        "data.label_attribute=class",
        "evaluate.truth=null",
        "data.split.block_size=128",
    )
    assert code == 0, output
    report = _check_outputs(tmp_path / "run")
    assert "objects" in report


def test_demo_recipe_semantic_with_masks(demo_data, tmp_path: Path) -> None:
    data = Path(demo_data.images[0]).parents[1]
    code, output = _run(
        "demo.yaml",
        f"out={tmp_path / 'run'}",
        f"data.images=[{data / 'images'}]",
        f"data.labels={data / 'masks'}",
        "data.target=semantic",
        "train.class_weights=null",  # the recipe weights its four instance classes
        f"evaluate.truth={data / 'buildings.gpkg'}",
        "data.split.block_size=128",
    )
    assert code == 0, output
    report = _check_outputs(tmp_path / "run")
    assert set(report["pixels"]["per_class"]) == {"background", "building"}


def _write_png_tiles(folder: Path, masks: Path, n: int, size: int, classes: list[int], rng) -> None:
    folder.mkdir(parents=True)
    masks.mkdir(parents=True)
    for i in range(n):
        mask = (
            rng.choice(classes, size=(size // 16, size // 16))
            .repeat(16, 0)
            .repeat(16, 1)
            .astype("uint8")
        )
        image = np.stack([(mask.astype(int) * 29 + 40) % 256] * 3).astype("uint8")
        image = np.clip(image + rng.integers(0, 20, image.shape), 0, 255).astype("uint8")
        for path, arr in ((folder / f"{i:03d}.png", image), (masks / f"{i:03d}.png", mask[None])):
            with rasterio.open(
                path, "w", driver="PNG", width=size, height=size, count=arr.shape[0], dtype="uint8"
            ) as dst:
                dst.write(arr)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
@pytest.mark.slow
def test_whu_recipe_on_a_tiny_tile_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    _write_png_tiles(tmp_path / "whu" / "img", tmp_path / "whu" / "mask", 10, 128, [0, 255], rng)
    code, output = _run(
        "whu_building.yaml",
        f"out={tmp_path / 'run'}",
        f"data.images={tmp_path / 'whu' / 'img'}",
        f"data.labels={tmp_path / 'whu' / 'mask'}",
    )
    assert code == 0, output
    _check_outputs(tmp_path / "run", georeferenced=False)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
@pytest.mark.slow
def test_loveda_recipe_on_a_tiny_tile_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    _write_png_tiles(
        tmp_path / "love" / "images_png",
        tmp_path / "love" / "masks_png",
        10,
        128,
        list(range(8)),
        rng,
    )
    code, output = _run(
        "loveda.yaml",
        f"out={tmp_path / 'run'}",
        f"data.images={tmp_path / 'love' / 'images_png'}",
        f"data.labels={tmp_path / 'love' / 'masks_png'}",
    )
    assert code == 0, output
    report = _check_outputs(tmp_path / "run", georeferenced=False)
    assert len(report["pixels"]["per_class"]) == 7


@pytest.mark.slow
def test_atlanta_recipe_on_the_real_sample(real_data: Path, tmp_path: Path) -> None:
    code, output = _run("atlanta_real.yaml", f"out={tmp_path / 'run'}")
    assert code == 0, output
    report = _check_outputs(tmp_path / "run")
    with (
        rasterio.open(real_data / "atlanta_pan_0p5m.tif") as src,
        rasterio.open(tmp_path / "run" / "predictions" / "atlanta_pan_0p5m.tif") as pred,
    ):
        assert pred.crs == src.crs and pred.transform == src.transform
        assert (pred.width, pred.height) == (src.width, src.height)
    assert report["objects"]["tp"] + report["objects"]["fn"] > 0


def test_unknown_key_fails_before_any_work(tmp_path: Path) -> None:
    code, output = _run("demo.yaml", f"out={tmp_path / 'run'}", "train.epoch=3")
    assert code == 2  # a bad setting
    assert "unknown key 'train.epoch'" in output and "epochs" in output
    assert not (tmp_path / "run").exists()


def test_from_a_stage_that_never_ran_is_an_error(tmp_path: Path) -> None:
    cfg = config.parse({"out": str(tmp_path / "run"), "data": {"images": [str(tmp_path)]}})
    with pytest.raises(ConfigError, match="stage 'train' has not finished"):
        pipeline.run(cfg, from_stage="infer")
    with pytest.raises(ConfigError, match="unknown stage 'predict'"):
        pipeline.run(cfg, from_stage="predict")  # type: ignore[arg-type]


def _crop(src_path: Path, out: Path, size: int) -> Path:
    """The central ``size`` x ``size`` pixels of a raster, on its grid (a read-only source)."""
    from rasterio.windows import Window

    with rasterio.open(src_path) as src:
        win = Window((src.width - size) // 2, (src.height - size) // 2, size, size)
        profile = dict(src.profile, width=size, height=size, transform=src.window_transform(win))
        profile.pop("blockxsize", None), profile.pop("blockysize", None)
        profile["tiled"] = False
        data = src.read(window=win)
    out.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(data)
    return out


def test_oam_recipe_on_crops_of_the_real_areas(
    real_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The OAM recipe as written (Kampala held out by name, the footprint folder as labels),
    on 256-px crops of one block per area, for one tiny epoch: the held-out town is predicted
    on its own grid, vectorised and scored against its own buildings only."""
    import geopandas as gpd
    import shapely

    oam = real_data / "oam"
    if not oam.is_dir():
        pytest.skip("OAM sample not available")
    names = ["1_zanzibar_tz_b1", "2_kampala_ug_b1", "3_banepa_np_b1", "4_catanduanes_ph_b1"]
    crops = [
        _crop(oam / "images" / f"{n}_z19.tif", tmp_path / "images" / f"{n}_z19.tif", 256)
        for n in names
    ]
    from geoseg import vectorize

    calls: list[dict] = []  # the recipe's footprint settings reach vectorize
    polygons = vectorize.polygons
    monkeypatch.setattr(
        vectorize, "polygons", lambda *a, **kw: calls.append(kw) or polygons(*a, **kw)
    )
    out = tmp_path / "run"
    code, output = _run(
        "oam_buildings.yaml",
        f"out={out}",
        f"data.images={tmp_path / 'images'}",
        "train.patches_per_epoch=8",
        "train.precision='32'",
    )
    assert code == 0, output
    assert [(c["min_area_m2"], c["seed_erosion_m"], c["min_confidence"]) for c in calls] == [
        (8.0, 0.8, 0.7)
    ]
    assert calls[0]["probabilities"] is not None  # written by infer for the confidence
    report = _check_outputs(out)
    preds = sorted(p for p in (out / "predictions").glob("*.tif") if "_prob" not in p.name)
    assert [p.name for p in preds] == ["2_kampala_ug_b1_z19.tif"]  # the test town only
    with rasterio.open(crops[1]) as src, rasterio.open(preds[0]) as pred:
        assert pred.crs == src.crs and pred.transform == src.transform
        assert (pred.width, pred.height) == (src.width, src.height)
        area = shapely.box(*src.bounds)
        crs = src.crs
    footprints = gpd.read_file(out / "footprints.gpkg", layer="footprints")
    assert footprints.crs == crs and set(footprints.columns) >= {"area_m2", "geometry"}
    assert (footprints.confidence >= 0.7).all()
    truth = gpd.read_file(oam / "footprints" / f"{names[1]}.geojson").to_crs(crs)
    inside = int(truth.geometry.representative_point().within(area).sum())
    assert inside > 5
    # scored against the held-out town's buildings, not those of the training towns
    assert report["objects"]["tp"] + report["objects"]["fn"] == inside
    assert {"building_iou", "building_f1"} <= set(report)
    split = gpd.read_file(out / "train" / "split.gpkg").set_index("split")
    assert split.loc["test", "files"] == str(crops[1])
    # no validation split: every other town trains
    assert sorted(split.index) == ["test", "train"]
    assert all(str(c) in split.loc["train", "files"] for c in crops if c != crops[1])


def test_infer_writes_probabilities_when_vectorize_filters_by_confidence() -> None:
    cfg = config.parse({"vectorize": {"min_confidence": 0.7}})
    assert pipeline._infer_settings(cfg).probabilities
    assert not cfg.infer.probabilities  # the config itself is left as written
    off = config.parse({"vectorize": {"min_confidence": 0.7, "enabled": False}})
    assert not pipeline._infer_settings(off).probabilities
    assert not pipeline._infer_settings(config.parse({})).probabilities
