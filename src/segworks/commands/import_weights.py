"""`segworks import-weights SRC --model NAME --out FILE.pt`: a Chainer snapshot of the RefineNet
seed or a Detectron pickle as a segworks checkpoint.

Prints how many weights mapped into each part of the model and every ignored key with the
reason; refuses (exit 2) when a weight of the model would be left at its random initialisation.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from segworks.checkpoint import save_checkpoint
from segworks.errors import SegworksError
from segworks.models.foreign import (
    FORMATS,
    ImportReport,
    detect_foreign_format,
    import_with_report,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    formats = "; ".join(f"{name}: {text} -> {into}" for name, (text, into) in FORMATS.items())
    parser.epilog = f"formats: {formats}"
    parser.add_argument("source", nargs="?", type=Path, help="a .npz or .pkl weight file")
    parser.add_argument("--model", help="segworks model to import into, e.g. refinenet_resnet101")
    parser.add_argument("--out", type=Path, help="checkpoint to write (.pt)")
    parser.add_argument(
        "--channel-order",
        choices=("bgr", "rgb"),
        default="bgr",
        help="Chainer snapshots: the channel order the model was trained on (default bgr, "
        "chainer-ResNet's Caffe convention)",
    )
    parser.add_argument("--list-formats", action="store_true", help="list importable formats")


def _print_report(report: ImportReport) -> None:
    parts = Counter(target.split(".")[0] for _, target in report.mapped)
    where = ", ".join(f"{part} {count}" for part, count in parts.items())
    print(f"mapped {len(report.mapped)} weights ({where})")
    print(f"ignored {len(report.ignored)} keys" + (":" if report.ignored else ""))
    for key, reason in report.ignored:
        print(f"  {key}: {reason}")


def run(args: argparse.Namespace) -> int:
    if args.list_formats:
        for name, (text, into) in FORMATS.items():
            print(f"{name:14s} {text}\n{'':14s} -> {into}")
        return 0
    if args.source is None or args.model is None or args.out is None:
        raise SegworksError("import-weights needs SOURCE, --model NAME and --out FILE.pt")
    chainer = detect_foreign_format(args.source) == "chainer-npz"
    extra = {"channel_order": args.channel_order} if chainer else {}
    checkpoint, report = import_with_report(args.source, model=args.model, **extra)
    _print_report(report)
    save_checkpoint(args.out, checkpoint)
    print(f"wrote {args.out} (model {checkpoint['model_name']})")
    return 0
