"""The whole chain as one reproducible run: train -> infer -> vectorize -> evaluate.

Every stage writes into one run folder and records a hash of what it consumed (its settings, and
the size and modification time of its input files, including the previous stage's outputs). A
stage whose record matches and whose outputs exist is skipped, so an interrupted run resumes where
it stopped, and changing a setting reruns that stage and everything after it::

    RUN/train/            checkpoints, metrics.csv, curves.png, split.gpkg (see geoseg.train)
    RUN/predictions/      one mask GeoTIFF per input (+ probabilities)
    RUN/footprints.gpkg   building footprints of all predictions, one layer, the training CRS
    RUN/report.json       pixel and object scores on the test regions
    RUN/preview.png       image, truth, prediction and footprints of one test region
    RUN/.stages/*.json    the stage records
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from geoseg import io
from geoseg.config import InferConfig, PipelineConfig
from geoseg.errors import ConfigError

log = logging.getLogger(__name__)

Stage = Literal["train", "infer", "vectorize", "evaluate"]
STAGES: tuple[Stage, ...] = ("train", "infer", "vectorize", "evaluate")


@dataclass
class StageOutcome:
    """What one stage did: ran or was skipped, how long it took, what it wrote."""

    name: Stage
    skipped: bool
    seconds: float
    outputs: list[Path] = field(default_factory=list)


@dataclass
class RunResult:
    """Where a pipeline run put its outputs, and its scores."""

    run_dir: Path
    stages: list[StageOutcome]
    checkpoint: Path | None = None
    predictions: list[Path] = field(default_factory=list)
    footprints: Path | None = None
    report: dict[str, Any] | None = None
    preview: Path | None = None


# --------------------------------------------------------------------------------------------
# stage records


class _Records:
    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir / ".stages"

    def _path(self, stage: str, kind: str = "done") -> Path:
        return self.dir / f"{stage}.{kind}.json"

    def matches(self, stage: str, digest: str) -> list[Path] | None:
        """The recorded outputs if ``stage`` finished with ``digest`` and they all exist."""
        path = self._path(stage)
        if not path.is_file():
            return None
        rec = json.loads(path.read_text())
        outputs = [Path(p) for p in rec.get("outputs", [])]
        if rec.get("hash") != digest or not all(p.exists() for p in outputs):
            return None
        return outputs

    def started(self, stage: str) -> str | None:
        path = self._path(stage, "started")
        return json.loads(path.read_text()).get("hash") if path.is_file() else None

    def start(self, stage: str, digest: str) -> None:
        self._path(stage).unlink(missing_ok=True)
        io.write_json({"hash": digest}, self._path(stage, "started"), indent=None)

    def finish(self, stage: str, digest: str, outputs: list[Path]) -> None:
        rec = {
            "hash": digest,
            "outputs": [str(p) for p in outputs],
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        io.write_json(rec, self._path(stage), indent=1)


# --------------------------------------------------------------------------------------------
# the stages


def _train(cfg: PipelineConfig, run_dir: Path, records: _Records, digest: str) -> list[Path]:
    from geoseg import train

    train_dir = run_dir / "train"
    # Same settings as the interrupted attempt: continue from last.ckpt; else start afresh.
    resume = records.started("train") == digest and (train_dir / "last.ckpt").is_file()
    records.start("train", digest)
    result = train.fit(cfg, train_dir, resume=resume, overwrite=not resume)
    return [Path(result.best)]


def _test_split(run_dir: Path) -> tuple[Any, list[Path]]:
    """The test split written by training: (regions or None, files of a file-based split).

    Region-based splits (blocks, roi) give polygons to restrict the scores to; file-based splits
    give whole files, predicted and scored in full, and their footprints as the regions (so
    vector truth covering other files, e.g. the training towns, is left out of the scores).
    """
    import geopandas as gpd

    path = run_dir / "train" / "split.gpkg"
    if not path.is_file():
        return None, []
    regions = gpd.read_file(path)
    if "split" not in regions.columns:
        return None, []
    test = regions[regions["split"] == "test"]
    files = [Path(f) for f in ";".join(test.get("files", [])).split(";") if f]
    return (test if len(test) and test.crs is not None else None), files


def _infer_inputs(cfg: PipelineConfig, run_dir: Path) -> list[Path]:
    """``infer.inputs``, else the images that the test split covers."""
    from geoseg import catalog

    if cfg.infer.inputs:
        return catalog.find_rasters(cfg.infer.inputs)
    regions, files = _test_split(run_dir)
    if files:
        return files
    images = catalog.find_rasters(cfg.data.images)
    if regions is None:
        return images
    import geopandas as gpd
    import rasterio
    from shapely.geometry import box

    chosen = []
    for path in images:
        with rasterio.open(path) as src:
            if src.crs is None:
                continue
            footprint = gpd.GeoSeries([box(*src.bounds)], crs=src.crs).to_crs(regions.crs)
        if regions.intersects(footprint.iloc[0]).any():
            chosen.append(path)
    return chosen or images


def _infer_settings(cfg: PipelineConfig) -> InferConfig:
    """``cfg.infer``, with probabilities written when the vectorize stage needs them."""
    if cfg.vectorize.enabled and cfg.vectorize.needs_probabilities:
        return cfg.infer.model_copy(update={"probabilities": True})
    return cfg.infer


def _infer(cfg: PipelineConfig, run_dir: Path, checkpoint: Path, inputs: list[Path]) -> list[Path]:
    """One mask per input under RUN/predictions/ (one dask client for all of them)."""
    from geoseg import infer

    return infer.predict(
        checkpoint,
        inputs,
        run_dir / "predictions",
        settings=_infer_settings(cfg),
        overwrite=True,
        allow_ungeoreferenced=cfg.data.layout == "tiles",
    )


def _vectorize(cfg: PipelineConfig, run_dir: Path, predictions: list[Path]) -> list[Path]:
    import geopandas as gpd
    import pandas as pd

    from geoseg import infer, vectorize

    v = cfg.vectorize
    frames = []
    for pred in predictions:
        prob = infer.probability_path(pred)
        gdf = vectorize.polygons(
            pred,
            probabilities=prob if prob.is_file() else None,
            allow_ungeoreferenced=cfg.data.layout == "tiles",
            **vectorize.footprint_options(v),
        )
        gdf["source"] = pred.name
        frames.append(gdf)
    # One GeoPackage layer has one CRS: the first prediction's (the training grid's, normally).
    crs = frames[0].crs
    merged = gpd.GeoDataFrame(
        pd.concat(
            [f.to_crs(crs) if f.crs is not None and f.crs != crs else f for f in frames],
            ignore_index=True,
        ),
        crs=crs,
    )
    out = run_dir / "footprints.gpkg"
    vectorize.write(merged, out, layer=v.layer, overwrite=True)
    return [out]


def _truth_rasters(
    cfg: PipelineConfig, run_dir: Path, predictions: list[Path]
) -> list[Path | None]:
    """A truth mask on each prediction's grid, in model class ids, with the class names tagged.

    Label rasters are remapped with ``data.mask_mapping`` (their nodata becomes the ignore
    value); vector labels are burned. Written under ``RUN/evaluate/truth/`` so pixel scores and
    vectorised truth footprints read the same ids as the predictions.
    """
    import numpy as np
    import rasterio

    from geoseg import catalog, labels

    label_source = cfg.data.labels or cfg.evaluate.truth
    if not label_source or not Path(label_source).exists():
        return [None] * len(predictions)
    src = Path(label_source)
    cache = run_dir / "evaluate" / "truth"
    if cfg.data.target == "instances":  # the same targets as training, on each prediction
        from geoseg import instances

        return instances.training_masks(
            src,
            predictions,
            predictions,
            cache,
            edge_width_m=cfg.data.edge_width_m,
            contact_distance_m=cfg.data.contact_distance_m,
            attribute=cfg.data.label_attribute,
            all_touched=cfg.data.all_touched,
        )
    names = cfg.model.resolved_class_names
    ignore = cfg.data.ignore_index
    out: list[Path | None] = []
    if src.is_dir() and not labels.vector_folder(src):
        # Predictions keep their image's base name: pair them with masks as training did.
        masks = catalog.find_rasters([str(src)], suffixes=catalog.TILE_SUFFIXES)
        for pred, mask in zip(
            predictions, labels.match_masks(predictions, masks, by_overlap=False), strict=True
        ):
            if mask is None:
                out.append(None)
                continue
            with rasterio.open(mask) as msrc, rasterio.open(pred) as psrc:
                if (msrc.width, msrc.height) != (psrc.width, psrc.height):
                    log.warning("%s: not on the grid of %s; left out of the scores", mask, pred)
                    out.append(None)
                    continue
                lut = labels.mapping_lut(
                    cfg.data.mask_mapping, nodata=msrc.nodata, ignore_index=ignore
                )
                grid = dict(
                    crs=psrc.crs, transform=psrc.transform, width=psrc.width, height=psrc.height
                )
                values = lut[msrc.read(1)].astype(np.uint8)
            out.append(
                io.write_mask(
                    values,
                    cache / f"{pred.stem}.tif",
                    grid,
                    class_names=names,
                    nodata=ignore,
                    inputs=[pred, mask],
                )
            )
    else:
        out = [
            labels.rasterize(
                src,
                like=pred,
                out=cache / f"{pred.stem}.tif",
                attribute=cfg.data.label_attribute,
                all_touched=cfg.data.all_touched,
                overwrite=True,
                class_names=names,
            )
            for pred in predictions
        ]
    return out


def _pixel_scores(
    cfg: PipelineConfig, predictions: list[Path], truths: list[Path | None], regions: Any
) -> dict[str, Any] | None:
    """One confusion matrix over every prediction's test regions (evaluate.confusion_matrix)."""
    from geoseg import evaluate

    total = None
    for pred, truth in zip(predictions, truths, strict=True):
        if truth is None:
            continue
        cm = evaluate.confusion_matrix(
            pred,
            truth,
            num_classes=cfg.model.num_classes,
            ignore_index=cfg.data.ignore_index,
            regions=regions,
        )
        total = cm if total is None else total.merge(cm)
    if total is None:
        return None
    scores = total.scores(cfg.model.resolved_class_names)
    if cfg.data.target == "instances":  # building = interior + edge, as a semantic model's
        from geoseg import instances

        scores["per_class"]["building"] = instances.building_scores(total.matrix)
    return scores


def _truth_polygons(cfg: PipelineConfig, truths: list[Path | None]):
    import geopandas as gpd
    import pandas as pd

    # Object truth: evaluate.truth, else vector labels, else the truth masks vectorised.
    from geoseg import labels, vectorize

    src = cfg.evaluate.truth or cfg.data.labels
    if src and labels.vector_folder(src):  # polygons split over several files
        return labels.read_vector(src)
    if src and Path(src).is_file() and Path(src).suffix.lower() not in (".tif", ".tiff"):
        return io.read_vector(src)
    frames = [
        vectorize.polygons(
            t,
            classes=list(cfg.vectorize.classes) or None,
            allow_ungeoreferenced=cfg.data.layout == "tiles",
        )
        for t in truths
        if t is not None
    ]
    if not frames:
        return None
    crs = frames[0].crs
    return gpd.GeoDataFrame(
        pd.concat([f.to_crs(crs) if f.crs is not None else f for f in frames], ignore_index=True),
        crs=crs,
    )


def _evaluate(
    cfg: PipelineConfig, run_dir: Path, predictions: list[Path], footprints: Path | None
) -> list[Path]:
    from geoseg import evaluate, plots

    regions, files = _test_split(run_dir)
    truths = _truth_rasters(cfg, run_dir, predictions)
    report: dict[str, Any] = {
        "area": (
            "test split files"
            if files
            else "test split regions"
            if regions is not None
            else "whole predicted rasters"
        ),
        "predictions": [str(p) for p in predictions],
    }
    pixels = _pixel_scores(cfg, predictions, truths, regions)
    if pixels is not None:
        report["pixels"] = pixels
    if footprints is not None and footprints.is_file():
        truth_polys = _truth_polygons(cfg, truths)
        if truth_polys is not None:
            objects = evaluate.objects(
                io.read_vector(footprints),
                truth_polys,
                iou_threshold=cfg.evaluate.iou_threshold,
                regions=regions,
            )
            objects.pop("matches", None)
            report["objects"] = objects
    report.update(headline(report, cfg.model.resolved_class_names))
    outputs = [evaluate.write_json(report, run_dir / "report.json")]
    # Never raises: a picture must not fail the stage (None when there is nothing to show).
    preview = plots.pipeline_preview(
        cfg, predictions, truths, footprints, regions, run_dir / "preview.png"
    )
    if preview is not None:
        outputs.append(preview)
    return outputs


def headline(report: dict[str, Any], class_names: list[str]) -> dict[str, Any]:
    """The figures a person looks for first: building IoU and F1 (pixel and object)."""
    per_class = report.get("pixels", {}).get("per_class", {})
    name = "building" if "building" in [*class_names, *per_class] else class_names[-1]
    out: dict[str, Any] = {}
    if name in per_class:
        out["building_iou"] = per_class[name]["iou"]
        out["building_pixel_f1"] = per_class[name]["f1"]
    if "pixels" in report:
        out["miou"] = report["pixels"]["miou"]
    if "objects" in report:
        out["building_f1"] = report["objects"]["f1"]
    return out


# --------------------------------------------------------------------------------------------


def validate(cfg: PipelineConfig) -> None:
    """Check every stage's settings before the first one starts (not after an hour of training).

    The schema checks each value and the overlap against the patch size when the file is read;
    this adds what needs the model registry: the model, loss, monitor and patch sizes of training,
    and the inference patch size for the model that training will produce.

    Raises:
        ConfigError: naming the bad setting and a fix.
    """
    from geoseg import infer, train

    train.validate(cfg)
    patch = cfg.infer.patch_size or cfg.train.patch_size
    infer.check_patch(patch, cfg.infer.resolved_overlap(patch), cfg.model.name, "model.name")


def _select(from_stage: Stage | None, until_stage: Stage | None) -> list[Stage]:
    for s in (from_stage, until_stage):
        if s is not None and s not in STAGES:
            raise ConfigError(f"unknown stage '{s}'; stages are {', '.join(STAGES)}")
    lo = STAGES.index(from_stage) if from_stage else 0
    hi = STAGES.index(until_stage) if until_stage else len(STAGES) - 1
    if lo > hi:
        raise ConfigError(f"--from {from_stage} comes after --until {until_stage}")
    return list(STAGES[lo : hi + 1])


def run(
    cfg: PipelineConfig,
    *,
    from_stage: Stage | None = None,
    until_stage: Stage | None = None,
    force: bool = False,
    on_stage: Callable[[StageOutcome], None] | None = None,
) -> RunResult:
    """Run the pipeline's stages in order into ``cfg.out``, skipping those already done.

    Args:
        cfg: the validated pipeline config (``geoseg.config.load``).
        from_stage: first stage to consider; earlier stages must have finished before.
        until_stage: last stage to run.
        force: rerun the selected stages even when their records match.
        on_stage: called after each stage (the CLI prints a line per stage).

    Returns:
        A RunResult with the checkpoint, predictions, footprints, report and preview paths.
    """
    from geoseg import remote

    # Remote images (s3://, https://, STAC) are read with the remote GDAL options all run long.
    with remote.env([*cfg.data.images, *(cfg.infer.inputs or [])]):
        return _run(cfg, from_stage, until_stage, force, on_stage)


def _run(
    cfg: PipelineConfig,
    from_stage: Stage | None,
    until_stage: Stage | None,
    force: bool,
    on_stage: Callable[[StageOutcome], None] | None,
) -> RunResult:
    from geoseg import config as config_mod
    from geoseg.errors import InputNotFoundError

    validate(cfg)
    if cfg.evaluate.enabled and cfg.evaluate.truth and not Path(cfg.evaluate.truth).exists():
        raise InputNotFoundError(
            f"{cfg.evaluate.truth}: evaluate.truth not found; "
            "fix the path or --set evaluate.truth=null"
        )
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    records = _Records(run_dir)
    selected = _select(from_stage, until_stage)
    result = RunResult(run_dir=run_dir, stages=[])
    upstream: list[Path] = []

    def step(
        stage: Stage, settings: Any, inputs: list[Path], work: Callable[[str], list[Path]]
    ) -> list[Path]:
        digest = io.digest([stage, settings, io.fingerprint(inputs)])
        done = records.matches(stage, digest)
        t0 = time.perf_counter()
        if stage not in selected or (done is not None and not force):
            if done is None:
                raise ConfigError(
                    f"{run_dir}: stage '{stage}' has not finished with these settings; "
                    f"run without --from/--until to run it"
                )
            outcome = StageOutcome(stage, True, 0.0, done)
        else:
            outputs = work(digest)
            records.finish(stage, digest, outputs)
            outcome = StageOutcome(stage, False, time.perf_counter() - t0, outputs)
        if not result.stages:
            # What the run used, written once its first stage is done: a run that failed at
            # once leaves no pipeline.yaml that makes its folder look like a finished run.
            config_mod.dump(cfg, run_dir / "pipeline.yaml")
        result.stages.append(outcome)
        if on_stage is not None:
            on_stage(outcome)
        return outcome.outputs

    last = selected[-1]
    data_inputs = [*cfg.data.images, *([cfg.data.labels] if cfg.data.labels else [])]
    ckpt = step(
        "train",
        [
            cfg.data.model_dump(mode="json"),
            cfg.model.model_dump(mode="json"),
            cfg.train.model_dump(mode="json"),
        ],
        [Path(p) for p in data_inputs],
        lambda d: _train(cfg, run_dir, records, d),
    )
    checkpoint = result.checkpoint = ckpt[0]
    if last == "train":
        return result

    inputs = _infer_inputs(cfg, run_dir)
    upstream = [checkpoint, *inputs]
    result.predictions = step(
        "infer",
        _infer_settings(cfg).model_dump(mode="json"),
        upstream,
        lambda d: _infer(cfg, run_dir, checkpoint, inputs),
    )
    if last == "infer":
        return result

    if cfg.vectorize.enabled:
        fp = step(
            "vectorize",
            cfg.vectorize.model_dump(mode="json"),
            result.predictions,
            lambda d: _vectorize(cfg, run_dir, result.predictions),
        )
        result.footprints = fp[0]
    if last == "vectorize":
        return result

    if cfg.evaluate.enabled:
        ev_inputs = [
            *result.predictions,
            *([result.footprints] if result.footprints else []),
            *([Path(cfg.evaluate.truth)] if cfg.evaluate.truth else []),
            *([Path(cfg.data.labels)] if cfg.data.labels else []),
        ]
        outs = step(
            "evaluate",
            [cfg.evaluate.model_dump(mode="json"), cfg.data.mask_mapping, cfg.vectorize.classes],
            ev_inputs,
            lambda d: _evaluate(cfg, run_dir, result.predictions, result.footprints),
        )
        result.report = json.loads(outs[0].read_text())
        result.preview = next((p for p in outs if p.suffix == ".png"), None)
    return result
