"""The demo recipe's training: building IoU on the test split, and the minutes it took.

Trains ``pipelines/demo.yaml`` (its data, model and train sections) on the demo scenes and scores
best.ckpt on the test split (building = interior + edge with the recipe's instance targets).
Target: building IoU >= 0.85 in <= ~7 minutes on a 2-core CPU (the whole ``make demo`` chain,
inference included, must fit in ~10 minutes).

Run:  python benchmarks/train_demo.py                         (makes the demo data if missing)
      python benchmarks/train_demo.py --data demo/data --out /tmp/demo-run \
          --json /tmp/train_demo.json
      python benchmarks/train_demo.py --set train.epochs=10    (try another setting)
On a machine shared with other jobs the minutes are pessimistic: the figure is wall time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from geoseg import config, synthetic, train  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", type=Path, default=REPO / "pipelines" / "demo.yaml")
    p.add_argument(
        "--data",
        type=Path,
        default=REPO / "demo" / "data",
        help="demo data folder (made with `geoseg demo-data` when missing)",
    )
    p.add_argument("--out", type=Path, help="run folder (default: a temporary one)")
    p.add_argument("--set", action="append", default=[], help="override, e.g. train.epochs=10")
    p.add_argument("--json", type=Path, help="write building_iou and minutes here")
    args = p.parse_args()
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S", level=logging.WARNING)
    logging.getLogger("geoseg").setLevel(logging.INFO)

    if not (args.data / "images").is_dir():
        t = time.perf_counter()
        synthetic.make_demo_data(args.data)
        print(f"made the demo data in {args.data} ({time.perf_counter() - t:.0f} s, not counted)")
    overrides = [
        f"data.images={args.data / 'images'}",
        f"data.labels={args.data / 'buildings.gpkg'}",  # instance targets need the polygons
        *args.set,
    ]
    cfg = config.load(args.config, overrides)
    out = args.out or Path(tempfile.mkdtemp(prefix="geoseg-train-demo-"))
    t0 = time.perf_counter()
    result = train.fit(cfg, out, overwrite=True)
    minutes = (time.perf_counter() - t0) / 60
    test = result.test_metrics or {}
    iou = test.get("per_class", {}).get("building", {}).get("iou", float("nan"))
    f1 = test.get("per_class", {}).get("building", {}).get("f1", float("nan"))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    met = "met" if iou >= 0.85 and minutes <= 7 else "NOT met"
    print(f"test building IoU {iou:.3f} (F1 {f1:.3f}), mIoU {test.get('miou', float('nan')):.3f}")
    print(
        f"training {minutes:.2f} min for {result.epochs_run} epochs on {result.device} "
        f"({result.precision}), best epoch {result.metrics.get('epoch')}"
    )
    print(f"target building IoU >= 0.85 in <= 7 min: {met}")
    print(f"load average at the end {load:.1f} on {os.cpu_count()} cores (other jobs slow it)")
    print(f"run folder: {out}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "building_iou": iou,
                    "building_f1": f1,
                    "miou": test.get("miou"),
                    "minutes": minutes,
                    "epochs": result.epochs_run,
                    "best_epoch": result.metrics.get("epoch"),
                    "device": result.device,
                    "precision": result.precision,
                    "load_average": load,
                },
                indent=1,
            )
        )
        print(f"wrote {args.json}")
    if args.out is None:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
