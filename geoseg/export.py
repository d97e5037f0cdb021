"""Models out to the tools people use: ONNX with GIS metadata, a STAC MLM item, QGIS styles.

:func:`onnx` writes a checkpoint's network as an ONNX graph that takes **raw pixel values** (the
card's bands, as float32, ``[batch, band, height, width]``) and returns class probabilities
``[batch, class, height, width]``: the card's normalisation and the softmax are inside the graph.
Its metadata carries what QGIS Deepness and GeoDeep read (model type, class names, resolution,
tile size, overlap, standardisation) and geoseg's whole model card, so ``geoseg infer`` runs the
``.onnx`` like a checkpoint (:func:`load_onnx`, :class:`OnnxModel`).

:func:`stac` describes a checkpoint (and its ONNX export) as a STAC Item with the Machine Learning
Model (MLM) extension. :func:`mask_style` and :func:`footprint_style` give masks a QGIS ``.qml``
sidecar and footprint GeoPackages a default layer style in their ``layer_styles`` table.

Example:
    >>> from geoseg import export
    >>> export.onnx("runs/demo/best.ckpt", "model.onnx")
    >>> export.stac("runs/demo/best.ckpt", "model.json", onnx="model.onnx")
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import re
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import quoteattr

import numpy as np

from geoseg import io
from geoseg.errors import CheckpointError, ConfigError, InputNotFoundError

if TYPE_CHECKING:
    import torch

    from geoseg.checkpoint import ModelCard

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_OPSET",
    "FORMAT",
    "MLM_SCHEMA",
    "OnnxModel",
    "footprint_style",
    "is_onnx",
    "load_onnx",
    "mask_style",
    "onnx",
    "check_tile_size",
    "read_card",
    "stac",
    "stac_item",
    "style_path",
]

#: Value of the ``geoseg_format`` metadata key; marks an ONNX file written by :func:`onnx`.
FORMAT = "geoseg-onnx/1"
#: ONNX opset written by default: 17 runs on onnxruntime >= 1.14 (QGIS installs often lag).
DEFAULT_OPSET = 17
#: The MLM version whose fields :func:`stac_item` writes (pystac's MLM extension reads 1.0-1.4).
MLM_SCHEMA = "https://stac-extensions.github.io/mlm/v1.4.0/schema.json"
INPUT_NAME = "pixels"
OUTPUT_NAME = "probabilities"


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def is_onnx(path: str | Path) -> bool:
    """Whether ``path`` names an ONNX model (by its suffix), i.e. infer should use onnxruntime."""
    return Path(path).suffix.lower() == ".onnx"


def _load(checkpoint: Path) -> tuple[Any, ModelCard]:
    """The checkpoint's model (CPU, eval mode) and card; one-line errors for anything else."""
    from geoseg import checkpoint as ckpt_mod

    if is_onnx(checkpoint):
        raise CheckpointError(
            f"{checkpoint}: is already an ONNX model; export from the .ckpt it was made from"
        )
    return ckpt_mod.load_model(checkpoint, device="cpu")


def _resolution_cm(card: ModelCard) -> float | None:
    """The training pixel size in cm (Deepness and GeoDeep units), or None when not in metres."""
    if not card.res or not card.crs_wkt:
        return None  # tile folders: pixel units
    from rasterio.crs import CRS

    try:
        units = (CRS.from_wkt(card.crs_wkt).linear_units or "").lower()
    except Exception:  # noqa: BLE001 - an unreadable CRS only means "unknown units"
        return None
    return round(float(card.res) * 100.0, 4) if units in ("metre", "meter", "m") else None


# --------------------------------------------------------------------------------------------
# ONNX export
# --------------------------------------------------------------------------------------------


def _graph_module(model: Any, card: ModelCard, input_scale: float) -> Any:
    """``model`` wrapped so that it maps raw pixels to probabilities (what the ONNX graph is)."""
    import torch
    from torch import nn

    class RawPixelsToProbabilities(nn.Module):
        mean: torch.Tensor  # buffers (they move with the module)
        inv_std: torch.Tensor
        std: torch.Tensor

        def __init__(self) -> None:
            super().__init__()
            self.model = model
            std = [float(s) or 1.0 for s in card.std]  # infer's rule for a zero std
            self.register_buffer(
                "mean", torch.tensor(card.mean, dtype=torch.float32).view(1, -1, 1, 1)
            )
            self.register_buffer(
                "inv_std", (1 / torch.tensor(std, dtype=torch.float32)).view(1, -1, 1, 1)
            )
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
            self.input_scale = float(input_scale)
            self.per_patch = card.normalization == "patch"

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            # The same arithmetic as geoseg.infer's forward, so both runs agree to rounding.
            x = pixels if self.input_scale == 1.0 else pixels * self.input_scale
            if self.per_patch:  # each tile by its own mean/std, as in training
                from geoseg.normalize import patch_statistics

                m, s = patch_statistics(x, self.std)
                return torch.softmax(self.model((x - m) / s), dim=1)
            return torch.softmax(self.model((x - self.mean) * self.inv_std), dim=1)

    return RawPixelsToProbabilities().eval()


def _metadata(
    card: ModelCard, *, tile_size: int, overlap: int, input_scale: float, dynamic_size: bool
) -> dict[str, str]:
    """The ONNX ``metadata_props``: what Deepness and GeoDeep read, then geoseg's own keys.

    Deepness (PUTvision/qgis-plugin-deepness, src/deepness/processing/models/model_base.py,
    ``get_metadata_*``) reads each value with ``json.loads``; GeoDeep (uav4geo/GeoDeep,
    geodeep/inference.py ``create_session``) reads ``model_type``/``class_names`` with
    ``json.loads`` and ``resolution``/``tiles_overlap`` with ``float``. So every value is JSON,
    and numbers are plain JSON numbers (which ``float`` also parses).
    """
    n = card.in_channels
    meta = {
        # Deepness get_metadata_model_type (capitalised) and GeoDeep config['model_type'].
        "model_type": json.dumps("Segmentor"),
        # Deepness get_outputs_channel_names: {"0": name, ...}, keys = output channel indexes,
        # consecutive from 0; GeoDeep looks names up by str(argmax index).
        "class_names": json.dumps({str(i): name for i, name in enumerate(card.class_names)}),
        # Deepness get_metadata_tile_size (its docs table says "tiles_size"; the code reads
        # "tile_size"). GeoDeep takes the tile size from the input shape instead.
        "tile_size": json.dumps(tile_size),
        # Deepness get_metadata_tiles_overlap, GeoDeep config['tiles_overlap']: percent of a tile.
        "tiles_overlap": json.dumps(round(100 * overlap / tile_size)),
        # Deepness get_metadata_standarization_parameters: it feeds (x / 255 - mean) / std
        # (preprocessing_utils.normalize_values_to_01 then standardize_values); with these values
        # that is x / input_scale, exactly what this graph takes. GeoDeep has no such key: it
        # feeds x / 255 for uint8 images (detection.preprocess), which matches input_scale=255.
        "standardization_mean": json.dumps([0.0] * n),
        "standardization_std": json.dumps([input_scale / 255.0] * n),
        # geoseg's own keys.
        "geoseg_format": FORMAT,
        "geoseg_model_card": card.model_dump_json(),
        "band_indexes": json.dumps(list(card.band_indexes)),
        "band_names": json.dumps(list(card.band_names)),
        "class_ids": json.dumps(list(card.class_ids)),
        "input_scale": json.dumps(input_scale),
        "dynamic_size": json.dumps(dynamic_size),
        "input": (
            f"{INPUT_NAME}: float32 [batch, {n} bands, height, width]: bands "
            f"{list(card.band_indexes)} (1-based) of the raster, raw values / input_scale; "
            "set nodata pixels to the band mean"
        ),
        "output": (
            f"{OUTPUT_NAME}: float32 [batch, {card.num_classes} classes, height, width], softmax; "
            f"channel i is class_names[i], written to masks as class_ids[i]"
        ),
    }
    resolution = _resolution_cm(card)
    if resolution is not None:
        # Deepness get_metadata_resolution and GeoDeep config['resolution']: cm per pixel.
        meta["resolution"] = json.dumps(resolution)
    else:
        log.warning(
            "the checkpoint's pixel size is not in metres, so the ONNX file has no 'resolution' "
            "(Deepness and GeoDeep then use their own default)"
        )
    return meta


def _check_opset(opset: int) -> None:
    import onnx as onnx_lib

    newest = onnx_lib.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not 11 <= opset <= newest:
        raise ConfigError(
            f"opset={opset!r} cannot be written: the installed onnx {onnx_lib.__version__} writes "
            f"opsets 11 to {newest}; use {DEFAULT_OPSET} (the default) or another in that range"
        )


def onnx(
    checkpoint: str | Path,
    out: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    tile_size: int | None = None,
    dynamic_size: bool = False,
    overlap: int | None = None,
    input_scale: float = 1.0,
    overwrite: bool = False,
) -> Path:
    """Export a checkpoint as an ONNX model that takes raw pixels and gives class probabilities.

    The graph maps float32 ``[batch, band, height, width]`` raw pixel values (the card's bands in
    the card's order; divided by ``input_scale``) to float32 softmax probabilities ``[batch, class,
    height, width]``. Batch is dynamic; height and width are ``tile_size`` unless
    ``dynamic_size`` (Deepness and GeoDeep want a fixed tile: GeoDeep reads its tile size from
    the input shape, Deepness requires a square output). Pixels that are nodata should be set to
    the band's mean (what geoseg does), which the graph normalises to 0.

    Written with PyTorch's TorchScript exporter (``dynamo=False``): on this project's models it
    exports 3-4x faster than the dynamo exporter, needs no onnxscript, and writes opsets below
    18, which older onnxruntime builds in QGIS installs need. The export is checked by running
    it with onnxruntime against PyTorch on one random tile.

    Args:
        checkpoint: A geoseg checkpoint (``best.ckpt``).
        out: The ``.onnx`` file to write (atomically).
        opset: ONNX opset, 11 up to what the installed ``onnx`` writes (default 17).
        tile_size: Fixed tile side in pixels (default: the card's patch size); divisible by the
            model's downsampling factor.
        dynamic_size: Make height and width dynamic (any multiple of the downsampling factor).
        overlap: Overlap in pixels that the metadata recommends (``tiles_overlap``, in percent);
            default: infer's, ``min(64, tile_size // 4)``.
        input_scale: The graph multiplies its input by this first: 1 = raw values (default);
            255 = values divided by 255, what GeoDeep feeds 8-bit images.
        overwrite: Replace ``out`` if it exists.

    Returns:
        ``out``.

    Raises:
        InputNotFoundError: the checkpoint does not exist.
        CheckpointError: not a geoseg checkpoint.
        OutputExistsError: ``out`` exists and not ``overwrite``.
        ConfigError: an opset the installed onnx cannot write, a bad tile size, overlap or scale.
    """
    import onnx as onnx_lib
    import torch

    from geoseg import models

    checkpoint, out = Path(checkpoint), Path(out)
    io.check_output(out, overwrite=overwrite, inputs=[checkpoint])
    _check_opset(opset)
    if not (isinstance(input_scale, int | float) and np.isfinite(input_scale) and input_scale > 0):
        raise ConfigError(f"input_scale={input_scale!r} must be a positive number, e.g. 1 or 255")
    model, card = _load(checkpoint)
    factor = models.downsampling(card.architecture)
    size = int(tile_size or card.patch_size)
    if size < factor or size % factor:
        lo = max(factor, size // factor * factor)
        raise ConfigError(
            f"tile_size={size} is not divisible by {factor} (what {card.architecture} needs); "
            f"use {lo} or {lo + factor}"
        )
    overlap = min(64, size // 4) if overlap is None else int(overlap)
    if not 0 <= overlap < size:
        raise ConfigError(f"overlap={overlap} must be >= 0 and < the tile size {size}")

    graph = _graph_module(model, card, input_scale)
    example = torch.rand(1, card.in_channels, size, size) * 255 / input_scale
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_size else {0: "batch"}
    with io.claim(out, overwrite=overwrite, inputs=[checkpoint]) as output:
        tmp = output.temp()
        with warnings.catch_warnings():
            # The TorchScript exporter's deprecation notice, and the plain UNet's shape check,
            # which tracing freezes (its pad is a no-op for sizes divisible by 16).
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(
                    graph,
                    (example,),
                    str(tmp),
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
                    opset_version=opset,
                    dynamo=False,
                    do_constant_folding=True,
                )
            except Exception as err:  # noqa: BLE001 - the exporter's errors name the opset
                first = (str(err).splitlines() or [type(err).__name__])[0][:200]
                raise ConfigError(
                    f"opset={opset} cannot be written for {card.architecture} ({first}); "
                    f"use {DEFAULT_OPSET} (the default)"
                ) from None
        proto = onnx_lib.load(str(tmp))
        meta = _metadata(
            card,
            tile_size=size,
            overlap=overlap,
            input_scale=float(input_scale),
            dynamic_size=dynamic_size,
        )
        del proto.metadata_props[:]
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        import geoseg

        proto.producer_name, proto.producer_version = "geoseg", geoseg.__version__
        proto.doc_string = (
            f"geoseg {card.architecture}: raw pixels of bands {list(card.band_indexes)} -> "
            f"probabilities of {card.class_names}"
        )
        onnx_lib.checker.check_model(proto)
        onnx_lib.save(proto, str(tmp))
        _verify(tmp, graph, example)
        output.commit(tmp)
    log.info("exported %s to %s (opset %d, tile %s)", checkpoint, out, opset, size)
    return out


def _verify(path: Path, graph: Any, example: torch.Tensor) -> None:
    """Run the written file with onnxruntime on ``example`` and compare with PyTorch."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {INPUT_NAME: example.numpy()})[0]
    with torch.inference_mode():
        want = graph(example).numpy()
    diff = float(np.abs(got - want).max())
    log.info("onnxruntime vs PyTorch on one tile: max |p difference| = %.2e", diff)
    if not diff < 1e-3:
        raise CheckpointError(
            f"{path.name}: the exported graph disagrees with PyTorch (max probability difference "
            f"{diff:.3g}); please report this with the model's architecture"
        )


# --------------------------------------------------------------------------------------------
# Reading an exported model back, and running it the way infer runs a torch model
# --------------------------------------------------------------------------------------------


def _metadata_of(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise InputNotFoundError(f"{path}: model not found; check the path")
    stat = path.stat()
    return dict(_read_metadata(str(path.resolve()), stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=8)
def _read_metadata(path: str, mtime_ns: int, size: int) -> tuple[tuple[str, str], ...]:
    # Parsing the protobuf reads the weights too: infer asks for the card once per raster, so the
    # small metadata map is cached per file version (path, mtime, size).
    import onnx as onnx_lib

    try:
        proto = onnx_lib.load(path, load_external_data=False)
    except Exception as err:  # noqa: BLE001 - any parse failure means "not an ONNX file"
        raise CheckpointError(
            f"{path}: not a readable ONNX model ({type(err).__name__}); export one with "
            "geoseg export CHECKPOINT --out MODEL.onnx"
        ) from None
    return tuple((p.key, p.value) for p in proto.metadata_props)


def read_card(path: str | Path) -> ModelCard:
    """The model card stored in an ONNX file written by :func:`onnx`.

    Raises:
        InputNotFoundError: no such file.
        CheckpointError: not an ONNX file, or one not exported by geoseg (no model card).
    """
    from pydantic import ValidationError

    from geoseg.checkpoint import ModelCard

    path = Path(path)
    meta = _metadata_of(path)
    if meta.get("geoseg_format") != FORMAT or "geoseg_model_card" not in meta:
        raise CheckpointError(
            f"{path}: an ONNX model without a geoseg model card (not written by geoseg export); "
            "geoseg infer needs the card to know bands, classes and pixel size"
        )
    try:
        return ModelCard.model_validate_json(meta["geoseg_model_card"])
    except ValidationError as err:
        raise CheckpointError(
            f"{path}: invalid model card in the ONNX metadata ({err.errors()[0]['msg']})"
        ) from None


def check_tile_size(path: str | Path, patch_size: int) -> None:
    """Refuse a patch size that an ONNX model exported with a fixed tile size cannot take.

    Raises:
        ConfigError: the model was exported for ``tile_size`` x ``tile_size`` tiles only.
    """
    meta = _metadata_of(Path(path))
    if json.loads(meta.get("dynamic_size", "false")):
        return
    size = int(json.loads(meta.get("tile_size", "0")))
    if size and patch_size != size:
        raise ConfigError(
            f"{Path(path).name} was exported for {size} x {size} tiles; pass --patch-size {size} "
            "(or leave it out), or export again with --dynamic-size"
        )


class OnnxModel:
    """An exported model behind the call interface of geoseg's torch models.

    Called with a normalised float batch ``[B, C, H, W]`` (what geoseg.infer gives a torch
    model) it returns ``[B, K, H, W]`` log-probabilities, so infer's softmax gives back the
    graph's probabilities. The graph normalises its own input, so the batch is first mapped back
    to pixel values (``x * std + mean``; exact to float32 rounding). Runs on onnxruntime's CPU
    provider, or its CUDA provider when ``device`` is ``cuda`` and onnxruntime has one.

    Attributes:
        tile_size: The fixed tile side of the graph, or None when height and width are dynamic.
        providers: The onnxruntime execution providers in use.
    """

    def __init__(self, path: str | Path, card: ModelCard, *, device: str = "cpu") -> None:
        import onnxruntime as ort
        import torch

        path = Path(path)
        options = ort.SessionOptions()
        # As many threads as torch uses here (infer sets it per dask worker).
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if (
            str(device).startswith("cuda")
            and "CUDAExecutionProvider" in ort.get_available_providers()
        ):
            providers.insert(0, "CUDAExecutionProvider")
        elif str(device).startswith("cuda"):
            log.warning(
                "onnxruntime has no CUDA provider here (install onnxruntime-gpu); using the CPU"
            )
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        self.providers = self.session.get_providers()
        meta = self.session.get_modelmeta().custom_metadata_map
        self.input_scale = float(json.loads(meta.get("input_scale", "1")))
        self.input_name = self.session.get_inputs()[0].name
        width = self.session.get_inputs()[0].shape[-1]
        self.tile_size: int | None = width if isinstance(width, int) else None
        std = [float(s) or 1.0 for s in card.std]
        self._mean = torch.tensor(card.mean, dtype=torch.float32).view(1, -1, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``[B, C, H, W]`` -> log-probabilities ``[B, K, H, W]`` (float32)."""
        import torch

        with torch.autocast(x.device.type, enabled=False):
            pixels = x.float().cpu() * self._std + self._mean
            if self.input_scale != 1.0:
                pixels = pixels / self.input_scale
            probs = self.session.run(None, {self.input_name: pixels.contiguous().numpy()})[0]
        tiny = float(np.finfo(np.float32).tiny)
        return torch.from_numpy(probs).clamp_min_(tiny).log_().to(x.device)

    def to(self, *args: Any, **kwargs: Any) -> OnnxModel:
        """No-op (device and memory format are onnxruntime's business)."""
        return self

    def eval(self) -> OnnxModel:
        """No-op: an exported graph is always in inference mode."""
        return self


def load_onnx(path: str | Path, *, device: str = "cpu") -> tuple[OnnxModel, ModelCard]:
    """An exported model and its card, like :func:`geoseg.checkpoint.load_model` for ``.ckpt``."""
    card = read_card(path)
    return OnnxModel(path, card, device=device), card


# --------------------------------------------------------------------------------------------
# STAC item with the Machine Learning Model extension
# --------------------------------------------------------------------------------------------


def _href(target: Path, item_path: Path | None) -> str:
    """A path relative to the item's folder when both are local, else the absolute path."""
    if item_path is None:
        return str(target.resolve())
    return os.path.relpath(target.resolve(), item_path.resolve().parent)


def _framework_version(version: str) -> str:
    # MLM asks for semantic versions: keep "2.14.1" (+ build metadata), drop anything else.
    match = re.match(r"\d+\.\d+\.\d+(\+[0-9A-Za-z.-]+)?", version)
    return match.group(0) if match else "0.0.0"


def _accelerator() -> str | None:
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        return "amd64"
    if machine in ("arm64", "aarch64") and platform.system() == "Darwin":
        return "macos-arm"
    return None


def stac_item(
    checkpoint: str | Path,
    *,
    onnx_path: str | Path | None = None,
    item_path: str | Path | None = None,
    item_id: str | None = None,
) -> dict[str, Any]:
    """A STAC Item (dict) describing a checkpoint with the MLM extension (v1.4.0 fields).

    Properties: ``mlm:name``, ``mlm:architecture``, ``mlm:tasks`` (semantic segmentation),
    ``mlm:framework`` (PyTorch) and its version, ``mlm:accelerator`` (this machine's; not
    constrained: geoseg runs on any CPU or a CUDA GPU), ``mlm:total_parameters``,
    ``mlm:pretrained``/``mlm:pretrained_source``, ``mlm:hyperparameters`` (the card's model
    arguments), ``mlm:input`` (the card's bands, float32 raw values, z-score value scaling with
    the card's mean/std) and ``mlm:output`` (probabilities per class, ``classification:classes``
    with the mask values and colours); ``geoseg:metrics`` and ``geoseg:card`` carry the card's
    metrics and the whole card. Assets: ``model`` (the checkpoint, ``mlm:model`` role) and, with
    ``onnx_path``, ``onnx`` (normalisation inside: it takes raw pixels). ``geometry`` is null:
    a card does not record where its training data lay.

    Args:
        checkpoint: The geoseg checkpoint.
        onnx_path: Its ONNX export, if any (see :func:`onnx`).
        item_path: Where the item will be written; asset hrefs are made relative to its folder.
        item_id: The item id (default: the checkpoint's file stem).
    """
    checkpoint = Path(checkpoint)
    model, card = _load(checkpoint)
    import torch

    onnx_file = Path(onnx_path) if onnx_path is not None else None
    if onnx_file is not None:
        other = read_card(onnx_file)
        if other.model_dump(exclude={"created"}) != card.model_dump(exclude={"created"}):
            raise CheckpointError(
                f"{onnx_file}: was not exported from {checkpoint} (the model cards differ); "
                "export it again with geoseg export"
            )
    item_file = Path(item_path) if item_path is not None else None
    P, n = card.patch_size, card.in_channels
    bands = [{"name": name} for name in card.band_names]
    encoder_weights = card.model_args.get("encoder_weights")
    name = re.sub(r"[^a-zA-Z0-9_.-]+", "-", f"geoseg-{card.architecture}").strip("-.")
    palette = io.PALETTE
    properties: dict[str, Any] = {
        "datetime": card.created,
        "title": f"geoseg {card.architecture}: {', '.join(card.class_names)}",
        "description": (
            f"Semantic segmentation of {', '.join(card.class_names)} from {n}-band imagery at "
            f"{card.res} CRS units per pixel, trained with geoseg {card.geoseg_version}."
        ),
        "mlm:name": name,
        "mlm:architecture": card.architecture,
        "mlm:tasks": ["semantic-segmentation"],
        "mlm:framework": "PyTorch",
        "mlm:framework_version": _framework_version(torch.__version__),
        "mlm:accelerator": _accelerator(),
        "mlm:accelerator_constrained": False,
        "mlm:accelerator_summary": "any CPU; a CUDA GPU when present",
        "mlm:total_parameters": int(sum(p.numel() for p in model.parameters())),
        "mlm:pretrained": encoder_weights is not None,
        "mlm:pretrained_source": Path(encoder_weights).name if encoder_weights else None,
        "mlm:batch_size_suggestion": 8,
        "mlm:input": [
            {
                "name": INPUT_NAME,
                "description": (
                    f"bands {card.band_indexes} (1-based) of the raster, raw values as float32; "
                    "nodata pixels set to the band mean"
                ),
                "bands": list(card.band_names),
                "input": {
                    "shape": [-1, n, P, P],
                    "dim_order": ["batch", "bands", "height", "width"],
                    "data_type": "float32",
                },
                "value_scaling": [
                    {"type": "z-score", "mean": float(m), "stddev": float(s) or 1.0}
                    for m, s in zip(card.mean, card.std, strict=True)
                ],
                "resize_type": None,
            }
        ],
        "mlm:output": [
            {
                "name": "classes",
                "description": (
                    "class logits (the ONNX asset: probabilities); argmax channel i is written "
                    "to masks as the class value"
                ),
                "tasks": ["semantic-segmentation"],
                "result": {
                    "shape": [-1, card.num_classes, P, P],
                    "dim_order": ["batch", "channel", "height", "width"],
                    "data_type": "float32",
                },
                "classification:classes": [
                    {
                        "value": int(value),
                        "name": class_name,
                        "description": class_name,
                        "color_hint": "{:02X}{:02X}{:02X}".format(*palette[k % len(palette)][:3]),
                    }
                    for k, (value, class_name) in enumerate(
                        zip(card.class_ids, card.class_names, strict=True)
                    )
                ],
            }
        ],
        "geoseg:metrics": card.metrics,
        "geoseg:card": card.model_dump(mode="json"),
    }
    if card.model_args:
        properties["mlm:hyperparameters"] = dict(card.model_args)
    assets: dict[str, Any] = {
        "model": {
            "href": _href(checkpoint, item_file),
            "type": "application/octet-stream; application=pytorch",
            "title": "geoseg checkpoint (weights + model card)",
            "description": (
                "torch.save dict, loadable with torch.load(weights_only=True); run it with "
                "geoseg infer CHECKPOINT IMAGE --out MASK.tif"
            ),
            "roles": ["mlm:model", "mlm:weights", "data"],
            "mlm:artifact_type": "torch.save",
            "bands": bands,
        }
    }
    if onnx_file is not None:
        import onnx as onnx_lib

        assets["onnx"] = {
            "href": _href(onnx_file, item_file),
            "type": "application/octet-stream; application=onnx",
            "title": "ONNX export (QGIS Deepness, GeoDeep, onnxruntime)",
            "description": (
                "The same network with normalisation and softmax inside: feed raw pixel values "
                f"(float32 [batch, {n}, height, width]), get class probabilities."
            ),
            "roles": ["mlm:model", "data"],
            "mlm:artifact_type": "onnx",
            "mlm:framework": "ONNX",
            "mlm:framework_version": _framework_version(onnx_lib.__version__),
            "bands": bands,
        }
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": [MLM_SCHEMA],
        "id": item_id or checkpoint.stem,
        "geometry": None,
        "properties": properties,
        "links": [],
        "assets": assets,
    }


def stac(
    checkpoint: str | Path,
    out: str | Path,
    *,
    onnx: str | Path | None = None,
    item_id: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write :func:`stac_item` for ``checkpoint`` (and its ONNX export) to ``out`` (JSON).

    Asset hrefs are relative to ``out``'s folder. Raises OutputExistsError when ``out`` exists
    and not ``overwrite``; CheckpointError for a file that is not a geoseg checkpoint.
    """
    out = Path(out)
    with io.claim(out, overwrite=overwrite, inputs=[checkpoint, onnx], option="--stac") as output:
        item = stac_item(checkpoint, onnx_path=onnx, item_path=out, item_id=item_id)
        io.write_text(output, json.dumps(item, indent=2, allow_nan=False) + "\n")
    log.info("wrote STAC item %s", out)
    return out


# --------------------------------------------------------------------------------------------
# QGIS styles
# --------------------------------------------------------------------------------------------


def style_path(mask: str | Path) -> Path:
    """The QGIS style sidecar of a raster: ``<stem>.qml`` next to it (what QGIS loads itself)."""
    mask = Path(mask)
    return mask.with_suffix(".qml")


def _mask_classes(mask: Path) -> list[tuple[int, str, tuple[int, int, int, int]]]:
    """(value, name, RGBA) per class of a mask: its class tags (else its values, with default
    names) and its colour table (else the mask format's palette)."""
    with io.open_raster(mask, hint="pass a mask GeoTIFF") as src:
        table = io.class_table(src)
        if table is None:
            table = dict(enumerate(io.mask_class_names(src)))
        try:
            cmap = src.colormap(1)
        except ValueError:  # no colour table
            cmap = {}
    default = io.colormap(list(table))
    return [(v, name, tuple(cmap.get(v, default[v]))) for v, name in table.items()]


def mask_style(mask: str | Path, *, background: int | None = 0) -> Path:
    """Write ``<mask stem>.qml``: a paletted QGIS style with the mask's class names and colours.

    Classes come from the mask's ``class_names``/``class_ids`` tags and colour table (what
    ``geoseg infer`` writes), else from its values. The ``background`` value and the nodata
    value 255 are drawn transparent. The mask itself is not touched.

    Returns:
        The ``.qml`` path.
    """
    mask = Path(mask)
    entries = []
    for value, name, (r, g, b, a) in _mask_classes(mask):
        alpha = 0 if value == background else (a or 255)
        entries.append(
            f'        <paletteEntry value="{value}" color="#{r:02x}{g:02x}{b:02x}" '
            f'alpha="{alpha}" label={quoteattr(name)}/>'
        )
    nodata = io.MASK_NODATA
    qml = (
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
        '<qgis version="3.28.0" styleCategories="Symbology">\n'
        "  <pipe>\n"
        '    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" nodataColor="">\n'
        "      <rasterTransparency>\n"
        "        <singleValuePixelList>\n"
        f'          <pixelListEntry min="{nodata}" max="{nodata}" percentTransparent="100"/>\n'
        "        </singleValuePixelList>\n"
        "      </rasterTransparency>\n"
        "      <colorPalette>\n" + "\n".join(entries) + "\n"
        "      </colorPalette>\n"
        "    </rasterrenderer>\n"
        '    <rasterresampler maxOversampling="2"/>\n'
        "  </pipe>\n"
        "  <blendMode>0</blendMode>\n"
        "</qgis>\n"
    )
    return io.write_text(style_path(mask), qml)


def _fill_symbol(name: str, rgba: tuple[int, int, int, int]) -> str:
    """A QGIS fill symbol: outlined in the colour, filled with it at 35 % opacity."""
    r, g, b, _ = rgba
    props = {
        "color": f"{r},{g},{b},90",
        "outline_color": f"{r},{g},{b},255",
        "outline_style": "solid",
        "outline_width": "0.4",
        "outline_width_unit": "MM",
        "style": "solid",
    }
    options = "\n".join(
        f'            <Option name="{key}" type="QString" value="{value}"/>'
        for key, value in props.items()
    )
    return (
        f'      <symbol type="fill" name="{name}" alpha="1" clip_to_extent="1" force_rhr="0">\n'
        '        <layer class="SimpleFill" enabled="1" locked="0" pass="0">\n'
        '          <Option type="Map">\n'
        f"{options}\n"
        "          </Option>\n"
        "        </layer>\n"
        "      </symbol>"
    )


def _footprint_qml(
    classes: list[tuple[str, tuple[int, int, int, int]]],
    column: str,
    default: tuple[int, int, int, int],
) -> str:
    """A categorized style (one colour per class name), or one symbol when there are none."""
    if classes:
        categories = "\n".join(
            f'      <category symbol="{k}" value={quoteattr(name)} label={quoteattr(name)} '
            'render="true"/>'
            for k, (name, _) in enumerate(classes)
        )
        symbols = "\n".join(_fill_symbol(str(k), rgba) for k, (_, rgba) in enumerate(classes))
        renderer = (
            f'  <renderer-v2 type="categorizedSymbol" attr={quoteattr(column)} forceraster="0" '
            'symbollevels="0" enableorderby="0">\n'
            f"    <categories>\n{categories}\n    </categories>\n"
            f"    <symbols>\n{symbols}\n    </symbols>\n"
            "  </renderer-v2>\n"
        )
    else:
        renderer = (
            '  <renderer-v2 type="singleSymbol" forceraster="0" symbollevels="0" '
            'enableorderby="0">\n'
            f"    <symbols>\n{_fill_symbol('0', default)}\n    </symbols>\n"
            "  </renderer-v2>\n"
        )
    return (
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
        '<qgis version="3.28.0" styleCategories="Symbology">\n'
        f"{renderer}"
        "  <blendMode>0</blendMode>\n"
        "</qgis>\n"
    )


def footprint_style(
    gpkg: str | Path, *, layer: str = "footprints", column: str = "class_name"
) -> None:
    """Store a default QGIS style for ``layer`` in the GeoPackage's ``layer_styles`` table.

    QGIS applies a layer's default style from that table when the layer is opened. The table is
    created the way QGIS creates it (QgsOgrProviderMetadata::saveStyle: an attribute table, FID
    ``id``, columns f_table_catalog, f_table_schema, f_table_name, f_geometry_column, styleName,
    styleQML, styleSLD, useAsDefault, description, owner, ui, update_time), so QGIS and GDAL read
    it as their own; an earlier default style of the layer is replaced. The style colours each
    value of ``column`` (geoseg's ``class_name``) like the mask does.
    """
    import pandas as pd
    import pyogrio

    gpkg = Path(gpkg)
    info = pyogrio.read_info(gpkg, layer=layer)
    geometry_column = info.get("geometry_name") or "geom"
    palette = io.PALETTE
    classes: list[tuple[str, tuple[int, int, int, int]]] = []
    if column in info["fields"]:
        # Colour by class id as the mask's colour table does (class k -> palette[k]).
        ids = [c for c in ("class_id",) if c in info["fields"]]
        values = pyogrio.read_dataframe(
            gpkg, layer=layer, columns=[column, *ids], read_geometry=False
        )
        pairs = values.drop_duplicates(column).dropna(subset=[column])
        for k, rec in enumerate(pairs.sort_values(ids or column).itertuples(index=False)):
            value = getattr(rec, "class_id", k + 1)
            classes.append((str(getattr(rec, column)), palette[int(value) % len(palette)]))
    row = {
        "f_table_catalog": "",
        "f_table_schema": "",
        "f_table_name": layer,
        "f_geometry_column": geometry_column,
        "styleName": layer,
        "styleQML": _footprint_qml(classes, column, palette[1 % len(palette)]),
        "styleSLD": "",
        "useAsDefault": True,
        "description": "geoseg footprints",
        "owner": "",
        "ui": "",
        "update_time": pd.Timestamp(datetime.now(timezone.utc).replace(tzinfo=None)),
    }
    existing = [name for name, _ in pyogrio.list_layers(gpkg)]
    table = pd.DataFrame([row])
    if "layer_styles" in existing:
        old = pyogrio.read_dataframe(
            gpkg, layer="layer_styles", read_geometry=False, fid_as_index=True
        )
        keep = old[~((old["f_table_name"] == layer) & (old["styleName"] == layer))]
        table = pd.concat([keep, table], ignore_index=True)
    pyogrio.write_dataframe(
        table, gpkg, layer="layer_styles", driver="GPKG", layer_options={"FID": "id"}
    )
