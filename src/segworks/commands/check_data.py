"""segworks check-data: inspect a dataset and report every problem (exit 0 usable, 2 not)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from segworks.data.formats import MASK_FORMATS
from segworks.errors import SegworksError

INSTANCE_KEYS = ('"annotations"', '"regions"', '"_via_img_metadata"')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source", nargs="?", help="dataset folder, spec file (.yaml/.json) or pair list"
    )
    parser.add_argument("-tt", "--train-list", help="list of stems (seed RefineNet layout)")
    parser.add_argument("-tr", "--train-images", help="image folder for --train-list")
    parser.add_argument("-ta", "--train-annotations", help="mask folder for --train-list")
    parser.add_argument("--mask-format", default="auto", choices=["auto", *MASK_FORMATS])
    parser.add_argument("--ignore-index", type=int, help="the void value in the mask files")
    parser.add_argument("--classes", help="class names: comma list or a file with one per line")
    parser.add_argument("--task", choices=["semantic", "binary", "instance"])
    parser.add_argument("--reduce-zero-label", action="store_true", help="0 is void, k -> k-1")
    parser.add_argument(
        "--skip-bad", action="store_true", help="report bad pairs but exit 0 when others remain"
    )
    parser.add_argument(
        "--fix-list", metavar="OUT", help="write a list of the good pairs (data is never changed)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--quick", action="store_true", help="read only image headers (no full decode)"
    )
    parser.add_argument("--workers", type=int, default=None, help="reader threads")


def run(args: argparse.Namespace) -> int:
    if args.fix_list:
        from segworks.outputs import check_output_file

        check_output_file(args.fix_list, "--fix-list")
    instance_path = _instance_source(args)
    if instance_path is not None:
        return _check_instances(instance_path, args)
    from segworks.data.doctor import format_report, inspect_source, write_fixed_list
    from segworks.data.layouts import open_source

    source = open_source(
        args.source,
        list_file=args.train_list,
        image_dir=args.train_images,
        label_dir=args.train_annotations,
        mask_format=args.mask_format,
        ignore_index=args.ignore_index,
        class_names=parse_classes(args.classes),
        task=args.task,
        reduce_zero_label=args.reduce_zero_label,
    )
    report = inspect_source(
        source, verify_images=not args.quick, workers=args.workers, progress=not args.json
    )
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    if args.fix_list:
        for path, kept, total in write_fixed_list(report, args.fix_list):
            print(
                f"wrote {path}: {kept} of {total} pairs",
                file=sys.stderr if args.json else sys.stdout,
            )
    return _exit_code(report, args.skip_bad)


def _exit_code(report, skip_bad: bool) -> int:
    if report.usable:
        return 0
    good = sum(report.pairs.values()) - len(report.bad)
    only_bad_pairs = all(
        p.kind in ("missing", "unreadable", "size-mismatch", "unknown-colour", "list-entry")
        for p in report.problems
    )
    if skip_bad and only_bad_pairs and good > 0:
        print(
            f"check-data: {len(report.bad)} bad pairs would be skipped (--skip-bad)",
            file=sys.stderr,
        )
        return 0
    if not sum(report.pairs.values()):
        print("check-data: no pairs found", file=sys.stderr)
    print(
        f"check-data: {len(report.problems)} problems; the dataset is not usable as is",
        file=sys.stderr,
    )
    return 2


def parse_classes(text: str | None) -> list[str] | None:
    """--classes: a file with one name per line, or a comma-separated list."""
    if not text:
        return None
    path = Path(text)
    if path.is_file():
        from segworks.data.layouts import read_class_names

        return read_class_names(path)
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise SegworksError(f"--classes: expected a comma list or a file, got {text!r}")
    return names


# --------------------------------------------------------------------------- instance datasets
def _instance_source(args) -> Path | None:
    if args.source is None:
        return None
    path = Path(args.source)
    if args.task == "instance":  # the flag never loses what detection finds
        return (_instance_json_in(path) or path) if path.is_dir() else path
    if path.is_file() and path.suffix.lower() == ".json":
        return path if _is_instance_json(path) else None
    if path.is_dir() and not _has_masks(path):
        found = _instance_jsons(path)
        return (found[0] if len(found) == 1 else path) if found else None
    return None


def _instance_jsons(folder: Path) -> list[Path]:
    """Instance annotation files (COCO, VIA) in `folder` or one level down."""
    candidates = [*folder.glob("*.json"), *folder.glob("*/*.json")]
    return sorted(p for p in candidates if _is_instance_json(p))


def _instance_json_in(folder: Path) -> Path | None:
    found = _instance_jsons(folder)
    return found[0] if len(found) == 1 else None


def _is_instance_json(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as handle:
            head = handle.read(1 << 16)
    except (OSError, UnicodeDecodeError):
        return False
    if '"shapes"' in head:  # labelme: semantic here
        return False
    return any(key in head for key in INSTANCE_KEYS)


def _has_masks(folder: Path) -> bool:
    """Whether the folder holds semantic data we can read (lists, mask folders, labelme)."""
    from segworks.data.layouts import open_source

    try:
        source = open_source(folder)
    except ValueError:
        return False
    return any(s.label is not None for s in source.samples)


def _check_instances(path: Path, args) -> int:
    try:
        from segworks.data.instances import check_instances
    except ImportError as error:
        raise SegworksError(
            f"{path} is an instance dataset, and instance checks are unavailable ({error})"
        ) from None

    text, problems = check_instances(path)  # (report text, one line per problem)
    print(text)
    if problems:
        print(f"check-data: {len(problems)} problems in the instance dataset", file=sys.stderr)
    return 2 if problems and not args.skip_bad else 0
