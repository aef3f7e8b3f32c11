"""`segworks check-data`: read every pair of a DatasetSource once and report what is wrong.

Each pair is checked in a thread pool (PIL decodes without holding the GIL): the image is
decoded (or, with verify_images=False, only its header is read for the size), the mask is
decoded without the range check and counted with bincount. Problems are collected, never
raised, so one run lists all of them.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segworks import IGNORE_INDEX
from segworks.data.dataset import Sample
from segworks.data.formats import DRAWN_FORMATS, MaskDecoder, apply_roi
from segworks.data.layouts import DatasetSource
from segworks.data.reading import image_size, open_image
from segworks.errors import DataError
from segworks.fileio import save_text

SHOWN_PROBLEMS = 20  # the text report lists the first ones; --json has them all


@dataclass
class Problem:
    kind: str  # missing | unreadable | size-mismatch | undeclared-class | out-of-range | binary-as-multiclass | list-entry
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


@dataclass
class _PairResult:
    size: tuple[int, int] | None = None
    counts: np.ndarray | None = None
    problems: list[Problem] = field(default_factory=list)


@dataclass
class Report:
    """What check-data found. `usable` is True when there is no problem."""

    source: DatasetSource
    pairs: dict[str, int]
    sizes: Counter
    pixels: np.ndarray  # pixels per decoded value (index = value; 255 = ignore)
    images: np.ndarray  # masks containing each decoded value
    labelled: int
    problems: list[Problem]
    bad: set[Sample]

    @property
    def usable(self) -> bool:
        return not self.problems and sum(self.pairs.values()) > 0

    def class_rows(self) -> list[tuple[int, str, int, int]]:
        names = self.source.meta.class_names
        rows = [(i, name, _at(self.pixels, i), _at(self.images, i)) for i, name in enumerate(names)]
        rows += [
            (v, "(undeclared)", _at(self.pixels, v), _at(self.images, v))
            for v in self.extra_values()
        ]
        rows.append(
            (
                IGNORE_INDEX,
                "(ignore)",
                _at(self.pixels, IGNORE_INDEX),
                _at(self.images, IGNORE_INDEX),
            )
        )
        return rows

    def extra_values(self) -> list[int]:
        count = 2 if self.source.meta.task == "binary" else self.source.meta.num_classes
        values = np.flatnonzero(self.pixels)
        return [int(v) for v in values if v >= count and v != IGNORE_INDEX]

    def to_dict(self) -> dict:
        meta = self.source.meta
        return {
            "usable": self.usable,
            "root": str(self.source.root) if self.source.root else None,
            "layout": self.source.layout,
            "mask_format": self.source.mask_format,
            "task": meta.task,
            "class_names": list(meta.class_names),
            "class_names_from": self.source.class_names_from,
            "ignore_index_on_disk": meta.ignore_index,
            "pairs": dict(self.pairs),
            "image_sizes": _size_summary(self.sizes),
            "classes": [
                {"id": i, "name": n, "pixels": p, "images": m} for i, n, p, m in self.class_rows()
            ],
            "problems": [
                {"kind": p.kind, "path": p.path, "message": p.message} for p in self.problems
            ],
        }


def _at(array: np.ndarray, index: int) -> int:
    return int(array[index]) if index < len(array) else 0


# --------------------------------------------------------------------------- checking
def inspect_source(
    source: DatasetSource,
    *,
    verify_images: bool = True,
    workers: int | None = None,
    progress: bool = True,
) -> Report:
    """Read every pair of every split and collect counts and problems."""
    decoder = source.decoder()
    samples = list(dict.fromkeys(source.samples))
    listed = bool(source.list_entries)
    workers = workers or min(8, (os.cpu_count() or 2) * 2)

    def check(sample: Sample) -> _PairResult:
        return check_pair(sample, decoder, verify_images=verify_images, report_missing=not listed)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(
            tqdm(
                pool.map(check, samples),
                total=len(samples),
                desc="check-data",
                disable=not progress or None,
            )
        )
    return _aggregate(source, samples, results)


def check_pair(
    sample: Sample, decoder: MaskDecoder, *, verify_images: bool = True, report_missing: bool = True
) -> _PairResult:
    result = _PairResult()
    files = (sample.image, sample.label, sample.roi)
    missing = [p for p in files if p is not None and not Path(p).is_file()]
    if missing:
        if report_missing:
            kind = {sample.image: "image", sample.label: "mask"}.get(missing[0], "ROI mask")
            partner = sample.label if kind == "image" else sample.image
            result.problems.append(
                Problem("missing", str(missing[0]), f"{kind} not found (pair of {partner})")
            )
        else:
            result.problems.append(Problem("missing", "", ""))  # already reported by the list
        return result
    try:
        result.size = _image_size(sample.image, verify_images)
    except DataError as error:
        result.problems.append(Problem("unreadable", str(error.path), error.problem))
        return result
    if sample.label is not None:
        _check_mask(sample, decoder, result)
    return result


def _image_size(path: Path, verify: bool) -> tuple[int, int]:
    if not verify:
        return image_size(path)
    image = open_image(path)
    return image.height, image.width


def _check_mask(sample: Sample, decoder: MaskDecoder, result: _PairResult) -> None:
    try:
        labels = decoder.decode(
            sample.label, result.size if decoder.mask_format in DRAWN_FORMATS else None
        )
        if sample.roi is not None and labels.shape == result.size:
            labels = apply_roi(labels, sample.roi)
    except DataError as error:
        kind = "unknown-colour" if "colour" in error.problem else "unreadable"
        result.problems.append(Problem(kind, str(error.path), error.problem))
        return
    if labels.shape != result.size:
        result.problems.append(
            Problem(
                "size-mismatch",
                str(sample.label),
                f"mask is {labels.shape[1]}x{labels.shape[0]} but image {sample.image.name} is "
                f"{result.size[1]}x{result.size[0]} (W x H)",
            )
        )
        return
    flat = labels.ravel()
    if flat.max(initial=0) > 65535:
        result.problems.append(
            Problem("out-of-range", str(sample.label), f"label value {int(flat.max())} above 65535")
        )
        return
    result.counts = np.bincount(flat, minlength=256)


def _aggregate(source: DatasetSource, samples: list[Sample], results: list[_PairResult]) -> Report:
    length = max([256] + [len(r.counts) for r in results if r.counts is not None])
    pixels = np.zeros(length, dtype=np.int64)
    images = np.zeros(length, dtype=np.int64)
    sizes: Counter = Counter()
    problems = [Problem("list-entry", str(e.path), e.problem) for e in source.list_problems]
    bad: set[Sample] = set()
    for sample, result in zip(samples, results):
        if result.size is not None:
            sizes[result.size] += 1
        if result.counts is not None:
            pixels[: len(result.counts)] += result.counts
            images[: len(result.counts)] += result.counts > 0
        if result.problems:
            bad.add(sample)
            problems += [p for p in result.problems if p.message]
    report = Report(
        source=source,
        pairs={split: len(s) for split, s in source.splits.items()},
        sizes=sizes,
        pixels=pixels,
        images=images,
        labelled=sum(r.counts is not None for r in results),
        problems=problems,
        bad=bad,
    )
    report.problems += _value_problems(report, samples, results)
    return report


def _value_problems(report: Report, samples, results) -> list[Problem]:
    source, meta = report.source, report.source.meta
    problems = _binary_problems(report)
    if problems:
        return problems
    for value in report.extra_values():
        offenders = [
            s for s, r in zip(samples, results) if r.counts is not None and _at(r.counts, value)
        ]
        report.bad.update(offenders)
        where = f"{_at(report.images, value)} masks, e.g. {offenders[0].label}" if offenders else ""
        if meta.task == "binary" or value > IGNORE_INDEX:
            expected = (
                "0/255 or 0/1" if meta.task == "binary" else f"0..{meta.num_classes - 1} or 255"
            )
            message = f"out-of-range label value {value} ({where}); expected {expected}"
            problems.append(Problem("out-of-range", "", message))
        else:
            how = (
                "inferred from a sample of masks"
                if source.class_names_from == "inferred"
                else "declared"
            )
            message = (
                f"undeclared class value {value} in {where}: only {meta.num_classes} classes are "
                f"{how} ({_names(meta.class_names)}); declare the classes (--classes)"
            )
            problems.append(Problem("undeclared-class", "", message))
    return problems


def _binary_problems(report: Report) -> list[Problem]:
    """A 0/255 mask read as anything but binary: 255 would be ignore or class 255 of 256."""
    source, meta = report.source, report.source.meta
    present = {int(v) for v in np.flatnonzero(report.pixels)}
    if source.mask_format == "binary" and meta.task == "semantic" and meta.num_classes > 2:
        return [
            Problem(
                "binary-as-multiclass",
                "",
                f"masks hold only 0 and 255 (a binary mask) but {meta.num_classes} classes are "
                f"declared ({_names(meta.class_names)}); pass --task binary",
            )
        ]
    if source.mask_format in ("index", "palette") and present == {0, IGNORE_INDEX}:
        return [
            Problem(
                "binary-as-multiclass",
                "",
                f"masks hold only 0 and 255, read as {source.mask_format} labels: 255 would be "
                "ignored (or be class 255 of 256); they are binary masks: pass --task binary "
                "(or --mask-format binary)",
            )
        ]
    return []


def _names(names: list[str], limit: int = 6) -> str:
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


# --------------------------------------------------------------------------- output
def _size_summary(sizes: Counter) -> dict:
    if not sizes:
        return {}
    by_area = sorted(sizes, key=lambda s: (s[0] * s[1], s))
    common, count = sizes.most_common(1)[0]
    return {
        "min": list(by_area[0]),
        "max": list(by_area[-1]),
        "most_common": list(common),
        "most_common_count": count,
        "distinct": len(sizes),
    }


def format_report(report: Report) -> str:
    source, meta = report.source, report.source.meta
    void = (
        f"void on disk {meta.ignore_index} -> 255"
        if meta.ignore_index != IGNORE_INDEX
        else "void 255"
    )
    lines = [
        f"source:  {source.root}",
        f"layout:  {source.layout}   masks: {source.mask_format}   task: {meta.task}   {void}",
        f"classes: {meta.num_classes} from {source.class_names_from}: {', '.join(meta.class_names)}",
        "pairs:   "
        + ", ".join(f"{split} {n}" for split, n in report.pairs.items())
        + f" ({sum(report.pairs.values())} total, {report.labelled} masks read)",
    ]
    summary = _size_summary(report.sizes)
    if summary:
        lines.append(
            "sizes (H x W): most common {} ({} images), min {}, max {}, {} distinct".format(
                _hw(summary["most_common"]), summary["most_common_count"], _hw(summary["min"]),
                _hw(summary["max"]), summary["distinct"],
            )
        )  # fmt: skip
    lines += _histogram_lines(report)
    if report.problems:
        lines.append(f"problems ({len(report.problems)}):")
        lines += [f"  {problem}" for problem in report.problems[:SHOWN_PROBLEMS]]
        hidden = len(report.problems) - SHOWN_PROBLEMS
        if hidden > 0:
            lines.append(f"  ... and {hidden} more (--json lists every one)")
    else:
        lines.append("problems: none; the dataset is usable")
    return "\n".join(lines)


def _hw(size) -> str:
    return f"{size[0]}x{size[1]}"


def _histogram_lines(report: Report) -> list[str]:
    total = max(1, int(report.pixels.sum()))
    width = max([len(name) for _, name, _, _ in report.class_rows()] + [5])
    lines = [f"  {'id':>4}  {'class':<{width}}  {'pixels':>12}  {'%':>6}  {'masks':>6}"]
    for value, name, pixels, images in report.class_rows():
        share = 100.0 * pixels / total
        lines.append(f"  {value:>4}  {name:<{width}}  {pixels:>12}  {share:>6.2f}  {images:>6}")
    return ["class histogram:", *lines]


def write_fixed_list(report: Report, out: str | Path) -> list[tuple[Path, int, int]]:
    """Write the pairs without problems as list files; never touches the data.

    Stem lists (-tt) stay stem lists; every other layout becomes a pair list (`image mask`
    per line, paths relative to the list's folder when possible). With several splits, each
    goes to `<out stem>_<split><suffix>`. Returns (path, kept, total) per file written.
    """
    out = Path(out)
    written = []
    for split, samples in report.source.splits.items():
        path = (
            out
            if len(report.source.splits) == 1
            else out.with_name(f"{out.stem}_{split}{out.suffix}")
        )
        lines = _list_lines(report, split, samples, path.parent)
        save_text("".join(f"{line}\n" for line in lines), path)
        written.append((path, len(lines), len(samples)))
    return written


def _list_lines(report: Report, split: str, samples: list[Sample], folder: Path) -> list[str]:
    source = report.source
    if source.list_kind == "stem" and split in source.list_entries:
        return [text for text, sample in source.list_entries[split] if sample not in report.bad]
    lines = []
    for sample in samples:
        if sample in report.bad:
            continue
        parts = [_relative(sample.image, folder)]
        if sample.label is not None:
            parts.append(_relative(sample.label, folder))
        lines.append(" ".join(parts))
    return lines


def _relative(path: Path, folder: Path) -> str:
    try:
        return os.path.relpath(Path(path).resolve(), folder.resolve())
    except ValueError:
        return str(Path(path).resolve())
