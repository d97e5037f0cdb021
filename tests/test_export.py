"""geoseg export: ONNX that agrees with the checkpoint and carries Deepness/GeoDeep metadata,
a STAC MLM item that validates, QGIS style sidecars, and one-line errors.

A width-8 UNet is trained for a few epochs on the session's demo tiles (module fixture; the
tests that use it are marked slow); the exported ONNX is run through ``geoseg infer`` next to the
checkpoint on the demo and on a real OpenAerialMap scene, and through GeoDeep.
"""

from __future__ import annotations

import copy
import hashlib
import json
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from helpers import assert_one_line_error
from typer.testing import CliRunner

from geoseg import checkpoint, export, infer, io, models
from geoseg.cli.main import app

runner = CliRunner()

SMALL_SPLIT = (
    "data:\n  split: {method: blocks, block_size: 128, ratios: [0.6, 0.2, 0.2], seed: 0}\n"
    "train:\n  patches_per_epoch: 32\n"
)


def _cli(*args: object):
    return runner.invoke(app, ["-q", *map(str, args)])


def _ok(res) -> None:
    assert res.exit_code == 0, (res.output, res.exception)


@pytest.fixture(scope="module")
def trained(demo_data, tmp_path_factory) -> Path:
    """best.ckpt of a width-8 UNet trained 3 short epochs on the 256-px demo tiles."""
    work = tmp_path_factory.mktemp("export_train")
    cfg = work / "small.yaml"
    cfg.write_text(SMALL_SPLIT)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _ok(
            _cli(
                "train",
                demo_data.images[0].parent,
                "--labels",
                demo_data.masks[0].parent,
                "--out",
                work / "run",
                "--config",
                cfg,
                "--epochs",
                3,
                "--width",
                8,
                "--patch-size",
                64,
                "--batch-size",
                8,
                "--seed",
                0,
            )  # fmt: skip
        )
    finally:
        torch.set_num_threads(threads)
    return work / "run" / "best.ckpt"


@pytest.fixture(scope="module")
def exported(trained: Path) -> Path:
    out = trained.with_name("model.onnx")
    _ok(_cli("export", trained, "--out", out))
    return out


def _agreement(a: Path, b: Path) -> float:
    with rasterio.open(a) as x, rasterio.open(b) as y:
        assert x.crs == y.crs and x.transform == y.transform and x.shape == y.shape
        return float(np.mean(x.read(1) == y.read(1)))


def make_checkpoint(path: Path, name: str, *, patch: int = 64, seed: int = 0) -> Path:
    """A randomly initialised checkpoint of model ``name`` with a metric-CRS card."""
    torch.manual_seed(seed)
    kwargs = {"width": 4} if name == "unet" else {}
    card = checkpoint.ModelCard(
        architecture=name,
        model_args=kwargs,
        in_channels=3,
        band_names=["red", "green", "blue"],
        band_indexes=[1, 2, 3],
        mean=[100.0, 110.0, 120.0],
        std=[50.0, 40.0, 30.0],
        class_names=["background", "building"],
        class_ids=[0, 1],
        patch_size=patch,
        res=0.3,
        crs_wkt=rasterio.crs.CRS.from_epsg(32631).to_wkt(),
        metrics={"iou_building": 0.5},
    )
    net = models.build(name, in_channels=3, num_classes=2, **kwargs)
    checkpoint.save(path, model=net, card=card)
    return path


# ------------------------------------------------------------------------ ONNX vs checkpoint


@pytest.mark.slow  # trains a model (module fixture)
def test_onnx_masks_agree_with_the_checkpoint_on_the_demo(
    trained: Path, exported: Path, demo_data, tmp_path: Path
) -> None:
    images = demo_data.images[0].parent
    for model, out in ((trained, "ckpt"), (exported, "onnx")):
        _ok(_cli("infer", model, images, "--out", tmp_path / out, "--precision", "32"))
    for image in demo_data.images:
        a, b = tmp_path / "ckpt" / image.name, tmp_path / "onnx" / image.name
        assert _agreement(a, b) >= 0.999
        with rasterio.open(b) as m:
            assert m.tags()["class_names"] == '["background", "building"]'
            assert m.tags()["precision"] == "32"
        assert len(np.unique(rasterio.open(a).read(1))) > 1  # the model predicts something


@pytest.mark.slow  # trains a model (module fixture)
def test_onnx_masks_agree_on_a_real_oam_scene(
    trained: Path, exported: Path, real_data: Path, tmp_path: Path
) -> None:
    src = real_data / "oam" / "images" / "2_kampala_ug_b2_z19.tif"
    outs = [tmp_path / "ckpt.tif", tmp_path / "onnx.tif"]
    for model, out in zip((trained, exported), outs, strict=True):
        infer.predict_raster(src, out, checkpoint=model, overlap=16, precision="32", cog=False)
    assert _agreement(*outs) >= 0.999


def test_the_graph_takes_raw_pixels_and_returns_probabilities(tmp_path: Path) -> None:
    import onnxruntime as ort

    ck = make_checkpoint(tmp_path / "m.ckpt", "unet")
    path = export.onnx(ck, tmp_path / "m.onnx")
    model, card = checkpoint.load_model(ck)
    raw = torch.randint(0, 256, (2, 3, 64, 64)).float()
    mean = torch.tensor(card.mean).view(1, -1, 1, 1)
    std = torch.tensor(card.std).view(1, -1, 1, 1)
    with torch.inference_mode():
        want = torch.softmax(model((raw - mean) / std), 1).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"pixels": raw.numpy()})[0]
    assert got.shape == (2, 2, 64, 64)
    assert np.abs(got - want).max() < 1e-4
    assert np.allclose(got.sum(1), 1.0, atol=1e-5)
    # input_scale=255: the graph takes raw / 255, what GeoDeep feeds 8-bit images.
    scaled = export.onnx(ck, tmp_path / "m255.onnx", input_scale=255)
    session = ort.InferenceSession(str(scaled), providers=["CPUExecutionProvider"])
    got = session.run(None, {"pixels": (raw / 255).numpy()})[0]
    assert np.abs(got - want).max() < 1e-4


@pytest.fixture(scope="module")
def resnet18(tmp_path_factory) -> tuple[Path, Path]:
    """A random unet-resnet18 checkpoint and its ONNX export with dynamic height and width."""
    work = tmp_path_factory.mktemp("resnet18") / "models"
    ck = make_checkpoint(work / "m.ckpt", "unet-resnet18")
    return ck, export.onnx(ck, work / "m.onnx", dynamic_size=True)


def _check_dynamic(ck: Path, path: Path) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 3, "height", "width"]
    model, _ = checkpoint.load_model(ck)
    mean = torch.tensor([100.0, 110.0, 120.0]).view(1, -1, 1, 1)
    std = torch.tensor([50.0, 40.0, 30.0]).view(1, -1, 1, 1)
    for h, w in ((64, 64), (96, 128)):
        raw = torch.rand(3, 3, h, w) * 255
        got = session.run(None, {"pixels": raw.numpy()})[0]
        with torch.inference_mode():
            want = torch.softmax(model((raw - mean) / std), 1).numpy()
        assert got.shape == (3, 2, h, w) and np.abs(got - want).max() < 1e-3


def test_unet_resnet18_exports_with_dynamic_size(resnet18: tuple[Path, Path]) -> None:
    _check_dynamic(*resnet18)


def test_infer_takes_another_patch_size_only_from_a_dynamic_export(
    tmp_path: Path, make_geotiff
) -> None:
    ck = make_checkpoint(tmp_path / "m.ckpt", "unet")
    src = make_geotiff("img.tif", size=(100, 90))
    fixed = export.onnx(ck, tmp_path / "fixed.onnx")
    res = _cli("infer", fixed, src, "--out", tmp_path / "a.tif", "--patch-size", 32)
    assert_one_line_error(res, "64 x 64 tiles", "--dynamic-size", code=2)  # a bad setting
    dynamic = export.onnx(ck, tmp_path / "dynamic.onnx", dynamic_size=True)
    _check_dynamic(ck, dynamic)  # the plain UNet, as unet-resnet18 above
    outs = [tmp_path / "ckpt.tif", tmp_path / "dyn.tif"]
    for model, out in zip((ck, dynamic), outs, strict=True):
        infer.predict_raster(src, out, checkpoint=model, patch_size=32, overlap=8, precision="32")
    assert _agreement(*outs) >= 0.999


# ------------------------------------------------------------------------ metadata


def test_metadata_reads_as_deepness_and_geodeep_read_it(tmp_path: Path) -> None:
    """Each key parsed exactly as the tools' readers do (cited in geoseg/export.py)."""
    import onnxruntime as ort

    ck = make_checkpoint(tmp_path / "m.ckpt", "unet", patch=128)
    path = export.onnx(ck, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    shape = session.get_inputs()[0].shape
    # Deepness ModelBase.get_metadata_* (json.loads each value).
    assert str(json.loads(meta["model_type"])).capitalize() == "Segmentor"
    names = sorted(json.loads(meta["class_names"]).items(), key=lambda kv: int(kv[0]))
    assert [int(k) for k, _ in names] == [0, 1] and [v for _, v in names] == [
        "background",
        "building",
    ]
    assert float(json.loads(meta["resolution"])) == pytest.approx(30.0)  # 0.3 m in cm
    assert int(json.loads(meta["tile_size"])) == 128 == shape[-1] == shape[-2]
    assert int(json.loads(meta["tiles_overlap"])) == 25  # 32 px of 128
    mean = np.array(json.loads(meta["standardization_mean"]), np.float32)
    std = np.array(json.loads(meta["standardization_std"]), np.float32)
    x = np.arange(256, dtype=np.float32)[:, None].repeat(3, 1)
    assert np.allclose((x / 255.0 - mean) / std, x, atol=1e-3)  # Deepness then feeds raw values
    out = session.get_outputs()[0].shape
    assert len(out) == 4 and out[2] == out[3] == 128  # Deepness: (B, C, H, W), square
    # GeoDeep create_session.
    assert json.loads(meta["model_type"]) == "Segmentor"
    assert float(meta["resolution"]) == pytest.approx(30.0)
    assert float(meta["tiles_overlap"]) == 25.0
    assert isinstance(shape[-1], int) and isinstance(shape[0], str)  # tile fixed, batch dynamic
    # geoseg: the whole card, and the band order.
    card = export.read_card(path)
    assert card == checkpoint.load(ck).card
    assert json.loads(meta["band_indexes"]) == [1, 2, 3]
    assert json.loads(meta["band_names"]) == ["red", "green", "blue"]


@pytest.mark.slow  # trains a model (module fixture)
def test_geodeep_runs_the_input_scale_255_export(
    trained: Path, exported: Path, demo_data, tmp_path: Path
) -> None:
    """GeoDeep itself reads the metadata, feeds a tile its way (uint8 / 255) and gets the
    classes geoseg's raw-pixel export gives; its whole-raster run works too."""
    import onnxruntime as ort
    from geodeep import segment
    from geodeep.inference import create_session
    from geodeep.segmentation import execute_segmentation
    from rasterio.windows import Window

    model = export.onnx(trained, tmp_path / "geodeep.onnx", input_scale=255)
    session, cfg = create_session(str(model))
    assert cfg["model_type"] == "Segmentor" and cfg["tiles_size"] == 64
    assert cfg["class_names"] == {"0": "background", "1": "building"}
    assert cfg["resolution"] == pytest.approx(50.0) and cfg["tiles_overlap"] == 25.0
    image = demo_data.images[1]
    with rasterio.open(image) as src:
        tiles = [src.read(window=Window(x, y, 64, 64)) for x, y in ((0, 0), (64, 128), (192, 64))]
    raw = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    for tile in tiles:
        theirs = execute_segmentation(tile, session, cfg)
        ours = raw.run(None, {"pixels": tile[None].astype(np.float32)})[0].argmax(1)
        assert np.mean(theirs == ours) >= 0.999
    mask = segment(str(image), str(model), output_type="raw")  # tiles, median filter, sieve
    assert mask.shape == (256, 256) and set(np.unique(mask)) <= {0, 1}


# ------------------------------------------------------------------------ STAC MLM


def test_stac_item_validates_against_the_mlm_extension(resnet18: tuple[Path, Path]) -> None:
    """The MLM JSON schema ships in no installed package (stac-model 0.7.0 has none), so the item
    is checked with the extension's reference models: stac-model's pydantic MLModelProperties
    (maintained with the schema in stac-extensions/mlm), pystac's MLM extension reader, and
    pystac's bundled STAC 1.1 Item JSON schema for the core."""
    import pystac
    from pystac.extensions.mlm import MLMExtension
    from pystac.validation import validate_dict
    from stac_model.schema import MLModelProperties

    ck, onnx = resnet18
    path = ck.parent.parent / "stac" / "item.json"
    export.stac(ck, path, onnx=onnx)
    item = json.loads(path.read_text())

    assert validate_dict(copy.deepcopy(item), extensions=[])  # STAC core, offline schema
    props = {k: v for k, v in item["properties"].items() if k.startswith("mlm:")}
    mlm = MLModelProperties.model_validate(props)
    assert mlm.total_parameters == sum(p.numel() for p in checkpoint.load_model(ck)[0].parameters())
    assert {t for t in mlm.tasks} == {"semantic-segmentation"}
    ext = MLMExtension.ext(pystac.Item.from_dict(copy.deepcopy(item)))
    assert ext.framework == "PyTorch" and ext.architecture == "unet-resnet18"
    assert [c.value for c in ext.output[0].classes] == [0, 1]
    assert ext.input[0].bands == ["red", "green", "blue"]
    scaling = item["properties"]["mlm:input"][0]["value_scaling"]
    assert [(s["mean"], s["stddev"]) for s in scaling] == [(100, 50), (110, 40), (120, 30)]
    assert item["properties"]["geoseg:metrics"] == {"iou_building": 0.5}
    # Asset hrefs are relative to the item and resolve to the files.
    for key, target in (("model", ck), ("onnx", onnx)):
        asset = item["assets"][key]
        assert (path.parent / asset["href"]).resolve() == target.resolve()
        assert "mlm:model" in asset["roles"] and asset["mlm:artifact_type"]
    assert item["stac_extensions"] == [export.MLM_SCHEMA]


# ------------------------------------------------------------------------ QGIS styles


@pytest.mark.slow  # trains a model (module fixture)
def test_mask_style_sidecar_parses_back_and_leaves_the_mask_alone(
    exported: Path, demo_data, tmp_path: Path
) -> None:
    mask = tmp_path / "mask.tif"
    infer.predict_raster(demo_data.images[0], mask, checkpoint=exported, overlap=16)
    before = hashlib.sha256(mask.read_bytes()).hexdigest()
    with rasterio.open(mask) as m:
        pixels, profile = m.read(), m.profile
    qml = mask.with_suffix(".qml")
    assert qml.is_file()  # written by infer
    qml.unlink()
    assert export.mask_style(mask) == qml
    assert hashlib.sha256(mask.read_bytes()).hexdigest() == before
    with rasterio.open(mask) as m:  # GDAL reads the mask unchanged
        assert (m.read() == pixels).all() and m.profile == profile
    root = ET.parse(qml).getroot()
    renderer = root.find("pipe/rasterrenderer")
    assert renderer is not None and renderer.get("type") == "paletted"
    entries = {
        int(e.get("value")): (e.get("label"), int(e.get("alpha")), e.get("color"))
        for e in renderer.iter("paletteEntry")
    }
    assert entries[0][:2] == ("background", 0)  # transparent
    assert entries[1][0] == "building" and entries[1][1] == 255
    with rasterio.open(mask) as m:
        r, g, b, _ = m.colormap(1)[1]
    assert entries[1][2] == f"#{r:02x}{g:02x}{b:02x}"  # the GeoTIFF's own colour
    nodata = renderer.find("rasterTransparency/singleValuePixelList/pixelListEntry")
    assert nodata is not None and nodata.get("min") == nodata.get("max") == "255"
    assert nodata.get("percentTransparent") == "100"


def test_rasterize_writes_a_style_sidecar_with_the_class_names(demo_data, tmp_path: Path) -> None:
    out = tmp_path / "truth.tif"
    _ok(_cli("rasterize", demo_data.buildings, "--like", demo_data.images[0], "--out", out))
    entries = ET.parse(out.with_suffix(".qml")).getroot().iter("paletteEntry")
    assert [(e.get("value"), e.get("label"), e.get("alpha")) for e in entries][:2] == [
        ("0", "background", "0"),
        ("1", "building", "255"),
    ]


@pytest.mark.slow  # trains a model (module fixture)
def test_footprint_style_is_a_qgis_layer_style(exported: Path, demo_data, tmp_path: Path) -> None:
    import pyogrio

    gpkg = tmp_path / "fp.gpkg"
    _ok(_cli("infer", exported, demo_data.images[1], "--out", tmp_path / "m.tif",
             "--vectorize", gpkg))  # fmt: skip
    before = pyogrio.read_dataframe(gpkg, layer="footprints")
    export.footprint_style(gpkg)  # again: replaces, never duplicates, the layer's default
    layers = dict(pyogrio.list_layers(gpkg))
    assert layers == {"footprints": "Polygon", "layer_styles": None}
    styles = pyogrio.read_dataframe(gpkg, layer="layer_styles", read_geometry=False)
    assert len(styles) == 1
    row = styles.iloc[0]
    assert (row.f_table_name, row.f_geometry_column, row.f_table_schema) == (
        "footprints",
        pyogrio.read_info(gpkg, layer="footprints")["geometry_name"],
        "",
    )
    assert bool(row.useAsDefault) and row.styleName == "footprints"
    root = ET.fromstring(row.styleQML)
    renderer = root.find("renderer-v2")
    assert renderer is not None and renderer.get("attr") == "class_name"
    assert [c.get("value") for c in renderer.iter("category")] == ["building"]
    after = pyogrio.read_dataframe(gpkg, layer="footprints")
    assert after.geometry.equals(before.geometry) and len(after) > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the style table is not a second layer to geoseg
        assert io.read_vector(gpkg).geometry.equals(before.geometry)


# ------------------------------------------------------------------------ errors


@pytest.mark.parametrize("content", [b"not a checkpoint", "state_dict"])
def test_not_a_geoseg_checkpoint_is_one_line(tmp_path: Path, content: object) -> None:
    bad = tmp_path / "bad.ckpt"
    if content == "state_dict":
        torch.save(models.build("unet", in_channels=3, num_classes=2, width=2).state_dict(), bad)
    else:
        bad.write_bytes(content)  # type: ignore[arg-type]
    res = _cli("export", bad, "--out", tmp_path / "m.onnx")
    assert_one_line_error(res, "bad.ckpt")
    assert not (tmp_path / "m.onnx").exists()


def test_an_onnx_without_a_geoseg_card_is_refused_by_infer(tmp_path: Path, make_geotiff) -> None:
    import onnx

    ck = make_checkpoint(tmp_path / "m.ckpt", "unet")
    path = export.onnx(ck, tmp_path / "m.onnx")
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "foreign.onnx"))
    res = _cli("infer", tmp_path / "foreign.onnx", make_geotiff(), "--out", tmp_path / "x.tif")
    assert_one_line_error(res, "foreign.onnx", "model card")


def test_existing_output_and_bad_opset_are_one_line(tmp_path: Path) -> None:
    import onnx

    ck = make_checkpoint(tmp_path / "m.ckpt", "unet")
    out = tmp_path / "m.onnx"
    out.write_bytes(b"keep me")
    res = _cli("export", ck, "--out", out)
    assert_one_line_error(res, "m.onnx", "--overwrite")
    assert out.read_bytes() == b"keep me"
    stac = tmp_path / "m.json"
    stac.write_text("{}")
    res = _cli("export", ck, "--stac", stac)
    assert_one_line_error(res, "m.json", "--overwrite")
    assert stac.read_text() == "{}"
    _ok(_cli("export", ck, "--stac", stac, "--overwrite"))
    assert set(json.loads(stac.read_text())["assets"]) == {"model"}

    newest = onnx.defs.onnx_opset_version()
    for opset in (newest + 1, 5):
        res = _cli("export", ck, "--out", tmp_path / "new.onnx", "--opset", opset)
        assert_one_line_error(res, f"opset={opset}", onnx.__version__, code=2)  # a bad setting
        assert not (tmp_path / "new.onnx").exists()
    res = _cli("export", ck)
    assert res.exit_code == 2 and "--stac" in res.output


def test_a_per_patch_normalised_model_exports_its_normalisation(tmp_path: Path) -> None:
    """data.normalization: patch: the graph normalises each tile by its own mean/std, as
    training and geoseg infer do (geoseg.normalize), so a darker copy gets the same output."""
    import onnxruntime as ort

    from geoseg.normalize import patch_statistics

    ck = make_checkpoint(tmp_path / "m.ckpt", "unet")
    model, card = checkpoint.load_model(ck)
    card.normalization = "patch"
    checkpoint.save(ck, model=model, card=card)
    path = export.onnx(ck, tmp_path / "m.onnx")
    raw = torch.randint(0, 256, (2, 3, 64, 64)).float()
    mean, std = patch_statistics(raw, torch.tensor(card.std))
    with torch.inference_mode():
        want = torch.softmax(model((raw - mean) / std), 1).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"pixels": raw.numpy()})[0]
    assert np.abs(got - want).max() < 1e-4
    with torch.inference_mode():
        dataset = (raw - torch.tensor(card.mean).view(1, -1, 1, 1)) / torch.tensor(card.std).view(
            1, -1, 1, 1
        )
        plain = torch.softmax(model(dataset), 1).numpy()
    assert np.abs(got - plain).max() > 1e-3  # not the training data's statistics
