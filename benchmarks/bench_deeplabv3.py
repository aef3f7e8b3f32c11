"""DeepLabV3-ResNet101: segworks against torchvision on identical inputs, in one run.

Both models hold the same random weights (segworks loads torchvision's state dict; the outputs
are checked equal before timing), see the same batch, and are timed alternately round by round
(benchmarks.common.compare). Two measurements:
- train step: forward, cross-entropy on "out" + 0.4 x on "aux" (the DeepLabV3 seed's loss),
  backward, SGD step;
- inference: eval mode, no_grad forward.
The ratio column is other / segworks: 1.00 means the same speed (the target is >= 0.97 for
segworks / torchvision, i.e. a torchvision ratio <= 1.03).

    .venv/bin/python -m benchmarks.bench_deeplabv3 [--size 256] [--batch 2] [--repeats 5]
        [--record benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from benchmarks.common import append_results, command_line, compare, format_table
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


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x, target) -> None:
    out = model(x)
    loss = F.cross_entropy(out["out"], target) + 0.4 * F.cross_entropy(out["aux"], target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2, help=">= 2: torchvision cannot train on 1")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--record", default=None, help="append the tables to this Markdown file")
    args = parser.parse_args(argv)
    ours, reference = build_pair()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=generator)
    target = torch.randint(0, NUM_CLASSES, (args.batch, args.size, args.size), generator=generator)
    with torch.no_grad():
        assert torch.equal(ours.eval()(x)["out"], reference.eval()(x)["out"]), "outputs differ"

    def inference(model):
        def run():
            with torch.no_grad():
                model(x)

        return run

    infer = compare(
        {"segworks": inference(ours), "torchvision": inference(reference)}, repeats=args.repeats
    )
    ours.train(), reference.train()
    optimizers = {
        m: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9) for m in (ours, reference)
    }
    train = compare(
        {
            "segworks": lambda: train_step(ours, optimizers[ours], x, target),
            "torchvision": lambda: train_step(reference, optimizers[reference], x, target),
        },
        repeats=args.repeats,
    )
    tables = (
        f"inference, {args.batch}x3x{args.size}x{args.size}\n"
        + format_table(infer, items_per_call=args.batch)
        + f"\n\ntrain step, {args.batch}x3x{args.size}x{args.size}\n"
        + format_table(train, items_per_call=args.batch)
    )
    print(tables)
    for name, result in (("inference", infer), ("train step", train)):
        speed = result["ratio"]["torchvision"]  # torchvision time / segworks time
        print(f"{name}: segworks throughput / torchvision throughput = {speed:.3f}")
    if args.record:
        append_results(
            args.record, "DeepLabV3-R101: segworks vs torchvision", command_line(), tables
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
