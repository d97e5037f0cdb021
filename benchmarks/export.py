"""Benchmark ``geoseg infer`` with an exported ``.onnx`` (onnxruntime) side by side with the
``.ckpt`` (PyTorch), both in float32, on the same generated raster.

Prints wall seconds and output megapixels per second of each (best of ``--repeat`` alternating
runs, after one warm-up run of each), their ratio, and how many mask pixels agree. Both runs go
through the same streaming path (read, normalise, model, blend, write); only the model call
differs. Examples::

    python benchmarks/export.py                                   # ~2 min on 2 CPU cores
    python benchmarks/export.py --model unet-resnet18 --size 4096 --json export_bench.json

The raster and checkpoint helpers are benchmarks/infer.py's (same synthetic scene, same
randomly initialised model; speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from infer import make_checkpoint, make_tile  # noqa: E402 - benchmarks/infer.py


def run_once(model: Path, src: Path, dst: Path, a: argparse.Namespace) -> float:
    from geoseg import infer

    t0 = time.perf_counter()
    infer.predict_raster(
        src,
        dst,
        checkpoint=model,
        patch_size=a.patch_size,
        overlap=a.overlap,
        batch_size=a.batch_size,
        precision="32",
        device="cpu",
        cog=False,
        overwrite=True,
    )
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--size", type=int, default=2048, help="raster side in pixels (default 2048)")
    p.add_argument("--model", default="unet", help="a registered model (default unet)")
    p.add_argument("--width", type=int, default=16, help="width of the plain unet (demo: 16)")
    p.add_argument("--patch-size", type=int, default=256)
    p.add_argument("--overlap", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeat", type=int, default=2, help="timed runs of each, alternating; best")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "geoseg-bench")
    p.add_argument("--json", type=Path, help="write the figures here")
    a = p.parse_args()

    import rasterio
    import torch

    from geoseg import export

    a.workdir.mkdir(parents=True, exist_ok=True)
    src = make_tile(a.workdir / f"scene_{a.size}.tif", a.size)
    warm = make_tile(a.workdir / "scene_512.tif", 512)
    ckpt = make_checkpoint(
        a.workdir / f"export_{a.model}_{a.patch_size}.ckpt", a.model, a.width, a.patch_size
    )
    t0 = time.perf_counter()
    onnx = export.onnx(ckpt, ckpt.with_suffix(".onnx"), overwrite=True)
    export_s = time.perf_counter() - t0
    models = {"torch": ckpt, "onnxruntime": onnx}
    outs = {k: a.workdir / f"export_pred_{k}.tif" for k in models}
    for k, m in models.items():  # warm-up: imports, model load, allocator
        run_once(m, warm, a.workdir / f"export_warm_{k}.tif", a)
    best = {k: float("inf") for k in models}
    for _ in range(a.repeat):
        for k, m in models.items():
            best[k] = min(best[k], run_once(m, src, outs[k], a))
    with rasterio.open(outs["torch"]) as t, rasterio.open(outs["onnxruntime"]) as o:
        agree = float(np.mean(t.read(1) == o.read(1)))
    mp = a.size * a.size / 1e6
    result: dict[str, Any] = {
        "model": a.model if a.model != "unet" else f"unet (width {a.width})",
        "raster_px": a.size,
        "patch_size": a.patch_size,
        "batch_size": a.batch_size,
        "threads": torch.get_num_threads(),
        "precision": "fp32",
        "export_s": round(export_s, 2),
        "torch_s": round(best["torch"], 2),
        "onnxruntime_s": round(best["onnxruntime"], 2),
        "torch_mp_per_s": round(mp / best["torch"], 3),
        "onnxruntime_mp_per_s": round(mp / best["onnxruntime"], 3),
        "onnxruntime_speedup": round(best["torch"] / best["onnxruntime"], 2),
        "mask_agreement": round(agree, 6),
    }
    print(
        f"{result['model']}, {a.size}x{a.size} px, patch {a.patch_size}, batch {a.batch_size}, "
        f"{result['threads']} threads, fp32, geoseg infer end to end (best of {a.repeat}):"
    )
    print(f"  torch (.ckpt)       {best['torch']:8.2f} s  {result['torch_mp_per_s']:7.3f} MP/s")
    print(
        f"  onnxruntime (.onnx) {best['onnxruntime']:8.2f} s  "
        f"{result['onnxruntime_mp_per_s']:7.3f} MP/s"
    )
    print(
        f"  onnxruntime / torch speed: {result['onnxruntime_speedup']:.2f}x; "
        f"masks agree on {100 * agree:.3f} % of pixels; export took {export_s:.1f} s"
    )
    if a.json:
        a.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
