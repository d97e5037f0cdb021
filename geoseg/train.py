"""The training loop: data -> model -> checkpoints, metrics, curves and previews in a run folder.

Plain torch (no Lightning), so every step is visible and the loop costs next to nothing on top of
the model: mixed precision (bf16 autocast, or fp16 with a GradScaler), channels_last, gradient
clipping, per-epoch or per-batch LR schedules, early stopping, exact resume from ``last.ckpt``
(model, optimizer, scheduler, scaler, epoch, early-stop state and every RNG, the data loader's
included) and data-parallel training over processes, GPUs and nodes with ``torch.distributed``.

A run folder (``RUN_DIR``) holds::

    best.ckpt          the epoch with the best monitored metric (model card + weights)
    last.ckpt          the latest epoch, with optimizer/scheduler/scaler/RNG state for --resume
    metrics.csv        one row per epoch: lr, losses, per-class IoU/F1, mIoU, accuracy, seconds
    config.yaml        the resolved config the run used
    curves.png         loss and IoU per epoch
    preview.png        validation patches: image, truth, prediction
    test_metrics.json  best.ckpt scored on the test split (when there is one)
    split.gpkg, cache/ written by :mod:`geoseg.data` (split regions, burned vector labels)
    tb/                TensorBoard logs

Example:
    >>> from geoseg import config, train
    >>> cfg = config.load("pipelines/demo.yaml")
    >>> result = train.fit(cfg, Path("runs/demo"))
    >>> result.metrics["iou_building"]
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import logging
import math
import os
import random
import shutil
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
from torch import nn

from geoseg import errors, io, remote
from geoseg.config import PipelineConfig
from geoseg.device import (
    ResolvedPrecision,
    channels_last_pays,
    resolve_device,
    resolve_precision,
)
from geoseg.errors import CheckpointError, ConfigError, InputNotFoundError, OutputExistsError

log = logging.getLogger(__name__)

#: What fit writes into RUN_DIR; ``--overwrite`` removes exactly these (never other files).
OUTPUTS = (
    "best.ckpt",
    "last.ckpt",
    "metrics.csv",
    "config.yaml",
    "curves.png",
    "preview.png",
    "test_metrics.json",
    "split.gpkg",
    "tb",
)


@dataclass
class TrainResult:
    """What :func:`fit` produced.

    Attributes:
        best: ``RUN_DIR/best.ckpt``.
        last: ``RUN_DIR/last.ckpt``.
        metrics: The best epoch's row of metrics.csv (``epoch``, ``val_loss``, ``iou_<class>``,
            ``f1_<class>``, ``miou``, ``accuracy``, ...).
        epochs_run: Epochs trained by this call (0 when a resumed run was already complete).
        run_dir: The run folder.
        monitor: The metric that picked best.ckpt.
        test_metrics: best.ckpt's scores on the test split, or None without a test split.
        precision: The precision actually used (``32``, ``bf16`` or ``16``).
        device: The device actually used (``cpu``, ``cuda``).
    """

    best: Path
    last: Path
    metrics: dict[str, Any]
    epochs_run: int
    run_dir: Path
    monitor: str = "miou"
    test_metrics: dict[str, Any] | None = None
    precision: str = "32"
    device: str = "cpu"
    history: list[dict[str, Any]] = field(default_factory=list)
    rank: int = 0
    """This process's rank in a distributed job (only rank 0 wrote files)."""
    validated: bool = True
    """False when the split had no validation region: best.ckpt is the latest epoch."""


# --------------------------------------------------------------------------------------------
# settings that are resolved, not just read


def _autocast(
    device: torch.device, precision: ResolvedPrecision
) -> contextlib.AbstractContextManager:
    if precision == "32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def monitor_metric(cfg: PipelineConfig) -> tuple[str, Literal["max", "min"]]:
    """The metrics.csv column that picks best.ckpt, and whether higher or lower is better.

    ``train.monitor: auto`` is ``iou_building`` when a class is named ``building`` (with
    ``data.target: instances``: interior ∪ edge), else ``miou``. ``object_f1`` (building F1 of
    the validation patches, one object per separated building) is an option for building models.
    """
    names = cfg.model.resolved_class_names
    instances = cfg.data.target == "instances"
    if instances:  # building = interior + edge, comparable with a semantic model
        names = [*names, "building"]
    valid = ["miou", "accuracy", "val_loss"] + [f"{m}_{n}" for n in names for m in ("iou", "f1")]
    if "building" in names:
        valid += ["object_f1"]
    monitor = cfg.train.monitor
    if monitor == "auto":
        monitor = "iou_building" if "building" in names else "miou"
    if monitor not in valid:
        raise ConfigError(
            f"train.monitor={monitor!r} is not a metric of this run; expected auto or one of: "
            f"{', '.join(valid)}"
        )
    return monitor, ("min" if monitor == "val_loss" else "max")


def _target_card(cfg: PipelineConfig) -> dict[str, Any]:
    """The model card's record of what the classes mean (instance targets and their widths)."""
    if cfg.data.target != "instances":
        return {}
    return {
        "target": "instances",
        "edge_width_m": cfg.data.edge_width_m,
        "contact_distance_m": cfg.data.contact_distance_m,
    }


def _model_args(cfg: PipelineConfig) -> dict[str, Any]:
    # What rebuilds the network from the card. encoder_weights only initialises: the checkpoint's
    # weights replace it, so the card does not point at a file the inference machine may lack.
    return {"width": cfg.model.width} if cfg.model.name == "unet" else {}


def validate(cfg: PipelineConfig) -> None:
    """Check the settings that fail before any data is read: model, loss, patch size, monitor.

    Raises:
        ConfigError: naming the bad setting, the valid choices and a fix.
    """
    from geoseg import losses, models

    name = cfg.model.name
    if name not in models.names():
        raise ConfigError(
            f"unknown model {name!r}; expected one of: {', '.join(models.names())} "
            "(--model / model.name)"
        )
    factor = models.downsampling(name)
    size = cfg.train.patch_size
    if size < factor or size % factor:
        times = int(round(math.log2(factor)))
        what = "the UNet" if name == "unet" else f"the {name} model"
        up, down = (size // factor + 1) * factor, (size // factor) * factor
        fix = f"use {up} or {down}" if down > 0 else f"use {up}"
        raise ConfigError(
            f"patch_size={size} is not divisible by {factor} "
            f"({what} downsamples {times} times); {fix}"
        )
    if cfg.train.batch_size < 1 or cfg.train.epochs < 1:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} and train.epochs={cfg.train.epochs} "
            "must be at least 1"
        )
    if (
        cfg.train.class_weights is not None
        and len(cfg.train.class_weights) != cfg.model.num_classes
    ):
        raise ConfigError(
            f"{len(cfg.train.class_weights)} class_weights for {cfg.model.num_classes} classes; "
            "give one weight per class"
        )
    losses.build(
        cfg.train.loss,
        num_classes=cfg.model.num_classes,
        ignore_index=cfg.data.ignore_index,
        class_weights=cfg.train.class_weights,
    )
    monitor_metric(cfg)
    if cfg.train.devices < 1 or cfg.train.num_nodes < 1:
        raise ConfigError("train.devices and train.num_nodes must be at least 1")


def _check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    if resume:
        if not (run_dir / "last.ckpt").is_file():
            raise InputNotFoundError(
                f"{run_dir / 'last.ckpt'}: nothing to resume; train without --resume "
                "to start a new run"
            )
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise OutputExistsError(f"{run_dir} is a file; --out must be a folder")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"{run_dir} is not empty; pass --resume to continue its run, --overwrite to "
            "start again, or choose another --out"
        )


def _clear_run_dir(run_dir: Path, resume: bool) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume:
        return
    for name in OUTPUTS:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# entry point


def fit(
    cfg: PipelineConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    dataset: Any = None,
) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data`` and write the run folder (see the module docstring).

    Runs in this process, or in ``train.devices`` spawned processes (DDP; gloo on the CPU, nccl on
    GPUs), or as one rank of a ``torchrun`` job (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set). Only
    rank 0 writes files; metrics are summed over ranks from one confusion matrix.

    Args:
        cfg: The pipeline config (``data``, ``model``, ``train`` sections are used).
        run_dir: The run folder; created if missing.
        resume: Continue from ``run_dir/last.ckpt`` (settings of the new ``cfg`` apply, e.g. more
            ``epochs``; the model must be the same).
        overwrite: Start again in a run folder that holds a previous run's outputs.
        dataset: Train on a user's torchgeo datasets instead of ``cfg.data.images``/``labels``:
            ``Images(...) & Masks(...)`` (RasterDataset subclasses with their own
            ``filename_regex``/bands), an (images, masks) pair, or an image dataset alone with
            masks from ``cfg.data.labels``. Their files, bands, CRS and resolution are used;
            config.yaml records the image files.

    Returns:
        A :class:`TrainResult` with the best and last checkpoints and the best epoch's metrics.

    Raises:
        ConfigError: unknown model/loss/monitor, patch size not divisible by the model's
            downsampling, bad device/precision.
        InputNotFoundError: ``resume`` without ``run_dir/last.ckpt``.
        OutputExistsError: ``run_dir`` not empty without ``resume`` or ``overwrite``.
        LabelError, CatalogError, RasterError: from :mod:`geoseg.data` (bad labels or images).
    """
    run_dir = Path(run_dir)
    validate(cfg)
    sources = None
    if dataset is not None:
        from geoseg import data

        sources = data.sources_from_torchgeo(dataset)
        cfg = cfg.model_copy(deep=True)
        cfg.data.images = [str(p) for p in sources.images]
    _check_run_dir(run_dir, resume, overwrite)
    env = _torchrun_env()
    if env is not None:
        rank, world_size, local_rank = env
        expected = cfg.train.devices * cfg.train.num_nodes
        if expected > 1 and expected != world_size:
            raise ConfigError(
                f"torchrun started {world_size} processes but train.devices x train.num_nodes = "
                f"{cfg.train.devices} x {cfg.train.num_nodes} = {expected}; make them agree "
                "or leave devices and num_nodes at 1 under torchrun"
            )
        if rank != 0:  # one rank speaks for the job
            from geoseg import progress

            progress.set_enabled(False)
            logging.getLogger("geoseg").setLevel(logging.WARNING)
        return _run(
            cfg,
            run_dir,
            resume,
            rank=rank,
            world_size=world_size,
            local_rank=local_rank,
            init_group=True,
            prepare=True,
            sources=sources,
        )
    if cfg.train.num_nodes > 1:
        raise ConfigError(
            f"train.num_nodes={cfg.train.num_nodes} needs a launcher on every node: "
            "torchrun --nnodes N --nproc-per-node G --rdzv-endpoint HOST:PORT "
            "$(which geoseg) train ..."
        )
    # A run that fails before writing anything (bad labels, an empty catalog) leaves no empty
    # run folder behind.
    with io.new_folders(run_dir):
        _clear_run_dir(run_dir, resume)
        if cfg.train.devices > 1:
            return _spawn(cfg, run_dir, resume, sources)
        return _run(
            cfg,
            run_dir,
            resume,
            rank=0,
            world_size=1,
            local_rank=0,
            init_group=False,
            prepare=False,
            sources=sources,
        )


def _torchrun_env() -> tuple[int, int, int] | None:
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        return (
            int(os.environ["RANK"]),
            int(os.environ["WORLD_SIZE"]),
            int(os.environ.get("LOCAL_RANK", 0)),
        )
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn(cfg: PipelineConfig, run_dir: Path, resume: bool, sources: Any = None) -> TrainResult:
    import torch.multiprocessing as mp

    n = cfg.train.devices
    on_cuda = resolve_device(cfg.train.device, setting="train.device").type == "cuda"
    if on_cuda and torch.cuda.device_count() < n:
        raise ConfigError(
            f"train.devices={n} but only {torch.cuda.device_count()} GPU(s) are visible; "
            f"use --devices {torch.cuda.device_count()}"
        )
    from geoseg import progress

    queue = mp.get_context("spawn").SimpleQueue()
    port = _free_port()
    level = logging.getLogger("geoseg").getEffectiveLevel()
    log.info("Starting %d training processes (DDP on 127.0.0.1:%d)", n, port)
    # torch logs "Terminating process ..." when one rank fails; the error line says it all
    spawn_log = logging.getLogger("torch.multiprocessing.spawn")
    spawn_level = spawn_log.level
    spawn_log.setLevel(logging.ERROR)
    try:
        mp.spawn(
            _spawned,
            args=(n, port, cfg, run_dir, resume, queue, progress.enabled(), level, sources),
            nprocs=n,
            join=True,
        )
    except Exception:
        while not queue.empty():
            kind, payload = queue.get()
            if kind == "error":
                cls_name, message = payload
                cls = getattr(errors, cls_name, errors.GeosegError)
                raise cls(message) from None
        raise
    finally:
        spawn_log.setLevel(spawn_level)
    while not queue.empty():
        kind, payload = queue.get()
        if kind == "result":
            return payload
    raise RuntimeError("the training processes ended without a result")


def _spawned(
    rank: int,
    world_size: int,
    port: int,
    cfg: PipelineConfig,
    run_dir: Path,
    resume: bool,
    queue: Any,
    bars: bool,
    level: int,
    sources: Any = None,
) -> None:
    from geoseg import progress

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("geoseg").setLevel(level if rank == 0 else logging.WARNING)
    logging.getLogger("rasterio").setLevel(logging.ERROR)
    progress.set_enabled(bars and rank == 0)
    if not torch.cuda.is_available() and "OMP_NUM_THREADS" not in os.environ:  # share the cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    try:
        result = _run(
            cfg,
            run_dir,
            resume,
            rank=rank,
            world_size=world_size,
            local_rank=rank,
            init_group=True,
            prepare=False,
            sources=sources,
        )
    except errors.GeosegError as err:
        queue.put(("error", (type(err).__name__, str(err))))
        raise
    if rank == 0:
        queue.put(("result", result))


# --------------------------------------------------------------------------------------------
# one process's run


def _share_cpu() -> None:
    """Use only the cores that other processes leave idle.

    OpenMP threads spin at every barrier; on a 2-core machine where other jobs keep the cores
    busy, 2 threads ran a UNet step 2-7x *slower* than 1 thread (measured: 1.1 s vs 7.5 s per
    batch). OMP_NUM_THREADS / torch.set_num_threads set by the user are left alone.

    The 1-minute load average also counts this process's own work of the last minute (burning
    labels, building the catalog, a `geoseg run`'s earlier stages), so on an idle 2-core box it
    read 0.6 and training ran on one thread, 1.9x slower per step. When it says "busy", the
    cores' use over half a second (while this process sleeps) decides instead.
    """
    if "OMP_NUM_THREADS" in os.environ or not hasattr(os, "getloadavg"):
        return
    cores = torch.get_num_threads()
    count = os.cpu_count() or cores
    busy = os.getloadavg()[0]
    if int(count - busy + 0.5) < cores:
        now = _busy_cores(count)
        busy = busy if now is None else min(busy, now)
    threads = max(1, min(cores, int(count - busy + 0.5)))
    if threads < cores:
        log.info(
            "The CPU is busy with other work (%.1f cores in use): training with %d of %d threads",
            busy,
            threads,
            cores,
        )
        torch.set_num_threads(threads)


# glibc's mallopt parameters (malloc.h) and the values restored after training: the documented
# defaults, with the mmap and trim thresholds where glibc's own adjustment takes them after a
# large block is freed (32 MiB and twice that), as a mallopt call turns that adjustment off.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -2, -3, -4
_RETAINED = {_M_MMAP_MAX: 0, _M_TRIM_THRESHOLD: 1 << 30, _M_TOP_PAD: 64 << 20}
_RESTORED = {
    _M_MMAP_MAX: 65536,
    _M_MMAP_THRESHOLD: 32 << 20,
    _M_TRIM_THRESHOLD: 64 << 20,
    _M_TOP_PAD: 128 << 10,
}


@contextlib.contextmanager
def retained_heap() -> Iterator[bool]:
    """Keep freed memory in the process while it trains on the CPU (glibc; elsewhere nothing).

    glibc serves every allocation above its mmap threshold (32 MiB at most) with a fresh
    mapping and unmaps it when freed. A UNet step's largest activations are such blocks (batch
    8 x 32 channels x 256² in float32 is 64 MiB), so each step faulted all of them in again:
    ResNet18-UNet, batch 8, 256², two threads on idle cores, 2026-12-02: 430 k page faults and
    2.21 s a step, against 14-22 k and 1.64 s with the heap kept (benchmarks/train_heap.py).
    A caching allocator (jemalloc, tcmalloc) would do the same but must be preloaded before
    Python starts; mallopt works from here. Yields whether the heap is kept. Afterwards the
    freed memory goes back to the system (malloc_trim)."""
    libc = _glibc()
    if libc is None:
        yield False
        return
    for param, value in _RETAINED.items():
        libc.mallopt(param, value)
    try:
        yield True
    finally:
        for param, value in _RESTORED.items():
            libc.mallopt(param, value)
        libc.malloc_trim(0)


def _glibc() -> Any:
    """The C library when it is glibc (mallopt, malloc_trim), else None (musl, macOS, Windows)."""
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


def _busy_cores(count: int, seconds: float = 0.5) -> float | None:
    """Cores busy with other processes now: two reads of /proc/stat (Linux) around a sleep, so
    this process adds nothing. None where /proc/stat cannot be read."""

    def ticks() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields) - idle, sum(fields)

    try:
        busy0, total0 = ticks()
        time.sleep(seconds)
        busy1, total1 = ticks()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return count * (busy1 - busy0) / (total1 - total0)


class _Dist:
    """The process group this rank belongs to (a no-op shell for one process)."""

    def __init__(self, rank: int, world_size: int, device: torch.device) -> None:
        self.rank, self.world_size, self.device = rank, world_size, device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return values
        import torch.distributed as dist

        # NCCL reduces CUDA tensors only; gloo wants CPU ones.
        t = values.to(
            self.device if self.device.type == "cuda" else "cpu",
            dtype=torch.float64 if values.is_floating_point() else torch.int64,
        ).clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu()

    def min(self, value: int) -> int:
        if self.world_size == 1:
            return value
        import torch.distributed as dist

        t = torch.tensor(
            [value], dtype=torch.int64, device=self.device if self.device.type == "cuda" else "cpu"
        )
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return int(t.item())

    def gather(self, obj: Any) -> list[Any]:
        if self.world_size == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_buffers(self, model: nn.Module) -> None:
        """Give every rank rank 0's BatchNorm statistics (DDP syncs them only before a forward)."""
        if self.world_size == 1:
            return
        import torch.distributed as dist

        for buf in model.buffers():
            dist.broadcast(buf, src=0)

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state(loader: Any) -> dict[str, Any]:
    from geoseg import checkpoint

    # The loader's own sampling state (epoch, batches handed out): it draws from seeds.
    state = checkpoint.rng_state()
    state["loader_state"] = loader.state_dict()
    return state


def _set_rng_state(state: dict[str, Any], loader: Any) -> None:
    from geoseg import checkpoint

    checkpoint.restore_rng_state(state)
    if "loader_state" in state:
        loader.load_state_dict(state["loader_state"])


def _build_optimizer(cfg: PipelineConfig, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    t = cfg.train
    try:
        return _make_optimizer(t, params)
    except ValueError as err:  # torch's own checks: "Invalid learning rate: -1.0"
        raise ConfigError(
            f"train.lr={t.lr}, train.weight_decay={t.weight_decay}: torch's {t.optimizer} "
            f"rejects them ({err}); use a positive learning rate and a weight decay >= 0"
        ) from None


def _make_optimizer(t: Any, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(
        params, lr=t.lr, momentum=0.9, nesterov=True, weight_decay=t.weight_decay
    )


def _build_scheduler(
    cfg: PipelineConfig,
    optimizer: torch.optim.Optimizer,
    steps_per_epoch: int,
    mode: Literal["min", "max"],
) -> Any:
    t = cfg.train
    if t.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=t.epochs, eta_min=t.lr * 0.01
        )
    if t.scheduler == "step":  # x0.1 at one and two thirds of the run
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=max(1, t.epochs // 3), gamma=0.1
        )
    if t.scheduler == "plateau":
        patience = max(1, (t.early_stop or 10) // 2)
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=mode, factor=0.5, patience=patience
        )
    if t.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=t.lr, epochs=t.epochs, steps_per_epoch=max(1, steps_per_epoch)
        )
    return None


def _run(cfg: PipelineConfig, run_dir: Path, resume: bool, **rank_args: Any) -> TrainResult:
    """One training process, with the GDAL options for remote images and labels (s3://,
    https://) set for its whole run: the data loaders read them lazily, and forked DataLoader
    workers inherit the options (spawned DDP ranks come through here themselves)."""
    from geoseg import remote

    with remote.env([*cfg.data.images, *([cfg.data.labels] if cfg.data.labels else [])]):
        return _run_scoped(cfg, run_dir, resume, **rank_args)


def _run_scoped(
    cfg: PipelineConfig,
    run_dir: Path,
    resume: bool,
    *,
    rank: int,
    world_size: int,
    local_rank: int,
    init_group: bool,
    prepare: bool,
    sources: Any = None,
) -> TrainResult:
    from geoseg import data

    device = resolve_device(cfg.train.device, local_rank=local_rank, setting="train.device")
    if init_group and world_size > 1:
        import torch.distributed as dist

        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            rank=rank,
            world_size=world_size,
            timeout=timedelta(minutes=30),
        )
    dist_ = _Dist(rank, world_size, device)
    threads = torch.get_num_threads()
    stack = contextlib.ExitStack()
    try:
        if prepare and dist_.main:
            _clear_run_dir(run_dir, resume)
        dist_.barrier()
        precision = resolve_precision(
            cfg.train.precision, device, fp16=True, setting="train.precision"
        )
        if device.type == "cpu" and world_size == 1:
            _share_cpu()
        if device.type == "cpu":
            stack.enter_context(retained_heap())
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        _seed_everything(cfg.train.seed)
        num_classes = cfg.model.num_classes
        # rank 0 burns labels and aligns rasters into cache/ first; the others reuse them
        if not dist_.main:
            dist_.barrier()
        td = data.build_training_data(
            cfg.data,
            patch_size=cfg.train.patch_size,
            batch_size=cfg.train.batch_size,
            run_dir=run_dir,
            num_classes=num_classes,
            seed=cfg.train.seed,
            workers=cfg.train.workers,
            rank=rank,
            world_size=world_size,
            patches_per_epoch=cfg.train.patches_per_epoch,
            sources=sources,
        )
        if dist_.main:
            dist_.barrier()
        return _Trainer(cfg, run_dir, td, device, precision, dist_).run(resume)
    finally:
        stack.close()
        torch.set_num_threads(threads)
        if init_group and world_size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


class _Trainer:
    """One rank's loop. Rank 0 writes every file; all ranks take the same decisions."""

    def __init__(
        self,
        cfg: PipelineConfig,
        run_dir: Path,
        td: Any,
        device: torch.device,
        precision: ResolvedPrecision,
        dist_: _Dist,
    ) -> None:
        from geoseg import losses, models

        self.cfg, self.run_dir, self.td, self.device, self.precision, self.dist = (
            cfg,
            run_dir,
            td,
            device,
            precision,
            dist_,
        )
        self.class_names = cfg.model.resolved_class_names
        self.num_classes = cfg.model.num_classes
        self.ignore_index = td.ignore_index
        self.monitor, self.mode = monitor_metric(cfg)
        # objects of the validation patches: separated buildings (instance targets) or connected
        # regions of the building class
        self.instances = cfg.data.target == "instances"
        self.building_id = (
            self.class_names.index("building") if "building" in self.class_names else None
        )
        channels_last = cfg.train.channels_last
        if channels_last is None:
            channels_last = channels_last_pays(device, precision)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        kwargs = dict(_model_args(cfg))
        if cfg.model.encoder_weights:
            kwargs["encoder_weights"] = cfg.model.encoder_weights
        self.model = models.build(
            cfg.model.name, in_channels=td.in_channels, num_classes=self.num_classes, **kwargs
        ).to(device)
        self.model = self.model.to(memory_format=self.memory_format)
        self.loss_fn = losses.build(
            cfg.train.loss,
            num_classes=self.num_classes,
            ignore_index=self.ignore_index,
            class_weights=cfg.train.class_weights,
        ).to(device)
        self.optimizer = _build_optimizer(cfg, self.model.parameters())
        if device.type == "cuda":  # batches cross as uint8, normalised and augmented on the GPU
            from geoseg.data import Loader

            for loader in (td.train, td.val, td.test):
                if isinstance(loader, Loader):
                    loader.to(device)
        self.steps_per_epoch = dist_.min(len(td.train))
        self.scheduler = _build_scheduler(cfg, self.optimizer, self.steps_per_epoch, self.mode)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "16")
        self.history: list[dict[str, Any]] = []
        self.best_score: float | None = None
        self.best_epoch = 0
        self.bad_epochs = 0
        self.writer: Any = None

    # ---- checkpoints -------------------------------------------------------------------------

    def card(self, epoch: int, metrics: dict[str, Any]) -> Any:
        from geoseg import __version__, checkpoint

        td = self.td
        return checkpoint.ModelCard(
            geoseg_version=__version__,
            architecture=self.cfg.model.name,
            model_args=_model_args(self.cfg),
            in_channels=td.in_channels,
            band_names=list(td.band_names),
            band_indexes=list(td.band_indexes),
            mean=[float(m) for m in td.mean],
            std=[float(s) for s in td.std],
            class_names=self.class_names,
            class_ids=list(range(self.num_classes)),
            ignore_index=self.ignore_index,
            patch_size=self.cfg.train.patch_size,
            res=float(td.res),
            crs_wkt=td.crs_wkt,
            dtype=self.image_dtype,
            epoch=epoch,
            metrics=metrics,
            normalization=self.cfg.data.normalization,
            **_target_card(self.cfg),
        )

    @functools.cached_property
    def image_dtype(self) -> str | None:
        """The training images' dtype (the first tile's), recorded in the model card so that
        ``infer`` can refuse inputs of another value range; None when there is no tile."""
        dataset = getattr(self.td, "dataset", None)
        if dataset is not None and hasattr(dataset, "image_dtype"):  # geoseg's GeoRasterDataset
            return str(np.dtype(dataset.image_dtype))
        if not self.td.tiles:
            return None
        import warnings

        import rasterio
        from rasterio.errors import NotGeoreferencedWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            image = self.td.tiles[0].image
            with remote.env([image]), rasterio.open(image) as src:
                return str(src.dtypes[src.indexes.index(self.td.band_indexes[0])])

    @property
    def bare_model(self) -> nn.Module:
        # The model itself, also when wrapped in DistributedDataParallel.
        return cast(nn.Module, getattr(self.model, "module", self.model))

    def save(
        self, name: str, epoch: int, metrics: dict[str, Any], extra: dict[str, Any] | None = None
    ) -> None:
        from geoseg import checkpoint

        full = extra is not None
        checkpoint.save(
            self.run_dir / name,
            model=self.bare_model,
            card=self.card(epoch, metrics),
            optimizer=self.optimizer if full else None,
            scheduler=self.scheduler if full else None,
            scaler=self.scaler if full else None,
            epoch=epoch,
            extra=extra,
        )

    def restore(self) -> int:
        """Load last.ckpt into model/optimizer/scheduler/scaler/RNG; return the next epoch."""
        from geoseg import checkpoint

        path = self.run_dir / "last.ckpt"
        ck = checkpoint.load(path, map_location="cpu")
        card = ck.card
        if (card.architecture, card.in_channels, len(card.class_names)) != (
            self.cfg.model.name,
            self.td.in_channels,
            self.num_classes,
        ):
            raise CheckpointError(
                f"{path}: was trained as {card.architecture} with {card.in_channels} bands and "
                f"{len(card.class_names)} classes, not {self.cfg.model.name}/"
                f"{self.td.in_channels}/{self.num_classes}; "
                "use the same model settings or --overwrite to start again"
            )
        self.bare_model.load_state_dict(ck.state_dict)
        if ck.optimizer:
            self.optimizer.load_state_dict(ck.optimizer)
        if ck.scheduler and self.scheduler is not None:
            self.scheduler.load_state_dict(ck.scheduler)
            # a resumed run may ask for more epochs: stretch the schedule to the new end
            if isinstance(self.scheduler, torch.optim.lr_scheduler.OneCycleLR):
                self.scheduler.total_steps = max(
                    self.scheduler.total_steps, self.cfg.train.epochs * self.steps_per_epoch
                )
            elif isinstance(self.scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
                self.scheduler.T_max = self.cfg.train.epochs
        if ck.scaler:
            self.scaler.load_state_dict(ck.scaler)
        extra = ck.extra or {}
        self.history = [dict(r) for r in extra.get("history", [])]
        self.best_score = extra.get("best_score")
        self.best_epoch = int(extra.get("best_epoch", 0))
        self.bad_epochs = int(extra.get("bad_epochs", 0))
        states = extra.get("rng", [])
        if self.dist.rank < len(states):
            _set_rng_state(states[self.dist.rank], self.td.train)
        log.info("Resuming %s from epoch %d", self.run_dir, ck.epoch)
        return int(ck.epoch) + 1

    # ---- epochs -----------------------------------------------------------------------------

    def run(self, resume: bool) -> TrainResult:
        cfg, run_dir = self.cfg, self.run_dir
        start = self.restore() if resume else 1
        if self.dist.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if self.dist.main:
            resolved = cfg.model_copy(deep=True)
            resolved.model.classes, resolved.model.class_names = self.num_classes, self.class_names
            io.write_text(run_dir / "config.yaml", _yaml(resolved))
            self._open_writer()
        log.info(
            "Training %s (%s%d bands -> %d classes) on %s%s, precision %s, "
            "%d batches of %d per epoch",
            cfg.model.name,
            "".join(f"{k} {v}, " for k, v in _model_args(cfg).items()),
            self.td.in_channels,
            self.num_classes,
            self.device,
            f" x{self.dist.world_size}" if self.dist.world_size > 1 else "",
            self.precision,
            self.steps_per_epoch,
            cfg.train.batch_size,
        )
        if self.td.val is None:
            needs = ["train.early_stop"] if cfg.train.early_stop else []
            needs += ["train.scheduler: plateau"] if cfg.train.scheduler == "plateau" else []
            if needs:
                raise ConfigError(
                    f"{', '.join(needs)} needs a validation split, and data.split has none; "
                    "name validation files in data.split.val_files (or give ratios a val share)"
                )
            log.info(
                "No validation split: every labelled file trains, best.ckpt is the latest epoch"
            )
        epochs_run = 0
        stopped = False
        for epoch in range(start, cfg.train.epochs + 1):
            if cfg.train.early_stop and self.bad_epochs >= cfg.train.early_stop:
                stopped = True
                break
            t0 = time.perf_counter()
            set_epoch = getattr(self.td.train, "set_epoch", None)
            if callable(set_epoch):
                set_epoch(epoch)
            train_loss = self.train_epoch(epoch)
            scores: dict[str, Any] = {"per_class": {}}
            val_loss = float("nan")  # without validation the row's validation columns stay NaN
            if self.td.val is not None:
                val_loss, scores = self.evaluate(self.td.val, f"val {epoch}")
            row = self.row(epoch, train_loss, val_loss, scores, time.perf_counter() - t0)
            self.end_epoch(epoch, row)
            epochs_run += 1
        if stopped:
            log.info(
                "Early stop: %s did not improve for %d epochs (best %.4f at epoch %d)",
                self.monitor,
                self.bad_epochs,
                float("nan") if self.best_score is None else self.best_score,
                self.best_epoch,
            )
        return self.finish(epochs_run)

    def _open_writer(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard not installed: the CSV and curves still tell the story
            log.warning(
                "tensorboard is not installed; no TensorBoard logs (pip install tensorboard)"
            )
            return
        self.writer = SummaryWriter(str(self.run_dir / "tb"))

    def _to_device(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        x = (
            batch["image"]
            .to(self.device, non_blocking=True)
            .contiguous(memory_format=self.memory_format)
        )
        y = batch["mask"].to(self.device, non_blocking=True)
        return x, y

    def train_epoch(self, epoch: int) -> float:
        from geoseg import progress

        self.model.train()
        steps = self.steps_per_epoch
        loss_sum, counted, seen, skipped = 0.0, 0, 0, 0
        t0 = time.perf_counter()
        clip = self.cfg.train.grad_clip
        onecycle = isinstance(self.scheduler, torch.optim.lr_scheduler.OneCycleLR)
        with progress.bar(steps, f"epoch {epoch}/{self.cfg.train.epochs}", unit="batches") as bar:
            for batch in _take(self.td.train, steps):
                x, y = self._to_device(batch)
                with _autocast(self.device, self.precision):
                    logits = self.model(x)
                loss = self.loss_fn(logits.float(), y)
                value = float(loss.detach())  # one sync per step: shows the loss, catches NaN
                self.optimizer.zero_grad(set_to_none=True)
                if math.isfinite(value):
                    self.scaler.scale(loss).backward()
                    if clip:
                        self.scaler.unscale_(self.optimizer)
                        torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    loss_sum, counted = loss_sum + value, counted + 1
                else:  # e.g. a patch with every pixel ignored; DDP ranks must still all step
                    skipped += 1
                    if self.dist.world_size > 1:  # zero gradients, so the all-reduce still runs
                        zero = torch.stack([(p * 0.0).sum() for p in self.model.parameters()])
                        zero.sum().backward()
                        self.optimizer.step()
                if onecycle:
                    self.scheduler.step()
                seen += x.shape[0]
                rate = seen / max(time.perf_counter() - t0, 1e-9)
                bar.update(postfix=f"loss {loss_sum / max(counted, 1):.4f}  {rate:.1f} patches/s")
                bar.advance()
        if skipped:
            log.warning(
                "epoch %d: %d batch(es) had no usable loss (all pixels ignored?) and were skipped",
                epoch,
                skipped,
            )
        total = self.dist.sum(torch.tensor([loss_sum, counted], dtype=torch.float64))
        self.last_rate = seen * self.dist.world_size / max(time.perf_counter() - t0, 1e-9)
        self.dist.broadcast_buffers(self.bare_model)
        return float(total[0] / total[1].clamp_min(1))

    @torch.no_grad()
    def evaluate(
        self, loader: Iterable[dict[str, Any]] | None, description: str
    ) -> tuple[float, dict[str, Any]]:
        """Loss and scores over a whole split, from one confusion matrix summed over ranks."""
        from geoseg import metrics, progress

        cm = metrics.ConfusionMatrix(self.num_classes, ignore_index=self.ignore_index)
        model = self.bare_model.eval()  # no DDP wrapper: ranks may hold different batch counts
        loss_sum, batches = 0.0, 0
        objects = np.zeros(3, dtype=np.int64)  # tp, fp, fn
        total = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
        with progress.bar(total, description, unit="batches") as bar:
            for batch in loader or []:
                x, y = self._to_device(batch)
                with _autocast(self.device, self.precision):
                    logits = model(x)
                loss = self.loss_fn(logits.float(), y)
                if torch.isfinite(loss):
                    loss_sum, batches = loss_sum + float(loss), batches + 1
                pred = logits.argmax(1)
                cm.update(pred, y)  # counted on the device
                if self.instances or self.building_id is not None:
                    objects += self._objects(pred, y)
                bar.advance()
        cm.all_reduce()  # no-op in one process
        sums = self.dist.sum(
            torch.tensor([loss_sum, batches, *objects.tolist()], dtype=torch.float64)
        )
        scores = cm.scores(self.class_names)
        if self.instances:
            from geoseg import instances

            scores["per_class"]["building"] = instances.building_scores(cm.matrix)
        if self.instances or self.building_id is not None:
            tp, fp, fn = (float(v) for v in sums[2:5])
            scores["objects"] = {
                "tp": int(tp),
                "fp": int(fp),
                "fn": int(fn),
                "precision": tp / (tp + fp) if tp + fp else float("nan"),
                "recall": tp / (tp + fn) if tp + fn else float("nan"),
                "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan"),
            }
        return float(sums[0] / max(float(sums[1]), 1.0)), scores

    def _objects(self, pred: torch.Tensor, truth: torch.Tensor) -> np.ndarray:
        """Building objects matched between predicted and true patches: (tp, fp, fn).

        Patches are scored one by one (buildings cut by a patch border count as the pieces in
        it, in both), with the IoU > 0.5 rule of :func:`geoseg.evaluate.objects`.
        """
        from scipy import ndimage as ndi

        from geoseg import evaluate, instances

        p = pred.cpu().numpy().astype(np.uint8)
        t = truth.cpu().numpy()
        ignored = t == self.ignore_index
        t = np.where(ignored, 255, t).astype(np.uint8)
        p[ignored] = 255
        four = ndi.generate_binary_structure(2, 1)
        out = np.zeros(3, dtype=np.int64)
        for pi, ti in zip(p, t, strict=True):
            if self.instances:
                pl, tl = instances.label_array(pi), instances.label_array(ti)
            else:
                pl = ndi.label(pi == self.building_id, four)[0]
                tl = ndi.label(ti == self.building_id, four)[0]
            m = evaluate.match_labels(pl, tl)
            out += (m["tp"], m["fp"], m["fn"])
        return out

    def row(
        self, epoch: int, train_loss: float, val_loss: float, scores: dict[str, Any], seconds: float
    ) -> dict[str, Any]:
        row: dict[str, Any] = {
            "epoch": epoch,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_loss": train_loss,
            "val_loss": val_loss,
        }
        for name in [*self.class_names, *(["building"] if self.instances else [])]:
            per = scores["per_class"].get(name, {})
            row[f"iou_{name}"] = _num(per.get("iou"))
            row[f"f1_{name}"] = _num(per.get("f1"))
        if "objects" in scores:
            row["object_f1"] = _num(scores["objects"]["f1"])
            row["object_precision"] = _num(scores["objects"]["precision"])
            row["object_recall"] = _num(scores["objects"]["recall"])
        row["miou"] = _num(scores.get("miou"))
        row["accuracy"] = _num(scores.get("accuracy"))
        row["seconds"] = round(seconds, 2)
        row["patches_per_s"] = round(getattr(self, "last_rate", 0.0), 2)
        return row

    def improved(self, value: float) -> bool:
        if self.best_score is None:  # also a NaN score, so that best.ckpt always exists
            return True
        if not math.isfinite(value):
            return False
        return value > self.best_score if self.mode == "max" else value < self.best_score

    def end_epoch(self, epoch: int, row: dict[str, Any]) -> None:
        from geoseg import plots

        self.history.append(row)
        value = float(row[self.monitor])
        better = self.improved(value)
        if better:
            self.best_epoch, self.bad_epochs = epoch, 0
            self.best_score = value if math.isfinite(value) else None
            if not math.isfinite(value) and self.td.val is not None:
                log.warning(
                    "%s is undefined at epoch %d (no such pixels in the validation split?); "
                    "best.ckpt is the latest epoch until it is defined",
                    self.monitor,
                    epoch,
                )
        else:
            self.bad_epochs += 1
        if self.scheduler is not None and not isinstance(
            self.scheduler, torch.optim.lr_scheduler.OneCycleLR
        ):
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.scheduler.step(value if math.isfinite(value) else 0.0)
            else:
                self.scheduler.step()
        rng = self.dist.gather(_rng_state(self.td.train))  # every rank's, so resume restores each
        if self.dist.main:
            metrics = {k: v for k, v in row.items() if k != "lr"}
            if better:
                self.save("best.ckpt", epoch, metrics)
            extra = {
                "history": self.history,
                "best_score": self.best_score,
                "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs,
                "rng": rng,
                "monitor": self.monitor,
            }
            self.save("last.ckpt", epoch, metrics, extra=extra)
            _write_csv(self.run_dir / "metrics.csv", self.history)
            if self.writer is not None:
                for key, val in row.items():
                    if key != "epoch" and isinstance(val, int | float) and math.isfinite(val):
                        self.writer.add_scalar(_tb_tag(key), val, epoch)
                self.writer.flush()
            plots.curves(
                self.history,
                self.run_dir / "curves.png",
                monitor=self.monitor,
                best_epoch=self.best_epoch,
            )
        self.log_epoch(row, better)

    def log_epoch(self, row: dict[str, Any], better: bool) -> None:
        parts = [f"epoch {row['epoch']}/{self.cfg.train.epochs}"]
        parts.append(f"train loss {row['train_loss']:.4f}")
        if self.td.val is None:
            log.info("  ".join([*parts, f"{row['seconds']:.0f} s"]))
            return
        parts.append(f"val loss {row['val_loss']:.4f}")
        if "iou_building" in row:
            parts.append(f"building IoU {row['iou_building']:.3f} F1 {row['f1_building']:.3f}")
        if "object_f1" in row:
            parts.append(f"object F1 {row['object_f1']:.3f}")
        parts += [f"mIoU {row['miou']:.3f}", f"{row['seconds']:.0f} s"]
        log.info("  ".join(parts) + ("  *best*" if better else ""))

    def finish(self, epochs_run: int) -> TrainResult:
        """Preview and test scores from best.ckpt; the result (rank 0's is the one returned)."""
        from geoseg import checkpoint, plots

        best, last = self.run_dir / "best.ckpt", self.run_dir / "last.ckpt"
        best_row = next(
            (r for r in self.history if r["epoch"] == self.best_epoch),
            self.history[-1] if self.history else {},
        )
        self.dist.barrier()  # best.ckpt is complete before any rank reads it
        if best.is_file():
            self.bare_model.load_state_dict(checkpoint.load(best, map_location="cpu").state_dict)
        if self.dist.main:
            images, truths, preds = self.preview_patches()
            if len(images):
                plots.preview(
                    images,
                    truths,
                    preds,
                    self.run_dir / "preview.png",
                    class_names=self.class_names,
                    ignore_index=self.ignore_index,
                )
        test_metrics = None
        # a rank whose share of the test windows is empty still joins the all-reduce
        if -self.dist.min(-int(self.td.test is not None)) > 0:
            test_loss, scores = self.evaluate(self.td.test, "test")
            test_metrics = {
                "checkpoint": str(best),
                "epoch": self.best_epoch,
                "loss": test_loss,
                **scores,
            }
            if self.dist.main:
                io.write_text(
                    self.run_dir / "test_metrics.json", json.dumps(_no_nan(test_metrics), indent=1)
                )
                building = scores["per_class"].get("building", {}).get("iou")
                log.info(
                    "Test split: mIoU %.3f%s",
                    scores["miou"],
                    f", building IoU {building:.3f}" if building is not None else "",
                )
        if self.writer is not None:
            self.writer.close()
        self.dist.barrier()
        return TrainResult(
            best=best,
            last=last,
            metrics=best_row,
            epochs_run=epochs_run,
            run_dir=self.run_dir,
            monitor=self.monitor,
            test_metrics=test_metrics,
            precision=self.precision,
            device=self.device.type,
            rank=self.dist.rank,
            history=list(self.history),
            validated=self.td.val is not None,
        )

    @torch.no_grad()
    def preview_patches(self, n: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Up to ``n`` validation patches (those with the most foreground first), de-normalised;
        test patches when there is no validation split."""
        model = self.bare_model.eval()
        mean = torch.tensor(self.td.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.td.std).view(1, -1, 1, 1)
        picks: list[tuple[float, np.ndarray, np.ndarray, np.ndarray]] = []
        held = self.td.val if self.td.val is not None else self.td.test
        for b, batch in enumerate(held or []):
            if b >= 8:  # enough candidates; keep the end of a run quick
                break
            x, y = self._to_device(batch)
            with _autocast(self.device, self.precision):
                pred = model(x).argmax(1).cpu()
            image = (batch["image"].float().cpu() * std + mean).numpy()
            mask = batch["mask"].cpu().numpy()
            for i in range(len(mask)):
                valid = mask[i] != self.ignore_index
                fg = float(((mask[i] > 0) & valid).mean())
                picks.append((fg, image[i], mask[i], pred[i].numpy()))
        picks.sort(key=lambda p: -p[0])
        picks = picks[:n]
        if not picks:
            return np.empty(0), np.empty(0), np.empty(0)
        return (
            np.stack([p[1] for p in picks]),
            np.stack([p[2] for p in picks]),
            np.stack([p[3] for p in picks]),
        )


# --------------------------------------------------------------------------------------------
# small helpers


def _take(loader: Iterable[Any], n: int) -> Iterator[Any]:
    # DDP ranks must run the same number of steps, or the last all-reduce waits forever.
    for i, item in enumerate(loader):
        if i >= n:
            break
        yield item


def _no_nan(obj: Any) -> Any:
    """NaN (an undefined score) as JSON null, so strict JSON readers accept the file."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_no_nan(v) for v in obj]
    return obj


def _num(value: Any) -> float:
    return float(value) if value is not None else float("nan")


def _tb_tag(key: str) -> str:
    if key.endswith("loss"):
        return f"loss/{key}"
    if key.startswith(("iou_", "f1_")) or key in ("miou", "accuracy"):
        return f"val/{key}"
    return f"train/{key}"


def _yaml(cfg: PipelineConfig) -> str:
    import yaml

    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = StringIO()
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    io.write_text(path, buf.getvalue())


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    """``RUN_DIR/metrics.csv`` as a list of rows of floats (``epoch`` as int)."""
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        return [
            {k: (int(v) if k == "epoch" else float(v)) for k, v in r.items()}
            for r in csv.DictReader(f)
        ]


def configure(
    config_file: Path | None, settings: dict[str, Any], run_dir: Path, *, resume: bool = False
) -> PipelineConfig:
    """The config a ``geoseg train`` call stands for.

    The base is ``config_file`` (relative paths resolved against its folder), else on ``resume``
    the run's own ``config.yaml``, else the defaults; then each of ``settings`` (dotted keys such
    as ``train.epochs``, only the options the user gave) replaces the base's value.

    Raises:
        ConfigError: an unknown key or bad value, or no images / labels anywhere.
        InputNotFoundError: ``config_file`` does not exist.
    """
    from geoseg import config

    source = str(config_file) if config_file else "command line"
    if config_file is not None:
        base = config.load(config_file)
    elif resume and (Path(run_dir) / "config.yaml").is_file():
        base = config.load(Path(run_dir) / "config.yaml")
        source = str(Path(run_dir) / "config.yaml")
    else:
        base = PipelineConfig()
    data = base.model_dump(mode="json")
    if "model.classes" in settings and "model.class_names" not in settings:
        names = data["model"].get("class_names")
        if names and len(names) != settings["model.classes"]:
            data["model"]["class_names"] = None  # --classes replaces the file's class list
    if "model.class_names" in settings and "model.classes" not in settings:
        data["model"]["classes"] = None
    for key, value in settings.items():
        if key == "data.images":  # absolute, so config.yaml works from any folder (--resume)
            value = [str(Path(v).resolve()) if Path(v).exists() else v for v in value]
        elif key == "data.labels" and Path(value).exists():
            value = str(Path(value).resolve())
        section, name = key.split(".", 1)
        data.setdefault(section, {})[name] = value
    cfg = config.parse(data, source=source)
    if not cfg.data.images:
        raise ConfigError(
            f"{source}: no images; give IMAGES (a folder, glob or list file) "
            "or data.images in --config"
        )
    if not cfg.data.labels:
        raise ConfigError(
            f"{source}: no labels; give --labels (a mask folder or a vector file) or data.labels"
        )
    return cfg
