"""`segworks models`: list the registered models, optionally with their size and cost."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable

from segworks.errors import SegworksError
from segworks.models import MODELS, build_model, model_task

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="*", metavar="NAME", help="only these models (default all)")
    parser.add_argument(
        "--detail", action="store_true", help="add parameter counts and MACs per image"
    )
    parser.add_argument(
        "--size",
        type=parse_size,
        default=(512, 512),
        metavar="HxW",
        help="image size for --detail MACs (default 512x512)",
    )
    parser.add_argument(
        "--num-classes",
        type=int,
        default=21,
        metavar="K",
        help="classes the models are built with for --detail (default 21)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    names = args.names or sorted(MODELS)
    unknown = [name for name in names if name not in MODELS]
    if unknown:
        raise SegworksError(f"unknown model(s) {unknown}; expected names from {sorted(MODELS)}")
    rows = [describe(name) for name in names]
    if args.detail:
        for row in rows:
            row.update(measure(row["name"], args.size, args.num_classes))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows, args.size if args.detail else None))
    return 0


def parse_size(text: str) -> tuple[int, int]:
    """'512x384' -> (512, 384) as (height, width); '512' -> (512, 512)."""
    parts = text.lower().split("x")
    if len(parts) in (1, 2) and all(part.isdigit() and int(part) > 0 for part in parts):
        height, width = (int(parts[0]), int(parts[-1]))
        return height, width
    raise argparse.ArgumentTypeError(f"size must be HxW or N with positive integers, got {text!r}")


def describe(name: str) -> dict:
    builder = MODELS[name]
    return {"name": name, "task": model_task(name), "description": summary(builder)}


def summary(builder: Callable) -> str:
    """The first line of the builder's docstring."""
    lines = (builder.__doc__ or "").strip().splitlines()
    return lines[0].strip() if lines else ""


def measure(name: str, size: tuple[int, int], num_classes: int) -> dict:
    """Parameters and MACs per image; None for a model the counter cannot run."""
    from segworks.models.complexity import count_params_and_macs  # imported only when needed

    model = build_model(name, num_classes=num_classes)
    try:
        params, macs = count_params_and_macs(model, size=size)
    except (RuntimeError, NotImplementedError, TypeError, ValueError) as error:
        log.warning("%s: cannot count MACs at %dx%d: %s", name, *size, error)
        params, macs = sum(p.numel() for p in model.parameters()), None
    return {"params": params, "macs": macs, "size": list(size)}


def format_table(rows: list[dict], size: tuple[int, int] | None) -> str:
    header = ["name", "task"]
    if size is not None:
        header += ["params (M)", f"GMACs @{size[0]}x{size[1]}"]
    header.append("description")
    table = [header]
    for row in rows:
        cells = [row["name"], row["task"]]
        if size is not None:
            macs = "n/a" if row["macs"] is None else f"{row['macs'] / 1e9:.2f}"
            cells += [f"{row['params'] / 1e6:.2f}", macs]
        table.append([*cells, row["description"]])
    widths = [max(len(line[i]) for line in table) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths)) + "  " + line[-1]
        for line in table
    )
