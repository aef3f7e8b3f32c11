"""Mask R-CNN benchmarks.

1. Training-step and inference throughput of segworks' maskrcnn_r50_fpn against torchvision's
   maskrcnn_resnet50_fpn, in one run, alternating the two models round by round (the order
   flips every round), with the same random weights (segworks loads torchvision's state dict),
   the same images and targets (three boxes with masks per image) and min/max size = --size.
   This is `benchmarks.bench_models`' pair `maskrcnn_r50_fpn`; it ends with `ratio` lines
   (segworks throughput / torchvision throughput per round, min / median / max):

       .venv/bin/python -m benchmarks.bench_mask_rcnn throughput --size 320 --reps 5

2. Training on a real instance set (balloon: the train folder is split into train/val; or
   fruits_nuts), reporting COCO mask AP on the held-out part:

       .venv/bin/python -m benchmarks.bench_mask_rcnn train \
           --data ../shared/datasets/balloon/train --model maskrcnn_r50_fpn \
           --backbone-weights resnet50.pth --epochs 12 --out runs/balloon

   (long on CPU; meant for a GPU. Without --backbone-weights it trains from scratch.)
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.bench_models import Settings, bench_pair
from benchmarks.common import Runtime, add_device_arguments


def throughput(args: argparse.Namespace) -> None:
    """Training step and inference, segworks vs torchvision, alternating; prints the tables."""
    runtime = Runtime.from_args(args)
    settings = Settings(
        batch=args.batch,
        size=64 if args.quick else args.size,
        repeats=1 if args.quick else args.reps,
        warmup=0 if args.quick else args.warmup,
    )
    print(
        f"Mask R-CNN R50-FPN, {runtime.describe()}, {torch.get_num_threads()} threads, "
        f"{settings.repeats} alternating rounds after {settings.warmup} warm-up; "
        "x first = torchvision time / segworks time",
        flush=True,
    )
    print(bench_pair("maskrcnn_r50_fpn", runtime, settings), flush=True)


def train(args) -> None:
    from segworks.config import TrainConfig
    from segworks.engine.train import train as train_run
    from segworks.recipes import recipe_settings

    given = dict(
        task="instance",
        data=args.data,
        model=args.model,
        out=args.out,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        val_split=args.val_split,
        backbone_weights=args.backbone_weights,
        min_size=args.min_size,
        max_size=args.max_size,
        device=args.device,
        amp=args.device.startswith("cuda"),
        workers=args.workers,
        seed=0,
    )
    given = {key: value for key, value in given.items() if value is not None}
    train_run(TrainConfig(**recipe_settings("instance", given)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    speed = sub.add_parser("throughput")
    add_device_arguments(speed)
    speed.add_argument("--size", type=int, default=320, help="min_size = max_size = image side")
    speed.add_argument("--reps", type=int, default=5, help="alternated timed rounds")
    speed.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    speed.add_argument("--batch", type=int, default=1)
    speed.add_argument("--quick", action="store_true", help="64 px, one round (a smoke test)")
    fit = sub.add_parser("train")
    fit.add_argument("--data", required=True)
    fit.add_argument("--model", default="maskrcnn_r50_fpn")
    fit.add_argument("--out", default="runs/bench_mask_rcnn")
    fit.add_argument("--epochs", type=int, default=12)
    fit.add_argument("--batch-size", type=int, default=2)
    fit.add_argument("--lr", type=float, default=0.01)
    fit.add_argument("--val-split", type=float, default=0.2)
    fit.add_argument("--backbone-weights", default=None)
    fit.add_argument("--min-size", type=int, default=512)
    fit.add_argument("--max-size", type=int, default=853)
    fit.add_argument("--workers", type=int, default=2)
    fit.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.what == "throughput":
        throughput(args)
    else:
        train(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
