"""Telling a dataset folder's layout: spec file, YOLO labels, pair lists, split folders, image +
mask folders (trimaps, ROI folders beside the labels), labelme files."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

from segworks.data import yolo
from segworks.data.dataset import Sample
from segworks.data.listing import (
    SPLIT_ALIASES,
    SPLIT_NAMES,
    Listing,
    files_by_key,
    is_pair_list,
    is_segnet,
    pair_folders,
    pair_lists,
    pairs_with,
)
from segworks.data.specs import SPEC_NAMES, spec_listing
from segworks.errors import DataError
from segworks.suffixes import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

IMAGE_DIRS = ("images", "image", "imgs", "img", "jpegimages", "inputs", "input", "rgb")
MASK_DIRS = (
    "seg_images", "masks", "mask", "labels", "label", "annotations", "annotation", "annot",
    "segmentationclass", "segmentationclasspng", "segmentationclassnpy", "gt", "groundtruth",
    "ground_truth", "targets", "1st_manual", "manual1", "manual",
)  # fmt: skip
ROI_DIRS = ("mask", "masks")  # beside another labels folder: a field-of-view mask
TRIMAP_DIR = "trimaps"


def detect_dir(root: Path) -> Listing:
    found = yolo.find_yolo(root)
    if found is not None:
        return yolo_listing(found)
    for name in SPEC_NAMES:
        if (root / name).is_file():
            return spec_listing(root / name)
    lists = {p.stem: p for p in sorted(root.glob("*.txt")) if is_pair_list(p)}
    if lists:
        listing = pair_lists(root, lists)
        listing.segnet = is_segnet(root)
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


def yolo_listing(found: yolo.YoloSource) -> Listing:
    """YOLO label files as masks; images without one (background images) are left out."""
    splits = {}
    for split, pairs in found.splits.items():
        splits[split] = [Sample(image, label) for image, label in pairs if label.is_file()]
        if len(splits[split]) < len(pairs):
            log.warning(
                "%s: %d of the %d %s images have no YOLO label file (background images); "
                "they are left out", found.root, len(pairs) - len(splits[split]), len(pairs), split,
            )  # fmt: skip
    listing = Listing(splits, "YOLO", found.root, class_dirs=[found.root])
    if found.names is not None:
        listing.class_names = ["background", *found.names]
        listing.names_from = found.names_from
    return listing


def _nested(root: Path) -> Listing | None:
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


def _split_dirs(root: Path) -> Listing | None:
    splits, layouts, class_dirs = {}, set(), []
    segnet = trimap = False
    for name in SPLIT_NAMES:
        folder = root / name
        if not folder.is_dir():
            continue
        annot = root / f"{name}annot"
        if annot.is_dir():
            splits[SPLIT_ALIASES.get(name, name)] = pair_folders(folder, annot)
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
    listing = Listing(splits, layout, root, class_dirs=class_dirs, segnet=segnet)
    listing.trimap = trimap
    return listing


def _child(folder: Path, names: Iterable[str]) -> Path | None:
    children = {p.name.lower(): p for p in folder.iterdir() if p.is_dir()}
    return next((children[n] for n in names if n in children), None)


def _folder_pairs(folder: Path, split: str) -> Listing | None:
    images = _child(folder, IMAGE_DIRS)
    if images is None:
        return None
    masks = _labels_dir(folder, images)
    trimaps = _child(masks, (TRIMAP_DIR,)) if masks is not None else None
    samples = pair_folders(images, trimaps or masks)
    if not samples:
        return None
    nested = any(len(s.image.relative_to(images).parts) > 1 for s in samples)
    layout = "class-folders" if nested else "image-label-dirs"
    layout = "trimaps" if trimaps else layout
    listing = Listing({split: samples}, layout, folder, class_dirs=[folder])
    listing.trimap = trimaps is not None
    return listing


def _labels_dir(folder: Path, images: Path) -> Path | None:
    """The mask folder; a mask/ (masks/) folder beside another labels folder whose files pair
    with the images is taken for a region-of-interest mask (DRIVE's field of view)."""
    children = {p.name.lower(): p for p in folder.iterdir() if p.is_dir()}
    found = [children[n] for n in MASK_DIRS if n in children]
    if not found or found[0].name.lower() not in ROI_DIRS:
        return found[0] if found else None
    image_keys = files_by_key(images, IMAGE_SUFFIXES)
    others = [p for p in found[1:] if p.name.lower() not in ROI_DIRS and pairs_with(image_keys, p)]
    if not others:
        return found[0]
    log.warning(
        "%s: taking %s/ for the labels; %s/ looks like a region-of-interest mask (give "
        "roi_masks: %s in a segworks.yaml to make the pixels outside it void)",
        folder, others[0].name, found[0].name, found[0].name,
    )  # fmt: skip
    return others[0]


def _labelme_dir(folder: Path, split: str) -> Listing | None:
    jsons = sorted(p for p in folder.glob("*.json") if _is_labelme(p))
    if not jsons:
        return None
    samples = [Sample(_labelme_image(p), p) for p in jsons]
    listing = Listing({split: samples}, "labelme", folder, class_dirs=[folder, folder.parent])
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
