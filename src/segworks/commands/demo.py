"""`segworks demo`: write the built-in shapes dataset, train a small U-Net for the `demo`
recipe's fixed number of epochs (about 1.5 minutes on two free cores), evaluate it on the val
split, save overlays of a few val images and say where everything is.

The epochs are fixed, not fitted to a time budget, so the demo's result does not depend on how
busy the machine is (a busy machine only takes longer). `--minutes M` fits the epochs to M
minutes instead. `--data DIR` trains on a real dataset (any layout `segworks train --data` reads)
for as many epochs as fit 1.5 minutes unless `--epochs` or `--minutes` says otherwise (the
recipe's epochs were sized for the shapes). A demo run already in `--out` is replaced only with
`--overwrite` (`make demo` passes it: that folder is the demo's own).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from segworks.config import TrainConfig
from segworks.errors import SegworksError
from segworks.outputs import check_output_dir, run_files
from segworks.recipes import RECIPES

log = logging.getLogger(__name__)

NUM_OVERLAYS = 6
DATA_MINUTES = 1.5  # --data without --epochs or --minutes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="demo folder (default runs/demo)")
    parser.add_argument("--data", help="train on this dataset instead of the synthetic one")
    epochs = RECIPES["demo"].settings["epochs"]
    parser.add_argument("--epochs", type=int, help=f"default: the demo recipe's ({epochs})")
    parser.add_argument(
        "--minutes", type=float, help="fit the epochs to this many minutes (--data: 1.5)"
    )
    parser.add_argument("--crop-size", type=int, help="default 64 (synthetic) or 256")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-train", type=int, default=384, help="synthetic train images")
    parser.add_argument("--num-val", type=int, default=64, help="synthetic val images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--overwrite", action="store_true", help="replace a demo run in --out")


def run(args: argparse.Namespace) -> int:
    from segworks.engine.train import train

    if args.minutes is not None and args.minutes <= 0:
        raise SegworksError(f"--minutes must be > 0, got {args.minutes}")
    if args.minutes is not None and args.epochs is not None:
        raise SegworksError("give --epochs or --minutes, not both (--minutes fits the epochs)")
    if args.epochs is not None and args.epochs < 1:
        raise SegworksError(f"--epochs must be >= 1, got {args.epochs}")
    out = check_output_dir(args.out, "--out")
    found = run_files(out / "run")
    if found and not args.overwrite:
        raise SegworksError(
            f"--out {out}: holds a demo run already ({out / 'run'}: {', '.join(found)}); "
            "replace it with --overwrite or choose another --out"
        )
    if args.data:
        data = Path(args.data)
    else:
        data = synthetic_data(
            out / "data", seed=args.seed, num_train=args.num_train, num_val=args.num_val
        )
    cfg = demo_config(args, data, out / "run")
    started = time.monotonic()
    run_dir = train(cfg)
    minutes = (time.monotonic() - started) / 60
    checkpoint = run_dir / "best.pt" if (run_dir / "best.pt").exists() else run_dir / "last.pt"
    metrics, overlays = evaluate_and_draw(checkpoint, cfg, out / "overlays")
    print(summary(run_dir, checkpoint, metrics, overlays, minutes))
    return 0


def synthetic_data(root: Path, *, seed: int, num_train: int = 384, num_val: int = 64) -> Path:
    from segworks.data.synthetic import write_shapes_dataset

    if (root / "class_names.txt").is_file():
        log.info("using the synthetic dataset already in %s", root)
        return root
    return write_shapes_dataset(root, seed=seed, num_train=num_train, num_val=num_val)


def demo_config(args: argparse.Namespace, data: Path, out: Path) -> TrainConfig:
    """The `demo` recipe (a BN U-Net, AdamW with warm-up and cosine decay) for its own epochs,
    `--epochs`, or as many as fit `--minutes`; real data (--data) gets larger crops and scales."""
    from segworks.recipes import epochs_for_budget, recipe_settings

    minutes = args.minutes
    if args.data and minutes is None and args.epochs is None:
        minutes = DATA_MINUTES  # the recipe's epochs were sized for the shapes
    overrides = dict(
        data=str(data),
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        out=str(out),
        tensorboard=False,
        max_minutes=None if minutes is None else 1.25 * minutes,
    )
    if args.data:
        overrides.update(crop_size=256, scale_range=(0.5, 2.0))
    if args.crop_size:
        overrides["crop_size"] = args.crop_size
    cfg = TrainConfig(**recipe_settings("demo", overrides))
    if args.epochs is not None:
        cfg.epochs = args.epochs
    elif minutes is not None:
        cfg.epochs = epochs_for_budget(cfg, minutes, train_images=train_image_count(cfg))
    cfg.warmup = min(cfg.warmup, cfg.epochs * train_image_count(cfg) // (4 * cfg.batch_size))
    return cfg


def train_image_count(cfg: TrainConfig) -> int:
    from segworks.data import open_source
    from segworks.engine.train import split_samples

    return len(split_samples(cfg, open_source(cfg.data).splits)[0])


@torch.no_grad()
def evaluate_and_draw(checkpoint: Path, cfg: TrainConfig, overlay_dir: Path):
    """Val metrics at original resolution from the checkpoint alone, and a few overlays."""
    from PIL import Image

    from segworks.checkpoint import load_checkpoint
    from segworks.data import DatasetMeta, open_source
    from segworks.data.transforms import eval_transforms
    from segworks.engine.evaluators import SemanticEvaluator
    from segworks.engine.train import predict_labels, resolve_device, split_samples
    from segworks.fileio import save_image
    from segworks.models import model_from_checkpoint
    from segworks.visualize import overlay, panel

    saved = load_checkpoint(checkpoint)
    meta = DatasetMeta.from_dict(saved["meta"])
    device = resolve_device(cfg.device)
    model = model_from_checkpoint(saved, checkpoint).to(device)
    source = open_source(cfg.data)
    _, val_samples = split_samples(cfg, source.splits)
    dataset = source.dataset(val_samples, transform=eval_transforms(mean=cfg.mean, std=cfg.std))
    evaluator = SemanticEvaluator(meta.num_classes, class_names=meta.class_names)
    overlays = []
    for index in range(len(dataset)):
        image, target = dataset[index]
        pred = predict_labels(model(image[None].to(device))["out"])[0].cpu()
        evaluator.process(target, pred)
        if index < NUM_OVERLAYS:
            photo, _ = dataset.read(index)
            zoom = max(1, 192 // photo.width)  # small synthetic images are shown enlarged
            photo = photo.resize((photo.width * zoom, photo.height * zoom), Image.NEAREST)
            gt, pr = (t.numpy().repeat(zoom, 0).repeat(zoom, 1) for t in (target, pred))
            picture = panel(
                [photo, overlay(photo, gt, meta.palette, legend=False),
                 overlay(photo, pr, meta.palette, class_names=meta.class_names)],
                ["image", "ground truth", "prediction"],
            )  # fmt: skip
            path = overlay_dir / f"{Path(dataset.samples[index].image).stem}.png"
            save_image(picture, path)
            overlays.append(path)
    return evaluator.evaluate(), overlays


def summary(run_dir: Path, checkpoint: Path, metrics: dict, overlays: list[Path], minutes) -> str:
    from segworks.metrics import metrics_table

    lines = [
        "",
        metrics_table(metrics),
        "",
        f"val mIoU {metrics['miou']:.3f} after {minutes:.1f} minutes of training",
        f"run directory: {run_dir} (metrics.csv, last.pt, best.pt)",
        f"checkpoint:    {checkpoint}",
        f"overlays:      {overlays[0].parent if overlays else '-'} ({len(overlays)} images)",
        f"next:          segworks predict {checkpoint} IMAGES --out DIR",
    ]
    return "\n".join(lines)
