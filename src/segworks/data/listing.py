"""Listing (image, mask) pairs: folders paired by name, pair-list and stem-list files, ROI masks."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from segworks.data.classes import CLASS_FILES
from segworks.data.dataset import Sample
from segworks.errors import DataError
from segworks.suffixes import IMAGE_SUFFIXES, MASK_SUFFIXES, dominant_suffix

SPLIT_NAMES = (
    "train", "training", "trainval", "val", "valid", "validation", "test", "testing",
)  # fmt: skip
# Split folder names read as the usual split (train uses "val" for validation).
SPLIT_ALIASES = {"training": "train", "valid": "val", "validation": "val", "testing": "test"}
SEPARATORS = "_-. "


@dataclass
class Listing:
    """What a layout reader found, before the masks are looked at."""

    splits: dict[str, list[Sample]]
    layout: str
    root: Path
    class_dirs: list[Path] = field(default_factory=list)
    spec: dict = field(default_factory=dict)
    problems: list[DataError] = field(default_factory=list)
    entries: dict[str, list[tuple[str, Sample]]] = field(default_factory=dict)
    list_kind: str = ""
    segnet: bool = False
    trimap: bool = False
    class_names: list[str] | None = None
    names_from: str = "inferred"


def all_samples(splits: dict[str, list[Sample]]) -> list[Sample]:
    return [sample for samples in splits.values() for sample in samples]


def files_by_key(folder: Path, exts: tuple[str, ...]) -> dict[str, Path]:
    """relative path without suffix -> file, for files with one of `exts` (first ext wins)."""
    found: dict[str, Path] = {}
    rank = {ext: i for i, ext in enumerate(exts)}
    for path in sorted(folder.rglob("*")):
        ext = path.suffix.lower()
        if ext not in rank or path.name.startswith(".") or not path.is_file():
            continue
        key = path.relative_to(folder).with_suffix("").as_posix()
        if key not in found or rank[ext] < rank[found[key].suffix.lower()]:
            found[key] = path
    return found


def pairs_with(image_files: dict[str, Path], folder: Path) -> bool:
    """Whether some mask file in `folder` has an image's name (once shared parts are dropped)."""
    mask_files = files_by_key(folder, MASK_SUFFIXES)
    exact = set(image_files) & set(mask_files)
    return bool(exact or set(trimmed_keys(image_files)) & set(trimmed_keys(mask_files)))


def pair_folders(images: Path, masks: Path | None) -> list[Sample]:
    """Pair by relative path and stem; a missing partner becomes a path that does not exist, so
    the dataset reports it (or skips it with skip_bad). Names that match only once the part
    every file of a folder shares is dropped (21_training.tif, 21_manual1.gif) pair too."""
    image_files = files_by_key(images, IMAGE_SUFFIXES)
    if masks is None:
        return [Sample(path, None) for path in image_files.values()]
    image_files, mask_files = matched_keys(
        image_files, files_by_key(masks, MASK_SUFFIXES), images, masks
    )
    mask_ext = dominant_suffix(mask_files.values())
    samples = []
    for key in sorted(set(image_files) | set(mask_files)):
        image = image_files.get(key, images / f"{key}.jpg")
        mask = mask_files.get(key, masks / f"{key}{mask_ext}")
        samples.append(Sample(image, mask))
    return samples


def with_roi(samples: list[Sample], roi: Path) -> list[Sample]:
    """The samples with the region-of-interest mask of the same image stem."""
    if not roi.is_dir():
        raise DataError(roi, "roi_masks: folder not found")
    by_stem = {s.image.stem: s.image for s in samples}
    roi_files = {Path(k).name: p for k, p in files_by_key(roi, IMAGE_SUFFIXES).items()}
    if not roi_files:
        raise DataError(roi, "roi_masks: no image file in the folder")
    keyed_images, keyed_roi = matched_keys(by_stem, roi_files, samples[0].image.parent, roi)
    key_of = {image: key for key, image in keyed_images.items()}
    return [
        Sample(s.image, s.label, keyed_roi.get(key_of.get(s.image), roi / f"{s.image.stem}.png"))
        for s in samples
    ]


def matched_keys(
    image_files: dict[str, Path], other: dict[str, Path], images: Path, folder: Path
) -> tuple[dict[str, Path], dict[str, Path]]:
    """The two folders' files keyed so that partners share a key. No partner at all is refused
    with one line, rather than listing every image as a pair whose mask is missing."""
    if not image_files or not other or set(image_files) & set(other):
        return image_files, other
    trimmed_images, trimmed_other = trimmed_keys(image_files), trimmed_keys(other)
    if set(trimmed_images) & set(trimmed_other):
        return trimmed_images, trimmed_other
    raise DataError(
        folder,
        f"none of its {len(other)} files has the name of one of the {len(image_files)} images "
        f"in {images} (e.g. {next(iter(other))} vs {next(iter(image_files))}); pair them in a "
        "segworks.yaml spec file (splits: {train: {images: DIR, masks: DIR}} or a pair list)",
    )


def trimmed_keys(files: dict[str, Path]) -> dict[str, Path]:
    """Keys without the prefix and suffix that all of them share (cut at a _ - . or space),
    or the keys unchanged when fewer than two files or trimming makes two keys equal."""
    keys = list(files)
    if len(keys) < 2:
        return files
    prefix = os.path.commonprefix(keys)
    suffix = os.path.commonprefix([k[::-1] for k in keys])[::-1]
    start = max((prefix.rfind(c) + 1 for c in SEPARATORS), default=0)
    ends = [suffix.find(c) for c in SEPARATORS if c in suffix]
    cut = len(suffix) - min(ends) if ends else 0
    trimmed = {k[start : len(k) - cut]: path for k, path in files.items()}
    return trimmed if len(trimmed) == len(files) and "" not in trimmed else files


def is_pair_list(path: Path) -> bool:
    if path.name.lower() in CLASS_FILES:
        return False
    try:
        with open(path, encoding="utf-8") as handle:
            lines = [line.split() for line, _ in zip(handle, range(20))]
    except (OSError, UnicodeDecodeError):
        return False
    first = next((parts for parts in lines if parts and not parts[0].startswith("#")), None)
    return first is not None and len(first) == 2 and Path(first[0]).suffix.lower() in IMAGE_SUFFIXES


def pair_lists(root: Path, lists: dict[str, Path]) -> Listing:
    listing = Listing({}, "pair-list", root, class_dirs=[root], list_kind="pair")
    for split, list_path in lists.items():
        samples, entries = [], []
        resolver = _Resolver(list_path.parent)
        for number, parts in _list_lines(list_path):
            image = resolver(parts[0])
            label = resolver(parts[1]) if len(parts) > 1 else None
            sample = Sample(image, label)
            _note_missing(listing, list_path, number, sample)
            samples.append(sample)
            entries.append((" ".join(parts), sample))
        listing.splits[split] = samples
        listing.entries[split] = entries
    return listing


def _list_lines(path: Path) -> list[tuple[int, list[str]]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(path, "list file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(path, f"cannot read the list file ({error})") from None
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if parts and not parts[0].startswith("#"):
            lines.append((number, parts))
    return lines


def _note_missing(listing: Listing, list_path: Path, number: int, sample: Sample) -> None:
    for kind, path in (("image", sample.image), ("mask", sample.label)):
        if path is not None and not path.is_file():
            problem = f"line {number}: the {kind} {path} does not exist"
            listing.problems.append(DataError(list_path, problem))


class _Resolver:
    """A list entry -> a path: relative to the list's folder; absolute paths from another
    machine (SegNet's /SegNet/CamVid/...) are tried with leading parts dropped."""

    def __init__(self, base: Path):
        self.base = base
        self.drop: int | None = None

    def __call__(self, token: str) -> Path:
        path = Path(token)
        if path.is_absolute() and path.is_file():
            return path
        parts = path.parts[1:] if path.is_absolute() else path.parts
        if self.drop is not None and len(parts) > self.drop:
            candidate = self.base.joinpath(*parts[self.drop :])
            if candidate.is_file():
                return candidate
        for drop in range(len(parts)):
            candidate = self.base.joinpath(*parts[drop:])
            if candidate.is_file():
                self.drop = drop
                return candidate
        return path if path.is_absolute() else self.base / path


def stem_list(list_path: Path, images: Path, masks: Path | None, split: str) -> Listing:
    """The seed RefineNet layout: one stem per line, images/<stem>.jpg, masks/<stem>.png."""
    for folder in (images, masks):
        if folder is not None and not folder.is_dir():
            raise DataError(folder, "folder not found")
    listing = Listing({}, "list-file", list_path.parent, list_kind="stem")
    listing.class_dirs = [list_path.parent, images.parent] + ([masks.parent] if masks else [])
    samples, entries = [], []
    for number, parts in _list_lines(list_path):
        stem = parts[0]
        image = _with_ext(images, stem, IMAGE_SUFFIXES, ".jpg")
        label = _with_ext(masks, stem, MASK_SUFFIXES, ".png") if masks is not None else None
        sample = Sample(image, label)
        _note_missing(listing, list_path, number, sample)
        samples.append(sample)
        entries.append((stem, sample))
    listing.splits[split] = samples
    listing.entries[split] = entries
    return listing


def _with_ext(folder: Path, stem: str, exts: tuple[str, ...], default: str) -> Path:
    direct = folder / stem
    if direct.suffix.lower() in exts and direct.is_file():
        return direct
    for ext in exts:
        for candidate in (folder / f"{stem}{ext}", folder / f"{stem}{ext.upper()}"):
            if candidate.is_file():
                return candidate
    return folder / f"{stem}{default}"


def is_segnet(root: Path) -> bool:
    return any((root / f"{name}annot").is_dir() for name in SPLIT_NAMES)
