"""Instance targets through the stages: config, training data, train, infer, vectorize, errors.

One tiny training run (width-8 UNet, 64-px patches, 1 epoch) on the session's 256-px demo tiles
with ``--target instances``; the rest reads its checkpoint.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from helpers import assert_one_line_error, make_geotiff
from test_train import _one_thread  # noqa: F401  (one torch thread, as test_train runs)
from typer.testing import CliRunner

from geoseg import checkpoint, config, evaluate, instances
from geoseg.cli.main import app
from geoseg.errors import ConfigError

runner = CliRunner()
SMALL = (
    "data:\n  split: {method: blocks, block_size: 128, ratios: [0.6, 0.2, 0.2], seed: 0}\n"
    "train:\n  patches_per_epoch: 16\n"
)
TINY = ["--width", "8", "--patch-size", "64", "--batch-size", "4", "--seed", "0"]


@pytest.fixture(scope="module")
def small_yaml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "small.yaml"
    path.write_text(SMALL)
    return path


@pytest.fixture(scope="module")
def run(demo_data, small_yaml, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "inst"
    result = runner.invoke(
        app,
        [
            "-q", "train", str(demo_data.images[0].parent), "--labels", str(demo_data.buildings),
            "--out", str(out), "--config", str(small_yaml), "--epochs", "1",
            "--target", "instances", "--edge-width-m", "1.0", "--monitor", "object_f1", *TINY,
        ],
    )  # fmt: skip
    assert result.exit_code == 0, (result.output, result.exception)
    return out


def test_config_instances_sets_the_classes() -> None:
    cfg = config.parse({"data": {"target": "instances"}})
    assert cfg.model.class_names == instances.CLASS_NAMES and cfg.model.num_classes == 4
    # a config written for a building mask still reads
    cfg = config.parse(
        {"data": {"target": "instances"}, "model": {"class_names": ["background", "building"]}}
    )
    assert cfg.model.num_classes == 4
    with pytest.raises(ConfigError, match="instances predicts the classes"):
        config.parse({"data": {"target": "instances"}, "model": {"classes": 3}})
    with pytest.raises(ConfigError, match="edge_width_m"):
        config.parse({"data": {"edge_width_m": 0}})


def test_train_records_the_target_and_scores_buildings(run: Path) -> None:
    ck = checkpoint.load(run / "best.ckpt")
    assert ck.card.target == "instances" and ck.card.edge_width_m == 1.0
    assert ck.card.class_names == instances.CLASS_NAMES
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    for key in ("iou_building", "f1_building", "object_f1", "iou_interior", "iou_edge"):
        assert key in rows[0], key
    assert 0 <= float(rows[0]["iou_building"]) <= 1
    extra = checkpoint.load(run / "last.ckpt").extra
    assert extra["monitor"] == "object_f1"
    test = json.loads((run / "test_metrics.json").read_text())
    assert "building" in test["per_class"] and {"tp", "fp", "fn", "f1"} <= set(test["objects"])
    # the targets were burned once into the run's cache
    assert list((run / "cache").glob("instances-*/*.tif"))
    with rasterio.open(next((run / "cache").glob("targets-*/*.tif"))) as src:
        assert instances.is_instance_mask(src)
        assert set(np.unique(src.read(1))) <= {0, 1, 2, 3, 255}


def test_infer_tags_the_mask_and_vectorize_separates(run: Path, demo_data, tmp_path) -> None:
    out = tmp_path / "pred.tif"
    result = runner.invoke(
        app,
        ["-q", "infer", str(run / "best.ckpt"), str(demo_data.images[1]), "--out", str(out),
         "--probabilities"],
    )  # fmt: skip
    assert result.exit_code == 0, (result.output, result.exception)
    with rasterio.open(out) as src:
        assert instances.is_instance_mask(src)
        assert json.loads(src.tags()["class_names"]) == instances.CLASS_NAMES
    fp = tmp_path / "fp.gpkg"
    result = runner.invoke(app, ["-q", "vectorize", str(out), "--out", str(fp)])
    assert result.exit_code == 0, (result.output, result.exception)
    import geopandas as gpd

    gdf = gpd.read_file(fp)
    assert len(gdf) == 0 or set(gdf["class_name"]) == {"building"}


def test_plain_class_masks_cannot_give_instances(demo_data, small_yaml, tmp_path) -> None:
    result = runner.invoke(
        app,
        ["-q", "train", str(demo_data.images[0].parent), "--labels",
         str(demo_data.masks[0].parent), "--out", str(tmp_path / "r"), "--config",
         str(small_yaml), "--epochs", "1", "--target", "instances", *TINY],
    )  # fmt: skip
    assert_one_line_error(result, "tile_00.tif", "class mask", "building polygons")


def test_edge_width_below_a_pixel_is_refused(demo_data, small_yaml, tmp_path) -> None:
    result = runner.invoke(
        app,
        ["-q", "train", str(demo_data.images[0].parent), "--labels", str(demo_data.buildings),
         "--out", str(tmp_path / "r"), "--config", str(small_yaml), "--epochs", "1",
         "--target", "instances", "--edge-width-m", "0.2", *TINY],
    )  # fmt: skip
    assert_one_line_error(result, "edge width 0.2 m is smaller than a pixel (0.5 m)")


def test_polygons_off_the_imagery_are_refused(demo_data, small_yaml, tmp_path) -> None:
    import geopandas as gpd
    import shapely

    far = tmp_path / "far.gpkg"
    gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 10, 10)], crs="EPSG:32631").to_file(far)
    result = runner.invoke(
        app,
        ["-q", "train", str(demo_data.images[0].parent), "--labels", str(far),
         "--out", str(tmp_path / "r"), "--config", str(small_yaml), "--epochs", "1",
         "--target", "instances", *TINY],
    )  # fmt: skip
    assert_one_line_error(result, "far.gpkg", "no label polygon overlaps")


def test_instance_id_rasters_are_labels_too(demo_data, tmp_path) -> None:
    from geoseg import data

    # instance ids on each image's grid, from the demo polygons
    ids_dir = tmp_path / "ids"
    for image in demo_data.images:
        with rasterio.open(image) as src:
            geoms = demo_data_geoms(demo_data.buildings, src.crs)
            ids = instances.burn_ids(
                geoms, np.arange(1, len(geoms) + 1), src.transform, (src.height, src.width)
            )
        make_geotiff(ids_dir / image.name, ids.astype(np.uint16), crs=src.crs,
                     transform=src.transform)  # fmt: skip
    cfg = config.parse(
        {
            "data": {
                "images": [str(demo_data.images[0].parent)],
                "labels": str(ids_dir),
                "target": "instances",
                "split": {"method": "blocks", "block_size": 128, "ratios": [0.6, 0.2, 0.2]},
            }
        }
    )
    td = data.build_training_data(
        cfg.data, patch_size=64, batch_size=4, run_dir=tmp_path / "run", num_classes=4
    )
    batch = next(iter(td.train))
    assert set(torch.unique(batch["mask"]).tolist()) <= {0, 1, 2, 3, 255}
    assert (batch["mask"] == instances.EDGE).any()


def demo_data_geoms(buildings: Path, crs) -> np.ndarray:
    import geopandas as gpd

    return np.asarray(gpd.read_file(buildings).to_crs(crs).geometry.values, dtype=object)


def test_match_labels_and_label_array() -> None:
    truth = np.zeros((20, 20), np.int32)
    truth[2:8, 2:8] = 1
    truth[2:8, 8:14] = 2
    truth[12:18, 2:6] = 3
    pred = np.zeros_like(truth)
    pred[2:8, 2:14] = 5  # the two touching buildings as one: matches neither
    pred[12:18, 2:7] = 9  # IoU 24/30
    assert evaluate.match_labels(pred, truth) == {"tp": 1, "fp": 1, "fn": 2}
    cls = instances.class_targets(truth, edge_px=1, contact_px=2)
    labels = instances.label_array(cls)
    assert evaluate.match_labels(labels, truth) == {"tp": 3, "fp": 0, "fn": 0}


def test_building_scores_merge_interior_and_edge() -> None:
    m = np.zeros((4, 4), np.int64)
    m[1, 2] = 10  # interior predicted as edge: still building
    m[2, 2] = 10
    m[0, 3] = 5  # background as contact: still not building
    m[1, 0] = 5  # missed building
    s = instances.building_scores(m)
    assert s["iou"] == pytest.approx(20 / 25) and s["precision"] == pytest.approx(1.0)
