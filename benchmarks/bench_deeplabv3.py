"""DeepLabV3-ResNet101: segworks against torchvision on identical inputs, in one run.

Both models hold the same random weights (segworks loads torchvision's state dict; the outputs
are checked equal before timing, which also warms both up), see the same batch, and are timed
alternately round by round, the order flipping every round (benchmarks.common.compare). Two
measurements:
- train step: forward, cross-entropy on "out" + 0.4 x on "aux" (the DeepLabV3 seed's loss),
  backward, SGD step with momentum;
- inference: eval mode, no_grad forward.
The "x first" column is torchvision time / segworks time; the `ratio` lines give it per round
(min / median / max): segworks throughput / torchvision throughput, the target being >= 0.97.

    .venv/bin/python -m benchmarks.bench_deeplabv3 [--size 256] [--batch 2] [--repeats 5]
        [--device cuda --amp bf16 --channels-last] [--record benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from benchmarks.common import (
    Runtime,
    add_device_arguments,
    append_results,
    command_line,
    compare,
    format_table,
    paired_ratios,
    ratio_line,
)
from segworks.models.deeplabv3 import deeplabv3_resnet101

NUM_CLASSES = 21


def build_pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    reference = torchvision.models.segmentation.deeplabv3_resnet101(
        weights=None, weights_backbone=None, aux_loss=True, num_classes=NUM_CLASSES
    )
    ours = deeplabv3_resnet101(num_classes=NUM_CLASSES)
    ours.load_state_dict(reference.state_dict())
    return ours, reference


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x, target, runtime) -> None:
    with runtime.autocast():
        out = model(x)
        loss = F.cross_entropy(out["out"].float(), target) + 0.4 * F.cross_entropy(
            out["aux"].float(), target
        )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_arguments(parser)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2, help=">= 2: torchvision cannot train on 1")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="untimed training rounds first")
    parser.add_argument("--quick", action="store_true", help="64 px, one round (a smoke test)")
    parser.add_argument("--record", default=None, help="append the tables to this Markdown file")
    args = parser.parse_args(argv)
    if args.batch < 2:
        raise ValueError(f"--batch {args.batch}: expected >= 2 (batch norm after image pooling)")
    if args.quick:
        args.size, args.repeats, args.warmup = 64, 1, 0
    runtime = Runtime.from_args(args)
    raw_ours, raw_reference = build_pair()
    ours, reference = runtime.model(raw_ours), runtime.model(raw_reference)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=generator)
    target = torch.randint(0, NUM_CLASSES, (args.batch, args.size, args.size), generator=generator)
    x, target = runtime.images(x), target.to(runtime.device)
    with torch.no_grad():  # the same math, or the timing means nothing; also the warm-up
        same = torch.equal(ours.eval()(x)["out"], reference.eval()(x)["out"])
    if not same and runtime.amp == "none" and not runtime.compile:
        raise RuntimeError("segworks and torchvision DeepLabV3 outputs differ on the same input")

    def inference(model):
        def run():
            with torch.no_grad(), runtime.autocast():
                model(x)

        return run

    fns = {"segworks": inference(ours), "torchvision": inference(reference)}
    infer = compare(fns, repeats=args.repeats, warmup=0, sync=runtime.sync)
    ours.train(), reference.train()
    optimizers = {
        m: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9) for m in (raw_ours, raw_reference)
    }
    train = compare(
        {
            "segworks": lambda: train_step(ours, optimizers[raw_ours], x, target, runtime),
            "torchvision": lambda: train_step(
                reference, optimizers[raw_reference], x, target, runtime
            ),
        },
        repeats=args.repeats,
        warmup=args.warmup,
        sync=runtime.sync,
    )
    shape = f"{args.batch}x3x{args.size}x{args.size}"
    lines = [
        f"DeepLabV3-R101, {runtime.describe()}, {torch.get_num_threads()} threads; outputs "
        f"equal before timing: {same}",
        f"inference, {shape}, {args.repeats} alternating rounds after the equality check",
        format_table(infer, items_per_call=args.batch),
        f"\ntrain step, {shape}, {args.repeats} alternating rounds after {args.warmup} warm-up",
        format_table(train, items_per_call=args.batch),
    ]
    for name, result in (("inference", infer), ("training step", train)):
        values = paired_ratios(result, "torchvision")  # torchvision time / segworks time
        lines.append(ratio_line(f"deeplabv3_resnet101 {name} throughput segworks/peer", values))
    tables = "\n".join(lines)
    print(tables)
    if args.record:
        append_results(
            args.record, "DeepLabV3-R101: segworks vs torchvision", command_line(), tables
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
