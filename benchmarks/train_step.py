"""Training throughput: the full loop (data + step) against the model-only step, and precisions.

Measured side by side in one run, same model, batch and precision:

* ``loop``: geoseg.train's own epoch loop over geoseg.data's loader (patches read from the demo
  rasters, normalised, augmented, copied to the device, forward/backward/clip/step, progress bar);
* ``model``: the same step on one batch already on the device (the ceiling for the loop);
* ``loop_vs_model`` = loop images/s / model images/s (target >= 0.9);
* model-only images/s in fp32, fp32 + channels_last, bf16, bf16 + channels_last (and fp16 +
  GradScaler on CUDA); ``--fp32-only`` measures the two fp32 memory formats alone (bf16 is slow
  emulation on a CPU without AVX512-BF16).

Run:  python benchmarks/train_step.py                      (CPU defaults: width 16, 128 px)
      python benchmarks/train_step.py --device cuda --width 64 --patch-size 256 --batch-size 16
      python benchmarks/train_step.py --model unet-resnet18 --patch-size 256 --fp32-only \
          --repeats 5 --steps 8        (the OAM recipe's model and patches)
      python benchmarks/train_step.py --json /tmp/train_step.json
Timings on a shared machine are noisy; each figure is the best of ``--repeats`` alternating runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from geoseg import config, data, losses, models, progress, synthetic, train  # noqa: E402
from geoseg.device import resolve_device, resolve_precision  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def model_step_rate(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    loss_fn: torch.nn.Module,
    batch: dict,
    device: torch.device,
    precision: str,
    channels_last: bool,
    steps: int,
) -> float:
    """Images/s of forward + loss + backward + clip + optimizer step on one in-memory batch."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    x = batch["image"].to(device).contiguous(memory_format=fmt)
    y = batch["mask"].to(device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "16")

    def step() -> None:
        with train._autocast(device, precision):  # the loop's own autocast choice
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        float(loss.detach())  # the loop reads the loss every step too
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()

    step()  # warm-up (allocator, oneDNN/cuDNN kernel choice)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * x.shape[0] / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--model", default="unet", help="model name, as model.name")
    p.add_argument("--width", type=int, default=16, help="base channels of the plain unet")
    p.add_argument("--patch-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=12, help="timed steps per measurement")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--precision", default="auto", choices=["auto", "32", "bf16", "16"])
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--fp32-only", action="store_true", help="fp32 memory formats alone")
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    progress.set_enabled(False)

    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device, fp16=True)
    work = Path(tempfile.mkdtemp(prefix="geoseg-train-step-"))
    demo = synthetic.make_demo_data(
        work / "data", tiles=2, size=max(512, 4 * args.patch_size), seed=0
    )
    cfg = config.parse(
        {
            "data": {
                "images": [str(demo.images[0].parent)],
                "labels": str(demo.masks[0].parent),
                "split": {"block_size": 2 * args.patch_size},
            },
            "model": {
                "name": args.model,
                **({"width": args.width} if args.model == "unet" else {}),
                "class_names": ["background", "building"],
            },
            "train": {
                "patch_size": args.patch_size,
                "batch_size": args.batch_size,
                "precision": precision,
                "patches_per_epoch": args.batch_size * args.steps,
                "workers": args.workers,
                "device": device.type,
                "loss": "ce",
            },
        }
    )
    td = data.build_training_data(
        cfg.data,
        patch_size=args.patch_size,
        batch_size=args.batch_size,
        run_dir=work / "run",
        num_classes=2,
        seed=0,
        workers=args.workers,
        patches_per_epoch=cfg.train.patches_per_epoch,
    )
    trainer = train._Trainer(cfg, work / "run", td, device, precision, train._Dist(0, 1, device))
    batch = next(iter(td.train))
    loop_cl = trainer.memory_format == torch.channels_last  # what the loop picked (auto)
    model_args = train._model_args(cfg)  # the trainer's own: width for the plain unet
    print(
        f"device {device} ({torch.get_num_threads()} threads)"
        if device.type == "cpu"
        else f"device {device} ({torch.cuda.get_device_name(device)})",
        f"| {' '.join([args.model, *(f'{k} {v}' for k, v in model_args.items())])}, "
        f"{args.patch_size} px, "
        f"batch {args.batch_size}, precision {precision}, channels_last {loop_cl}",
    )

    loop_rates, model_rates = [], []
    trainer.train_epoch(1)  # warm-up: first reads, kernel choice
    for r in range(args.repeats):
        t0 = time.perf_counter()
        trainer.train_epoch(r + 2)
        _sync(device)
        loop_rates.append(len(td.train) * args.batch_size / (time.perf_counter() - t0))
        model_rates.append(
            model_step_rate(
                trainer.model,
                trainer.optimizer,
                trainer.loss_fn,
                batch,
                device,
                precision,
                loop_cl,
                args.steps,
            )
        )
    loop, model_only = max(loop_rates), max(model_rates)
    print(f"full loop  {loop:8.2f} img/s   (runs: {', '.join(f'{v:.2f}' for v in loop_rates)})")
    print(
        f"model only {model_only:8.2f} img/s   (runs: {', '.join(f'{v:.2f}' for v in model_rates)})"
    )
    print(f"loop_vs_model = {loop / model_only:.3f}   (target >= 0.9)")

    variants = [("fp32", "32", False), ("fp32+channels_last", "32", True)]
    if not args.fp32_only:
        variants += [("bf16", "bf16", False), ("bf16+channels_last", "bf16", True)]
    if device.type == "cuda" and not args.fp32_only:
        variants.append(("fp16+channels_last", "16", True))
        if not torch.cuda.is_bf16_supported():
            variants = [v for v in variants if v[1] != "bf16"]
    rates: dict[str, float] = {}
    loss_fn = losses.build("ce", num_classes=2).to(device)
    for _ in range(args.repeats):
        for name, prec, cl in variants:
            torch.manual_seed(0)
            net = models.build(args.model, in_channels=td.in_channels, num_classes=2, **model_args)
            net = net.to(device)
            opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
            rate = model_step_rate(
                net, opt, loss_fn, batch, device, prec, cl, max(3, args.steps // 2)
            )
            rates[name] = max(rates.get(name, 0.0), rate)
    base = rates["fp32"]
    for name, rate in rates.items():
        print(f"{name:<20} {rate:8.2f} img/s   x{rate / base:.2f} vs fp32")
    auto = resolve_precision("auto", device, fp16=True)
    print(f"precision auto on this {device.type} -> {auto}")
    cl_ratio = rates["fp32+channels_last"] / base
    print(f"channels_last_vs_contiguous_fp32 = {cl_ratio:.3f}   (< 1: the contiguous format wins)")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "device": str(device),
                    "width": args.width,
                    "patch_size": args.patch_size,
                    "batch_size": args.batch_size,
                    "precision": precision,
                    "loop_img_s": loop,
                    "model_img_s": model_only,
                    "loop_vs_model": loop / model_only,
                    "precision_img_s": rates,
                    "auto_precision": auto,
                    "model": args.model,
                    "channels_last_vs_contiguous_fp32": cl_ratio,
                },
                indent=1,
            )
        )
        print(f"wrote {args.json}")


if __name__ == "__main__":
    with train.retained_heap():  # as geoseg's CPU training runs
        main()
