"""segworks' `camvid` recipe: a U-Net trained on CamVid's train split at 180x240 for a fixed time
on the CPU, scored on the val split.

    python -m benchmarks.bench_camvid                  # 10 minutes
    python -m benchmarks.bench_camvid --minutes 30     # a longer budget

The epochs are fitted to `--minutes` by timing a few steps first (the cosine schedule then ends
on time). Training sees 176 px crops of images scaled to about half size (180x240); there is no
validation during training, so every minute goes to training. The last checkpoint is scored on
the 101 val images: each is resized to 180x240, and the logits are resized back, so the numbers
count every pixel at CamVid's 360x480 (void excluded). `--clock cpu` fits the epochs to this
process's CPU time instead of wall time, for a machine shared with other jobs (see
bench_newts). CamVid's test split is held back and never read here.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.bench_newts import parse_sets, score

CAMVID = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "camvid"
SIZE = (180, 240)  # (H, W): CamVid at half resolution, "240x180"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not (args.data / "train.txt").is_file():
        print(f"no CamVid data at {args.data}")
        return 2
    row = run(args)
    print(json.dumps(row), flush=True)
    print(table(args, row))
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=CAMVID)
    parser.add_argument("--recipe", default="camvid")
    parser.add_argument("--minutes", type=float, default=10.0, help="training time")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe setting (JSON value)")  # fmt: skip
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    from segworks.data import open_source
    from segworks.engine.train import train
    from segworks.recipes import epochs_for_budget, recipe_config

    torch.set_num_threads(args.threads)
    source = open_source(str(args.data))
    with tempfile.TemporaryDirectory(prefix="bench_camvid_") as folder:
        overrides = dict(
            data=str(args.data),
            seed=args.seed,
            device="cpu",
            out=folder,
            progress=False,
            tensorboard=False,
            snapshot_every=0,
            val_name="no-validation-while-training",
            val_split=0.0,
            num_classes=len(source.meta.class_names),
        )
        overrides.update(parse_sets(args.set))
        if args.clock == "cpu":
            overrides.update(workers=0, max_minutes=None)
        else:
            overrides["max_minutes"] = args.minutes
        cfg = recipe_config(args.recipe, **overrides)
        images = len(source.splits["train"])
        clock = time.process_time if args.clock == "cpu" else time.perf_counter
        budget = args.minutes * (args.threads if args.clock == "cpu" else 1)
        cfg.epochs = epochs_for_budget(cfg, budget, train_images=images, clock=clock)
        wall, cpu = time.perf_counter(), time.process_time()
        run_dir = train(cfg)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        scores = score(run_dir / "last.pt", source.dataset("val"), size=SIZE)
    names = source.meta.class_names
    return {"seed": args.seed, "epochs": cfg.epochs, "train_min": wall / 60, "cpu_min": cpu / 60,
            "class_names": names, **scores}  # fmt: skip


def table(args: argparse.Namespace, row: dict) -> str:
    lines = [
        f"CamVid train -> val, recipe '{args.recipe}' {' '.join(args.set)}, input 180x240, "
        f"scored at 360x480",
        f"budget {args.minutes} min ({args.clock} clock, {args.threads} threads): "
        f"{row['epochs']} epochs, {row['train_min']:.1f} min wall, {row['cpu_min']:.1f} min CPU",
        f"val mIoU {row['miou']:.4f}",
        "IoU per class:",
    ]
    lines += [f"  {name:<12} {iou:.3f}" for name, iou in zip(row["class_names"], row["iou"])]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
