"""Mask R-CNN benchmarks.

1. Inference throughput of segworks' maskrcnn_r50_fpn against torchvision's
   maskrcnn_resnet50_fpn, in one run, alternating the two models rep by rep, with the same
   random weights (the segworks model loads torchvision's state dict):

       .venv/bin/python benchmarks/bench_mask_rcnn.py throughput --size 320 --reps 5

2. Training on a real instance set (balloon: the train folder is split into train/val; or
   fruits_nuts), reporting COCO mask AP on the held-out part:

       .venv/bin/python benchmarks/bench_mask_rcnn.py train \
           --data ../shared/datasets/balloon/train --model maskrcnn_r50_fpn \
           --backbone-weights resnet50.pth --epochs 12 --out runs/balloon

   (long on CPU; meant for a GPU. Without --backbone-weights it trains from scratch.)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from argparse import Namespace

import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn

from segworks.models.mask_rcnn import maskrcnn_r50_fpn


def throughput(size: int, reps: int, batch: int, device: str) -> None:
    torch.manual_seed(0)
    settings = {"min_size": size, "max_size": size, "num_classes": 91}
    reference = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, **settings)
    ours = maskrcnn_r50_fpn(**settings)
    ours.load_state_dict(reference.state_dict())
    models = {"torchvision": reference.eval().to(device), "segworks": ours.eval().to(device)}
    images = [torch.rand(3, size, size, device=device) for _ in range(batch)]
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():  # warm-up
            model(images)
        for _ in range(reps):
            for name, model in models.items():
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                start = time.perf_counter()
                model(images)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - start)
    rates = {name: batch / statistics.median(values) for name, values in times.items()}
    for name, rate in rates.items():
        print(f"{name:12s} {rate:8.3f} images/s (median of {reps}, {size}x{size}, batch {batch})")
    print(f"ratio segworks/torchvision: {rates['segworks'] / rates['torchvision']:.3f}")
    print("command: " + " ".join(sys.argv))


def train(args) -> None:
    from segworks.engine.instance import run_train

    run_train(
        Namespace(
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
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    speed = sub.add_parser("throughput")
    speed.add_argument("--size", type=int, default=320)
    speed.add_argument("--reps", type=int, default=5)
    speed.add_argument("--batch", type=int, default=1)
    speed.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
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
    args = parser.parse_args()
    if args.what == "throughput":
        throughput(args.size, args.reps, args.batch, args.device)
    else:
        train(args)


if __name__ == "__main__":
    main()
