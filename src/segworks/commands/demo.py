"""`segworks demo`: write the built-in shapes dataset, train a small U-Net for about a minute,
evaluate it on the val split, save overlays of a few val images and say where everything is.

`--data DIR` trains on a real dataset instead (any layout `segworks train --data` reads).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from segworks.config import TrainConfig

log = logging.getLogger(__name__)

DEMO_MODEL = {"base_width": 8, "depth": 3}
NUM_OVERLAYS = 6


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="demo folder (default runs/demo)")
    parser.add_argument("--data", help="train on this dataset instead of the synthetic one")
    parser.add_argument("--minutes", type=float, default=1.0, help="training budget (default 1)")
    parser.add_argument("--epochs", type=int, help="default: as many as fit in --minutes")
    parser.add_argument("--crop-size", type=int, help="default 64 (synthetic) or 256")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def run(args: argparse.Namespace) -> int:
    from segworks.engine.train import train

    if args.minutes <= 0:
        raise ValueError(f"--minutes must be > 0, got {args.minutes}")
    out = Path(args.out)
    data = Path(args.data) if args.data else synthetic_data(out / "data", seed=args.seed)
    cfg = demo_config(args, data, out / "run")
    started = time.monotonic()
    run_dir = train(cfg)
    minutes = (time.monotonic() - started) / 60
    checkpoint = run_dir / "best.pt" if (run_dir / "best.pt").exists() else run_dir / "last.pt"
    metrics, overlays = evaluate_and_draw(checkpoint, cfg, out / "overlays")
    print(summary(run_dir, checkpoint, metrics, overlays, minutes))
    return 0


def synthetic_data(root: Path, *, seed: int) -> Path:
    from segworks.data.synthetic import write_shapes_dataset

    if (root / "class_names.txt").is_file():
        log.info("using the synthetic dataset already in %s", root)
        return root
    return write_shapes_dataset(root, seed=seed)


def demo_config(args: argparse.Namespace, data: Path, out: Path) -> TrainConfig:
    """A small U-Net, Adam with a poly schedule, and as many epochs as fit the time budget."""
    cfg = TrainConfig(
        data=str(data),
        model="unet",
        model_kwargs=dict(DEMO_MODEL),
        batch_size=args.batch_size,
        lr=3e-3,
        weight_decay=0.0,
        crop_size=args.crop_size or (256 if args.data else 64),
        scale_range=(0.75, 1.25) if not args.data else (0.5, 2.0),
        workers=0,
        seed=args.seed,
        device=args.device,
        out=str(out),
        epochs=args.epochs or 1,
        max_minutes=None if args.epochs else 1.25 * args.minutes,
        snapshot_every=0,
        tensorboard=False,
    )
    if not args.epochs:
        cfg.epochs = epochs_for_budget(cfg, args.minutes)
    return cfg


def epochs_for_budget(cfg: TrainConfig, minutes: float) -> int:
    """Time a few training steps of the demo model and fit whole epochs into `minutes`."""
    from segworks.data import open_source
    from segworks.engine.train import build_train_model, resolve_device

    source = open_source(cfg.data)
    device = resolve_device(cfg.device)
    model = build_train_model(cfg, source.meta).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    images = torch.randn(cfg.batch_size, 3, cfg.crop_size, cfg.crop_size, device=device)
    target = torch.zeros(cfg.batch_size, cfg.crop_size, cfg.crop_size, dtype=torch.long)
    seconds = []
    for _ in range(4):
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(images)["out"], target.to(device))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    step = sorted(seconds[1:])[1] * 1.15  # median of the warm steps, plus loading and logging
    images_per_epoch = sum(len(v) for k, v in source.splits.items() if k == "train")
    steps_per_epoch = max(1, images_per_epoch // cfg.batch_size)
    epochs = max(1, int(60 * minutes / (step * steps_per_epoch)))
    log.info("demo: %.0f ms per step -> %d epochs in %.1f minutes", 1000 * step, epochs, minutes)
    return epochs


@torch.no_grad()
def evaluate_and_draw(checkpoint: Path, cfg: TrainConfig, overlay_dir: Path):
    """Val metrics at original resolution from the checkpoint alone, and a few overlays."""
    from PIL import Image

    from segworks.checkpoint import load_checkpoint, model_from_checkpoint
    from segworks.data import DatasetMeta, open_source
    from segworks.data.transforms import eval_transforms
    from segworks.engine.train import predict_labels, resolve_device, split_samples
    from segworks.fileio import save_image
    from segworks.metrics import ConfusionMatrix
    from segworks.visualize import overlay, panel

    saved = load_checkpoint(checkpoint)
    meta = DatasetMeta.from_dict(saved["meta"])
    device = resolve_device(cfg.device)
    model = model_from_checkpoint(saved, checkpoint).to(device)
    source = open_source(cfg.data)
    _, val_samples = split_samples(cfg, source.splits)
    dataset = source.dataset(val_samples, transform=eval_transforms(mean=cfg.mean, std=cfg.std))
    matrix = ConfusionMatrix(meta.num_classes, class_names=meta.class_names)
    overlays = []
    for index in range(len(dataset)):
        image, target = dataset[index]
        pred = predict_labels(model(image[None].to(device))["out"])[0].cpu()
        matrix.update(pred, target)
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
    return matrix.compute(), overlays


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
