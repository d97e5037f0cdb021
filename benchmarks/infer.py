"""Benchmark ``geoseg infer`` side by side with its ceiling and a torchgeo-style loop.

Prints, on the same generated raster and checkpoint, output megapixels per second (raster
width x height / wall time of the prediction) and peak RSS (VmHWM of a fresh subprocess per
measurement) of:

  (a) model only: forward passes on in-memory batches, as many patches as the raster's window
      grid needs (the ceiling; extrapolated from a sample of batches in --quick mode)
  (b) geoseg infer end to end (read, normalise, model, blend, write a COG)
  (c) a torchgeo-style loop: GridGeoSampler over a RasterDataset, stitched into an in-memory
      array, written at the end
  (d) geoseg infer --workers 2 vs --workers 1, one torch thread per worker
  (n) geoseg infer with the null model (``identity``: one 1x1 convolution, next to no compute):
      the ceiling of geoseg's own data path, at --null-size (8192)
  (f) the I/O floor on the same input: read it with rasterio and write a same-size uint8 COG,
      all threads, nothing else (``null_vs_io_floor`` = (n) / (f))

and once, the model-only rate in bf16 autocast vs fp32 on this device (what ``precision: auto``
should pick). The default run (ResNet18-UNet, fp32, 4k on the CPU, 8k on CUDA; (n) and (f) at
8k) takes ~15 minutes on 2 CPU cores. Examples::

    python benchmarks/infer.py --json bench.json                     # the README's CPU figures
    python benchmarks/infer.py --null-only                           # (n) and (f) alone: ~2 min
    python benchmarks/infer.py --quick                               # minutes on 2 CPU cores
    python benchmarks/infer.py --size 8192 --model unet-resnet18 --json bench.json
    python benchmarks/infer.py --size 8192 --device cuda --batch-size 32 --skip-dask
    python benchmarks/infer.py --rss-only --size 32768 --model unet --width 4   # 32k RSS check

Large inputs stay small on disk: an 8k tile of smooth, compressible content is written block by
block; larger sizes are a VRT mosaicking that tile.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

MiB = 2**20


def vmhwm_mib() -> float:
    """Peak resident memory of this process (VmHWM), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_s() -> float:
    """CPU seconds (user + system, all threads) this process has used."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ---------------------------------------------------------------------------- inputs


def make_tile(path: Path, size: int, block: int = 1024) -> Path:
    """A ``size`` square 3-band uint8 GeoTIFF of smooth 'scene' content, written block-wise."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    if path.exists():
        return path
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=3,
        dtype="uint8",
        crs="EPSG:32631",
        transform=from_origin(500000, 5000000, 0.5, 0.5),
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
        predictor=2,
    )
    yy, xx = np.mgrid[0:block, 0:block].astype(np.float32)
    tmp = path.with_suffix(".partial")
    with rasterio.open(tmp, "w", **profile) as dst:
        for r in range(0, size, block):
            for c in range(0, size, block):
                h, w = min(block, size - r), min(block, size - c)
                phase = (r * 7 + c * 13) % 97
                img = np.stack(
                    [
                        127 + 60 * np.sin((xx + phase) / 37) * np.cos((yy - phase) / 53),
                        127 + 60 * np.cos((xx + yy + phase) / 71),
                        127 + 50 * np.sin((xx - yy) / 29 + phase),
                    ]
                )
                # "buildings": bright rectangles on a grid, so the content is not trivial
                img[:, (yy % 96 < 40) & (xx % 128 < 56)] = 220
                dst.write(img[:, :h, :w].astype(np.uint8), window=Window(c, r, w, h))
    os.replace(tmp, path)
    return path


def make_input(work: Path, size: int) -> Path:
    """The benchmark raster: a real file up to 8192 px, else a VRT mosaic of the 8192 tile."""
    if size <= 8192:
        return make_tile(work / f"scene_{size}.tif", size)
    import rasterio

    tile = make_tile(work / "scene_8192.tif", 8192)
    with rasterio.open(tile) as t:
        a = t.transform
    n = -(-size // 8192)
    sources = []
    for i in range(n):
        for j in range(n):
            w, h = min(8192, size - j * 8192), min(8192, size - i * 8192)
            sources.append(
                f'<SimpleSource><SourceFilename relativeToVRT="1">{tile.name}</SourceFilename>'
                f'<SourceBand>{{b}}</SourceBand><SrcRect xOff="0" yOff="0" xSize="{w}" '
                f'ySize="{h}"/><DstRect xOff="{j * 8192}" yOff="{i * 8192}" xSize="{w}" '
                f'ySize="{h}"/></SimpleSource>'
            )
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}">'
        + "".join(s.format(b=b) for s in sources)
        + "</VRTRasterBand>"
        for b in (1, 2, 3)
    )
    vrt = work / f"scene_{size}.vrt"
    vrt.write_text(
        f'<VRTDataset rasterXSize="{size}" rasterYSize="{size}"><SRS>EPSG:32631</SRS>'
        f"<GeoTransform>{a.c}, {a.a}, 0, {a.f}, 0, {a.e}</GeoTransform>{bands}</VRTDataset>"
    )
    return vrt


def make_checkpoint(path: Path, model: str, width: int, patch: int) -> Path:
    """A checkpoint of ``model`` (random weights); ``identity`` is the zero-cost null model.

    The null model is geoseg's ``linear`` model (one 1x1 convolution) with weights that make the
    class logits (green, red): its mask is ``red > green``, exactly what the I/O floor writes.
    """
    import torch

    from geoseg import checkpoint, models

    torch.manual_seed(0)
    kwargs = {"width": width} if model == "unet" else {}
    if model == "identity":
        net = models.build("linear", in_channels=3, num_classes=2)
        with torch.no_grad():
            net.weight.copy_(torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])[:, :, None, None])
            net.bias.zero_()
        model = "linear"
    else:
        net = models.build(model, in_channels=3, num_classes=2, **kwargs)
    card = checkpoint.ModelCard(
        architecture=model,
        model_args=kwargs,
        in_channels=3,
        band_names=["r", "g", "b"],
        band_indexes=[1, 2, 3],
        mean=[127.0] * 3,
        std=[50.0] * 3,
        class_names=["background", "building"],
        class_ids=[0, 1],
        patch_size=patch,
        res=0.5,
    )
    checkpoint.save(path, model=net, card=card)
    return path


# ---------------------------------------------------------------------------- children


def _resolved_precision(precision: str, device: str) -> str:
    from geoseg.device import resolve_device, resolve_precision

    return resolve_precision(precision, resolve_device(device))


def child_model(a: dict[str, Any]) -> dict[str, Any]:
    """(a) forward passes on in-memory batches, the same count as the raster's grid needs."""
    import torch

    from geoseg import checkpoint, windows
    from geoseg.device import resolve_device

    if a["threads"]:
        torch.set_num_threads(a["threads"])
    device = resolve_device(a["device"]).type
    model, card = checkpoint.load_model(Path(a["checkpoint"]), device=device)
    P, bs = a["patch"], a["batch_size"]
    n_patches = len(windows.grid(a["size"], a["size"], P, a["overlap"]))
    n_batches = -(-n_patches // bs)
    if a["max_batches"]:
        n_batches = min(n_batches, a["max_batches"])
    x = torch.randn(bs, 3, P, P, device=device)

    def run(bf16: bool, batches: int) -> float:
        fmt = torch.channels_last if (bf16 or device == "cuda") else torch.contiguous_format
        net = model.to(memory_format=fmt)
        xx = x.contiguous(memory_format=fmt)
        with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            net(xx)  # warm-up
            if device == "cuda":
                torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), cpu_s()
            for _ in range(batches):
                net(xx)
            if device == "cuda":
                torch.cuda.synchronize()
        cpu["s"] = cpu_s() - c0
        return time.perf_counter() - t0

    cpu: dict[str, float] = {}
    bf16 = a["precision"] == "bf16"
    seconds = run(bf16, n_batches)
    scale = n_patches / (n_batches * bs)  # sampled batches -> the whole grid
    out = {
        "patches_per_s": n_batches * bs / seconds,
        "mp_per_s": a["size"] ** 2 / 1e6 / (seconds * scale),
        "cpu_s_per_mp": cpu["s"] * scale / (a["size"] ** 2 / 1e6),
        "vmhwm_mib": vmhwm_mib(),
    }
    if a["time_bf16"]:
        k = max(2, min(n_batches, 6))
        out["bf16_speedup"] = run(False, k) / run(True, k)
    return out


def child_geoseg(a: dict[str, Any]) -> dict[str, Any]:
    """(b)/(d) geoseg's library call, exactly what ``geoseg infer`` runs."""
    import torch

    from geoseg import infer, progress

    progress.set_enabled(False)
    if a["threads"]:
        torch.set_num_threads(a["threads"])
    out = Path(a["out"])
    same = dict(
        checkpoint=Path(a["checkpoint"]),
        patch_size=a["patch"],
        overlap=a["overlap"],
        batch_size=a["batch_size"],
        precision=a["precision"],
        device=a["device"],
        overwrite=True,
        cog=not a["no_cog"],
    )
    if a["workers"] == 1:
        # Warm up like (a) does: model load, CUDA context and kernel choice happen once per
        # process and are not what this measures. A 1024-px crop of the input, the same settings.
        import rasterio
        from rasterio.windows import Window

        crop = out.with_name("warmup_in.tif")
        with rasterio.open(a["input"]) as s:
            w = Window(0, 0, min(1024, s.width), min(1024, s.height))
            prof = s.profile | {
                "driver": "GTiff",
                "width": w.width,
                "height": w.height,
                "transform": s.window_transform(w),
            }
            data = s.read(window=w)
        with rasterio.open(crop, "w", **prof) as d:
            d.write(data)
        infer.predict_raster(crop, out.with_name("warmup_out.tif"), **dict(same, cog=False))
    t0, c0 = time.perf_counter(), cpu_s()
    infer.predict_raster(Path(a["input"]), out, workers=a["workers"], **same)
    seconds = time.perf_counter() - t0
    if not a.get("keep"):
        out.unlink()
    return {
        "seconds": seconds,
        "mp_per_s": a["size"] ** 2 / 1e6 / seconds,
        "cpu_s_per_mp": (cpu_s() - c0) / (a["size"] ** 2 / 1e6),
        "vmhwm_mib": vmhwm_mib(),
    }


def child_torchgeo(a: dict[str, Any]) -> dict[str, Any]:
    """(c) the usual torchgeo loop: GridGeoSampler -> DataLoader -> model -> in-memory stitch."""
    import rasterio
    import torch
    from torch.utils.data import DataLoader
    from torchgeo.datasets import RasterDataset, stack_samples
    from torchgeo.samplers import GridGeoSampler

    from geoseg import checkpoint
    from geoseg.device import resolve_device

    if a["threads"]:
        torch.set_num_threads(a["threads"])
    device = resolve_device(a["device"]).type
    model, card = checkpoint.load_model(Path(a["checkpoint"]), device=device)
    src_path = Path(a["input"])

    class Scene(RasterDataset):
        filename_glob = src_path.name

    bf16 = a["precision"] == "bf16"
    with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        model(
            torch.zeros(a["batch_size"], card.in_channels, a["patch"], a["patch"], device=device)
        )  # warm-up
    t0, cpu0 = time.perf_counter(), cpu_s()
    ds = Scene(paths=str(src_path.parent))
    P, ov = a["patch"], a["overlap"]
    sampler = GridGeoSampler(ds, size=P, stride=P - ov)
    loader = DataLoader(ds, sampler=sampler, batch_size=a["batch_size"], collate_fn=stack_samples)
    with rasterio.open(src_path) as s:
        H, W, left, top, res = s.height, s.width, s.bounds.left, s.bounds.top, s.res[0]
        profile = dict(
            driver="GTiff",
            width=W,
            height=H,
            count=1,
            dtype="uint8",
            crs=s.crs,
            transform=s.transform,
            tiled=True,
            compress="deflate",
        )
    probs = np.zeros((2, H, W), np.float32)  # whole raster in memory
    mean = torch.tensor(card.mean).view(1, -1, 1, 1)
    std = torch.tensor(card.std).view(1, -1, 1, 1)
    bf16 = a["precision"] == "bf16"
    with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        for batch in loader:
            x = ((batch["image"] - mean) / std).to(device)
            p = torch.softmax(model(x).float(), 1).cpu().numpy()
            for k, b in enumerate(batch["bounds"]):
                col = int(round((b[0].start - left) / res))
                row = int(round((top - b[1].stop) / res))
                # chips start at the bottom-left and overhang the top/right edge: clip them
                r0, c0 = max(row, 0), max(col, 0)
                r1, c1 = min(row + P, H), min(col + P, W)
                if r1 > r0 and c1 > c0:
                    probs[:, r0:r1, c0:c1] = p[k, :, r0 - row : r1 - row, c0 - col : c1 - col]
    with rasterio.open(Path(a["out"]), "w", **profile) as dst:
        dst.write(probs.argmax(0).astype(np.uint8), 1)
    seconds = time.perf_counter() - t0
    Path(a["out"]).unlink()
    return {
        "seconds": seconds,
        "mp_per_s": a["size"] ** 2 / 1e6 / seconds,
        "cpu_s_per_mp": (cpu_s() - cpu0) / (a["size"] ** 2 / 1e6),
        "vmhwm_mib": vmhwm_mib(),
    }


def child_io_floor(a: dict[str, Any]) -> dict[str, Any]:
    """(f) the I/O floor: read the input with rasterio, write a same-size uint8 COG.

    Full-width strips of ``patch`` rows are read through one handle (GDAL decodes the blocks of
    one read on all cores), the mask ``red > green`` (what the null model predicts) is kept in a
    MEM dataset and copied to a COG with all threads: no model, no blending, no temporary file.
    """
    import rasterio
    from rasterio.shutil import copy
    from rasterio.windows import Window

    out = Path(a["out"])
    t0, c0 = time.perf_counter(), cpu_s()
    with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS", GDAL_CACHEMAX=64):
        with rasterio.open(a["input"]) as src:
            profile = dict(
                driver="MEM",
                width=src.width,
                height=src.height,
                count=1,
                dtype="uint8",
                crs=src.crs,
                transform=src.transform,
            )
            with rasterio.open("", "w", **profile) as mem:
                for y0 in range(0, src.height, a["patch"]):
                    win = Window(0, y0, src.width, min(a["patch"], src.height - y0))
                    rgb = src.read(window=win)
                    mem.write((rgb[0] > rgb[1]).astype(np.uint8)[None], window=win)
                t_read = time.perf_counter() - t0
                copy(
                    mem,
                    out,
                    driver="COG",
                    COMPRESS="DEFLATE",
                    PREDICTOR="YES",
                    BLOCKSIZE=512,
                    OVERVIEW_RESAMPLING="NEAREST",
                    NUM_THREADS="ALL_CPUS",
                )
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "read_s": t_read,
        "write_cog_s": seconds - t_read,
        "mp_per_s": a["size"] ** 2 / 1e6 / seconds,
        "cpu_s_per_mp": (cpu_s() - c0) / (a["size"] ** 2 / 1e6),
        "vmhwm_mib": vmhwm_mib(),
    }


CHILDREN = {
    "model": child_model,
    "geoseg": child_geoseg,
    "torchgeo": child_torchgeo,
    "io_floor": child_io_floor,
}


def measure(kind: str, args: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement in a fresh subprocess; its JSON result (time, rate, peak RSS)."""
    cmd = [sys.executable, __file__, "--child", kind, "--child-args", json.dumps(args)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        f"  measured {kind} {args.get('size')} px workers={args.get('workers')} "
        f"threads={args.get('threads') or 'default'}: {result}",
        flush=True,
    )
    return result


# ---------------------------------------------------------------------------- main


def best_of(kinds: list[tuple[str, str, dict[str, Any]]], repeat: int) -> dict[str, Any]:
    """Measure ``(key, kind, args)`` alternately ``repeat`` times; each key keeps its best run.

    On a shared machine the load changes between runs, and the best run is the least disturbed
    one; the peak RSS kept is the highest of all runs.
    """
    res: dict[str, Any] = {}
    for _ in range(max(1, repeat)):
        for key, kind, args in kinds:
            try:
                r = measure(kind, args)
            except SystemExit as failed:
                if kind != "torchgeo":  # the comparison may lack torchgeo; geoseg's own may not
                    raise
                print(f"  skipped the torchgeo-style loop: {failed}", flush=True)
                continue
            best = res.get(key)
            if best is None or r["mp_per_s"] > best["mp_per_s"]:
                r["vmhwm_mib"] = max(r["vmhwm_mib"], best["vmhwm_mib"] if best else 0)
                res[key] = r
            else:
                best["vmhwm_mib"] = max(r["vmhwm_mib"], best["vmhwm_mib"])
    return res


def same_mask(a: Path, b: Path) -> bool:
    import rasterio

    with rasterio.open(a) as x, rasterio.open(b) as y:
        return bool(np.array_equal(x.read(1), y.read(1)))


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--size",
        type=int,
        help="raster side in pixels for (a)-(d) (default 8192 on CUDA, 4096 on the CPU)",
    )
    p.add_argument(
        "--model",
        default="unet-resnet18",
        help="a geoseg model name, or identity: the zero-cost null model (a 1x1 convolution)",
    )
    p.add_argument("--width", type=int, default=16, help="width of the plain unet model")
    p.add_argument("--patch-size", type=int, default=512)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--precision", default="32", choices=["32", "bf16", "auto"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument(
        "--quick",
        action="store_true",
        help="2048 px, plain unet width 8, model-only sampled from 6 batches",
    )
    p.add_argument(
        "--null-size",
        type=int,
        default=8192,
        help="raster side of (n) null model vs (f) I/O floor (default 8192)",
    )
    p.add_argument("--skip-null", action="store_true", help="skip (n) and (f)")
    p.add_argument("--null-only", action="store_true", help="only (n) and (f)")
    p.add_argument("--rss-32k", action="store_true", help="also run (b) at 32768 px for peak RSS")
    p.add_argument("--rss-only", action="store_true", help="only (a) and (b): the RSS targets")
    p.add_argument("--repeat", type=int, default=1, help="alternate (a)/(b)/(c) N times; best")
    p.add_argument("--skip-torchgeo", action="store_true")
    p.add_argument("--skip-dask", action="store_true")
    p.add_argument(
        "--max-batches", type=int, default=0, help="model-only: sample this many batches"
    )
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "geoseg-bench")
    p.add_argument("--json", type=Path, help="write the headline ratios here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--child-args", help=argparse.SUPPRESS)
    ns = p.parse_args()
    if ns.child:
        print(json.dumps(CHILDREN[ns.child](json.loads(ns.child_args))))
        return
    from geoseg.device import resolve_device

    device = resolve_device(ns.device).type
    if ns.size is None:
        # The CPU default stays within ~15 minutes on 2 shared cores (fp32 ResNet18-UNet runs
        # ~0.5 MP/s there); the pipeline's own ceiling is measured at 8k by (n) and (f) anyway.
        ns.size = 8192 if device == "cuda" else 4096
    if ns.quick:
        ns.size, ns.model, ns.width = min(ns.size, 2048), "unet", 8
        ns.max_batches = ns.max_batches or 6
    work = ns.workdir
    work.mkdir(parents=True, exist_ok=True)
    precision = _resolved_precision(ns.precision, ns.device)
    print(
        f"# {ns.size}x{ns.size} px, {ns.model}"
        f"{f' width {ns.width}' if ns.model == 'unet' else ''}, "
        f"patch {ns.patch_size}, overlap {ns.overlap}, batch {ns.batch_size}, "
        f"precision {precision}, device {device}, {os.cpu_count()} CPU(s)",
        flush=True,
    )
    rows = []
    summary: dict[str, Any] = {}
    # What every geoseg/floor child shares; the precision is resolved here so all run the same.
    common = dict(
        patch=ns.patch_size,
        overlap=ns.overlap,
        batch_size=ns.batch_size,
        precision=precision,
        device=ns.device,
        threads=0,
        workers=1,
        no_cog=False,
    )
    if not ns.skip_null and not ns.rss_only:
        # (n) vs (f): the pipeline's own ceiling against reading the input and writing the COG.
        nsrc = make_input(work, ns.null_size)
        null_ckpt = make_checkpoint(work / "identity.ckpt", "identity", 0, ns.patch_size)
        null = dict(common, checkpoint=str(null_ckpt), input=str(nsrc), size=ns.null_size)
        res = best_of(
            [
                ("n", "geoseg", dict(null, out=str(work / "null_mask.tif"), keep=True)),
                ("f", "io_floor", dict(null, out=str(work / "floor_mask.tif"))),
            ],
            ns.repeat,
        )
        rows.append((f"(n) geoseg, null model @{ns.null_size}", res["n"]))
        rows.append((f"(f) I/O floor @{ns.null_size}", res["f"]))
        summary["null_model_mp_s"] = res["n"]["mp_per_s"]
        summary["io_floor_mp_s"] = res["f"]["mp_per_s"]
        summary["null_vs_io_floor"] = res["n"]["mp_per_s"] / res["f"]["mp_per_s"]
        summary["null_vs_io_floor_cpu"] = res["f"]["cpu_s_per_mp"] / res["n"]["cpu_s_per_mp"]
        summary["io_floor_read_s"] = res["f"]["read_s"]
        summary["io_floor_write_cog_s"] = res["f"]["write_cog_s"]
        summary["peak_rss_mib_null"] = res["n"]["vmhwm_mib"]
        # The null model predicts red > green, which is what the floor writes.
        summary["null_mask_equals_floor"] = same_mask(
            work / "null_mask.tif", work / "floor_mask.tif"
        )
        for f in ("null_mask.tif", "floor_mask.tif"):
            (work / f).unlink(missing_ok=True)
    if ns.null_only:
        report(rows, summary, ns)
        return
    src = make_input(work, ns.size)
    ckpt = make_checkpoint(work / f"{ns.model}.ckpt", ns.model, ns.width, ns.patch_size)
    base = dict(
        common,
        checkpoint=str(ckpt),
        input=str(src),
        out=str(work / "out.tif"),
        size=ns.size,
        max_batches=ns.max_batches,
        time_bf16=not ns.rss_only,
    )
    kinds = [("a", "model", base), ("b", "geoseg", base)]
    if not ns.skip_torchgeo and not ns.rss_only:
        kinds.append(("c", "torchgeo", base))
    res = best_of(kinds, ns.repeat)
    rows.append(("(a) model only (ceiling)", res["a"]))
    rows.append(("(b) geoseg infer", res["b"]))
    if "c" in res:
        rows.append(("(c) torchgeo-style loop", res["c"]))
    if ns.rss_32k:
        big = make_input(work, 32768)
        res["b32"] = measure("geoseg", dict(base, input=str(big), size=32768))
        rows.append(("(b) geoseg infer @32768", res["b32"]))
    if not ns.skip_dask and not ns.rss_only:
        res["d1"] = measure("geoseg", dict(base, threads=1))
        res["d2"] = measure("geoseg", dict(base, workers=2))
        rows.append(("(d) geoseg --workers 1, 1 thread", res["d1"]))
        rows.append(("(d) geoseg --workers 2 (dask)", res["d2"]))
    summary.update(
        {
            "geoseg_vs_model": res["b"]["mp_per_s"] / res["a"]["mp_per_s"],
            # the same ratio in CPU time, which other users' load on the machine disturbs less
            "geoseg_vs_model_cpu": res["a"]["cpu_s_per_mp"] / res["b"]["cpu_s_per_mp"],
            "peak_rss_mib_model": res["a"]["vmhwm_mib"],
            f"peak_rss_mib_{ns.size // 1024}k": res["b"]["vmhwm_mib"],
            "rss_over_model_mib": res["b"]["vmhwm_mib"] - res["a"]["vmhwm_mib"],
        }
    )
    if "c" in res:
        summary["geoseg_vs_torchgeo"] = res["b"]["mp_per_s"] / res["c"]["mp_per_s"]
        summary["geoseg_vs_torchgeo_cpu"] = res["c"]["cpu_s_per_mp"] / res["b"]["cpu_s_per_mp"]
        summary["peak_rss_mib_torchgeo"] = res["c"]["vmhwm_mib"]
    if "b32" in res:
        summary["peak_rss_mib_32k"] = res["b32"]["vmhwm_mib"]
        summary["rss_32k_over_model_mib"] = res["b32"]["vmhwm_mib"] - res["a"]["vmhwm_mib"]
    if "d2" in res:
        summary["dask2_vs_1"] = res["d2"]["mp_per_s"] / res["d1"]["mp_per_s"]
    if "bf16_speedup" in res["a"]:
        summary["cpu_bf16_vs_fp32" if device != "cuda" else "bf16_vs_fp32"] = res["a"][
            "bf16_speedup"
        ]
    report(rows, summary, ns)


def report(rows: list[tuple[str, dict[str, Any]]], summary: dict[str, Any], ns: Any) -> None:
    """Print the table and the ratios; write the ratios (and the settings) to --json."""
    for name, r in rows:
        cpu = f"{r['cpu_s_per_mp']:7.2f} CPU s/MP" if "cpu_s_per_mp" in r else ""
        print(f"{name:36s} {r['mp_per_s']:8.3f} MP/s   peak RSS {r['vmhwm_mib']:8.0f} MiB   {cpu}")
    summary["config"] = {
        k: getattr(ns, k)
        for k in (
            "size",
            "null_size",
            "model",
            "width",
            "patch_size",
            "overlap",
            "batch_size",
            "precision",
            "device",
            "quick",
            "repeat",
        )
    }
    for k, v in summary.items():
        if k != "config":
            print(f"{k:24s} {v:.3f}" if isinstance(v, float) else f"{k:24s} {v}")
    if ns.json:
        ns.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
