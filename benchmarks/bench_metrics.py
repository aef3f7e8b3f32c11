"""Confusion-matrix update speed: segworks vs torchmetrics on Cityscapes-sized label maps.

Both sides count the same (pred, target) batch of 8x1024x2048 int64 labels with 19 classes and
about 10 % ignored pixels; repetitions alternate between the implementations so that machine
noise hits both alike. torchmetrics is timed with its default argument validation (what a user
gets) and with ``validate_args=False`` (its bare counting path).

    python -m benchmarks.bench_metrics [--device cuda] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from segworks.metrics import ConfusionMatrix


def make_labels(shape, num_classes: int, device: str, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    target = torch.randint(0, num_classes, shape, generator=generator)
    pred = torch.randint(0, num_classes, shape, generator=generator)
    target[torch.rand(shape, generator=generator) < 0.1] = 255
    return pred.to(device), target.to(device)


def timed(fn: Callable[[], None], device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def run(
    *,
    batch: int = 8,
    height: int = 1024,
    width: int = 2048,
    num_classes: int = 19,
    repeats: int = 5,
    device: str = "cpu",
) -> dict[str, list[float]]:
    """Seconds per update for each implementation, `repeats` alternating rounds (after warm-up)."""
    from torchmetrics.classification import MulticlassConfusionMatrix

    pred, target = make_labels((batch, height, width), num_classes, device)
    ours = ConfusionMatrix(num_classes, device=device)
    peers = {
        "torchmetrics": MulticlassConfusionMatrix(num_classes, ignore_index=255).to(device),
        "torchmetrics(validate_args=False)": MulticlassConfusionMatrix(
            num_classes, ignore_index=255, validate_args=False
        ).to(device),
    }
    updates = {"segworks": lambda: ours.update(pred, target)}
    updates.update({name: (lambda m=m: m.update(pred, target)) for name, m in peers.items()})
    for update in updates.values():  # warm-up (allocator, CUDA kernels)
        timed(update, device)
    times: dict[str, list[float]] = {name: [] for name in updates}
    for _ in range(repeats):
        for name, update in updates.items():
            times[name].append(timed(update, device))
    for name, metric in peers.items():  # same counts, or the timing means nothing
        if not torch.equal(metric.confmat.to(ours.matrix.device), ours.matrix):
            raise RuntimeError(f"segworks and {name} disagree on the confusion matrix")
    return times


def report(times: dict[str, list[float]]) -> str:
    base = statistics.median(times["segworks"])
    lines = [f"{'implementation':<36} {'min ms':>8} {'median':>8} {'max':>8} {'x segworks':>11}"]
    for name, values in times.items():
        median = statistics.median(values)
        lines.append(
            f"{name:<36} {1e3 * min(values):8.1f} {1e3 * median:8.1f} {1e3 * max(values):8.1f} "
            f"{median / base:10.2f}x"
        )
    lines.append("(x segworks = peer median / segworks median; > 1 means segworks is faster)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--classes", type=int, default=19)
    args = parser.parse_args(argv)
    times = run(
        batch=args.batch,
        height=args.height,
        width=args.width,
        num_classes=args.classes,
        repeats=args.repeats,
        device=args.device,
    )
    print(
        f"confusion-matrix update, {args.batch}x{args.height}x{args.width} int64 labels, "
        f"{args.classes} classes, device {args.device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {args.repeats} alternating repeats"
    )
    print(report(times))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
