"""build_training_data: catalog → grid → dataset → splits → statistics → loaders."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geoseg.config import DataConfig
from geoseg.data import grid as grid_
from geoseg.data import sampling, splits, stats
from geoseg.data.dataset import MEMORY_BUDGET, GeoRasterDataset
from geoseg.data.grid import Sources, Tile
from geoseg.data.loader import Loader
from geoseg.data.transforms import BatchTransform
from geoseg.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class TrainingData:
    """What the training loop consumes (see docs/CONTRACTS.md)."""

    train: Loader
    val: Loader | None
    """None when the split has no validation region."""
    test: Loader | None
    in_channels: int
    band_names: list[str]
    band_indexes: list[int]
    mean: list[float]
    std: list[float]
    crs_wkt: str
    res: float
    split_path: Path
    test_images: list[Path]
    ignore_index: int
    tiles: list[Tile] = field(default_factory=list, repr=False)
    in_memory: bool = False
    dataset: GeoRasterDataset | None = field(default=None, repr=False)
    """The whole catalog as a torchgeo GeoDataset (images in their dtype, uint8 masks)."""


def build_training_data(
    cfg: DataConfig,
    *,
    patch_size: int,
    batch_size: int,
    run_dir: Path,
    num_classes: int,
    seed: int = 0,
    workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    patches_per_epoch: int | None = None,
    memory_budget: int | None = None,
    dataset: Any = None,
    sources: Sources | None = None,
) -> TrainingData:
    """Index the catalog and labels, split by region, compute band statistics, build loaders.

    Args:
        cfg: the ``data`` section (images, labels, layout, split, normalisation, augmentation).
        patch_size: side of a square patch in pixels of the target grid.
        batch_size: patches per batch.
        run_dir: the run folder; ``split.gpkg`` and ``cache/`` (aligned rasters, burned
            labels) are written there.
        num_classes: classes the model predicts; a label value ≥ it (not ignore) is an error.
        seed: drives the random patches (reproducible tile and offset choice).
        workers: DataLoader worker processes (0 = read in this process).
        rank, world_size: distributed training; each rank draws different patches.
        patches_per_epoch: random training patches per epoch (default: train area / patch area).
        memory_budget: decoded bytes up to which tiles are held in RAM (default 1 GiB).
        dataset: a user's torchgeo datasets (``image_ds & mask_ds``, a pair, or an image
            dataset with masks from ``cfg.labels``) read instead of ``cfg.images``.
        sources: the same, already resolved (:func:`interop.sources_from_torchgeo`).

    Returns:
        TrainingData; memory: the decoded tiles when they fit ``memory_budget``, else only open
        file handles; split bookkeeping proportional to the catalog's pixels, not its extent.

    Raises:
        InputNotFoundError, CatalogError, RasterError, LabelError, ConfigError: user errors,
        each naming the file (or the user's dataset).
    """
    from geoseg.data.interop import sources_from_torchgeo

    run_dir = Path(run_dir)
    if patch_size <= 0 or batch_size <= 0:
        raise ConfigError(f"patch_size={patch_size} and batch_size={batch_size} must be positive")
    if sources is None and dataset is not None:
        sources = sources_from_torchgeo(dataset)
    gap = cfg.split.gap if cfg.split.gap is not None else patch_size
    if cfg.target == "instances" and (cfg.layout == "tiles" or sources is not None):
        raise ConfigError(
            "data.target: instances needs georeferenced rasters with building polygons or "
            "instance-id rasters as data.labels (edge widths are in metres); use data.layout: geo"
        )
    if cfg.layout == "tiles" and sources is None:
        tiles, grid = grid_.place_plain_tiles(cfg, patch=patch_size, gap=gap)
    else:
        tiles, grid = grid_.place_catalog(cfg, cache=run_dir / "cache", sources=sources)
    grid_.check_patch_fits(tiles, patch_size, sources.name if sources else None)
    bands, band_names = grid_.select_bands(tiles, (sources and sources.bands) or cfg.bands)
    ds = GeoRasterDataset.from_tiles(
        tiles,
        grid,
        bands=bands,
        band_names=band_names,
        ignore_index=cfg.ignore_index,
        native_dtypes=True,
    )
    if ds.memory_bytes() <= (MEMORY_BUDGET if memory_budget is None else memory_budget):
        ds.load()
    cell = max(1, min(16, patch_size // 4))
    labelled = stats.scan_masks(ds, num_classes, cell)
    layout = "geo" if sources is not None else cfg.layout
    split = splits.make_split(tiles, cfg, grid, patch=patch_size, gap=gap, layout=layout)
    split_path = splits.write_split(run_dir / "split.gpkg", split, tiles, grid)

    entries = sampling.train_entries(split, tiles, patch_size)
    if not entries:
        raise ConfigError("no training file is at least patch_size large; use a smaller patch_size")
    train_view = ds.with_entries(entries)
    patches = sampling.RandomPatches(
        train_view, split, labelled, patch=patch_size, gap=gap, by_file=cfg.sample_by == "file"
    )
    if patches_per_epoch is None:
        patches_per_epoch = max(batch_size, split.train_pixels // (patch_size * patch_size))
    n_batches = max(1, patches_per_epoch // (batch_size * world_size))

    # Statistics from a sample of training patches (nodata excluded), drawn with their own key.
    _, windows = patches.draw((seed, stats.STAT_PATCHES, 0), stats.STAT_PATCHES)
    # per-patch normalisation keeps the mean/std: the floor of each patch's std, and the value
    # check of inference
    method = "meanstd" if cfg.normalization == "patch" else cfg.normalization
    mean, std = stats.patch_statistics(ds, windows, patch_size, method)

    train_batches = sampling.TrainBatches(
        patches,
        batch_size=batch_size,
        n_batches=n_batches,
        seed=seed,
        rank=rank,
        world_size=world_size,
    )
    per_patch = cfg.normalization == "patch"
    augment = BatchTransform(
        mean,
        std,
        augment=cfg.augment,
        color_jitter=cfg.color_jitter,
        per_patch=per_patch,
        grayscale=cfg.grayscale,
        scale_range=cfg.scale_range,
    )
    plain = BatchTransform(mean, std, per_patch=per_patch)
    train = Loader(train_view, train_batches, augment, workers=workers, seed=seed, rank=rank)
    held = [sampling.split_windows(ds, split, labelled, s, patch_size) for s in (1, 2)]
    # No validation region at all (split.ratios' val 0, files chosen by name without
    # val_files): every labelled file trains, and training keeps the latest epoch. A region that
    # was asked for but has no usable patch is an error.
    validation = len(held[0][0].index) > 0
    if validation and not held[0][1]:
        raise ConfigError(
            "the validation split has no usable patch (all nodata or too small); "
            "change split.ratios, split.block_size or patch_size"
        )
    test_images = sorted({tiles[t].source for t in held[1][2]})
    loaders = []
    for view, queries, _ in held:
        # ranks share the grid patches (their metrics are summed over ranks by the trainer)
        mine = queries[rank::world_size] if world_size > 1 else queries
        batches = sampling.FixedBatches(mine, batch_size)
        loaders.append(Loader(view, batches, plain, workers=workers, seed=seed, rank=rank))
    return TrainingData(
        train=train,
        val=loaders[0] if validation else None,
        test=loaders[1] if held[1][1] else None,
        in_channels=len(bands),
        band_names=band_names,
        band_indexes=bands,
        mean=list(mean),
        std=list(std),
        crs_wkt=grid.crs.to_wkt() if grid.crs is not None else "",
        res=grid.res,
        split_path=split_path,
        test_images=test_images,
        ignore_index=cfg.ignore_index,
        tiles=tiles,
        in_memory=ds.in_memory,
        dataset=ds,
    )
