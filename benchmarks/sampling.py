"""Training-patch sampling speed: plain torchgeo vs geoseg vs raw rasterio vs an in-memory array.

Builds a SIZE×SIZE 3-band uint8 tiled GeoTIFF plus its mask (and the same area as 16 files),
then measures samples/s for 256×256 training patches in batches of 16, side by side in one run
(with 0 workers the loaders are timed batch by batch in round-robin, so that a shared machine's
changing load weighs on all of them alike):

  (a) torchgeo: RasterDataset & RasterDataset(is_image=False) + RandomGeoSampler + stack_samples
  (b) reference: geoseg's own pre-torchgeo reader (benchmarks/reference_reader.py, frozen)
  (c) raw:      rasterio window reads (image + mask) from a file opened once
  (d) memory:   slicing numpy arrays already in RAM
  (e) geoseg:   data.build_training_data(...).train: GeoRasterDataset drawn by torchgeo's
                RandomGeoSampler, read + stack_samples, normalise + flips/turns (RAM mode when
                it fits, and streamed)

with 0 workers and with 2 persistent workers, and prints e/b, e/a and e/c. Not a test: timings on
a shared machine are noisy, so read the ratios (measured in the same run) rather than absolutes.
Targets: tg_sampler_vs_geoseg (e/b) >= 0.9, tg_sampler_vs_torchgeo (e/a) >= 10,
geoseg_streamed_vs_raw (e streamed / c) >= 0.8.

    .venv/bin/python benchmarks/sampling.py                 # full size (8192 px)
    .venv/bin/python benchmarks/sampling.py --size 2048 --json out.json
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin
from rasterio.windows import Window
from torch.utils.data import DataLoader, Dataset

PATCH, BATCH = 256, 16
CRS = "EPSG:32631"


def make_data(
    root: Path, size: int, parts: int = 4, compress: str = "none"
) -> tuple[Path, Path, Path, Path]:
    """One SIZE² image + mask, and the same area cut into parts×parts files (tiled 256 px)."""
    rng = np.random.default_rng(0)
    one_img, one_msk = root / "one" / "img", root / "one" / "mask"
    many_img, many_msk = root / "many" / "img", root / "many" / "mask"
    for d in (one_img, one_msk, many_img, many_msk):
        d.mkdir(parents=True)
    # Smooth-ish content (not white noise) so the rasters look like imagery; blocks of 256 px.
    base = rng.integers(0, 256, (3, size // 16 + 1, size // 16 + 1), dtype=np.uint8)
    img = np.repeat(np.repeat(base, 16, axis=1), 16, axis=2)[:, :size, :size]
    img = img + rng.integers(0, 8, img.shape, dtype=np.uint8)
    mask = (img[0] > 128).astype(np.uint8)
    prof = dict(
        driver="GTiff",
        width=size,
        height=size,
        crs=CRS,
        transform=from_origin(500000, 5000000, 0.5, 0.5),
        tiled=True,
        blockxsize=256,
        blockysize=256,
    )
    if compress != "none":
        prof["compress"] = compress
    with rasterio.open(one_img / "scene.tif", "w", count=3, dtype="uint8", **prof) as dst:
        dst.write(img)
    with rasterio.open(one_msk / "scene.tif", "w", count=1, dtype="uint8", **prof) as dst:
        dst.write(mask, 1)
    part = size // parts
    for i in range(parts):
        for j in range(parts):
            t = from_origin(500000 + j * part * 0.5, 5000000 - i * part * 0.5, 0.5, 0.5)
            p = dict(prof, width=part, height=part, transform=t)
            sl = (slice(i * part, (i + 1) * part), slice(j * part, (j + 1) * part))
            with rasterio.open(
                many_img / f"t_{i}_{j}.tif", "w", count=3, dtype="uint8", **p
            ) as dst:
                dst.write(img[:, sl[0], sl[1]])
            with rasterio.open(
                many_msk / f"t_{i}_{j}.tif", "w", count=1, dtype="uint8", **p
            ) as dst:
                dst.write(mask[sl], 1)
    return one_img, one_msk, many_img, many_msk


class RawBatches(Dataset):
    """(c) rasterio window reads from a file opened once per process."""

    def __init__(self, img: Path, msk: Path, size: int, n: int) -> None:
        self.img, self.msk, self.size, self.n = img, msk, size, n
        self.h = None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        if self.h is None:
            self.h = (rasterio.open(self.img), rasterio.open(self.msk))
        rng = np.random.default_rng(i)
        rr = rng.integers(0, self.size - PATCH, BATCH)
        cc = rng.integers(0, self.size - PATCH, BATCH)
        imgs = np.stack(
            [self.h[0].read(window=Window(c, r, PATCH, PATCH)) for r, c in zip(rr, cc, strict=True)]
        )
        msks = np.stack(
            [
                self.h[1].read(1, window=Window(c, r, PATCH, PATCH))
                for r, c in zip(rr, cc, strict=True)
            ]
        )
        return {
            "image": torch.from_numpy(imgs.astype(np.float32)),
            "mask": torch.from_numpy(msks.astype(np.int64)),
        }


class MemBatches(Dataset):
    """(d) slicing arrays already in RAM."""

    def __init__(self, img: np.ndarray, msk: np.ndarray, n: int) -> None:
        self.a, self.m, self.n = img, msk, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng(i)
        size = self.a.shape[1]
        rr = rng.integers(0, size - PATCH, BATCH)
        cc = rng.integers(0, size - PATCH, BATCH)
        imgs = np.stack(
            [self.a[:, r : r + PATCH, c : c + PATCH] for r, c in zip(rr, cc, strict=True)]
        )
        msks = np.stack([self.m[r : r + PATCH, c : c + PATCH] for r, c in zip(rr, cc, strict=True)])
        return {
            "image": torch.from_numpy(imgs.astype(np.float32)),
            "mask": torch.from_numpy(msks.astype(np.int64)),
        }


def rate(loader, n_batches: int, warmup: int = 2) -> float:
    """Samples per second over ``n_batches`` batches, after ``warmup`` batches (workers start)."""
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    t0 = time.perf_counter()
    count = 0
    for _ in range(n_batches):
        b = next(it)
        count += b["image"].shape[0]
    return count / (time.perf_counter() - t0)


def interleaved(
    loaders: dict, n_rounds: int, every: dict[str, int], warmup: int = 2
) -> dict[str, float]:
    """Samples/s of each loader, timed batch by batch in round-robin, so that the load of a
    shared machine, which changes by the minute, weighs on every loader alike."""
    its = {k: iter(v) for k, v in loaders.items()}
    for it in its.values():
        for _ in range(warmup):
            next(it)
    spent = dict.fromkeys(its, 0.0)
    count = dict.fromkeys(its, 0)
    for r in range(n_rounds):
        for k, it in its.items():
            if r % every[k]:
                continue
            t0 = time.perf_counter()
            b = next(it)
            spent[k] += time.perf_counter() - t0
            count[k] += b["image"].shape[0]
    return {k: count[k] / spent[k] for k in its}


def torchgeo_loader(img_dir: Path, msk_dir: Path, workers: int, n_batches: int):
    from torchgeo.datasets import RasterDataset, stack_samples
    from torchgeo.samplers import RandomGeoSampler

    class Img(RasterDataset):
        filename_glob = "*.tif"

    class Msk(RasterDataset):
        filename_glob = "*.tif"
        is_image = False

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = Img(paths=str(img_dir)) & Msk(paths=str(msk_dir))
    sampler = RandomGeoSampler(ds, size=PATCH, length=(n_batches + 4) * BATCH)
    return DataLoader(
        ds,
        sampler=sampler,
        batch_size=BATCH,
        collate_fn=stack_samples,
        num_workers=workers,
        persistent_workers=workers > 0,
    )


def reference_loader(
    img_dir: Path, msk_dir: Path, workers: int, n_batches: int, budget: int | None
):
    """(b) geoseg's pre-torchgeo reader, frozen in reference_reader.py."""
    import reference_reader

    t0 = time.perf_counter()
    loader = reference_reader.train_loader(
        img_dir,
        msk_dir,
        patch=PATCH,
        batch_size=BATCH,
        patches_per_epoch=(n_batches + 4) * BATCH,
        workers=workers,
        memory_budget=1 << 30 if budget is None else budget,
    )
    return loader, time.perf_counter() - t0


def geoseg_loader(
    img_dir: Path, msk_dir: Path, workers: int, n_batches: int, run_dir: Path, budget: int | None
):
    """(e) geoseg: its GeoRasterDataset drawn by torchgeo's samplers."""
    from geoseg import data
    from geoseg.config import DataConfig, SplitConfig

    # Nearly all of the area is training data, as for the other loaders (build_training_data
    # insists on a validation region: it gets 2 % of the blocks).
    cfg = DataConfig(
        images=[str(img_dir)], labels=str(msk_dir), split=SplitConfig(ratios=(0.98, 0.02, 0.0))
    )
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        td = data.build_training_data(
            cfg,
            patch_size=PATCH,
            batch_size=BATCH,
            run_dir=run_dir,
            num_classes=2,
            workers=workers,
            patches_per_epoch=(n_batches + 4) * BATCH,
            memory_budget=budget,
        )
    return td.train, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # reference_reader
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--size", type=int, default=8192, help="side of the test raster in pixels (default 8192)"
    )
    ap.add_argument("--batches", type=int, default=30, help="batches timed per case (default 30)")
    ap.add_argument(
        "--workers",
        type=int,
        default=2,
        help="persistent workers for the second column (default 2)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads in the main process (default 1, as in DataLoader workers: "
        "on a busy machine more threads make torchgeo's per-sample tensor copies 5-15x slower)",
    )
    ap.add_argument("--json", type=Path, default=None, help="write the figures to this JSON file")
    ap.add_argument(
        "--compress",
        default="none",
        help="GeoTIFF compression of the test data: none (default) or e.g. deflate; compressed "
        "data slows (a) and (c), not geoseg's RAM mode",
    )
    ap.add_argument("--keep", type=Path, default=None, help="build the data here and keep it")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("geoseg").setLevel(logging.WARNING)
    from geoseg import progress

    progress.set_enabled(False)
    root = args.keep or Path(tempfile.mkdtemp(prefix="geoseg-bench-"))
    try:
        t0 = time.perf_counter()
        one_img, one_msk, many_img, many_msk = make_data(
            root / "data", args.size, compress=args.compress
        )
        print(
            f"data: {args.size}x{args.size} px, 3-band uint8 + mask, tiled, "
            f"compress={args.compress}, 1 file and 16 files "
            f"(built in {time.perf_counter() - t0:.1f} s); patches {PATCH}px, batch {BATCH}",
            flush=True,
        )
        with rasterio.open(one_img / "scene.tif") as s:
            arr = s.read()
        with rasterio.open(one_msk / "scene.tif") as s:
            marr = s.read(1)
        nb = args.batches
        results: dict[str, dict[str, float]] = {}
        setup: dict[str, float] = {}
        cases = {
            "a_torchgeo_1file": lambda w: torchgeo_loader(one_img, one_msk, w, nb),
            "a_torchgeo_16files": lambda w: torchgeo_loader(many_img, many_msk, w, nb),
            "b_reference_1file": lambda w: reference_loader(one_img, one_msk, w, nb, None),
            "b_reference_16files": lambda w: reference_loader(many_img, many_msk, w, nb, None),
            "b_reference_1file_streamed": lambda w: reference_loader(one_img, one_msk, w, nb, 0),
            "e_geoseg_1file": lambda w: geoseg_loader(
                one_img, one_msk, w, nb, root / f"run1-{w}", None
            ),
            "e_geoseg_16files": lambda w: geoseg_loader(
                many_img, many_msk, w, nb, root / f"run16-{w}", None
            ),
            "e_geoseg_1file_streamed": lambda w: geoseg_loader(
                one_img, one_msk, w, nb, root / f"runs-{w}", 0
            ),
            "c_rasterio_window": lambda w: DataLoader(
                RawBatches(one_img / "scene.tif", one_msk / "scene.tif", args.size, nb + 4),
                batch_size=None,
                num_workers=w,
                persistent_workers=w > 0,
            ),
            "d_memory_slice": lambda w: DataLoader(
                MemBatches(arr, marr, nb + 4),
                batch_size=None,
                num_workers=w,
                persistent_workers=w > 0,
            ),
        }
        for workers in (0, args.workers):
            loaders = {}
            for name, make in cases.items():
                made = make(workers)
                loaders[name] = made[0] if isinstance(made, tuple) else made
                if isinstance(made, tuple):
                    setup[f"{name}_w{workers}"] = round(made[1], 2)
            # torchgeo is ~20-50x slower: one batch in every 4 rounds keeps the run short
            every = {name: 4 if name.startswith("a_") else 1 for name in loaders}
            if workers == 0:
                rates = interleaved(loaders, nb, every)
            else:  # workers prefetch in the background: time each loader on its own
                rates = {k: rate(v, nb // every[k]) for k, v in loaders.items()}
            for name, r in rates.items():
                results.setdefault(name, {})[f"workers_{workers}"] = round(r, 1)
                print(f"  {name:26s} workers={workers}: {r:8.1f} samples/s", flush=True)
            del loaders
        w0, wn = "workers_0", f"workers_{args.workers}"

        def ratio(a: str, b: str, w: str = w0) -> float:
            return round(results[a][w] / results[b][w], 2)

        out = {
            "size": args.size,
            "torch_threads": args.threads,
            "compress": args.compress,
            "patch": PATCH,
            "batch": BATCH,
            "workers": args.workers,
            "samples_per_s": results,
            "setup_s": setup,
            "tg_sampler_vs_geoseg": ratio("e_geoseg_1file", "b_reference_1file"),
            "tg_sampler_vs_torchgeo": ratio("e_geoseg_1file", "a_torchgeo_1file"),
            "geoseg_streamed_vs_raw": ratio("e_geoseg_1file_streamed", "c_rasterio_window"),
            "tg_sampler_vs_geoseg_16files": ratio("e_geoseg_16files", "b_reference_16files"),
            "tg_sampler_vs_geoseg_streamed": ratio(
                "e_geoseg_1file_streamed", "b_reference_1file_streamed"
            ),
            "tg_sampler_vs_torchgeo_16files": ratio("e_geoseg_16files", "a_torchgeo_16files"),
            "geoseg_vs_raw": ratio("e_geoseg_1file", "c_rasterio_window"),
            "reference_streamed_vs_raw": ratio("b_reference_1file_streamed", "c_rasterio_window"),
            f"tg_sampler_vs_torchgeo_{args.workers}workers": ratio(
                "e_geoseg_1file", "a_torchgeo_1file", wn
            ),
            f"tg_sampler_vs_geoseg_{args.workers}workers": ratio(
                "e_geoseg_1file", "b_reference_1file", wn
            ),
        }
        print("\nsamples/s          " + "".join(f"{k:>14s}" for k in (w0, wn)))
        for name, r in results.items():
            print(f"{name:26s}" + "".join(f"{r[k]:14.1f}" for k in (w0, wn)))
        print(
            f"\ne/b (torchgeo-sampled geoseg vs the reference reader, 1 process): "
            f"{out['tg_sampler_vs_geoseg']:.2f}  (target >= 0.9)"
        )
        print(
            f"e/a (geoseg vs torchgeo RasterDataset, 1 process): "
            f"{out['tg_sampler_vs_torchgeo']:.1f}x  (target >= 10)"
        )
        print(
            f"e/c streamed (no RAM) vs raw rasterio: {out['geoseg_streamed_vs_raw']:.2f}  "
            f"(target >= 0.8; the reference reader: {out['reference_streamed_vs_raw']:.2f})"
        )
        print(
            f"16 files: e/b = {out['tg_sampler_vs_geoseg_16files']:.2f}, e/a = "
            f"{out['tg_sampler_vs_torchgeo_16files']:.1f}x; {args.workers} workers: e/a = "
            f"{out[f'tg_sampler_vs_torchgeo_{args.workers}workers']:.1f}x, e/b = "
            f"{out[f'tg_sampler_vs_geoseg_{args.workers}workers']:.2f}"
        )
        print(f"setup (index, stats, read into RAM), s: {setup}")
        if args.json:
            args.json.write_text(json.dumps(out, indent=2))
        return out
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
