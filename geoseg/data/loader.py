"""Batches for the training loop: a torch DataLoader over the dataset (read + ``stack_samples``),
then :class:`~geoseg.data.transforms.BatchTransform` (normalise + augment)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from geoseg.data.dataset import GeoRasterDataset
from geoseg.data.sampling import FixedBatches, TrainBatches, seed_of
from geoseg.data.transforms import BatchTransform


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """torchgeo's ``stack_samples`` (``image`` [B, C, H, W] and ``mask`` [B, H, W] stacked,
    ``bounds`` and ``crs`` lists), without its copy when the samples are already the rows of
    one batch tensor (as ``GeoRasterDataset.__getitems__`` reads them)."""
    from torchgeo.datasets import stack_samples

    batch: dict[str, Any] = {}
    for key in ("image", "mask"):
        base = _rows_of_one_tensor([s[key] for s in samples]) if key in samples[0] else None
        if base is not None:
            batch[key] = base
    rest = stack_samples([{k: v for k, v in s.items() if k not in batch} for s in samples])
    return {**rest, **batch}


def _rows_of_one_tensor(tensors: list[Any]) -> torch.Tensor | None:
    base = getattr(tensors[0], "_base", None)
    if not isinstance(base, torch.Tensor) or base.shape[0] != len(tensors):
        return None
    if any(
        t._base is not base or t.data_ptr() != base[k].data_ptr() for k, t in enumerate(tensors)
    ):
        return None
    return base


def bounds_tensor(bounds: list[Any]) -> torch.Tensor:
    """[B, 4] float64 (xmin, ymin, xmax, ymax) of torchgeo query slices."""
    return torch.tensor(
        [[q[0].start, q[1].start, q[0].stop, q[1].stop] for q in bounds], dtype=torch.float64
    )


class Loader:
    """An iterable of batch dicts with ``len()`` = batches per pass; workers via torch DataLoader.

    Each pass over a training loader is a new epoch (new random patches, reproducible by seed);
    ``set_epoch(e)`` picks the epoch of the next pass. ``state_dict()`` says where a pass stands
    (epoch, batches handed out), so a run resumed from it continues with exactly the batches an
    uninterrupted run would have seen. A batch: ``image`` float32 [B, C, H, W] normalised,
    ``mask`` int64 [B, H, W], ``bounds`` float64 [B, 4], ``crs``; with ``transform=None`` the raw
    collated batch (image in the files' dtype, mask uint8, for normalising elsewhere). After
    :meth:`to` a GPU, ``image`` and ``mask`` are on it, normalised and augmented there.
    """

    def __init__(
        self,
        dataset: GeoRasterDataset,
        batches: TrainBatches | FixedBatches,
        transform: BatchTransform | None,
        *,
        workers: int = 0,
        seed: int = 0,
        rank: int = 0,
    ) -> None:
        self.dataset, self.batches, self.transform = dataset, batches, transform
        self.workers, self.seed, self.rank = workers, seed, rank
        self.epoch, self.start = 0, 0
        self.device: torch.device | None = None
        self._pass: list[int] | None = None
        self._dl: DataLoader | None = None

    def to(self, device: torch.device | str) -> Loader:
        """Hand batches out on ``device``: the raw batch (the image in the files' dtype, uint8
        imagery at a quarter of float32; page-locked when a GPU is present, so the copy is
        asynchronous) is copied there and the transform runs there. The same batches as on the
        CPU: the transform draws its random numbers on the CPU either way."""
        self.device = torch.device(device)
        return self

    def __len__(self) -> int:
        return len(self.batches)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.start = 0
        self.epoch = epoch

    def state_dict(self) -> dict[str, int]:
        if self._pass is not None:
            return {"epoch": self._pass[0], "batch": self._pass[1]}
        return {"epoch": self.epoch, "batch": self.start}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state.get("epoch", self.epoch))
        self.start = int(state.get("batch", 0))

    def _dataloader(self) -> DataLoader:
        if self._dl is None:
            self._dl = DataLoader(
                self.dataset,
                batch_sampler=self.batches,
                collate_fn=collate,
                # its own generator: a pass never draws from the caller's global torch RNG
                generator=torch.Generator().manual_seed(self.seed),
                num_workers=self.workers,
                persistent_workers=self.workers > 0,
                # Page-locked batches let the trainer's non_blocking copies overlap compute.
                pin_memory=torch.cuda.is_available(),
            )
        return self._dl

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch, start = self.epoch, self.start
        self.epoch, self.start = epoch + 1, 0
        self.batches.epoch, self.batches.start = epoch, start
        self._pass = [epoch, start]
        for i, raw in enumerate(self._dataloader(), start):
            raw["bounds"] = bounds_tensor(raw["bounds"])
            if self.device is not None:
                for key in ("image", "mask"):
                    if key in raw:
                        raw[key] = raw[key].to(self.device, non_blocking=True)
            if self.transform is not None:
                g = torch.Generator().manual_seed(seed_of((self.seed, epoch, self.rank, i, 1)))
                raw = self.transform(raw, g)
            self._pass[1] = i + 1
            yield raw
        self._pass = None
