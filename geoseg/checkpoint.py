"""Checkpoints: model weights plus a model card, saved atomically, loaded without running code.

A checkpoint file is what ``torch.save`` writes for the dict::

    {'format': 'geoseg-checkpoint', 'version': 1,
     'card': ModelCard as JSON-able primitives, 'state_dict': {name: tensor},
     'optimizer': ..., 'scheduler': ..., 'scaler': ..., 'epoch': int, 'extra': {...}}

Everything in it is tensors and plain data (dict, list, tuple, str, int, float, bool, None), so
it loads with ``torch.load(path, weights_only=True)``, which never imports or calls Python code
named in the file: a file holding anything else is refused. The card carries everything
inference needs (architecture, bands, normalisation, classes, patch size, pixel size, CRS).

Example:
    >>> checkpoint.save(run_dir / "best.ckpt", model=model, card=card, optimizer=opt, epoch=3)
    >>> model, card = checkpoint.load_model(run_dir / "best.ckpt", device="cpu")
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from torch import nn

import geoseg
from geoseg import io
from geoseg.errors import CheckpointError, InputNotFoundError

log = logging.getLogger(__name__)

__all__ = [
    "FORMAT",
    "VERSION",
    "Checkpoint",
    "CheckpointNotFoundError",
    "ModelCard",
    "clean_state_dict",
    "load",
    "load_model",
    "restore_rng_state",
    "rng_state",
    "save",
]

FORMAT = "geoseg-checkpoint"
VERSION = 1
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile


class CheckpointNotFoundError(InputNotFoundError, CheckpointError):
    """The checkpoint file does not exist (both an InputNotFoundError and a CheckpointError)."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _check_jsonable(value: Any, where: str) -> None:
    if value is None or isinstance(value, str | int | float | bool):
        return
    if isinstance(value, list | tuple):
        for item in value:
            _check_jsonable(item, where)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where}: keys must be strings, got {key!r}")
            _check_jsonable(item, where)
        return
    raise ValueError(
        f"{where}: {type(value).__name__} is not JSON-able; use str, int, float, bool, list or dict"
    )


class ModelCard(BaseModel):
    """What a trained model is and how to feed it: everything ``infer`` needs, as JSON primitives.

    Bands are listed in the order the model expects them (``band_indexes`` are the 1-based band
    numbers of the source rasters, ``mean``/``std`` the normalisation per band, in the rasters'
    units). ``class_ids[i]`` is the mask value written for ``class_names[i]``; logits channel i
    is class i. ``patch_size`` is in pixels, ``res`` in CRS units per pixel, ``crs_wkt`` the
    training CRS as WKT, ``dtype`` the training images' pixel type (``uint8``, ``uint16``,
    ``float32``...; None in cards written before it was recorded): ``infer`` refuses inputs whose
    values a model trained on it cannot have seen. Keys of cards written by other versions that
    are not fields here (such as ``nodata``, never filled) are ignored when a checkpoint is read.
    ``target`` is what the classes mean: ``semantic`` (the classes as named) or ``instances``
    (background, interior, edge, contact of buildings, see :mod:`geoseg.instances`; the masks
    ``infer`` writes are then tagged so that ``vectorize`` separates touching buildings), with
    the ``edge_width_m`` and ``contact_distance_m`` the targets were made with.
    ``normalization`` is ``data.normalization``: with ``patch`` each patch is normalised by its
    own mean/std (:mod:`geoseg.normalize`), ``mean``/``std`` are then the training data's.
    """

    model_config = ConfigDict(extra="ignore", validate_assignment=True)

    geoseg_version: str = Field(default_factory=lambda: geoseg.__version__)
    architecture: str
    model_args: dict[str, Any] = Field(default_factory=dict)
    in_channels: int = Field(ge=1)
    band_names: list[str]
    band_indexes: list[int]
    mean: list[float]
    std: list[float]
    class_names: list[str]
    class_ids: list[int]
    ignore_index: int = 255
    patch_size: int = Field(ge=1)
    res: float | None = None
    crs_wkt: str | None = None
    dtype: str | None = None
    epoch: int = 0
    metrics: dict[str, Any] = Field(default_factory=dict)
    created: str = Field(default_factory=_now)
    target: Literal["semantic", "instances"] = "semantic"
    edge_width_m: float | None = None
    contact_distance_m: float | None = None
    normalization: str = "meanstd"

    @field_validator("model_args", "metrics")
    @classmethod
    def _jsonable(cls, v: dict[str, Any]) -> dict[str, Any]:
        _check_jsonable(v, "model card")
        return v

    @model_validator(mode="after")
    def _lengths_agree(self) -> ModelCard:
        for name in ("band_names", "band_indexes", "mean", "std"):
            n = len(getattr(self, name))
            if n != self.in_channels:
                raise ValueError(f"{name} has {n} entries but in_channels={self.in_channels}")
        if len(self.class_names) != len(self.class_ids) or not self.class_names:
            raise ValueError(
                f"class_names ({len(self.class_names)}) and class_ids ({len(self.class_ids)}) "
                "must be non-empty and of the same length"
            )
        return self

    @property
    def num_classes(self) -> int:
        """Number of classes K (logit channels)."""
        return len(self.class_names)


@dataclass
class Checkpoint:
    """The content of a checkpoint file (tensors on ``map_location``)."""

    card: ModelCard
    state_dict: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    epoch: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------ helpers
def clean_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Strip DistributedDataParallel ``module.`` and torch.compile ``_orig_mod.`` key prefixes."""
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key = key[len(prefix) :]
                    stripped = True
        out[key] = value
    return out


def _to_safe(value: Any, where: str) -> Any:
    """Convert ``value`` to what ``torch.load(weights_only=True)`` accepts, or raise TypeError.

    numpy arrays become tensors and numpy scalars Python numbers; tensors are copied to the CPU.
    """
    if isinstance(value, np.generic):  # first: np.float64 is also a float, but pickles as numpy
        return value.item()
    if value is None or isinstance(
        value, str | int | float | bool | torch.dtype | torch.device | torch.Size
    ):
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.array(value))
    if isinstance(value, dict):
        return {
            k if isinstance(k, str | int) else str(k): _to_safe(v, where) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_to_safe(v, where) for v in value]
    if isinstance(value, tuple):
        return tuple(_to_safe(v, where) for v in value)
    raise TypeError(
        f"checkpoint {where}: a {type(value).__module__}.{type(value).__name__} cannot be stored "
        "safely; store tensors, numbers, strings, lists and dicts only"
    )


def rng_state() -> dict[str, Any]:
    """The torch, CUDA, numpy and Python RNG states as checkpoint-safe tensors and lists."""
    np_state: Any = np.random.get_state()  # the legacy tuple: (name, keys, pos, gauss, cached)
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNG states saved by :func:`rng_state` (missing parts are left alone)."""
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    if "numpy" in state:
        s = state["numpy"]
        keys = np.asarray(
            s["keys"].cpu().numpy() if isinstance(s["keys"], torch.Tensor) else s["keys"]
        )
        np.random.set_state(
            (s["name"], keys.astype(np.uint32), s["pos"], s["has_gauss"], s["cached_gaussian"])
        )
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = [s.cpu().to(torch.uint8) for s in state["cuda"]]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def _state(obj: Any) -> Any:
    return None if obj is None else obj.state_dict()


# ------------------------------------------------------------------------------------ save
def save(
    path: str | Path,
    *,
    model: nn.Module,
    card: ModelCard,
    optimizer: Any = None,
    scheduler: Any = None,
    scaler: Any = None,
    epoch: int = 0,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint atomically (:func:`geoseg.io.atomic_write`: temp file, fsync, rename).

    A crash or error midway leaves any older file at ``path`` intact and no partial file.

    Args:
        path: The checkpoint file (conventionally ``*.ckpt``); its folder is created if needed.
        model: The model; a DDP / torch.compile wrapper's key prefixes are stripped.
        card: The model card, stored as given (set ``card.epoch`` / ``card.metrics`` before).
        optimizer, scheduler, scaler: Objects with ``state_dict()`` (optional), for resuming.
        epoch: The number of completed epochs.
        extra: More resume state, e.g. ``{'rng': rng_state(), 'best_score': 0.7}``; numpy arrays
            and scalars are converted to tensors / numbers; other objects raise TypeError.
    """
    path = Path(path)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "card": card.model_dump(mode="json"),
        "state_dict": _to_safe(clean_state_dict(model.state_dict()), "state_dict"),
        "optimizer": _to_safe(_state(optimizer), "optimizer"),
        "scheduler": _to_safe(_state(scheduler), "scheduler"),
        "scaler": _to_safe(_state(scaler), "scaler"),
        "epoch": int(epoch),
        "extra": _to_safe(dict(extra or {}), "extra"),
    }
    with io.atomic_write(path, overwrite=True) as tmp, open(tmp, "wb") as f:
        torch.save(payload, f)
    log.debug("saved checkpoint %s (epoch %d)", path, epoch)


# ------------------------------------------------------------------------------------ load
def load(path: str | Path, *, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint with ``torch.load(weights_only=True)``; never runs code from the file.

    Raises:
        CheckpointNotFoundError: the file does not exist (an InputNotFoundError).
        CheckpointError: the file is corrupt, holds Python objects (cannot be loaded safely), is
            not a geoseg checkpoint (e.g. a bare state dict), comes from a newer geoseg, or its
            model card is invalid.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(
            f"{path}: checkpoint not found; check the path (e.g. RUN_DIR/best.ckpt)"
        )
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for bad files
        message = str(err)
        if (
            "weights_only" in message
            or "Unsupported global" in message
            or "Unsupported operand" in message
        ):
            raise CheckpointError(
                f"{path}: cannot be loaded safely: it holds Python objects, not only tensors and "
                "plain data; use a checkpoint written by geoseg (geoseg train)"
            ) from None
        first_line = message.splitlines()[0][:120] if message else ""
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({type(err).__name__}: {first_line}); "
            "the file may be truncated or not a torch file; re-copy or re-train it"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        kind = (
            "a bare state dict"
            if isinstance(data, dict) and "format" not in data
            else f"a {type(data).__name__}"
        )
        raise CheckpointError(
            f"{path}: not a geoseg checkpoint (found {kind}, expected format '{FORMAT}'); "
            "use a checkpoint written by geoseg train"
        )
    version = data.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r} is newer than this geoseg reads "
            f"({VERSION}); upgrade geoseg"
        )
    try:
        card = ModelCard.model_validate(data.get("card"))
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "card"
        raise CheckpointError(
            f"{path}: invalid model card: {loc}: {first['msg']}; re-save the checkpoint"
        ) from None
    state_dict = data.get("state_dict")
    if not isinstance(state_dict, dict):
        raise CheckpointError(
            f"{path}: checkpoint has no weights (state_dict); re-save the checkpoint"
        )
    return Checkpoint(
        card=card,
        state_dict=clean_state_dict(state_dict),
        optimizer=data.get("optimizer"),
        scheduler=data.get("scheduler"),
        scaler=data.get("scaler"),
        epoch=int(data.get("epoch") or 0),
        extra=data.get("extra") or {},
    )


def load_model(
    path: str | Path, *, device: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelCard]:
    """Rebuild the model a checkpoint describes, load its weights, put it in eval mode.

    Args:
        path: The checkpoint file.
        device: ``cpu``, ``cuda``, ``cuda:1`` or ``auto`` (CUDA when available).

    Returns:
        ``(model, card)``; the model maps ``[B, card.in_channels, H, W]`` normalised float to
        logits ``[B, card.num_classes, H, W]``.
    """
    from geoseg import models
    from geoseg.device import resolve_device
    from geoseg.errors import ConfigError

    path = Path(path)
    ckpt = load(path, map_location="cpu")
    card = ckpt.card
    # The encoder weights file only initialised training; the checkpoint holds the trained weights
    # (and the file need not exist where the model is used).
    args = {k: v for k, v in card.model_args.items() if k != "encoder_weights"}
    try:
        model = models.build(
            card.architecture, in_channels=card.in_channels, num_classes=card.num_classes, **args
        )
    except ConfigError as err:
        raise CheckpointError(f"{path}: cannot rebuild the model: {err}") from None
    try:
        model.load_state_dict(ckpt.state_dict, strict=True)
    except RuntimeError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        detail = (lines[1] if len(lines) > 1 else lines[0])[:160]
        raise CheckpointError(
            f"{path}: weights do not fit model {card.architecture} ({detail}); "
            "the checkpoint is inconsistent, re-save it"
        ) from None
    model.to(resolve_device(device)).eval()
    return model, card
