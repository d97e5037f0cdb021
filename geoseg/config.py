"""The typed pipeline config: one schema for ``geoseg train --config``, ``geoseg run`` and the API.

A config is loaded from YAML (or built in code), validated up front, and written back resolved
into the run folder. Unknown keys fail at once and name the valid ones. Units: sizes in pixels
unless a name says otherwise (``min_area_m2``, ``simplify_m``); ``res`` in CRS units.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from geoseg.errors import ConfigError, InputNotFoundError


def _number_as_text(v: Any) -> Any:
    # YAML and `--set train.precision=32` read 32 as a number; the setting's values are text.
    return str(v) if isinstance(v, int) and not isinstance(v, bool) else v


def _auto_as_none(v: Any) -> Any:
    # a setting whose default picks itself reads `auto` as "not set"
    return None if v == "auto" else v


Precision = Annotated[Literal["auto", "32", "bf16", "16"], BeforeValidator(_number_as_text)]
Device = Literal["auto", "cpu", "cuda"]
S = TypeVar("S", bound=BaseModel)


class _Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, use_attribute_docstrings=True
    )


class SplitConfig(_Section):
    """How the catalog is divided into train/val/test regions (never by random patch)."""

    method: Literal["blocks", "files", "roi"] = "blocks"
    """How regions are assigned: ``blocks`` (a grid over the imagery), ``files`` (whole files)
    or ``roi`` (a vector file)."""
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    """Train, val, test fractions of the blocks or files; they must sum to 1."""
    block_size: int = 512
    """Side of a split block, in pixels of the target grid (``method: blocks``)."""
    gap: int | None = None
    """Pixels left unused between regions of different splits; default: the patch size."""
    roi_file: str | None = None
    """Vector file with a ``split`` column (train/val/test) when ``method: roi``."""
    val_files: list[str] = Field(default_factory=list)
    """``method: files``: file-name patterns (e.g. ``3_banepa_*``) of the validation files;
    with ``val_files`` or ``test_files`` the files are chosen by name and ``ratios`` is unused.
    Only ``test_files`` (or a val ratio of 0): no validation, every other file trains and
    ``best.ckpt`` is the latest epoch."""
    test_files: list[str] = Field(default_factory=list)
    """``method: files``: file-name patterns of the test files, e.g. a whole town held out;
    files matching neither list train."""
    seed: int = 0
    """Seed of the block/file assignment."""

    @field_validator("val_files", "test_files", mode="before")
    @classmethod
    def _patterns(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _named_files_need_the_files_method(self) -> SplitConfig:
        if (self.val_files or self.test_files) and self.method != "files":
            raise ValueError(
                "split.val_files and split.test_files choose whole files: set split.method: files"
            )
        return self

    @field_validator("ratios")
    @classmethod
    def _ratios_sum_to_one(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(r < 0 for r in v) or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError(
                f"split ratios {list(v)} must be >= 0 and sum to 1, e.g. [0.8, 0.1, 0.1]"
            )
        return v


class DataConfig(_Section):
    """Where the imagery and labels are, and how they are read."""

    images: list[str] = Field(default_factory=list)
    """Folder(s), glob(s), a text file of paths, or a STAC ItemCollection JSON."""
    labels: str | None = None
    """A folder of mask GeoTIFFs, a vector file (GeoPackage, GeoJSON, Shapefile), or a folder of
    vector files (read as one layer)."""
    layout: Literal["geo", "tiles"] = "geo"
    """``geo``: georeferenced rasters; ``tiles``: ``img/`` + ``mask/`` folders of plain tiles."""
    label_attribute: str | None = None
    """Vector labels: the column holding class ids; none = every polygon is class 1."""
    target: Literal["semantic", "instances"] = "semantic"
    """What the model learns: ``semantic`` (the mask's classes) or ``instances`` (background,
    building interior, building edge, contact between buildings: touching buildings come out as
    separate footprints; needs building polygons or instance-id rasters as labels)."""
    edge_width_m: float = Field(default=1.0, gt=0)
    """``target: instances``: width of the edge band inside each outline, in metres (>= 1 pixel)."""
    contact_distance_m: float = Field(default=2.5, ge=0)
    """``target: instances``: background this close (metres) to two buildings is ``contact``."""
    all_touched: bool = False
    """Vector labels: burn every pixel a polygon touches, not only those whose centre it covers."""
    mask_mapping: dict[int, int] = Field(default_factory=dict)
    """Mask value remapping applied on read, e.g. ``{255: 1}`` (WHU) or ``{0: 255, 1: 0, ...}``."""
    bands: list[int] | None = None
    """1-based band indexes to use, in order; none = all bands."""
    crs: str | None = None
    """Target CRS (EPSG code or WKT); default: the first raster's."""
    res: float | None = None
    """Target pixel size in CRS units; default: the first raster's."""
    ignore_index: int = 255
    """Mask value that is left out of the loss and the metrics (nodata, unlabelled)."""
    normalization: Literal["meanstd", "percentile", "patch"] = "meanstd"
    """Per-band statistics from the training split: ``meanstd`` or ``percentile`` (2nd/98th); or
    ``patch``: each patch's own mean/std, in training and inference alike (travels to imagery of
    another brightness or colour; recorded in the model card)."""
    augment: bool = True
    """Random flips and 90-degree rotations of training patches."""
    color_jitter: float = 0.0
    """Brightness/contrast jitter strength (0 = off)."""
    grayscale: float = Field(default=0.0, ge=0, le=1)
    """Probability that a training patch is shown without colour (its bands replaced by their
    mean): shapes over colours, for roofs of colours the training areas lack (0 = off)."""
    scale_range: list[float] = Field(default_factory=lambda: [1.0, 1.0])
    """Random zoom of training patches: each patch is shown enlarged by a factor drawn
    log-uniformly from [low, high] (0.7 = buildings 30 % smaller, mirrored at the patch border;
    1.4 = a crop shown 40 % larger), image bilinear, mask nearest: buildings of more sizes
    than the training imagery's pixel size gives. ``[1, 1]`` = off."""
    sample_by: Literal["area", "file"] = "area"
    """How training patches are spread over the catalog: ``area`` (every train pixel equally
    likely: a large file gives most patches) or ``file`` (each file about the same share of
    patches, whatever its size: a small town is not drowned by a large one)."""
    split: SplitConfig = Field(default_factory=SplitConfig)

    @field_validator("images", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str | Path) else v

    @field_validator("scale_range")
    @classmethod
    def _zoom_range(cls, v: list[float]) -> list[float]:
        if len(v) != 2 or not 0 < v[0] <= v[1]:
            raise ValueError(
                f"data.scale_range {list(v)} must be [low, high] with 0 < low <= high, "
                "e.g. [0.7, 1.4] (or [1, 1] for off)"
            )
        return v


class ModelConfig(_Section):
    """Which network, and the classes it predicts."""

    name: str = "unet"
    """A registered model: ``unet`` (the seed's plain UNet) or ``unet-resnet34`` and other smp
    ones."""
    width: int = 64
    """Base number of channels of the plain UNet."""
    classes: int | None = None
    """Number of classes (background included); default: len(class_names), else 2."""
    class_names: list[str] | None = None
    """Names by class id, e.g. [background, building]."""
    encoder_weights: str | None = None
    """A local weights file for the encoder; nothing is ever downloaded."""

    @model_validator(mode="after")
    def _classes_agree(self) -> ModelConfig:
        if self.classes is not None and self.class_names is not None:
            if self.classes != len(self.class_names):
                raise ValueError(
                    f"classes={self.classes} but {len(self.class_names)} class_names were given; "
                    "give one name per class"
                )
        return self

    @property
    def num_classes(self) -> int:
        if self.classes is not None:
            return self.classes
        return len(self.class_names) if self.class_names else 2

    @property
    def resolved_class_names(self) -> list[str]:
        if self.class_names:
            return list(self.class_names)
        if self.num_classes == 2:
            return ["background", "building"]
        return [f"class_{i}" for i in range(self.num_classes)]


class TrainConfig(_Section):
    """The training loop."""

    patch_size: int = 256
    """Side of a training patch in pixels; divisible by the model's downsampling."""
    batch_size: int = 8
    """Patches per optimisation step (per process with ``devices`` > 1)."""
    epochs: int = 100
    """Passes over ``patches_per_epoch`` random patches."""
    patches_per_epoch: int | None = None
    """Random training patches per epoch; default: the train area / patch area."""
    lr: float = 1e-3
    """Peak learning rate."""
    weight_decay: float = 1e-4
    """Decoupled weight decay (AdamW) or L2 (Adam, SGD)."""
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    """``adamw``, ``adam`` or ``sgd`` (momentum 0.9)."""
    scheduler: Literal["cosine", "plateau", "step", "onecycle", "none"] = "cosine"
    """Learning-rate schedule: ``cosine``, ``plateau``, ``step``, ``onecycle`` or ``none``."""
    loss: str = "ce"
    """``ce``, ``dice``, ``focal`` or a sum such as ``ce+dice``."""
    class_weights: list[float] | None = None
    """Loss weight per class id; none = equal."""
    grad_clip: float | None = 1.0
    """Clip the gradient norm to this value; none = off."""
    precision: Precision = "auto"
    """``auto`` (bf16 autocast where the device runs it fast), ``32``, ``bf16`` or ``16`` (CUDA,
    with a gradient scaler)."""
    channels_last: Annotated[bool | None, BeforeValidator(_auto_as_none)] = None
    """The channels-last memory format; none (or ``auto``) = on CUDA and with bf16, where its
    convolutions are faster, off for fp32 on a CPU, where the contiguous format trained faster."""
    device: Device = "auto"
    """``auto`` = CUDA when available, else CPU."""
    devices: int = 1
    """Data-parallel processes (GPUs) on this machine."""
    num_nodes: int = 1
    """Machines taking part (under ``torchrun``)."""
    seed: int = 0
    """Seed of weights, sampling and augmentation; same seed, same run on CPU."""
    early_stop: int | None = None
    """Stop after this many epochs without improvement of the monitored metric."""
    workers: int = 0
    """DataLoader worker processes (0 = read in the training process)."""
    monitor: str = "auto"
    """Metric that picks best.ckpt: ``auto`` = building IoU when a building class exists (with
    ``data.target: instances``: interior + edge), else mIoU; or ``object_f1`` (buildings matched in
    the validation patches), ``miou``, ``val_loss``, ``iou_<class>``, ``f1_<class>``."""


class InferConfig(_Section):
    """Sliding-window inference: ``geoseg infer``'s options, ``infer.predict``'s settings."""

    inputs: list[str] = Field(default_factory=list)
    """Rasters to predict; default in a pipeline: the test split's images."""
    patch_size: int | None = Field(default=None, ge=1)
    """Side of a predicted patch in pixels; default: the checkpoint's (the training patch size)."""
    overlap: int | None = Field(default=None, ge=0)
    """Pixels shared by neighbouring patches, blended with a smooth window; default:
    min(64, patch_size / 4)."""
    batch_size: int | None = Field(default=None, ge=1)
    """Patches per forward pass; default: tuned to the device."""
    tta: Literal["none", "flip", "d4"] = "none"
    """Test-time augmentation: ``none``, ``flip`` (4 flips) or ``d4`` (8 rotations/flips)."""
    scales: list[float] = Field(default_factory=lambda: [1.0], min_length=1)
    """Multi-scale test-time augmentation: the input is predicted zoomed by each factor (0.8 =
    buildings shown 20 % smaller; after ``resample``, relative to the training pixel size) and
    the class probabilities are averaged on the input's grid. ``[1]`` = off; each scale costs
    one more prediction (0.8, 1, 1.25: 3.2x)."""
    precision: Annotated[Literal["auto", "32", "bf16"], BeforeValidator(_number_as_text)] = "auto"
    """``auto`` (bf16 where fast), ``32`` or ``bf16``."""
    device: Device = "auto"
    """``auto`` = CUDA when available, else CPU."""
    workers: int = Field(default=1, ge=1)
    """Local dask worker processes; 1 = in this process."""
    scheduler: str | None = None
    """Address of an existing dask scheduler, e.g. ``tcp://host:8786``."""
    cog: bool = True
    """Write Cloud-Optimized GeoTIFFs (tiled, compressed, overviews)."""
    probabilities: bool = False
    """Also write per-class probabilities next to each mask (``*_prob.tif``)."""
    resample: bool = False
    """Predict at the training pixel size (resampled on the fly) when an input's differs."""
    check_values: bool = True
    """Refuse inputs whose pixel values cannot match the training data (e.g. uint16 against a
    uint8-trained model, reflectance 0-1 against 0-255); false = predict them anyway."""

    @field_validator("inputs", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str | Path) else v

    def resolved_overlap(self, patch_size: int) -> int:
        """``overlap``, or its default for ``patch_size``: min(64, patch_size // 4).

        A quarter of the patch at most keeps the extra work of overlapping patches under
        (4/3)^2 = 1.8x, and is always smaller than the patch (a fixed 64 is not, for 64 px).
        """
        return min(64, patch_size // 4) if self.overlap is None else self.overlap

    @field_validator("scales")
    @classmethod
    def _zoom_factors(cls, v: list[float]) -> list[float]:
        if any(not 0.1 <= f <= 10 for f in v):
            raise ValueError(f"{v}: zoom factors between 0.1 and 10, e.g. [0.8, 1, 1.25]")
        return v


class VectorizeConfig(_Section):
    """Masks to building footprints."""

    enabled: bool = True
    """Run the vectorize stage."""
    classes: list[str] = Field(default_factory=list)
    """Class names or ids to turn into polygons; empty = every class but the background."""
    min_area_m2: float = Field(default=4.0, ge=0)
    """Drop polygons smaller than this, in square metres (also on geographic rasters)."""
    simplify_m: float = Field(default=0.0, ge=0)
    """Simplification tolerance in metres (topology preserved); 0 = off."""
    regularize: bool = False
    """Square building outlines to their dominant orientation."""
    seed_erosion_m: float | None = Field(default=None, ge=0)
    """Instance masks: interior pixels closer than this (metres) to a non-interior pixel do
    not seed the watershed, so a thin bridge of interior between touching buildings does not
    join them (too large loses small buildings' seeds); none = one pixel."""
    min_confidence: float = Field(default=0.0, ge=0, lt=1)
    """Drop polygons whose mean class probability (their ``confidence``) is below this; 0 =
    keep all. Needs the probabilities: ``geoseg run`` then has infer write them."""
    layer: str = "footprints"
    """GeoPackage layer name."""

    @property
    def needs_probabilities(self) -> bool:
        """Whether the footprints read the probability raster (the confidence filter does)."""
        return self.min_confidence > 0


class EvaluateConfig(_Section):
    """Scores against ground truth."""

    enabled: bool = True
    """Run the evaluate stage."""
    truth: str | None = None
    """Vector truth for object metrics; default: the labels when they are a vector file."""
    iou_threshold: float = 0.5
    """A proposal matches a truth polygon when their IoU is strictly greater than this."""


class PipelineConfig(_Section):
    """A whole run: data -> train -> infer -> vectorize -> evaluate, written under ``out``."""

    out: str = "runs/geoseg"
    """Run folder; every stage writes under it."""
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    infer: InferConfig = Field(default_factory=InferConfig)
    vectorize: VectorizeConfig = Field(default_factory=VectorizeConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)

    @model_validator(mode="after")
    def _instance_classes(self) -> PipelineConfig:
        # Instance targets fix the classes; a config written for a building mask still reads.
        if self.data.target != "instances":
            return self
        from geoseg.instances import CLASS_NAMES

        names, count = self.model.class_names, self.model.classes
        if names in (None, ["background", "building"], CLASS_NAMES) and count in (None, 2, 4):
            if names != CLASS_NAMES or count is not None:
                self.model.classes = None
                self.model.class_names = list(CLASS_NAMES)
            return self
        raise ValueError(
            f"data.target: instances predicts the classes {', '.join(CLASS_NAMES)}; remove "
            f"model.class_names ({names}) and model.classes ({count}) or use data.target: semantic"
        )

    @model_validator(mode="after")
    def _overlap_fits_the_patch(self) -> PipelineConfig:
        # Checked when the file is read, not after training: the checkpoint a pipeline predicts
        # with has the training patch size unless infer.patch_size says otherwise.
        patch = self.infer.patch_size or self.train.patch_size
        overlap = self.infer.resolved_overlap(patch)
        if overlap >= patch:
            raise ValueError(
                f"infer.overlap={overlap} must be smaller than the patch size {patch} "
                f"(infer.patch_size or train.patch_size); e.g. {patch // 4}"
            )
        return self


def _format_validation_error(err: ValidationError, source: str, model: type[BaseModel]) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        section: Any = model
        for part in first["loc"][:-1]:
            field = section.model_fields.get(str(part))
            section = field.annotation if field is not None else section
        valid = ", ".join(sorted(getattr(section, "model_fields", {})))
        return f"{source}: unknown key '{loc}'; valid keys here: {valid}"
    msg = first["msg"].removeprefix("Value error, ")
    where = f"{loc}: " if loc else ""
    if first["type"] == "value_error" and isinstance(first.get("input"), dict):
        return f"{source}: {where}{msg}"  # a check across keys: the message names them
    return f"{source}: {where}{msg} (got {first.get('input')!r})"


def override(section: S, values: Mapping[str, Any], *, source: str) -> S:
    """A copy of ``section`` with ``values`` (field name -> value) in place of its own, validated.

    How keyword settings (``predict_raster(..., overlap=32)``) and command-line options join a
    settings object: the schema checks them, and every value not given keeps the schema's.

    Raises:
        ConfigError: an unknown name (the valid ones are listed) or a bad value.
    """
    if not values:
        return section
    model = type(section)
    try:
        return model.model_validate({**section.model_dump(), **values})
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source, model)) from None


def parse(data: dict[str, Any], source: str = "config") -> PipelineConfig:
    """Validate a plain dict as a :class:`PipelineConfig`; raise ConfigError naming the key."""
    try:
        return PipelineConfig.model_validate(data or {})
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source, PipelineConfig)) from None


def load(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Load a YAML pipeline config, apply ``key=value`` overrides, validate.

    Relative paths in ``data.images``, ``data.labels``, ``infer.inputs``, ``evaluate.truth`` and
    ``out`` are resolved against the YAML file's folder, so a recipe runs from any directory.
    """
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"{path}: config file not found; check the path")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(
            f"{path}: not valid YAML ({err.__class__.__name__}); fix the syntax"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (data, model, train, ...)")
    data = apply_overrides(data, overrides or [], source=str(path))
    cfg = parse(data, source=str(path))
    return resolve_paths(cfg, path.parent)


def apply_overrides(
    data: dict[str, Any], overrides: list[str], source: str = "--set"
) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (values parsed as YAML) to a nested dict copy."""
    import copy

    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set train.epochs=2")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a section")
            node = nxt
        node[parts[-1]] = value
    return out


def _resolve(p: str, base: Path) -> str:
    if "://" in p or p.startswith("/vsi") or Path(p).is_absolute():
        return p
    return str((base / p).resolve()) if (base / p).exists() or not Path(p).exists() else p


def resolve_paths(cfg: PipelineConfig, base: Path) -> PipelineConfig:
    """Make relative paths in ``cfg`` relative to ``base`` (the config file's folder)."""
    cfg = cfg.model_copy(deep=True)
    cfg.data.images = [_resolve(p, base) for p in cfg.data.images]
    if cfg.data.labels:
        cfg.data.labels = _resolve(cfg.data.labels, base)
    if cfg.data.split.roi_file:
        cfg.data.split.roi_file = _resolve(cfg.data.split.roi_file, base)
    cfg.infer.inputs = [_resolve(p, base) for p in cfg.infer.inputs]
    if cfg.evaluate.truth:
        cfg.evaluate.truth = _resolve(cfg.evaluate.truth, base)
    cfg.out = _resolve(cfg.out, base)
    return cfg


def dump(cfg: PipelineConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (what the run actually used), atomically."""
    from geoseg import io

    io.write_text(path, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def reference_markdown() -> str:
    """Every key of the pipeline file with its default and meaning, as a Markdown table.

    The README's reference is this table (a test keeps the two equal).
    """
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            key = f"{prefix}{name}"
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, key + ".")
                continue
            default = field.get_default(call_default_factory=True)
            shown = "none" if default is None else json.dumps(default)
            doc = " ".join((field.description or "").split()).replace("|", "\\|")
            rows.append(f"| `{key}` | `{shown}` | {doc} |")

    walk(PipelineConfig, "")
    return "\n".join(rows)
