"""ConfusionMatrix against a hand-computed matrix, torchmetrics, and its error cases."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from geoseg.errors import LabelError
from geoseg.metrics import ConfusionMatrix

# 3 classes, 12 pixels, 2 of them ignored in the truth, 1 with a nodata prediction.
TRUTH = np.array([[0, 0, 0, 1], [1, 1, 2, 2], [255, 255, 0, 1]], dtype=np.uint8)
PRED = np.array([[0, 0, 1, 1], [1, 2, 2, 0], [1, 2, 255, 1]], dtype=np.uint8)
# counted pixels (truth, pred): (0,0) (0,0) (0,1) (1,1) (1,1) (1,2) (2,2) (2,0) (1,1)
HAND = np.array(
    [
        [2, 1, 0],
        [0, 3, 1],
        [1, 0, 1],
    ],
    dtype=np.int64,
)


def test_matrix_matches_hand_count() -> None:
    cm = ConfusionMatrix(3).update(PRED, TRUTH)
    assert cm.matrix.dtype == np.int64
    np.testing.assert_array_equal(cm.matrix, HAND)


def test_scores_match_hand_computation() -> None:
    s = (
        ConfusionMatrix(3)
        .update(torch.from_numpy(PRED), torch.from_numpy(TRUTH))
        .scores(["bg", "roof", "road"])
    )
    # class 0: tp 2, fp 1 (the (2,0) pixel), fn 1 -> iou 2/4, precision 2/3, recall 2/3, f1 4/6
    bg = s["per_class"]["bg"]
    assert bg == pytest.approx(
        {"iou": 0.5, "precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3}
    )
    # class 1: tp 3, fp 1, fn 1 -> iou 3/5; class 2: tp 1, fp 1, fn 1 -> iou 1/3
    assert s["per_class"]["roof"]["iou"] == pytest.approx(0.6)
    assert s["per_class"]["roof"]["support"] == 4
    assert s["per_class"]["road"]["iou"] == pytest.approx(1 / 3)
    assert s["miou"] == pytest.approx((0.5 + 0.6 + 1 / 3) / 3)
    assert s["accuracy"] == pytest.approx(6 / 9)
    assert s["confusion_matrix"] == HAND.tolist()
    assert isinstance(s["confusion_matrix"][0][0], int)


def test_class_absent_everywhere_is_nan_and_left_out_of_miou() -> None:
    s = ConfusionMatrix(3).update(np.array([0, 1, 1]), np.array([0, 1, 0])).scores()
    assert math.isnan(s["per_class"]["2"]["iou"])
    assert math.isnan(s["per_class"]["2"]["precision"])
    assert s["per_class"]["2"]["support"] == 0
    assert s["miou"] == pytest.approx((0.5 + 0.5) / 2)


def test_empty_matrix_scores_are_nan() -> None:
    s = ConfusionMatrix(2).update(np.zeros(4, np.uint8), np.full(4, 255, np.uint8)).scores()
    assert math.isnan(s["miou"]) and math.isnan(s["accuracy"])


def test_accumulates_over_the_set_not_per_image() -> None:
    """Two images: the set's IoU comes from summed counts, not the mean of per-image IoUs."""
    cm = ConfusionMatrix(2)
    # image 1: 1 building pixel, missed; image 2: 99 building pixels, all found
    cm.update(np.zeros(100, np.int64), np.r_[1, np.zeros(99, np.int64)])
    cm.update(np.r_[np.ones(99, np.int64), 0], np.r_[np.ones(99, np.int64), 0])
    building = cm.scores()["per_class"]["1"]["iou"]
    assert building == pytest.approx(99 / 100)  # per-image mean would be (0 + 1) / 2


def test_matches_torchmetrics_on_random_batches() -> None:
    from torchmetrics.functional.classification import multiclass_confusion_matrix

    gen = torch.Generator().manual_seed(0)
    cm = ConfusionMatrix(5)
    expected = torch.zeros(5, 5, dtype=torch.int64)
    for _ in range(3):
        target = torch.randint(0, 5, (2, 16, 16), generator=gen)
        target[torch.rand(target.shape, generator=gen) < 0.2] = 255
        pred = torch.randint(0, 5, (2, 16, 16), generator=gen)
        cm.update(pred, target)
        expected += multiclass_confusion_matrix(pred, target, num_classes=5, ignore_index=255)
    np.testing.assert_array_equal(cm.matrix, expected.numpy())


def test_inputs_of_any_kind_and_shape_agree() -> None:
    a = ConfusionMatrix(3).update(PRED, TRUTH).matrix
    b = (
        ConfusionMatrix(3)
        .update(torch.from_numpy(PRED).long()[None], torch.from_numpy(TRUTH).long()[None])
        .matrix
    )
    c = (
        ConfusionMatrix(3)
        .update(PRED.ravel().astype(np.int32), TRUTH.ravel().astype(np.uint16))
        .matrix
    )
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    with pytest.raises(ValueError, match="differ in shape"):
        ConfusionMatrix(3).update(PRED, TRUTH[:2])


def test_truth_out_of_range_is_a_label_error_naming_the_file() -> None:
    with pytest.raises(
        LabelError, match=r"masks/tile_03.tif: found label value 7 but there are 3 classes"
    ):
        ConfusionMatrix(3).update(np.array([0, 1]), np.array([0, 7]), source="masks/tile_03.tif")
    with pytest.raises(LabelError, match="found label value -1"):
        ConfusionMatrix(3).update(np.array([0, 1]), np.array([0, -1]))
    with pytest.raises(LabelError, match="predicted class 4"):
        ConfusionMatrix(3).update(np.array([0, 4]), np.array([0, 1]))


def test_custom_ignore_index() -> None:
    cm = ConfusionMatrix(2, ignore_index=0).update(np.array([1, 1, 0]), np.array([0, 1, 1]))
    np.testing.assert_array_equal(cm.matrix, [[0, 0], [0, 1]])


def test_merge_reset_and_from_matrix() -> None:
    a = ConfusionMatrix(3).update(PRED, TRUTH)
    b = ConfusionMatrix.from_matrix(HAND)
    np.testing.assert_array_equal(a.merge(b).matrix, 2 * HAND)
    np.testing.assert_array_equal(b.matrix, HAND)  # the merged-in matrix is unchanged
    with pytest.raises(ValueError, match="cannot merge"):
        a.merge(ConfusionMatrix(2))
    a.reset()
    assert a.matrix.sum() == 0
    a.update(PRED, TRUTH)
    np.testing.assert_array_equal(a.matrix, HAND)


def test_all_reduce_is_a_no_op_without_distributed() -> None:
    cm = ConfusionMatrix(3).update(PRED, TRUTH).all_reduce()
    np.testing.assert_array_equal(cm.matrix, HAND)


def _all_reduce_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        cm = ConfusionMatrix(2).update(np.array([rank, 1]), np.array([1, 1]))  # rank 0: (1,0),(1,1)
        cm.all_reduce()
        np.save(Path(out_dir) / f"rank{rank}.npy", cm.matrix)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_all_reduce_sums_over_processes(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(
        _all_reduce_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True
    )
    for rank in range(2):
        np.testing.assert_array_equal(np.load(tmp_path / f"rank{rank}.npy"), [[0, 0], [1, 3]])


def test_accelerator_path_agrees_with_the_numpy_path() -> None:
    """The torch counting path (for CUDA tensors) gives the same matrix and errors (run on CPU)."""
    gen = torch.Generator().manual_seed(1)
    target = torch.randint(0, 4, (3, 20, 20), generator=gen)
    target[:, :2] = 255
    pred = torch.randint(0, 4, (3, 20, 20), generator=gen)
    pred[0, 5] = 255
    cm = ConfusionMatrix(4)
    expected = ConfusionMatrix(4).update(pred.numpy(), target.numpy()).matrix
    np.testing.assert_array_equal(cm._count_torch(pred, target, None).numpy(), expected)
    target[1, 7, 7] = 9
    with pytest.raises(LabelError, match="a.tif: found label value 9"):
        cm._count_torch(pred, target, "a.tif")
    target[1, 7, 7] = 1
    pred[2, 3, 3] = -2
    with pytest.raises(LabelError, match="found predicted class -2"):
        cm._count_torch(pred, target, None)
