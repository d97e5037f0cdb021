"""CPU training step with the heap kept (geoseg.train.retained_heap) against glibc's defaults.

Each measurement is a fresh process (glibc's allocator state is per process), alternating
``default`` and ``kept``, same model, batch, seed and thread count: forward + loss + backward +
AdamW step on one in-memory batch, with the page faults per step and the peak resident memory.
Prints ``kept_vs_default`` = default seconds per step / kept seconds per step (best of the
repeats each).

Run:  python benchmarks/train_heap.py                     (the OAM recipe's model and patches)
      python benchmarks/train_heap.py --threads 1 --repeats 3 --json heap.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from geoseg import models, train  # noqa: E402


def measure(mode: str, model_name: str, patch: int, batch: int, steps: int) -> dict[str, float]:
    """Seconds and page faults per training step, in this process."""
    torch.manual_seed(0)
    net = models.build(model_name, in_channels=3, num_classes=4)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, patch, patch)
    y = torch.randint(0, 4, (batch, patch, patch))

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    heap = train.retained_heap() if mode == "kept" else contextlib.nullcontext(False)
    with heap as kept:
        step()  # warm-up: oneDNN kernel choice, the optimizer state
        faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        seconds = (time.perf_counter() - t0) / steps
        faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / steps
    return {
        "seconds_per_step": seconds,
        "faults_per_step": faults,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "kept": bool(kept),
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="unet-resnet18")
    p.add_argument("--patch-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--child", choices=["default", "kept"], help=argparse.SUPPRESS)
    args = p.parse_args()
    shape = (args.model, args.patch_size, args.batch_size, args.steps)
    if args.child:
        torch.set_num_threads(args.threads)
        print(json.dumps(measure(args.child, *shape)))
        return

    print(
        f"{args.model}, batch {args.batch_size} x {args.patch_size}², fp32, "
        f"{args.threads} thread(s), {args.steps} steps per run"
    )
    runs: dict[str, list[dict[str, float]]] = {"default": [], "kept": []}
    for _ in range(args.repeats):
        for mode in runs:
            cmd = [sys.executable, __file__, "--child", mode, "--threads", str(args.threads)]
            cmd += ["--model", args.model, "--patch-size", str(args.patch_size)]
            cmd += ["--batch-size", str(args.batch_size), "--steps", str(args.steps)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            run = json.loads(out.strip().splitlines()[-1])
            runs[mode].append(run)
            print(
                f"{mode:<8} {run['seconds_per_step']:6.3f} s/step  "
                f"{run['faults_per_step']:9.0f} page faults/step  {run['max_rss_mb']:6.0f} MB peak"
            )
    best = {mode: min(r["seconds_per_step"] for r in rs) for mode, rs in runs.items()}
    ratio = best["default"] / best["kept"]
    print(f"kept_vs_default = {ratio:.3f}   (steps per second, best of {args.repeats} each)")
    if not runs["kept"][0]["kept"]:
        print("(this C library is not glibc: the heap setting does nothing here)")
    if args.json:
        args.json.write_text(json.dumps({"kept_vs_default": ratio, "runs": runs}, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
