"""Find the (image, mask) pairs of a dataset and settle how its masks are encoded.

`open_source` accepts:
- a directory, whose layout is detected (in this order):
  a spec file in it (segworks.yaml / dataset.yaml / .yml / .json);
  pair-list files `train.txt`, `val.txt`, ... (`image mask` per line, SegNet/CamVid style);
  split folders (`train/`, `val/`, `test/`, ...) each holding an image folder and a mask folder
  (`images/` + `seg_images/`, `image/` + `label/`, `JPEGImages/` + `SegmentationClass/`, ...)
  or SegNet's `train/` + `trainannot/`;
  an image folder and a mask folder in the directory itself, paired by relative path and stem,
  with class subfolders allowed (`images/<cls>/x.jpg` + `seg_images/<cls>/x.png`);
  a folder of labelme JSON files;
  YOLO segmentation labels (a data.yaml with `names`, or `images/` + `labels/*.txt`, see
  segworks.data.yolo), read as semantic masks: class k -> k + 1, 0 the background;
  Oxford-IIIT Pet trimaps (`images/` + `annotations/trimaps/` holding 1, 2, 3): read as binary,
  the border void;
  a labels folder beside a `mask/` field-of-view folder (DRIVE: `images/`, `1st_manual/`,
  `mask/`) takes the labels; `roi_masks:` in a spec voids the pixels outside the mask;
- a spec file (.yaml/.yml/.json) for anything detection cannot settle:

      root: .                                  # paths below are relative to it (default: here)
      mask_format: rgb                         # palette|index|binary|rgb|npy|labelme (or auto)
      task: semantic                           # or binary
      class_names: [background, akahara, madara]   # or classes_file: labels.txt
      palette: [[0, 0, 0], [127, 0, 0], [0, 127, 0]]  # class colours; RGB masks map through it
      colour_map: {"255,255,255": 255}         # extra colour -> class entries (255 = void)
      ignore_index: 255                        # the void value in the files
      reduce_zero_label: false
      roi_masks: mask                          # region-of-interest masks: outside (0) is void
      splits:
        train: {images: images/train, masks: masks/train}   # folders paired by stem
        val: {images: val/images, masks: val/labels, roi_masks: val/fov}
        trainval: {list: val.txt}                            # a pair-list file
        test: {list: test.txt, images: img, masks: ann}      # a stem list + folders

- a pair-list .txt file, or the seed RefineNet trio: a list of stems + image dir + mask dir.

Class names come from `class_names=`, the spec, a labels.txt / class_names.txt / classes.txt
beside the data (labelme's `__ignore__` line is dropped, `_background_` becomes `background`),
the SegNet CamVid layout, or else the values found (`class_0`, ...).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from segworks import IGNORE_INDEX
from segworks.data import yolo
from segworks.data.dataset import Sample, SegmentationDataset
from segworks.data.formats import (
    BACKGROUND_NAMES,
    LABELME_IGNORE,
    MASK_FORMATS,
    PIL_ERRORS,
    Colour,
    MaskDecoder,
    colour_map_from_palette,
    labelme_class_ids,
    read_palette,
)
from segworks.data.meta import DatasetMeta, voc_palette
from segworks.data.suffixes import IMAGE_SUFFIXES, LOSSY_SUFFIXES, MASK_SUFFIXES
from segworks.errors import DataError, SegworksError

log = logging.getLogger(__name__)

LOSSY_NEAR = 64  # a lossy binary mask's values lie within this of 0 or of 255
LOSSY_THRESHOLD = 128
SPLIT_NAMES = (
    "train", "training", "trainval", "val", "valid", "validation", "test", "testing",
)  # fmt: skip
# Split folder names read as the usual split (train uses "val" for validation).
SPLIT_ALIASES = {"training": "train", "valid": "val", "validation": "val", "testing": "test"}
SPEC_KEYS = (
    "root", "mask_format", "task", "class_names", "classes_file", "palette", "colour_map",
    "color_map", "ignore_index", "reduce_zero_label", "roi_masks", "splits",
)  # fmt: skip
SPLIT_KEYS = ("list", "images", "masks", "labels", "annotations", "roi_masks")
IMAGE_DIRS = ("images", "image", "imgs", "img", "jpegimages", "inputs", "input", "rgb")
MASK_DIRS = (
    "seg_images", "masks", "mask", "labels", "label", "annotations", "annotation", "annot",
    "segmentationclass", "segmentationclasspng", "segmentationclassnpy", "gt", "groundtruth",
    "ground_truth", "targets", "1st_manual", "manual1", "manual",
)  # fmt: skip
ROI_DIRS = ("mask", "masks")  # beside another labels folder: a field-of-view mask
TRIMAP_DIR = "trimaps"
SEPARATORS = "_-. "
SPEC_NAMES = ("segworks.yaml", "segworks.yml", "segworks.json", "dataset.yaml", "dataset.yml")
CLASS_FILES = ("labels.txt", "class_names.txt", "classes.txt")
CAMVID_CLASSES = [
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
    "Pedestrian", "Bicyclist",
]  # fmt: skip
# The SegNet tutorial's colours for those classes.
CAMVID_PALETTE = [
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
]  # fmt: skip
PROBE_COUNT = 24
UNPROBED = (".npy", ".json", ".txt")  # probed as arrays, or shapes drawn later


# --------------------------------------------------------------------------- the result
@dataclass
class DatasetSource:
    """The pairs of every split, what the classes are and how masks decode."""

    splits: dict[str, list[Sample]]
    meta: DatasetMeta
    layout: str
    mask_format: str
    root: Path | None = None
    colour_map: dict[Colour, int] = field(default_factory=dict)
    reduce_zero_label: bool = False
    class_names_from: str = "inferred"
    list_problems: list[DataError] = field(default_factory=list)
    list_entries: dict[str, list[tuple[str, Sample]]] = field(default_factory=dict)
    list_kind: str = ""
    probed_values: list[int] = field(default_factory=list)
    binary_foreground: int | None = None
    mask_threshold: int | None = None  # lossy (JPEG) binary masks are thresholded

    def decoder(self) -> MaskDecoder:
        class_ids = (
            labelme_class_ids(self.meta.class_names) if self.mask_format == "labelme" else {}
        )
        return MaskDecoder(
            mask_format=self.mask_format,
            num_classes=self.meta.num_classes,
            void_value=self.meta.ignore_index,
            reduce_zero_label=self.reduce_zero_label,
            binary=self.meta.task == "binary",
            colour_map=dict(self.colour_map),
            class_ids=class_ids,
            foreground=self.binary_foreground,
            threshold=self.mask_threshold,
        )

    def dataset(
        self, split_or_samples: str | list[Sample], *, transform=None, skip_bad: bool = False
    ) -> SegmentationDataset:
        if isinstance(split_or_samples, str):
            if split_or_samples not in self.splits:
                known = ", ".join(self.splits) or "none"
                raise SegworksError(f"split {split_or_samples!r} not found (splits: {known})")
            samples = self.splits[split_or_samples]
        else:
            samples = list(split_or_samples)
        return SegmentationDataset(
            samples, self.meta, self.decoder(), transform=transform, skip_bad=skip_bad
        )

    @property
    def samples(self) -> list[Sample]:
        return [sample for samples in self.splits.values() for sample in samples]


@dataclass
class _Listing:
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


# --------------------------------------------------------------------------- entry point
def open_source(
    source: str | Path | None = None,
    *,
    list_file: str | Path | None = None,
    image_dir: str | Path | None = None,
    label_dir: str | Path | None = None,
    mask_format: str = "auto",
    ignore_index: int | None = None,
    class_names: list[str] | None = None,
    task: str | None = None,
    reduce_zero_label: bool = False,
    palette: list[Colour] | None = None,
    colour_map: dict[Colour, int] | None = None,
    allow_unlabelled: bool = False,
) -> DatasetSource:
    """Find the pairs of `source` (see the module docstring) and settle the mask encoding,
    classes, palette and void value. Explicit arguments win over a spec file, which wins over
    what is detected. Without a single mask file the source is refused (DataError) unless
    `allow_unlabelled` (images read with all-ignore labels)."""
    listing = _list_pairs(source, list_file, image_dir, label_dir)
    spec = listing.spec
    options = {
        "mask_format": mask_format if mask_format != "auto" else spec.get("mask_format", "auto"),
        "ignore_index": ignore_index if ignore_index is not None else spec.get("ignore_index"),
        "task": task or spec.get("task"),
        "reduce_zero_label": reduce_zero_label or bool(spec.get("reduce_zero_label", False)),
        "palette": palette or _spec_palette(spec),
        "colour_map": dict(colour_map or {}) or _spec_colour_map(spec),
        "allow_unlabelled": allow_unlabelled,
    }
    names, names_from = _given_names(class_names, spec, listing)
    return _settle(listing, options, names, names_from)


def _settle(listing: _Listing, options: dict, names, names_from: str) -> DatasetSource:
    task = options["task"]
    if task not in (None, "semantic", "binary"):
        raise SegworksError(f"task must be 'semantic' or 'binary' here, got {task!r}")
    masks = [s.label for s in _all(listing.splits) if s.label is not None]
    fmt = options["mask_format"]
    if fmt != "auto" and fmt not in MASK_FORMATS:
        raise SegworksError(
            f"mask format must be auto or one of {', '.join(MASK_FORMATS)}, got {fmt!r}"
        )
    if not options["allow_unlabelled"]:
        _require_masks(listing, masks)
    probe = _probe(masks, fmt)
    lossy = _lossy_binary(masks, fmt, probe)
    if fmt == "auto" and listing.trimap:
        fmt = _trimap_format(masks, probe)
    if fmt == "auto":
        fmt = "binary" if lossy else _guess_format(masks, probe)
    if task is None:
        task = _guess_task(fmt, probe, names)
    elif task == "binary" and fmt != "binary":
        _warn_merged_classes(probe, names)
    colour_map = _colour_map(fmt, options, probe, masks)
    if names is None:
        names, names_from = _default_names(listing, fmt, task, probe, colour_map, masks)
    if task == "binary":
        names, names_from = _binary_names(names, names_from)
    void = options["ignore_index"]
    if void is None:
        camvid = listing.segnet and fmt == "index" and len(names) == len(CAMVID_CLASSES)
        void = 11 if camvid else IGNORE_INDEX
    given_palette = options["palette"] or (CAMVID_PALETTE if names == CAMVID_CLASSES else None)
    meta = DatasetMeta(
        class_names=list(names),
        palette=_palette(fmt, task, given_palette, colour_map, masks, len(names)),
        ignore_index=int(void),
        task=task,
    )
    return DatasetSource(
        splits=listing.splits,
        meta=meta,
        layout=listing.layout,
        mask_format=fmt,
        root=listing.root,
        colour_map=colour_map,
        reduce_zero_label=options["reduce_zero_label"],
        class_names_from=names_from,
        list_problems=listing.problems,
        list_entries=listing.entries,
        list_kind=listing.list_kind,
        probed_values=sorted(probe["values"]),
        binary_foreground=(1 if 1 in probe["values"] else 255) if fmt == "binary" else None,
        mask_threshold=LOSSY_THRESHOLD if lossy else None,
    )


def _trimap_format(masks: list[Path], probe: dict) -> str:
    """A trimaps/ folder holding only 1, 2 and 3 is read as trimaps; else as detection finds."""
    if probe["values"] and probe["values"] <= {1, 2, 3} and not probe["colours"]:
        return "trimap"
    found = sorted(probe["values"])[:8] or sorted(probe["colours"])[:4]
    log.warning("%s: not read as trimaps: values %s besides 1, 2, 3", masks[0].parent, found)
    return "auto"


def _require_masks(listing: _Listing, masks: list[Path]) -> None:
    """A dataset whose pairs have no mask file at all cannot be trained or checked."""
    if any(path.is_file() for path in masks):
        return
    count = len(_all(listing.splits))
    found = f"{len(masks)} mask paths, none of them a file" if masks else "no mask folder"
    raise DataError(
        listing.root,
        f"no mask file found for the {count} images ({found}); put the masks in a folder named "
        f"{', '.join(MASK_DIRS[:5])}, ... beside the images, or name them in a segworks.yaml "
        "spec file (splits: {train: {images: DIR, masks: DIR}})",
    )


def _lossy_binary(masks: list[Path], fmt: str, probe: dict) -> bool:
    """Binary masks saved lossily (JPEG): values cluster near 0 and near 255 instead of being
    exactly 0 and 255. They are thresholded at LOSSY_THRESHOLD, with a warning."""
    if fmt not in ("auto", "binary") or not masks or probe["colours"]:
        return False
    values = probe["values"]
    low = {v for v in values if v < LOSSY_NEAR}
    high = {v for v in values if v > 255 - LOSSY_NEAR}
    jpeg = _dominant_suffix(masks) in LOSSY_SUFFIXES
    clustered = bool(low) and bool(high) and low | high == values
    if not clustered or not (jpeg or len(high) > 1):
        if jpeg:
            log.warning("%s: JPEG masks are lossy; label values may be changed near edges "
                        "(save masks as PNG)", masks[0].parent)  # fmt: skip
        return False
    log.warning(
        "%s: the masks look lossy (%s, values %d..%d and %d..%d): read as binary, "
        "thresholded at %d",
        masks[0].parent, "JPEG" if jpeg else "values near 0 and 255", min(low), max(low),
        min(high), max(high), LOSSY_THRESHOLD,
    )  # fmt: skip
    return True


def _warn_merged_classes(probe: dict, names: list[str] | None) -> None:
    """--task binary on multi-class masks: every class above 0 becomes foreground."""
    merged = sorted(v for v in probe["values"] if 0 < v != IGNORE_INDEX)
    if len(merged) < 2:
        return
    if names and len(names) > max(merged):
        shown = ", ".join(f"{v} ({names[v]})" for v in merged)
    else:
        shown = ", ".join(str(v) for v in merged)
    log.warning("--task binary: classes %s are merged into one foreground class", shown)


def _all(splits: dict[str, list[Sample]]) -> list[Sample]:
    return [sample for samples in splits.values() for sample in samples]


# --------------------------------------------------------------------------- listing pairs
def _list_pairs(source, list_file, image_dir, label_dir) -> _Listing:
    if list_file is not None:
        if image_dir is None:
            raise SegworksError("a list file (-tt) needs the image folder (-tr) too")
        return _stem_list(Path(list_file), Path(image_dir), label_dir and Path(label_dir), "train")
    if source is None:
        raise SegworksError("give a dataset folder, spec file or list file (or -tt/-tr/-ta)")
    path = Path(source)
    if not path.exists():
        raise DataError(path, "no such file or folder")
    if path.is_dir():
        return _detect_dir(path)
    if yolo.is_yolo_yaml(path):
        return _yolo_listing(yolo.from_yaml(path))
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        return _spec_listing(path)
    if path.suffix.lower() == ".txt":
        if not _is_pair_list(path):
            raise DataError(path, "not a pair list: expected 'IMAGE MASK' paths on each line")
        split = path.stem if path.stem in SPLIT_NAMES else "train"
        listing = _pair_lists(path.parent, {split: path})
        listing.segnet = _is_segnet(path.parent)
        return listing
    raise DataError(path, "expected a dataset folder, a spec file (.yaml/.json) or a list (.txt)")


def _detect_dir(root: Path) -> _Listing:
    found = yolo.find_yolo(root)
    if found is not None:
        return _yolo_listing(found)
    for name in SPEC_NAMES:
        if (root / name).is_file():
            return _spec_listing(root / name)
    lists = {p.stem: p for p in sorted(root.glob("*.txt")) if _is_pair_list(p)}
    if lists:
        listing = _pair_lists(root, lists)
        listing.segnet = _is_segnet(root)
        return listing
    listing = _split_dirs(root) or _folder_pairs(root, "train") or _labelme_dir(root, "train")
    if listing is None:
        listing = _nested(root)
    if listing is None:
        raise DataError(
            root,
            "cannot tell the dataset layout (no pair lists, no image + mask folders, no labelme "
            "files); write a segworks.yaml spec file (see segworks.data.layouts)",
        )
    return listing


def _yolo_listing(found: yolo.YoloSource) -> _Listing:
    """YOLO label files as masks; images without one (background images) are left out."""
    splits = {}
    for split, pairs in found.splits.items():
        splits[split] = [Sample(image, label) for image, label in pairs if label.is_file()]
        if len(splits[split]) < len(pairs):
            log.warning(
                "%s: %d of the %d %s images have no YOLO label file (background images); "
                "they are left out", found.root, len(pairs) - len(splits[split]), len(pairs), split,
            )  # fmt: skip
    listing = _Listing(splits, "YOLO", found.root, class_dirs=[found.root])
    if found.names is not None:
        listing.class_names = ["background", *found.names]
        listing.names_from = found.names_from
    return listing


def _nested(root: Path) -> _Listing | None:
    """One level down, for folders such as labelme's data_dataset_voc/ beside data_annotated/:
    folder pairs win over labelme files."""
    children = sorted(p for p in root.iterdir() if p.is_dir())
    for finder in (_folder_pairs, _labelme_dir):
        for child in children:
            listing = finder(child, "train")
            if listing is not None:
                listing.class_dirs.append(root)
                return listing
    return None


def _split_dirs(root: Path) -> _Listing | None:
    splits, layouts, class_dirs = {}, set(), []
    segnet = trimap = False
    for name in SPLIT_NAMES:
        folder = root / name
        if not folder.is_dir():
            continue
        annot = root / f"{name}annot"
        if annot.is_dir():
            splits[SPLIT_ALIASES.get(name, name)] = _pair_folders(folder, annot)
            layouts.add("image-label-dirs")
            segnet = True
            continue
        found = _folder_pairs(folder, name) or _labelme_dir(folder, name)
        if found is not None:
            splits[SPLIT_ALIASES.get(name, name)] = found.splits[name]
            layouts.add(found.layout)
            class_dirs.append(folder)
            trimap = trimap or found.trimap
    if not splits:
        return None
    layout = layouts.pop() if len(layouts) == 1 else "mixed"
    listing = _Listing(splits, layout, root, class_dirs=class_dirs, segnet=segnet)
    listing.trimap = trimap
    return listing


def _child(folder: Path, names: Iterable[str]) -> Path | None:
    children = {p.name.lower(): p for p in folder.iterdir() if p.is_dir()}
    return next((children[n] for n in names if n in children), None)


def _folder_pairs(folder: Path, split: str) -> _Listing | None:
    images = _child(folder, IMAGE_DIRS)
    if images is None:
        return None
    masks = _labels_dir(folder, images)
    trimaps = _child(masks, (TRIMAP_DIR,)) if masks is not None else None
    samples = _pair_folders(images, trimaps or masks)
    if not samples:
        return None
    nested = any(len(s.image.relative_to(images).parts) > 1 for s in samples)
    layout = "class-folders" if nested else "image-label-dirs"
    layout = "trimaps" if trimaps else layout
    listing = _Listing({split: samples}, layout, folder, class_dirs=[folder])
    listing.trimap = trimaps is not None
    return listing


def _labels_dir(folder: Path, images: Path) -> Path | None:
    """The mask folder; a mask/ (masks/) folder beside another labels folder whose files pair
    with the images is taken for a region-of-interest mask (DRIVE's field of view)."""
    children = {p.name.lower(): p for p in folder.iterdir() if p.is_dir()}
    found = [children[n] for n in MASK_DIRS if n in children]
    if not found or found[0].name.lower() not in ROI_DIRS:
        return found[0] if found else None
    image_keys = _files(images, IMAGE_SUFFIXES)
    others = [p for p in found[1:] if p.name.lower() not in ROI_DIRS and _pairs(image_keys, p)]
    if not others:
        return found[0]
    log.warning(
        "%s: taking %s/ for the labels; %s/ looks like a region-of-interest mask (give "
        "roi_masks: %s in a segworks.yaml to make the pixels outside it void)",
        folder, others[0].name, found[0].name, found[0].name,
    )  # fmt: skip
    return others[0]


def _pairs(image_files: dict[str, Path], folder: Path) -> bool:
    """Whether some mask file in `folder` has an image's name (once shared parts are dropped)."""
    mask_files = _files(folder, MASK_SUFFIXES)
    exact = set(image_files) & set(mask_files)
    return bool(exact or set(_trimmed(image_files)) & set(_trimmed(mask_files)))


def _files(folder: Path, exts: tuple[str, ...]) -> dict[str, Path]:
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


def _pair_folders(images: Path, masks: Path | None) -> list[Sample]:
    """Pair by relative path and stem; a missing partner becomes a path that does not exist, so
    the dataset reports it (or skips it with skip_bad). Names that match only once the part
    every file of a folder shares is dropped (21_training.tif, 21_manual1.gif) pair too."""
    image_files = _files(images, IMAGE_SUFFIXES)
    if masks is None:
        return [Sample(path, None) for path in image_files.values()]
    image_files, mask_files = _matched_keys(
        image_files, _files(masks, MASK_SUFFIXES), images, masks
    )
    mask_ext = _dominant_suffix(mask_files.values())
    samples = []
    for key in sorted(set(image_files) | set(mask_files)):
        image = image_files.get(key, images / f"{key}.jpg")
        mask = mask_files.get(key, masks / f"{key}{mask_ext}")
        samples.append(Sample(image, mask))
    return samples


def _with_roi(samples: list[Sample], roi: Path) -> list[Sample]:
    """The samples with the region-of-interest mask of the same image stem."""
    if not roi.is_dir():
        raise DataError(roi, "roi_masks: folder not found")
    by_stem = {s.image.stem: s.image for s in samples}
    roi_files = {Path(k).name: p for k, p in _files(roi, IMAGE_SUFFIXES).items()}
    if not roi_files:
        raise DataError(roi, "roi_masks: no image file in the folder")
    keyed_images, keyed_roi = _matched_keys(by_stem, roi_files, samples[0].image.parent, roi)
    key_of = {image: key for key, image in keyed_images.items()}
    return [
        Sample(s.image, s.label, keyed_roi.get(key_of.get(s.image), roi / f"{s.image.stem}.png"))
        for s in samples
    ]


def _matched_keys(
    image_files: dict[str, Path], other: dict[str, Path], images: Path, folder: Path
) -> tuple[dict[str, Path], dict[str, Path]]:
    """The two folders' files keyed so that partners share a key. No partner at all is refused
    with one line, rather than listing every image as a pair whose mask is missing."""
    if not image_files or not other or set(image_files) & set(other):
        return image_files, other
    trimmed_images, trimmed_other = _trimmed(image_files), _trimmed(other)
    if set(trimmed_images) & set(trimmed_other):
        return trimmed_images, trimmed_other
    raise DataError(
        folder,
        f"none of its {len(other)} files has the name of one of the {len(image_files)} images "
        f"in {images} (e.g. {next(iter(other))} vs {next(iter(image_files))}); pair them in a "
        "segworks.yaml spec file (splits: {train: {images: DIR, masks: DIR}} or a pair list)",
    )


def _trimmed(files: dict[str, Path]) -> dict[str, Path]:
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


def _dominant_suffix(paths: Iterable[Path]) -> str:
    suffixes = [p.suffix.lower() for p in paths]
    return max(set(suffixes), key=suffixes.count) if suffixes else ".png"


def _labelme_dir(folder: Path, split: str) -> _Listing | None:
    jsons = sorted(p for p in folder.glob("*.json") if _is_labelme(p))
    if not jsons:
        return None
    samples = [Sample(_labelme_image(p), p) for p in jsons]
    listing = _Listing({split: samples}, "labelme", folder, class_dirs=[folder, folder.parent])
    return listing


def _is_labelme(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as handle:
            head = handle.read(4096)
    except (OSError, UnicodeDecodeError):
        return False
    return '"shapes"' in head or ('"version"' in head and '"imagePath"' in head)


def _labelme_image(json_path: Path) -> Path:
    """The image beside a labelme file; the JSON itself when only its imageData holds it."""
    for ext in IMAGE_SUFFIXES:
        for candidate in (json_path.with_suffix(ext), json_path.with_suffix(ext.upper())):
            if candidate.is_file():
                return candidate
    try:
        image_path = json.loads(json_path.read_text(encoding="utf-8")).get("imagePath") or ""
    except (OSError, ValueError):
        return json_path
    candidate = json_path.parent / image_path
    return candidate if image_path and candidate.is_file() else json_path


# --------------------------------------------------------------------------- list files
def _is_pair_list(path: Path) -> bool:
    if path.name.lower() in CLASS_FILES:
        return False
    try:
        with open(path, encoding="utf-8") as handle:
            lines = [line.split() for line, _ in zip(handle, range(20))]
    except (OSError, UnicodeDecodeError):
        return False
    first = next((parts for parts in lines if parts and not parts[0].startswith("#")), None)
    return first is not None and len(first) == 2 and Path(first[0]).suffix.lower() in IMAGE_SUFFIXES


def _pair_lists(root: Path, lists: dict[str, Path]) -> _Listing:
    listing = _Listing({}, "pair-list", root, class_dirs=[root], list_kind="pair")
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


def _note_missing(listing: _Listing, list_path: Path, number: int, sample: Sample) -> None:
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


def _stem_list(list_path: Path, images: Path, masks: Path | None, split: str) -> _Listing:
    """The seed RefineNet layout: one stem per line, images/<stem>.jpg, masks/<stem>.png."""
    for folder in (images, masks):
        if folder is not None and not folder.is_dir():
            raise DataError(folder, "folder not found")
    listing = _Listing({}, "list-file", list_path.parent, list_kind="stem")
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


def _is_segnet(root: Path) -> bool:
    return any((root / f"{name}annot").is_dir() for name in SPLIT_NAMES)


# --------------------------------------------------------------------------- spec files
def load_spec(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            spec = json.loads(text)
        else:
            import yaml

            spec = yaml.safe_load(text)
    except FileNotFoundError:
        raise DataError(path, "spec file not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise DataError(path, f"cannot parse the spec file ({error})") from None
    except Exception as error:  # yaml.YAMLError does not derive from ValueError
        raise DataError(path, f"cannot parse the spec file ({error})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("splits"), dict):
        raise DataError(path, "a spec file is a mapping with a 'splits' mapping")
    _check_keys(path, "", spec, SPEC_KEYS)
    for split, entry in spec["splits"].items():
        if isinstance(entry, dict):
            _check_keys(path, f"split {split!r}: ", entry, SPLIT_KEYS)
    return spec


def _check_keys(path: Path, where: str, mapping: dict, valid: tuple[str, ...]) -> None:
    """An unknown key is an error naming it and the nearest valid key (a typo loses data)."""
    import difflib

    for key in mapping:
        if str(key) in valid:
            continue
        near = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise DataError(path, f"{where}unknown key {key!r}{hint} (valid keys: {', '.join(valid)})")


def _spec_listing(path: Path) -> _Listing:
    spec = load_spec(path)
    root = (path.parent / str(spec.get("root", "."))).resolve()
    listing = _Listing({}, "spec", root, class_dirs=[root, path.parent], spec=spec)
    for split, entry in spec["splits"].items():
        _add_spec_split(listing, path, str(split), entry)
    return listing


def _add_spec_split(listing: _Listing, spec_path: Path, split: str, entry) -> None:
    root = listing.root
    if isinstance(entry, str):
        entry = {"list": entry}
    if not isinstance(entry, dict):
        raise DataError(spec_path, f"split {split!r}: expected a mapping or a list-file path")
    masks = entry.get("masks", entry.get("labels", entry.get("annotations")))
    if "list" in entry and "images" in entry:
        found = _stem_list(
            root / entry["list"], root / entry["images"], masks and root / masks, split
        )
    elif "list" in entry:
        found = _pair_lists(root, {split: root / entry["list"]})
    elif "images" in entry:
        images = root / entry["images"]
        if not images.is_dir():
            raise DataError(images, f"split {split!r}: image folder not found")
        found = _Listing({split: _pair_folders(images, masks and root / masks)}, "spec", root)
    else:
        raise DataError(spec_path, f"split {split!r}: give 'list' and/or 'images' (+ 'masks')")
    roi = entry.get("roi_masks", listing.spec.get("roi_masks"))
    samples = found.splits[split]
    if roi and samples:
        with_roi = dict(zip(samples, _with_roi(samples, root / roi)))
        samples = list(with_roi.values())
        for name, entries in found.entries.items():
            found.entries[name] = [(text, with_roi.get(s, s)) for text, s in entries]
    listing.splits[split] = samples
    listing.entries.update(found.entries)
    listing.problems.extend(found.problems)
    listing.list_kind = listing.list_kind or found.list_kind


def _spec_palette(spec: dict) -> list[Colour] | None:
    palette = spec.get("palette")
    if not palette:
        return None
    return [tuple(int(v) for v in colour) for colour in palette]


def _spec_colour_map(spec: dict) -> dict[Colour, int]:
    mapping = {}
    for key, value in (spec.get("colour_map") or spec.get("color_map") or {}).items():
        mapping[parse_colour(str(key))] = int(value)
    return mapping


def parse_colour(text: str) -> Colour:
    """ "127,0,0", "127 0 0" or "#7f0000" -> (127, 0, 0)."""
    text = text.strip()
    try:
        if text.startswith("#") and len(text) == 7:
            return tuple(int(text[i : i + 2], 16) for i in (1, 3, 5))
        values = tuple(int(v) for v in text.replace(",", " ").split())
    except ValueError:
        values = ()
    if len(values) != 3 or not all(0 <= v <= 255 for v in values):
        raise SegworksError(f"a colour is 'r,g,b' with values 0..255 or '#rrggbb', got {text!r}")
    return values


# --------------------------------------------------------------------------- classes
def read_class_names(path: Path) -> list[str]:
    """One name per line; labelme's `__ignore__` is dropped, `_background_` -> background."""
    names = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    names = [n for n in names if n and n != LABELME_IGNORE]
    return ["background" if n in BACKGROUND_NAMES else n for n in names]


def _given_names(class_names, spec: dict, listing: _Listing) -> tuple[list[str] | None, str]:
    if class_names:
        return list(class_names), "given"
    if listing.class_names:
        return list(listing.class_names), listing.names_from
    if spec.get("class_names"):
        return [str(n) for n in spec["class_names"]], "spec"
    if spec.get("classes_file"):
        path = listing.root / spec["classes_file"]
        return read_class_names(path), str(path)
    for folder in [listing.root, *listing.class_dirs]:
        for name in CLASS_FILES:
            if (folder / name).is_file():
                return read_class_names(folder / name), str(folder / name)
    return None, "inferred"


def _default_names(listing, fmt, task, probe, colour_map, masks) -> tuple[list[str], str]:
    if task == "binary":
        return ["background", "foreground"], "binary"
    if fmt == "labelme":
        return _labelme_names(masks), "labelme labels"
    if fmt == "yolo":
        count = yolo.largest_class(masks) + 1
        return ["background", *(f"class_{i}" for i in range(count))], "YOLO labels"
    if listing.segnet and fmt == "index" and max(probe["values"], default=0) <= 11:
        return list(CAMVID_CLASSES), "SegNet CamVid layout"
    if fmt == "rgb":
        count = max((c for c in colour_map.values() if c != IGNORE_INDEX), default=0) + 1
    else:
        values = [v for v in probe["values"] if 0 <= v != IGNORE_INDEX]
        count = max(values, default=0) + 1
    return [f"class_{i}" for i in range(count)], "inferred"


def _binary_names(names: list[str], names_from: str) -> tuple[list[str], str]:
    if len(names) == 2:
        return names, names_from
    if names_from == "given":
        raise SegworksError(
            f"a binary task has 2 class names (background, foreground), got {names}"
        )
    return ["background", "foreground"], "binary"


def _labelme_names(masks: list[Path]) -> list[str]:
    labels: set[str] = set()
    for path in masks:
        try:
            shapes = json.loads(Path(path).read_text(encoding="utf-8")).get("shapes", [])
        except (OSError, ValueError):
            continue
        for shape in shapes:
            label = str(shape.get("label", ""))
            base, _, suffix = label.rpartition("-")
            labels.add(base if base and suffix.isdigit() else label)
    labels -= {LABELME_IGNORE, *BACKGROUND_NAMES}
    return ["background", *sorted(labels)]


# --------------------------------------------------------------------------- mask encoding
def _probe(masks: list[Path], fmt: str) -> dict:
    """Modes, values and colours of up to PROBE_COUNT masks spread over the dataset."""
    probe = {"modes": set(), "values": set(), "colours": set(), "pixels": Counter()}
    if not masks or fmt in ("npy", "labelme", "yolo") or masks[0].suffix.lower() in UNPROBED:
        return _probe_npy(masks, probe) if masks and masks[0].suffix.lower() == ".npy" else probe
    step = max(1, len(masks) // PROBE_COUNT)
    for path in masks[::step][:PROBE_COUNT]:
        try:
            with Image.open(path) as image:
                image.load()
                lossy_colour = path.suffix.lower() in LOSSY_SUFFIXES and image.mode != "L"
                _probe_image(image.convert("L") if lossy_colour else image, probe)
        except (FileNotFoundError, *PIL_ERRORS):
            continue  # reported when the pair is read or checked
    return probe


def _probe_image(image: Image.Image, probe: dict) -> None:
    probe["modes"].add(image.mode)
    if image.mode in ("RGB", "RGBA"):
        rgb = np.asarray(image.convert("RGB")).reshape(-1, 3)
        if (rgb[:, 0] == rgb[:, 1]).all() and (rgb[:, 0] == rgb[:, 2]).all():
            probe["modes"].add("gray-rgb")
            probe["values"].update(np.unique(rgb[:, 0]).tolist())
        else:
            probe["colours"].update(map(tuple, np.unique(rgb, axis=0).tolist()))
    else:
        values, counts = np.unique(np.asarray(image), return_counts=True)
        probe["values"].update(values.tolist())
        probe["pixels"].update(dict(zip(values.tolist(), counts.tolist())))


def _probe_npy(masks: list[Path], probe: dict) -> dict:
    step = max(1, len(masks) // PROBE_COUNT)
    for path in masks[::step][:PROBE_COUNT]:
        try:
            probe["values"].update(np.unique(np.load(path, allow_pickle=False)).tolist())
        except (OSError, ValueError, EOFError):
            continue
    return probe


def _guess_format(masks: list[Path], probe: dict) -> str:
    if not masks:
        return "index"
    suffix = _dominant_suffix(masks)
    if suffix == ".npy":
        return "npy"
    if suffix == ".json":
        return "labelme"
    if suffix == ".txt":
        return "yolo"
    modes = probe["modes"] - {"gray-rgb"}
    if probe["colours"]:
        return "rgb"
    if modes and modes <= {"P", "PA"}:
        return "palette"
    return "binary" if _looks_binary(probe) else "index"


def _looks_binary(probe: dict) -> bool:
    """0 and 255 only, or nearly: stray values (anti-aliased edges) under 1% of the pixels are
    reported by check-data rather than turning the mask into 129 classes."""
    pixels = probe["pixels"]
    if not {0, 255} <= probe["values"] or 1 in probe["values"]:
        return False
    stray = sum(n for v, n in pixels.items() if v not in (0, 255))
    return stray <= 0.01 * max(1, sum(pixels.values()))


def _guess_task(fmt: str, probe: dict, names: list[str] | None) -> str:
    if fmt in ("binary", "trimap"):
        return "binary" if names is None or len(names) == 2 else "semantic"
    if names is not None and len(names) == 2 and probe["values"] and probe["values"] <= {0, 1, 255}:
        return "binary"
    return "semantic"


def _colour_map(fmt: str, options: dict, probe: dict, masks: list[Path]) -> dict[Colour, int]:
    if fmt != "rgb":
        return {}
    mapping = dict(options["colour_map"])
    if options["palette"]:
        mapping = {**colour_map_from_palette(options["palette"]), **mapping}
    if mapping:
        return mapping
    voc = colour_map_from_palette(voc_palette(256)[:255], void_colour=(224, 224, 192))
    if probe["colours"] and probe["colours"] <= set(voc):
        return {colour: index for colour, index in voc.items() if colour in probe["colours"]}
    shown = ", ".join(str(c) for c in sorted(probe["colours"])[:8])
    raise DataError(
        masks[0].parent if masks else Path("."),
        f"RGB masks with colours {shown} need a colour -> class map: give a palette "
        "(class colours in order) or colour_map in a spec file",
    )


def _palette(fmt, task, given, colour_map, masks, count) -> list[Colour]:
    if given:
        return list(given)[: max(count, 1)] + voc_palette(count)[len(given) :]
    if task == "binary":
        return [(0, 0, 0), (255, 255, 255)]
    if fmt == "rgb":
        by_class = {c: colour for colour, c in sorted(colour_map.items(), reverse=True)}
        return [by_class.get(i, voc_palette(count)[i]) for i in range(count)]
    if fmt == "palette" and masks:
        for path in masks[:4]:
            try:
                colours = read_palette(path)
            except (FileNotFoundError, *PIL_ERRORS):
                continue
            if colours:
                return (colours + voc_palette(count)[len(colours) :])[:count]
    return voc_palette(count)
