"""`geoseg train` and geoseg.train: end-to-end runs on tiny data, resume, DDP, and the user errors.

Every run uses a width-8 UNet on 64-px patches for 1-2 epochs on the session's 256-px demo tiles,
so the whole file stays around a minute on 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from helpers import assert_one_line_error
from typer.testing import CliRunner

from geoseg import checkpoint, train
from geoseg.cli.main import app

runner = CliRunner()

# The 256-px demo tiles need split blocks smaller than the default 512 px.
SMALL_SPLIT = (
    "data:\n  split: {method: blocks, block_size: 128, ratios: [0.6, 0.2, 0.2], seed: 0}\n"
    "train:\n  patches_per_epoch: 16\n"
)
TINY = ["--width", "8", "--patch-size", "64", "--batch-size", "4", "--seed", "0"]


@pytest.fixture(scope="module")
def split_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "small.yaml"
    path.write_text(SMALL_SPLIT)
    return path


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # One torch thread: as fast as two on a busy 2-core machine (OpenMP threads spin at barriers),
    # and the same in every run, which the bit-exact resume comparison needs. OMP_NUM_THREADS also
    # tells fit() not to pick a thread count from the load average.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield
    torch.set_num_threads(threads)


def _train(args: list[str]):
    return runner.invoke(app, ["-q", "train", *args])


def _ok(result) -> None:
    assert result.exit_code == 0, (result.output, result.exception)


@pytest.fixture(scope="module")
def raster_run(demo_data, split_yaml, tmp_path_factory) -> Path:
    """An uninterrupted 2-epoch run with raster masks (also the reference for resume)."""
    out = tmp_path_factory.mktemp("runs") / "raster"
    _ok(
        _train(
            [
                str(demo_data.images[0].parent),
                "--labels",
                str(demo_data.masks[0].parent),
                "--out",
                str(out),
                "--config",
                str(split_yaml),
                "--epochs",
                "2",
                *TINY,
            ]
        )
    )
    return out


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(path).state_dict


@pytest.mark.slow
def test_raster_labels_end_to_end(raster_run: Path, demo_data) -> None:
    out = raster_run
    for name in (
        "best.ckpt",
        "last.ckpt",
        "metrics.csv",
        "config.yaml",
        "curves.png",
        "preview.png",
        "split.gpkg",
        "test_metrics.json",
    ):
        assert (out / name).is_file(), name
    assert any((out / "tb").iterdir()), "no TensorBoard event file"
    rows = train.read_metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in (
        "lr",
        "train_loss",
        "val_loss",
        "iou_building",
        "f1_building",
        "iou_background",
        "miou",
        "accuracy",
        "seconds",
    ):
        assert key in rows[0], key
    assert all(0.0 <= r["miou"] <= 1.0 for r in rows)
    # the resolved config: what was given on the command line and in the file
    from geoseg import config

    cfg = config.load(out / "config.yaml")
    assert (cfg.model.width, cfg.train.patch_size, cfg.train.epochs) == (8, 64, 2)
    assert cfg.data.split.block_size == 128
    assert cfg.model.class_names == ["background", "building"]
    test = json.loads((out / "test_metrics.json").read_text())
    assert "building" in test["per_class"] and 0.0 <= test["miou"] <= 1.0
    with open(out / "preview.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_checkpoint_card_and_load_model(raster_run: Path, demo_data) -> None:
    ck = checkpoint.load(raster_run / "best.ckpt")
    card = ck.card
    assert card.architecture == "unet" and card.model_args == {"width": 8}
    assert card.in_channels == 3 and card.band_indexes == [1, 2, 3] and len(card.band_names) == 3
    assert len(card.mean) == len(card.std) == 3 and all(s > 0 for s in card.std)
    assert card.class_names == ["background", "building"] and card.class_ids == [0, 1]
    assert card.ignore_index == 255 and card.patch_size == 64
    with rasterio.open(demo_data.images[0]) as src:
        assert card.res == pytest.approx(src.res[0])
        assert rasterio.crs.CRS.from_wkt(card.crs_wkt) == src.crs
    best_epoch = max(train.read_metrics(raster_run), key=lambda r: r["iou_building"])["epoch"]
    assert card.epoch == best_epoch and "iou_building" in card.metrics
    model, card2 = checkpoint.load_model(raster_run / "best.ckpt")
    assert card2 == card
    with torch.no_grad():
        logits = model(torch.zeros(1, 3, 64, 64))
    assert logits.shape == (1, 2, 64, 64)
    last = checkpoint.load(raster_run / "last.ckpt")
    assert last.epoch == 2 and last.optimizer and last.scheduler and "rng" in last.extra


@pytest.mark.slow
def test_vector_labels_end_to_end(demo_data, split_yaml, tmp_path) -> None:
    out = tmp_path / "vector"
    _ok(
        _train(
            [
                str(demo_data.images[0].parent),
                "--labels",
                str(demo_data.buildings),
                "--out",
                str(out),
                "--config",
                str(split_yaml),
                "--epochs",
                "1",
                "--loss",
                "ce+dice",
                "--scheduler",
                "onecycle",
                *TINY,
            ]
        )
    )
    assert [r["epoch"] for r in train.read_metrics(out)] == [1]
    assert checkpoint.load(out / "best.ckpt").card.class_names == ["background", "building"]


def _tile_folder(root: Path, n: int = 10) -> Path:
    """``root/img`` + ``root/mask``: n plain 64-px GeoTIFFs (no CRS), one bright box each."""
    rng = np.random.default_rng(0)
    for sub in ("img", "mask"):
        (root / sub).mkdir(parents=True)
    for k in range(n):
        mask = np.zeros((64, 64), np.uint8)
        mask[16:40, 8 + k : 40 + k] = 1
        image = (rng.integers(0, 60, (3, 64, 64)) + 150 * mask).astype(np.uint8)
        for sub, arr in (("img", image), ("mask", mask[None])):
            profile = dict(driver="GTiff", width=64, height=64, count=arr.shape[0], dtype="uint8")
            with rasterio.open(root / sub / f"t{k:02d}.tif", "w", **profile) as dst:
                dst.write(arr)
    return root


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
@pytest.mark.slow
def test_tile_folder_layout(tmp_path) -> None:
    root = _tile_folder(tmp_path / "tiles")
    out = tmp_path / "run"
    args = [str(root), "--labels", str(root / "mask"), "--layout", "tiles", "--out", str(out)]
    _ok(_train(args + ["--epochs", "1", "--optimizer", "sgd", "--scheduler", "step", *TINY]))
    card = checkpoint.load(out / "best.ckpt").card
    assert card.in_channels == 3 and card.patch_size == 64
    assert (out / "metrics.csv").is_file()


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
@pytest.mark.slow
def test_early_stop_and_fp16_with_grad_scaler(tmp_path, monkeypatch) -> None:
    """A metric that never improves stops the run after ``early_stop`` epochs; fp16 + scaler run."""
    root = _tile_folder(tmp_path / "tiles")
    evaluate = train._Trainer.evaluate

    def flat_scores(self, loader, description):
        loss, scores = evaluate(self, loader, description)
        for per in scores["per_class"].values():
            per["iou"] = 0.5
        return loss, scores

    monkeypatch.setattr(train._Trainer, "evaluate", flat_scores)
    out = tmp_path / "run"
    args = [str(root), "--labels", str(root / "mask"), "--layout", "tiles", "--out", str(out)]
    _ok(_train(args + ["--epochs", "5", "--early-stop", "2", "--precision", "16", *TINY]))
    assert [r["epoch"] for r in train.read_metrics(out)] == [1, 2, 3]
    last = checkpoint.load(out / "last.ckpt")
    assert last.scaler and last.scaler.get("scale", 0) > 0  # the GradScaler state is saved
    assert last.extra["bad_epochs"] == 2 and last.extra["best_epoch"] == 1


class _Killed(Exception):
    """Stands in for SIGKILL right after epoch 1 has been written."""


@pytest.mark.slow
def test_resume_after_interruption_equals_uninterrupted_run(
    raster_run, demo_data, split_yaml, tmp_path, monkeypatch
) -> None:
    out = tmp_path / "resumed"
    args = [
        str(demo_data.images[0].parent),
        "--labels",
        str(demo_data.masks[0].parent),
        "--out",
        str(out),
        "--config",
        str(split_yaml),
        "--epochs",
        "2",
        *TINY,
    ]
    end_epoch = train._Trainer.end_epoch

    def end_then_die(self, epoch, row):
        end_epoch(self, epoch, row)
        if epoch == 1:
            raise _Killed

    monkeypatch.setattr(train._Trainer, "end_epoch", end_then_die)
    result = _train(args)
    assert isinstance(result.exception, _Killed)
    assert [r["epoch"] for r in train.read_metrics(out)] == [1]
    monkeypatch.setattr(train._Trainer, "end_epoch", end_epoch)

    _ok(_train(["--out", str(out), "--resume"]))  # the settings come from RUN_DIR/config.yaml
    rows = train.read_metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2]
    resumed, straight = _weights(out / "last.ckpt"), _weights(raster_run / "last.ckpt")
    assert resumed.keys() == straight.keys()
    for key in straight:
        assert torch.equal(resumed[key], straight[key]), key
    ref = train.read_metrics(raster_run)
    assert rows[1]["val_loss"] == pytest.approx(ref[1]["val_loss"], rel=1e-6)


PROBE = Path(__file__).with_name("rank_probe.py")


def _ranks(probe: Path, out: Path) -> list[dict]:
    """What each rank recorded, checked: same job, different patches, the same final weights."""
    from rank_probe import weights_hash

    ranks = [json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert not (probe / "rank2.json").exists()
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["first_batch"] != ranks[1]["first_batch"], (
        "both ranks trained on the same patches"
    )
    assert ranks[0]["weights"] == ranks[1]["weights"], "DDP ranks ended with different weights"
    assert weights_hash(_weights(out / "last.ckpt")) == ranks[0]["weights"]
    return ranks


def _probe_env(probe: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "RANK_PROBE_DIR": str(probe)}


@pytest.mark.slow
def test_ddp_two_processes(demo_data, split_yaml, tmp_path) -> None:
    probe, out = tmp_path / "probe", tmp_path / "ddp"
    cmd = [sys.executable, str(PROBE), "-q", "train", str(demo_data.images[0].parent),
           "--labels", str(demo_data.masks[0].parent), "--out", str(out),
           "--config", str(split_yaml), "--epochs", "1", "--devices", "2", "--device", "cpu",
           *TINY]  # fmt: skip
    proc = subprocess.run(cmd, env=_probe_env(probe), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _ranks(probe, out)
    assert [r["epoch"] for r in train.read_metrics(out)] == [1]


@pytest.mark.slow
def test_torchrun_two_ranks_join_one_job(demo_data, split_yaml, tmp_path) -> None:
    """Under torchrun (RANK/WORLD_SIZE set) fit joins the group; rank 0 alone writes and reports."""
    probe, out = tmp_path / "probe", tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", str(train._free_port()), str(PROBE), "-q", "train",
           str(demo_data.images[0].parent), "--labels", str(demo_data.masks[0].parent),
           "--out", str(out), "--config", str(split_yaml), "--epochs", "1", *TINY]  # fmt: skip
    proc = subprocess.run(cmd, env=_probe_env(probe), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("Checkpoint:") == 1, proc.stdout
    _ranks(probe, out)


# -------------------------------------------------------------------------------------------
# user errors: one line on stderr, exit 1 (2 for a bad setting)


def _base(demo_data, out: Path) -> list[str]:
    return [
        str(demo_data.images[0].parent),
        "--labels",
        str(demo_data.masks[0].parent),
        "--out",
        str(out),
    ]


def test_error_unknown_model(demo_data, tmp_path) -> None:
    assert_one_line_error(
        _train(_base(demo_data, tmp_path / "r") + ["--model", "resnet-9000"]),
        "resnet-9000",
        "unet-resnet34",
        code=2,
    )
    assert not (tmp_path / "r").exists()


def test_error_unknown_loss(demo_data, tmp_path) -> None:
    assert_one_line_error(
        _train(_base(demo_data, tmp_path / "r") + ["--loss", "hinge"]),
        "hinge",
        "ce",
        "dice",
        "focal",
        code=2,
    )


def test_error_unknown_config_key(demo_data, tmp_path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("train:\n  epochz: 3\n")
    assert_one_line_error(
        _train(_base(demo_data, tmp_path / "r") + ["--config", str(cfg)]),
        "epochz",
        "epochs",
        code=2,
    )


def test_error_classes_smaller_than_label_value(demo_data, split_yaml, tmp_path) -> None:
    line = assert_one_line_error(
        _train(
            _base(demo_data, tmp_path / "r")
            + ["--classes", "1", "--config", str(split_yaml), *TINY]
        )
    )
    assert "1" in line and ("class" in line.lower())


def test_error_patch_size_not_divisible(demo_data, tmp_path) -> None:
    line = assert_one_line_error(
        _train(_base(demo_data, tmp_path / "r") + ["--patch-size", "500"]), code=2
    )
    assert line == (
        "Error: patch_size=500 is not divisible by 16 (the UNet downsamples 4 times); "
        "use 512 or 496"
    )


def test_error_resume_without_last_ckpt(demo_data, tmp_path) -> None:
    (tmp_path / "r").mkdir()
    assert_one_line_error(
        _train(_base(demo_data, tmp_path / "r") + ["--resume"]), "last.ckpt", "--resume"
    )


def test_error_run_dir_not_empty(demo_data, tmp_path) -> None:
    out = tmp_path / "r"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert_one_line_error(_train(_base(demo_data, out)), str(out), "--overwrite", "--resume")
    assert (out / "notes.txt").read_text() == "mine"


def test_config_file_and_options_merge(tmp_path, demo_data) -> None:
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(
        "model: {width: 12, class_names: [background, building]}\n"
        "train: {epochs: 7, lr: 0.01}\ndata: {images: [a.tif], labels: m/}\n"
    )
    cfg = train.configure(cfg_file, {"train.epochs": 3}, tmp_path / "r")
    assert (cfg.train.epochs, cfg.train.lr, cfg.model.width) == (
        3,
        0.01,
        12,
    )  # given overrides, rest kept
    assert cfg.data.images == [str(tmp_path / "a.tif")] or cfg.data.images[0].endswith("a.tif")
    cfg = train.configure(cfg_file, {"model.classes": 3}, tmp_path / "r")
    assert cfg.model.num_classes == 3


def test_pipeline_preview_draws_image_truth_prediction_and_footprints(demo_data, tmp_path) -> None:
    from geoseg import config, plots

    cfg = config.parse({"data": {"images": [str(demo_data.images[0].parent)]}})
    masks = [Path(p) for p in demo_data.masks]
    out = plots.pipeline_preview(cfg, masks, masks, demo_data.buildings, None, tmp_path / "p.png",
                                 size=128)  # fmt: skip
    assert out == tmp_path / "p.png"
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert plots.pipeline_preview(cfg, [], [], None, None, tmp_path / "none.png") is None


@pytest.mark.parametrize(
    ("load", "busy_now", "threads"),
    [
        (1.6, 0.1, 2),  # the load is this process's own last minute: idle now, both cores
        (1.6, 1.2, 1),  # another job holds a core now: one thread
        (1.6, None, 1),  # /proc/stat unreadable: the load average decides
        (0.2, 1.9, 2),  # idle by the load average: no sample taken
    ],
)
def test_share_cpu_counts_only_other_processes(
    monkeypatch: pytest.MonkeyPatch, load: float, busy_now: float | None, threads: int
) -> None:
    sampled: list[int] = []

    def busy_cores(count: int) -> float | None:
        sampled.append(count)
        return busy_now

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(train, "_busy_cores", busy_cores)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        train._share_cpu()
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
    assert sampled == ([] if load < 0.5 else [2])


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="Linux /proc/stat")
def test_busy_cores_reads_proc_stat() -> None:
    busy = train._busy_cores(os.cpu_count() or 1, seconds=0.2)
    assert busy is not None and 0.0 <= busy <= (os.cpu_count() or 1) + 1e-6


def _faults_of_large_blocks(times: int = 8) -> int:
    """Page faults of allocating, filling and freeing a 64 MiB tensor ``times`` times."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(times):
        block = torch.ones(16 << 20)  # 64 MiB: above glibc's largest mmap threshold
        del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGESIZE")


@pytest.mark.skipif(train._glibc() is None, reason="glibc's mallopt")
def test_retained_heap_keeps_freed_memory_while_training_only() -> None:
    pages = (64 << 20) // os.sysconf("SC_PAGESIZE")
    with train.retained_heap() as kept:
        assert kept
        # the block is faulted in once, then reused from the heap (glibc's defaults map and
        # unmap it each time: 8 x the pages)
        assert _faults_of_large_blocks() < 3 * pages
        block = torch.ones(64 << 20)  # 256 MiB, freed but kept
        del block
        kept_bytes = _resident_bytes()
    # afterwards the kept memory goes back to the system
    assert kept_bytes - _resident_bytes() > 200 << 20


def test_retained_heap_is_a_no_op_without_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train, "_glibc", lambda: None)
    with train.retained_heap() as kept:
        assert kept is False


def test_cpu_training_keeps_the_heap(
    demo_data, split_yaml, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import contextlib

    calls: list[str] = []

    @contextlib.contextmanager
    def recording():
        calls.append("enter")
        yield True
        calls.append("exit")

    def epoch(self, *args, **kwargs):
        calls.append("epoch")
        return original(self, *args, **kwargs)

    original = train._Trainer.train_epoch
    monkeypatch.setattr(train, "retained_heap", recording)
    monkeypatch.setattr(train._Trainer, "train_epoch", epoch)
    args = [str(demo_data.images[0].parent), "--labels", str(demo_data.masks[0].parent)]
    args += ["--out", str(tmp_path / "run"), "--config", str(split_yaml), "--epochs", "1"]
    _ok(_train([*args, *TINY]))
    assert calls == ["enter", "epoch", "exit"]


@pytest.mark.parametrize(("flag", "want"), [([], False), (["--channels-last"], True)])
def test_fp32_cpu_training_runs_contiguous_unless_asked(
    flag: list[str], want: bool, demo_data, split_yaml, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # channels-last was the slower format for fp32 on a CPU (device.channels_last_pays)
    seen: list[bool] = []

    def epoch(self, *args, **kwargs):
        weights = [m.weight for m in self.model.modules() if isinstance(m, torch.nn.Conv2d)]
        seen.append(all(w.is_contiguous(memory_format=torch.channels_last) for w in weights))
        return original(self, *args, **kwargs)

    original = train._Trainer.train_epoch
    monkeypatch.setattr(train._Trainer, "train_epoch", epoch)
    args = [str(demo_data.images[0].parent), "--labels", str(demo_data.masks[0].parent)]
    args += ["--out", str(tmp_path / "run"), "--config", str(split_yaml), "--epochs", "1"]
    args += ["--precision", "32", "--device", "cpu", *flag]
    _ok(_train([*args, *TINY]))
    assert seen == [want]


NO_VALIDATION = (
    "data:\n  split: {method: files, test_files: [tile_03*]}\ntrain:\n  patches_per_epoch: 16\n"
)


def test_training_without_a_validation_split_keeps_the_last_epoch(demo_data, tmp_path) -> None:
    """A split with a test file and no validation files: the other files all train, and the
    latest epoch is best.ckpt (what the OAM recipe does: every labelled town trains)."""
    import geopandas as gpd

    cfg = tmp_path / "noval.yaml"
    cfg.write_text(NO_VALIDATION)
    out = tmp_path / "run"
    args = [*_base(demo_data, out), "--config", str(cfg), "--epochs", "2", *TINY]
    result = runner.invoke(app, ["train", *args])  # not quiet: the summary line is checked
    _ok(result)
    assert "Last epoch 2, no validation split" in result.output
    rows = train.read_metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(np.isnan(r["val_loss"]) and np.isnan(r["miou"]) for r in rows)
    best, last = _weights(out / "best.ckpt"), _weights(out / "last.ckpt")
    assert all(torch.equal(best[k], last[k]) for k in last)
    assert checkpoint.load(out / "best.ckpt").epoch == 2
    split = gpd.read_file(out / "split.gpkg")
    assert set(split["split"]) == {"train", "test"}
    assert (out / "test_metrics.json").is_file()  # the test file is still scored
    assert (out / "preview.png").is_file()  # drawn from the test patches


@pytest.mark.parametrize(
    ("option", "needle"),
    [(["--early-stop", "3"], "train.early_stop"), (["--scheduler", "plateau"], "plateau")],
)
def test_what_needs_a_validation_split_says_so(
    demo_data, tmp_path, option: list[str], needle: str
) -> None:
    cfg = tmp_path / "noval.yaml"
    cfg.write_text(NO_VALIDATION)
    args = [*_base(demo_data, tmp_path / "run"), "--config", str(cfg), *TINY, *option]
    assert_one_line_error(_train(args), needle, "val_files", code=2)
