"""geoseg evaluate: pixel metrics, the SpaceNet building metric, mixed mode, report and errors."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from helpers import assert_one_line_error, make_geotiff
from rasterio.transform import from_origin
from typer.testing import CliRunner

from geoseg import evaluate
from geoseg.cli.main import app
from geoseg.errors import LabelError

runner = CliRunner()
UTM = "EPSG:32631"


def write_mask(path: Path, data: np.ndarray, *, transform=None, names=None, crs=UTM) -> Path:
    """A uint8 mask (nodata 255) on 1 m pixels, optionally with class names."""
    return make_geotiff(
        path,
        np.asarray(data, dtype=np.uint8),
        crs=crs,
        transform=transform or from_origin(500000, 5000000, 1, 1),
        nodata=255,
        class_names=names,
    )


def frame(geoms, crs=UTM, **columns) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(columns, geometry=list(geoms), crs=crs)


def box(x0, y0, x1, y1):
    return shapely.box(500000 + x0, 5000000 + y0, 500000 + x1, 5000000 + y1)


# ----------------------------------------------------------------------------- pixels

PRED = np.array([[0, 0, 1, 1], [0, 2, 1, 1], [2, 2, 0, 255], [1, 0, 0, 0]])
TRUTH = np.array([[0, 1, 1, 1], [0, 2, 2, 1], [2, 0, 255, 0], [1, 1, 0, 0]])
# by hand, rows = truth, cols = prediction, pixels with 255 on either side left out:
#   truth 0: (0,0)->0 (1,0)->0 (2,1)->2 (3,2)->0 (3,3)->0          -> [4, 0, 1]
#   truth 1: (0,1)->0 (0,2)->1 (0,3)->1 (1,3)->1 (3,0)->1 (3,1)->0 -> [2, 4, 0]
#   truth 2: (1,1)->2 (1,2)->1 (2,0)->2                            -> [0, 1, 2]
HAND = [[4, 0, 1], [2, 4, 0], [0, 1, 2]]


def test_pixel_metrics_match_a_hand_computed_confusion_matrix(tmp_path):
    names = ["background", "building", "road"]
    pred = write_mask(tmp_path / "pred.tif", PRED, names=names)
    truth = write_mask(tmp_path / "truth.tif", TRUTH)
    for block_size in (4096, 3):
        s = evaluate.pixels(pred, truth, block_size=block_size)
        assert s["confusion_matrix"] == HAND
        b = s["per_class"]["building"]
        assert b["iou"] == pytest.approx(4 / (4 + 1 + 2))
        assert b["precision"] == pytest.approx(4 / 5) and b["recall"] == pytest.approx(4 / 6)
        assert b["f1"] == pytest.approx(2 * 4 / (2 * 4 + 1 + 2))
        assert s["accuracy"] == pytest.approx(10 / 14)
        ious = [4 / 7, 4 / 7, 2 / 4]
        assert s["miou"] == pytest.approx(np.mean(ious))


def test_pixels_inside_regions_only(tmp_path):
    """Pixels whose centre is outside every region leave the matrix; regions in any CRS."""
    names = ["background", "building", "road"]
    pred = write_mask(tmp_path / "pred.tif", PRED, names=names)
    truth = write_mask(tmp_path / "truth.tif", TRUTH)
    # The left two columns and the top two rows (pixel centres at x 0.5, 1.5; y -0.5, -1.5),
    # given in longitude/latitude: reprojected onto the rasters' UTM grid.
    regions = frame([box(0, -4, 2, 0), box(2, -2, 4, 0)]).to_crs("EPSG:4326")
    inside = np.zeros((4, 4), bool)
    inside[:, :2] = inside[:2, :] = True
    keep = inside & (PRED != 255) & (TRUTH != 255)
    want = np.zeros((3, 3), int)
    np.add.at(want, (TRUTH[keep], PRED[keep]), 1)
    for block_size in (4096, 3):  # regions cut by block edges too
        s = evaluate.pixels(pred, truth, block_size=block_size, regions=regions)
        assert s["confusion_matrix"] == want.tolist()
    assert want.sum() < np.sum(HAND)  # the regions really left pixels out
    outside = frame([box(100, 100, 101, 101)])
    assert np.sum(evaluate.pixels(pred, truth, regions=outside)["confusion_matrix"]) == 0


def test_confusion_matrices_add_up_over_rasters(tmp_path):
    pred = write_mask(tmp_path / "pred.tif", PRED)
    truth = write_mask(tmp_path / "truth.tif", TRUTH)
    cm = evaluate.confusion_matrix(pred, truth, num_classes=3)
    cm.merge(evaluate.confusion_matrix(pred, truth, num_classes=3))
    assert cm.matrix.tolist() == (2 * np.array(HAND)).tolist()


def test_truth_on_another_grid_is_resampled_with_a_warning(tmp_path):
    pred = write_mask(tmp_path / "pred.tif", PRED, names=["background", "building", "road"])
    fine = np.repeat(np.repeat(TRUTH, 2, axis=0), 2, axis=1)  # same area, 0.5 m pixels
    truth = write_mask(
        tmp_path / "truth.tif", fine, transform=from_origin(500000, 5000000, 0.5, 0.5)
    )
    with pytest.warns(UserWarning, match="resampled"):
        s = evaluate.pixels(pred, truth)
    assert s["confusion_matrix"] == HAND


def test_pixel_rasters_without_overlap_are_an_error(tmp_path):
    pred = write_mask(tmp_path / "pred.tif", PRED)
    truth = write_mask(tmp_path / "truth.tif", TRUTH, transform=from_origin(600000, 5000000, 1, 1))
    with pytest.raises(LabelError, match="do not overlap"):
        evaluate.pixels(pred, truth)


# ----------------------------------------------------------------------------- objects


def test_identical_sets_score_one():
    truth = frame([box(i * 10, 0, i * 10 + 5, 5) for i in range(5)])
    r = evaluate.objects(truth.copy(), truth)
    assert (r["tp"], r["fp"], r["fn"]) == (5, 0, 0)
    assert r["precision"] == r["recall"] == r["f1"] == 1.0
    assert [m["iou"] for m in r["matches"]] == pytest.approx([1.0] * 5)


def test_iou_exactly_at_the_threshold_is_not_a_match():
    truth = frame([box(0, 0, 3, 1)])
    shifted = frame([box(1, 0, 4, 1)])  # intersection 2, union 4: IoU exactly 0.5
    r = evaluate.objects(shifted, truth, iou_threshold=0.5)
    assert (r["tp"], r["fp"], r["fn"]) == (0, 1, 1)
    assert r["f1"] == 0.0
    assert evaluate.objects(shifted, truth, iou_threshold=0.49)["tp"] == 1


def test_one_proposal_overlapping_two_truths_matches_the_better_one():
    truth = frame([box(0, 0, 1.1, 1), box(1.1, 0, 2, 1)])
    r = evaluate.objects(frame([box(0, 0, 2, 1)]), truth)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 0, 1)
    assert r["matches"] == [{"prediction": 0, "truth": 0, "iou": pytest.approx(0.55)}]


def test_match_iou_can_be_written_back_as_a_column():
    truth = frame([box(0, 0, 10, 10), box(20, 0, 30, 10)])
    props = frame([box(50, 0, 60, 10), box(20, 0, 30, 8), box(0, 0, 10, 10)])
    r = evaluate.objects(props, truth)
    out = evaluate.with_matches(props, r)
    assert list(out.truth_row) == [-1, 1, 0]
    assert np.isnan(out.match_iou[0]) and list(out.match_iou[1:]) == pytest.approx([0.8, 1.0])


def test_proposals_are_taken_in_order_of_confidence():
    truth = frame([box(0, 0, 10, 10)])
    # the better-fitting proposal comes first in the file but has the lower confidence
    props = frame([box(0, 0, 10, 9), box(0, 0, 10, 7)], confidence=[0.2, 0.9])
    r = evaluate.objects(props, truth)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 0)
    assert r["matches"][0]["prediction"] == 1 and r["matches"][0]["iou"] == pytest.approx(0.7)
    without = evaluate.objects(props.drop(columns="confidence"), truth)
    assert without["matches"][0]["prediction"] == 0


def test_objects_inside_regions_cut_both_sides_the_same_way():
    truth = frame([box(0, 0, 10, 10), box(50, 0, 60, 10), box(100, 0, 110, 10)])
    proposals = frame([box(100, 0, 110, 10), box(0, 0, 10, 10), box(50, 0, 58, 2)])
    everywhere = evaluate.objects(proposals, truth)
    assert (everywhere["tp"], everywhere["fp"], everywhere["fn"]) == (2, 1, 1)
    # Only the right-hand building's area: one match, rows as positions in the inputs.
    regions = frame([box(90, -5, 120, 20)]).to_crs("EPSG:4326")
    r = evaluate.objects(proposals, truth, regions=regions)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 0, 0)
    assert r["matches"] == [{"prediction": 0, "truth": 2, "iou": pytest.approx(1.0)}]


def test_empty_proposals_or_truth_do_not_crash():
    truth = frame([box(0, 0, 1, 1), box(5, 5, 6, 6)])
    empty = frame([])
    r = evaluate.objects(empty, truth)
    assert (r["tp"], r["fp"], r["fn"]) == (0, 0, 2)
    assert r["precision"] == 0.0 and r["recall"] == 0.0 and r["f1"] == 0.0
    r = evaluate.objects(truth, empty)
    assert (r["tp"], r["fp"], r["fn"]) == (0, 2, 0)


def test_invalid_polygons_are_repaired_and_crs_are_aligned():
    bowtie = shapely.Polygon(
        [(500000, 5000000), (500010, 5000010), (500010, 5000000), (500000, 5000010)]
    )
    square = box(0, 0, 10, 10)
    truth = frame([square])
    props = frame([square]).to_crs("EPSG:4326")  # same polygon, geographic CRS
    assert evaluate.objects(props, truth)["tp"] == 1
    r = evaluate.objects(frame([bowtie]), truth)
    assert r["fp"] == 1 and r["tp"] == 0  # a bow-tie of two triangles: IoU 0.5, not above it


def brute_force(
    props: gpd.GeoDataFrame, truth: gpd.GeoDataFrame, thr: float
) -> tuple[int, int, int, list]:
    """The SpaceNet metric written the slow, obvious way: all pairs, one proposal at a time."""
    props = props.to_crs(truth.crs)
    order = sorted(range(len(props)), key=lambda i: -float(props["conf"].iloc[i]))
    pool = list(range(len(truth)))
    matches = []
    for i in order:
        p = props.geometry.iloc[i]
        best, best_iou = None, -1.0
        for j in pool:
            t = truth.geometry.iloc[j]
            iou = p.intersection(t).area / p.union(t).area
            if iou > best_iou:
                best, best_iou = j, iou
        if best is not None and best_iou > thr:
            pool.remove(best)
            matches.append((i, best, best_iou))
    tp = len(matches)
    return tp, len(props) - tp, len(truth) - tp, sorted(matches)


def test_real_spacenet_footprints_match_the_brute_force_answer(real_data):
    props = gpd.read_file(real_data / "eval" / "footprints_proposal.geojson")
    truth = gpd.read_file(real_data / "eval" / "footprints_truth.geojson")
    assert len(props) == len(truth) == 28
    assert truth.geometry.is_valid.all() and props.geometry.is_valid.all()
    for thr in (0.5, 0.3):
        tp, fp, fn, matches = brute_force(props, truth, thr)
        r = evaluate.objects(
            real_data / "eval" / "footprints_proposal.geojson",
            real_data / "eval" / "footprints_truth.geojson",
            iou_threshold=thr,
        )
        assert (r["tp"], r["fp"], r["fn"]) == (tp, fp, fn)
        got = sorted((m["prediction"], m["truth"], m["iou"]) for m in r["matches"])
        assert [g[:2] for g in got] == [m[:2] for m in matches]
        np.testing.assert_allclose([g[2] for g in got], [m[2] for m in matches])
    assert (r["tp"], r["fp"], r["fn"]) != (0, 28, 28)  # the data does hold matches


# ----------------------------------------------------------------------------- dispatch and CLI


def test_raster_prediction_against_vector_truth_does_both(tmp_path):
    m = np.zeros((20, 20), np.uint8)
    m[2:6, 2:6] = 1
    m[10:15, 10:18] = 1
    m[18:, 18:] = 255
    pred = write_mask(tmp_path / "pred.tif", m, names=["background", "building"])
    # truth: the first building exactly, the second shifted by half its width, a third missed
    # (and two that are not scored as objects: off the raster, and on its nodata pixels)
    truth = frame(
        [
            box(2, -6, 6, -2),
            box(14, -15, 22, -10),
            box(2, -18, 4, -16),
            box(30, -5, 35, 0),
            box(18, -20, 20, -18),
        ]
    )
    truth.to_file(tmp_path / "truth.gpkg")
    r = evaluate.evaluate(pred, tmp_path / "truth.gpkg", report=tmp_path / "r.json")
    assert r["mode"] == "objects+pixels"
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 2)
    assert r["polygons_outside_raster"] == 2
    # pixels: prediction 16 + 40 building px; truth 16 + 30 (clipped at the edge) + 4
    cm = np.array(r["confusion_matrix"])
    assert cm[1, 1] == 16 + 20 and cm[0, 1] == 20 and cm[1, 0] == 10 + 4
    saved = json.loads((tmp_path / "r.json").read_text())
    for key in (
        "tp",
        "fp",
        "fn",
        "precision",
        "recall",
        "f1",
        "iou_threshold",
        "per_class",
        "miou",
        "accuracy",
        "confusion_matrix",
        "mode",
        "prediction",
        "truth",
    ):
        assert key in saved


def test_cli_evaluate_objects_report_and_low_score_exit_0(tmp_path, real_data):
    report = tmp_path / "report.json"
    r = runner.invoke(
        app,
        [
            "evaluate",
            str(real_data / "eval" / "footprints_proposal.geojson"),
            str(real_data / "eval" / "footprints_truth.geojson"),
            "--json",
            str(report),
            "--quiet",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "precision" in r.stdout and "TP" in r.stdout
    saved = json.loads(report.read_text())
    assert saved["mode"] == "objects" and saved["iou_threshold"] == 0.5
    assert saved["f1"] < 0.5  # a low score is not an error
    assert {"tp", "fp", "fn", "precision", "recall", "f1", "prediction", "truth"} <= saved.keys()


def test_cli_evaluate_pixels_report(tmp_path):
    pred = write_mask(tmp_path / "pred.tif", PRED)
    truth = write_mask(tmp_path / "truth.tif", TRUTH)
    report = tmp_path / "r.json"
    r = runner.invoke(
        app,
        [
            "evaluate",
            str(pred),
            str(truth),
            "--json",
            str(report),
            "-q",
            "--class-names",
            "bg,house",
            "--classes",  # the old spelling, still accepted
            "road",
        ],
    )
    assert r.exit_code == 0, r.output
    saved = json.loads(report.read_text())
    assert saved["mode"] == "pixels" and saved["confusion_matrix"] == HAND
    assert set(saved["per_class"]) == {"bg", "house", "road"}
    assert {"iou", "f1", "precision", "recall"} <= saved["per_class"]["house"].keys()


def test_cli_no_overlap_is_an_error_naming_both_extents(tmp_path):
    frame([box(0, 0, 5, 5)]).to_file(tmp_path / "a.gpkg")
    frame([box(1000, 1000, 1005, 1005)]).to_file(tmp_path / "b.gpkg")
    r = runner.invoke(app, ["evaluate", str(tmp_path / "a.gpkg"), str(tmp_path / "b.gpkg")])
    assert_one_line_error(
        r, "do not overlap", "a.gpkg", "b.gpkg", "(500000, 5000000, 500005, 5000005)", "501000"
    )


def test_cli_raster_and_vector_without_overlap_is_an_error(tmp_path):
    pred = write_mask(tmp_path / "pred.tif", PRED)
    frame([box(1000, 1000, 1005, 1005)]).to_file(tmp_path / "b.gpkg")
    assert_one_line_error(
        runner.invoke(app, ["evaluate", str(pred), str(tmp_path / "b.gpkg")]),
        "do not overlap",
        "pred.tif",
        "b.gpkg",
    )


def test_cli_unreadable_vector_file_is_an_error(tmp_path):
    bad = tmp_path / "truth.geojson"
    bad.write_text("{ this is not json")
    frame([box(0, 0, 5, 5)]).to_file(tmp_path / "a.gpkg")
    assert_one_line_error(
        runner.invoke(app, ["evaluate", str(tmp_path / "a.gpkg"), str(bad)]),
        "truth.geojson",
        "cannot read",
    )


def test_cli_existing_report_is_an_error(tmp_path):
    frame([box(0, 0, 5, 5)]).to_file(tmp_path / "a.gpkg")
    report = tmp_path / "r.json"
    report.write_text("{}")
    assert_one_line_error(
        runner.invoke(
            app,
            ["evaluate", str(tmp_path / "a.gpkg"), str(tmp_path / "a.gpkg"), "--json", str(report)],
        ),
        "r.json",
        "--overwrite",
    )
    assert report.read_text() == "{}"


def test_evaluate_scales_to_thousands_of_buildings():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 5000, size=(3000, 2))
    truth = frame([box(x, y, x + 8, y + 6) for x, y in xy])
    props = frame([box(x + 1, y, x + 9, y + 6) for x, y in xy])  # IoU 7/9 each
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no all-pairs fallbacks or shapely warnings
        r = evaluate.objects(props, truth)
    # overlapping random boxes can steal each other's matches, but nearly all should match
    assert r["tp"] >= 2900 and r["tp"] + r["fp"] == 3000 and r["tp"] + r["fn"] == 3000


def test_cli_labels_declaring_the_wrong_crs_are_an_error(tmp_path, real_data):
    """The real Albers labels whose file declares EPSG:4326: a clear error, not a zero score."""
    with rasterio.open(real_data / "albers_custom_crs_30m.tif") as src:
        grid = dict(crs=src.crs, transform=src.transform)
    mask = np.zeros((512, 512), np.uint8)
    mask[100:110, 100:120] = 1
    pred = write_mask(tmp_path / "pred.tif", mask, **grid)
    labels = real_data / "albers_custom_crs_labels.geojson"
    r = runner.invoke(app, ["evaluate", str(pred), str(labels), "-q"])
    assert_one_line_error(
        r, "albers_custom_crs_labels.geojson", "not longitude/latitude", "EPSG:4326"
    )
