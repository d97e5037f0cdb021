"""Training data, torchgeo-native: catalog → grid → dataset → splits → samplers → batches.

The flow, one module per step:

- :mod:`~geoseg.data.grid`: index images and masks and place them on ONE pixel grid (target
  CRS/resolution); files off it are reprojected once into an aligned cache.
- :mod:`~geoseg.data.dataset`: :class:`GeoRasterDataset`, a torchgeo ``GeoDataset`` over those
  files (RAM or handles opened once per worker), usable in any torchgeo script.
- :mod:`~geoseg.data.splits`: train/val/test regions (blocks, files, ROI polygons), sparse per
  file, so memory follows the pixels, not the catalog's extent.
- :mod:`~geoseg.data.stats`: label values checked, where labels are, band statistics.
- :mod:`~geoseg.data.sampling`: torchgeo's ``RandomGeoSampler``/``GridGeoSampler`` confined to a
  split, deterministic per (seed, epoch), rank-disjoint.
- :mod:`~geoseg.data.loader` and :mod:`~geoseg.data.transforms`: read + ``stack_samples`` in a
  DataLoader, then normalise + augment (any device).
- :mod:`~geoseg.data.build`: :func:`build_training_data` wires them for :mod:`geoseg.train`;
  :mod:`~geoseg.data.interop` takes a user's torchgeo datasets instead of a catalog.

Mask values: class ids, ``ignore_index`` where the image or the label is nodata, outside a
file, or in a region of another split.
"""

from geoseg.data.build import TrainingData, build_training_data
from geoseg.data.dataset import MEMORY_BUDGET, GeoRasterDataset
from geoseg.data.grid import Grid, Sources, Tile
from geoseg.data.interop import sources_from_torchgeo
from geoseg.data.loader import Loader
from geoseg.data.splits import SPLITS
from geoseg.data.stats import band_statistics
from geoseg.data.transforms import BatchTransform

__all__ = [
    "MEMORY_BUDGET",
    "SPLITS",
    "BatchTransform",
    "GeoRasterDataset",
    "Grid",
    "Loader",
    "Sources",
    "Tile",
    "TrainingData",
    "band_statistics",
    "build_training_data",
    "sources_from_torchgeo",
]
