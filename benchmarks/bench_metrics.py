"""Confusion-matrix update speed: segworks vs torchmetrics on Cityscapes-sized label maps.

Both sides count the same (pred, target) batch of 8x1024x2048 int64 labels with 19 classes and
about 10 % ignored pixels. segworks and torchmetrics' bare counting path
(``validate_args=False``) alternate round by round, the order flipping every round
(benchmarks.common.compare), so machine noise hits both alike. torchmetrics with its default
argument validation (what a user gets) is about 20x slower than segworks on a CPU; it is timed
`--validated-repeats` times after the others (the `segworks bench` full run times it once to fit
the time budget), and its ratio is against segworks' median. The `ratio` lines give
torchmetrics time / segworks time: > 1 means segworks is faster.

    python -m benchmarks.bench_metrics [--device cuda] [--repeats 5] [--validated-repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.common import compare, paired_ratios, ratio_line
from segworks.metrics import ConfusionMatrix


def make_labels(shape, num_classes: int, device: str, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    target = torch.randint(0, num_classes, shape, generator=generator)
    pred = torch.randint(0, num_classes, shape, generator=generator)
    target[torch.rand(shape, generator=generator) < 0.1] = 255
    return pred.to(device), target.to(device)


def sync_for(device: str):
    if device.startswith("cuda"):
        return torch.cuda.synchronize
    return None


def run(
    *,
    batch: int = 8,
    height: int = 1024,
    width: int = 2048,
    num_classes: int = 19,
    repeats: int = 5,
    validated_repeats: int | None = None,
    device: str = "cpu",
) -> dict:
    """compare()'s result for segworks vs torchmetrics(validate_args=False), plus the seconds
    of each validated torchmetrics call under "validated" (`validated_repeats`, default
    `repeats`; 0 skips it)."""
    from torchmetrics.classification import MulticlassConfusionMatrix

    pred, target = make_labels((batch, height, width), num_classes, device)
    ours = ConfusionMatrix(num_classes, device=device)
    bare = MulticlassConfusionMatrix(num_classes, ignore_index=255, validate_args=False)
    bare = bare.to(device)
    result = compare(
        {
            "segworks": lambda: ours.update(pred, target),
            BARE: lambda: bare.update(pred, target),
        },
        repeats=repeats,
        warmup=1,
        sync=sync_for(device),
    )
    if not torch.equal(bare.confmat.to(ours.matrix.device), ours.matrix):
        raise RuntimeError(f"segworks and {BARE} disagree on the confusion matrix")
    validated_repeats = repeats if validated_repeats is None else validated_repeats
    result["validated"] = []
    if validated_repeats > 0:
        checked = MulticlassConfusionMatrix(num_classes, ignore_index=255).to(device)
        sync = sync_for(device) or (lambda: None)
        for _ in range(validated_repeats):
            sync()
            start = time.perf_counter()
            checked.update(pred, target)
            sync()
            result["validated"].append(time.perf_counter() - start)
        # the counts of every call add up: compare them to segworks' per call
        calls = validated_repeats
        per_call = ours.matrix * calls // (repeats + 1)
        if not torch.equal(checked.confmat.to(ours.matrix.device), per_call):
            raise RuntimeError(f"segworks and {VALIDATED} disagree on the confusion matrix")
    return result


BARE = "torchmetrics(validate_args=False)"
VALIDATED = "torchmetrics (default validation)"


def report(result: dict) -> str:
    """Table (ms min / median / max, x segworks) and the `ratio` lines."""
    times = dict(result["times"])
    if result.get("validated"):
        times[VALIDATED] = result["validated"]
    base = statistics.median(times["segworks"])
    lines = [f"{'implementation':<36} {'min ms':>8} {'median':>8} {'max':>8} {'x segworks':>11}"]
    for name, values in times.items():
        median = statistics.median(values)
        lines.append(
            f"{name:<36} {1e3 * min(values):8.1f} {1e3 * median:8.1f} {1e3 * max(values):8.1f} "
            f"{median / base:10.2f}x"
        )
    lines.append("(x segworks = peer median / segworks median; > 1 means segworks is faster)")
    lines.append(
        ratio_line(f"confusion-matrix update speed segworks/{BARE}", paired_ratios(result, BARE))
    )
    if result.get("validated"):
        values = [t / base for t in result["validated"]]
        lines.append(
            ratio_line(
                f"confusion-matrix update speed segworks/{VALIDATED}",
                values,
                rounds="calls, each over segworks' median",
            )
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--classes", type=int, default=19)
    parser.add_argument(
        "--validated-repeats",
        type=int,
        help="calls of torchmetrics with its default validation (default --repeats; 0: none)",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1 or (args.validated_repeats or 0) < 0:
        raise ValueError(
            f"--repeats {args.repeats} / --validated-repeats {args.validated_repeats}: "
            "expected >= 1 / >= 0"
        )
    result = run(
        batch=args.batch,
        height=args.height,
        width=args.width,
        num_classes=args.classes,
        repeats=args.repeats,
        validated_repeats=args.validated_repeats,
        device=args.device,
    )
    print(
        f"confusion-matrix update, {args.batch}x{args.height}x{args.width} int64 labels, "
        f"{args.classes} classes, device {args.device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {args.repeats} alternating rounds after 1 warm-up"
    )
    print(report(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
