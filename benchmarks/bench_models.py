"""Training-step and inference throughput: segworks' models vs the same models from their peers.

| segworks            | peer                                                  |
|---------------------|-------------------------------------------------------|
| deeplabv3_resnet101 | torchvision deeplabv3_resnet101 (aux head)            |
| fcn_resnet50        | torchvision fcn_resnet50 (aux head)                   |
| unet_resnet34       | segmentation_models_pytorch Unet("resnet34")          |
| maskrcnn_r50_fpn    | torchvision maskrcnn_resnet50_fpn (min/max size = --size) |

Both contenders of a pair get the same weights (the peer's state dict is loaded into segworks'
model: the module names match), the same input batch and the same loss, and alternate every
round. A training step is forward, loss (cross-entropy + 0.5 x aux; Mask R-CNN's loss dict),
backward and an SGD step with momentum; inference is a forward pass under `torch.inference_mode`.
After timing, the inference outputs of the pair are compared: equal for models without
dropout; the FCN and DeepLab heads draw different dropout masks in the timed training steps,
so their weights, and outputs, drift apart slightly.

    python -m benchmarks.bench_models [--models fcn_resnet50,unet_resnet34@256x1] [--size 256]
        [--batch 2] [--repeats 3] [--device cuda --amp bf16 --channels-last --compile]
        [--peak-tflops 989]

A model name may carry its own input side and batch, `NAME@SIDExBATCH` (or `NAME@SIDE`), which
override --size and --batch for that pair. Each pair ends with `ratio` lines: segworks
throughput / peer throughput per alternated round, min / median / max.

With `--peak-tflops` (the device's dense peak for the AMP dtype) the training rate is also given
as a fraction of that peak, counting 3 x forward MACs x 2 FLOPs per image.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.common import (
    Runtime,
    add_device_arguments,
    compare,
    format_table,
    paired_ratios,
    ratio_line,
)
from segworks import IGNORE_INDEX
from segworks.models import build_model

NUM_CLASSES = 21
AUX_WEIGHT = 0.5


@dataclass(frozen=True)
class Contest:
    """A segworks model and the peer that does the same work."""

    peer_name: str
    build_peer: Callable[[int, int], nn.Module]  # (num_classes, size) -> model
    detection: bool = False


def _tv_segmentation(name: str) -> Callable[[int, int], nn.Module]:
    def build(num_classes: int, size: int) -> nn.Module:
        from torchvision.models import segmentation

        builder = getattr(segmentation, name)
        return builder(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=True)

    return build


def _smp_unet(num_classes: int, size: int) -> nn.Module:
    import segmentation_models_pytorch as smp

    return smp.Unet("resnet34", encoder_weights=None, classes=num_classes)


def _tv_maskrcnn(num_classes: int, size: int) -> nn.Module:
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    return maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=num_classes, min_size=size, max_size=size
    )


CONTESTS = {
    "deeplabv3_resnet101": Contest(
        "torchvision deeplabv3_resnet101", _tv_segmentation("deeplabv3_resnet101")
    ),
    "fcn_resnet50": Contest("torchvision fcn_resnet50", _tv_segmentation("fcn_resnet50")),
    "unet_resnet34": Contest("smp Unet(resnet34)", _smp_unet),
    "maskrcnn_r50_fpn": Contest("torchvision maskrcnn_resnet50_fpn", _tv_maskrcnn, True),
}


# --------------------------------------------------------------------------- models and data
def build_pair(name: str, size: int, num_classes: int = NUM_CLASSES) -> tuple[nn.Module, ...]:
    """(segworks model, peer model), both on the CPU with the peer's initial weights."""
    contest = CONTESTS[name]
    torch.manual_seed(0)
    peer = contest.build_peer(num_classes, size)
    kwargs = {"min_size": size, "max_size": size} if contest.detection else {}
    ours = build_model(name, num_classes=num_classes, **kwargs)
    ours.load_state_dict(peer.state_dict())
    return ours, peer


def semantic_batch(batch: int, size: int, num_classes: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=generator)
    target = torch.randint(0, num_classes, (batch, size, size), generator=generator)
    target[:, : size // 8] = IGNORE_INDEX
    return images, target


def detection_batch(batch: int, size: int, num_classes: int) -> tuple[list, list]:
    """Images in 0..1 and three boxes with filled masks per image."""
    generator = torch.Generator().manual_seed(0)
    images, targets = [], []
    for _ in range(batch):
        images.append(torch.rand(3, size, size, generator=generator))
        corners = torch.randint(0, size // 2, (3, 2), generator=generator)
        sides = torch.randint(size // 8, size // 2, (3, 2), generator=generator)
        boxes = torch.cat([corners, corners + sides], dim=1).float()
        masks = torch.zeros(3, size, size, dtype=torch.uint8)
        for mask, (x0, y0, x1, y1) in zip(masks, boxes.long().tolist()):
            mask[y0:y1, x0:x1] = 1
        labels = torch.randint(1, num_classes, (3,), generator=generator)
        targets.append({"boxes": boxes, "labels": labels, "masks": masks})
    return images, targets


def semantic_loss(output: dict[str, Tensor] | Tensor, target: Tensor) -> Tensor:
    """Cross-entropy on "out" (+ AUX_WEIGHT x on "aux"); a bare tensor is smp's output."""
    if isinstance(output, Tensor):
        output = {"out": output}
    loss = F.cross_entropy(output["out"].float(), target, ignore_index=IGNORE_INDEX)
    if "aux" in output:
        aux = F.cross_entropy(output["aux"].float(), target, ignore_index=IGNORE_INDEX)
        loss = loss + AUX_WEIGHT * aux
    return loss


# --------------------------------------------------------------------------- steps
class Workload:
    """One model on the runtime with its inputs, an optimiser and the two timed calls."""

    def __init__(self, model: nn.Module, runtime: Runtime, inputs, detection: bool):
        self.runtime = runtime
        self.detection = detection
        self.raw = model.to(runtime.device)
        self.model = runtime.model(model)
        self.optimizer = torch.optim.SGD(self.raw.parameters(), lr=1e-4, momentum=0.9)
        self.scaler = runtime.grad_scaler()
        self.last_output = None
        images, targets = inputs
        if detection:
            self.images = [runtime.images(image[None])[0] for image in images]
            self.targets = [{k: v.to(runtime.device) for k, v in t.items()} for t in targets]
        else:
            self.images = runtime.images(images)
            self.targets = targets.to(runtime.device)

    def loss(self) -> Tensor:
        with self.runtime.autocast():
            if self.detection:
                return sum(self.model(self.images, self.targets).values())
            return semantic_loss(self.model(self.images), self.targets)

    def train_step(self) -> None:
        loss = self.loss()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def infer(self):
        with torch.inference_mode(), self.runtime.autocast():
            self.last_output = self.model(self.images)
        return self.last_output


def output_difference(ours, peer) -> str:
    """Largest absolute difference of the main outputs, or what differs for detections."""
    if isinstance(ours, list):
        counts = [len(o["boxes"]) for o in ours], [len(p["boxes"]) for p in peer]
        if counts[0] != counts[1]:
            return f"detections per image differ: {counts[0]} vs {counts[1]}"
        diffs = [
            (o["boxes"] - p["boxes"]).abs().max().item()
            for o, p in zip(ours, peer)
            if len(o["boxes"])
        ]
        return f"{sum(counts[0])} detections, box max |diff| {max(diffs, default=0.0):.2e}"
    ours = ours["out"] if isinstance(ours, dict) else ours
    peer = peer["out"] if isinstance(peer, dict) else peer
    return f"logits max |diff| {(ours.float() - peer.float()).abs().max().item():.2e}"


@dataclass(frozen=True)
class Settings:
    batch: int
    size: int
    repeats: int
    warmup: int
    peak_tflops: float | None = None


def parse_models(text: str, *, size: int, batch: int) -> list[tuple[str, int, int]]:
    """`name[@SIDE[xBATCH]],...` -> [(name, side, batch)], defaults from --size and --batch."""
    plan = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, _, shape = item.partition("@")
        side, _, count = shape.partition("x")
        if name not in CONTESTS:
            raise ValueError(f"unknown benchmark model {name!r}; expected one of {list(CONTESTS)}")
        try:
            item_size, item_batch = int(side or size), int(count or batch)
        except ValueError:
            expected = "expected NAME, NAME@SIDE or NAME@SIDExBATCH"
            raise ValueError(f"--models item {item!r}: {expected}") from None
        if item_size < 32 or item_batch < 1:
            raise ValueError(f"--models item {item!r}: expected side >= 32 and batch >= 1")
        plan.append((name, item_size, item_batch))
    if not plan:
        raise ValueError(f"--models {text!r}: expected at least one of {list(CONTESTS)}")
    return plan


def bench_pair(name: str, runtime: Runtime, settings: Settings) -> str:
    """Training and inference tables for one pair, with their ratio lines, as text."""
    contest, batch, size = CONTESTS[name], settings.batch, settings.size
    ours, peer = build_pair(name, size)
    make = detection_batch if contest.detection else semantic_batch
    inputs = make(batch, size, NUM_CLASSES)
    workloads = {
        f"segworks {name}": Workload(ours, runtime, inputs, contest.detection),
        contest.peer_name: Workload(peer, runtime, inputs, contest.detection),
    }
    lines = [f"### {name} vs {contest.peer_name}, batch {batch}, {size}x{size}"]
    for phase in ("training step", "inference"):
        train = phase == "training step"
        for workload in workloads.values():
            workload.model.train(train)
        fns = {label: (w.train_step if train else w.infer) for label, w in workloads.items()}
        result = compare(fns, repeats=settings.repeats, warmup=settings.warmup, sync=runtime.sync)
        lines += [f"{phase}:", format_table(result, items_per_call=batch)]
        if train and not contest.detection:
            lines.append(peak_fraction(ours, result, settings))
        ratios = paired_ratios(result, contest.peer_name)
        lines.append(ratio_line(f"{name} {phase} throughput segworks/peer", ratios))
    ours_out, peer_out = (w.last_output for w in workloads.values())
    lines.append(f"outputs after training steps: {output_difference(ours_out, peer_out)}")
    return "\n".join(lines)


def peak_fraction(model: nn.Module, result: dict, settings: Settings) -> str:
    """Achieved training TFLOP/s (3 x forward MACs x 2 FLOPs) and, given a peak, its fraction."""
    from segworks.models.complexity import count_params_and_macs

    _, macs = count_params_and_macs(model, size=(settings.size, settings.size))
    seconds = result["stats"][result["names"][0]]["median"]
    tflops = 3 * 2 * macs * settings.batch / seconds / 1e12
    text = f"segworks training: {macs / 1e9:.1f} GMACs/img forward, {tflops:.3f} TFLOP/s achieved"
    if settings.peak_tflops:
        peak = settings.peak_tflops
        text += f" = {100 * tflops / peak:.1f}% of {peak:g} TFLOP/s peak"
    return text


def run(runtime: Runtime, models: list[tuple[str, int, int]], settings: Settings) -> str:
    """Every requested (name, side, batch) pair, printed as it completes; returns the report."""
    header = (
        f"training step and inference, {runtime.describe()}, {torch.get_num_threads()} threads, "
        f"{settings.repeats} alternating repeats after {settings.warmup} warm-up; "
        "x first = peer time / segworks time"
    )
    print(header, flush=True)
    parts = [header]
    for name, size, batch in models:
        text = bench_pair(name, runtime, replace(settings, size=size, batch=batch))
        print(text, flush=True)
        parts.append(text)
    return "\n".join(parts)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_arguments(parser)
    parser.add_argument(
        "--models",
        default=",".join(CONTESTS),
        help="comma-separated NAME or NAME@SIDExBATCH (default: every pair)",
    )
    parser.add_argument("--size", type=int, help="square input side (CPU 192, CUDA 512)")
    parser.add_argument("--batch", type=int, help="images per step (CPU 2, CUDA 8)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--peak-tflops", type=float, help="device peak for the --amp dtype")
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes, one repeat (a smoke test)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    runtime = Runtime.from_args(args)
    quick = args.quick
    settings = Settings(
        batch=args.batch or (8 if runtime.is_cuda else 2),
        size=args.size or (64 if quick else 512 if runtime.is_cuda else 192),
        repeats=1 if quick else args.repeats,
        warmup=0 if quick else args.warmup,
        peak_tflops=args.peak_tflops,
    )
    run(runtime, parse_models(args.models, size=settings.size, batch=settings.batch), settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
