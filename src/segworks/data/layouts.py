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

import logging
from dataclasses import dataclass, field
from pathlib import Path

from segworks import IGNORE_INDEX
from segworks.data import yolo
from segworks.data.classes import (
    CAMVID_CLASSES,
    CAMVID_PALETTE,
    CLASS_FILES,
    binary_names,
    default_names,
    read_class_names,
)
from segworks.data.dataset import Sample, SegmentationDataset
from segworks.data.detect import MASK_DIRS, detect_dir, yolo_listing
from segworks.data.formats import MASK_FORMATS, Colour, MaskDecoder, labelme_class_ids
from segworks.data.listing import (
    SPLIT_NAMES,
    Listing,
    all_samples,
    is_pair_list,
    is_segnet,
    pair_lists,
    stem_list,
)
from segworks.data.meta import DatasetMeta
from segworks.data.probe import (
    LOSSY_THRESHOLD,
    guess_format,
    guess_task,
    lossy_binary,
    probe_masks,
    settle_colour_map,
    settle_palette,
    trimap_format,
    warn_merged_classes,
)
from segworks.data.specs import spec_colour_map, spec_listing, spec_palette
from segworks.errors import DataError, SegworksError

log = logging.getLogger(__name__)

__all__ = ["DatasetSource", "open_source", "read_class_names"]


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
        "palette": palette or spec_palette(spec),
        "colour_map": dict(colour_map or {}) or spec_colour_map(spec),
        "allow_unlabelled": allow_unlabelled,
    }
    names, names_from = _given_names(class_names, spec, listing)
    return _settle(listing, options, names, names_from)


def _settle(listing: Listing, options: dict, names, names_from: str) -> DatasetSource:
    task = options["task"]
    if task not in (None, "semantic", "binary"):
        raise SegworksError(f"task must be 'semantic' or 'binary' here, got {task!r}")
    masks = [s.label for s in all_samples(listing.splits) if s.label is not None]
    fmt = options["mask_format"]
    if fmt != "auto" and fmt not in MASK_FORMATS:
        raise SegworksError(
            f"mask format must be auto or one of {', '.join(MASK_FORMATS)}, got {fmt!r}"
        )
    if not options["allow_unlabelled"]:
        _require_masks(listing, masks)
    probe = probe_masks(masks, fmt)
    lossy = lossy_binary(masks, fmt, probe)
    if fmt == "auto" and listing.trimap:
        fmt = trimap_format(masks, probe)
    if fmt == "auto":
        fmt = "binary" if lossy else guess_format(masks, probe)
    if task is None:
        task = guess_task(fmt, probe, names)
    elif task == "binary" and fmt != "binary":
        warn_merged_classes(probe, names)
    colour_map = settle_colour_map(fmt, options, probe, masks)
    if names is None:
        names, names_from = default_names(listing, fmt, task, probe, colour_map, masks)
    if task == "binary":
        names, names_from = binary_names(names, names_from)
    void = options["ignore_index"]
    if void is None:
        camvid = listing.segnet and fmt == "index" and len(names) == len(CAMVID_CLASSES)
        void = 11 if camvid else IGNORE_INDEX
    given_palette = options["palette"] or (CAMVID_PALETTE if names == CAMVID_CLASSES else None)
    meta = DatasetMeta(
        class_names=list(names),
        palette=settle_palette(fmt, task, given_palette, colour_map, masks, len(names)),
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


def _require_masks(listing: Listing, masks: list[Path]) -> None:
    """A dataset whose pairs have no mask file at all cannot be trained or checked."""
    if any(path.is_file() for path in masks):
        return
    count = len(all_samples(listing.splits))
    found = f"{len(masks)} mask paths, none of them a file" if masks else "no mask folder"
    raise DataError(
        listing.root,
        f"no mask file found for the {count} images ({found}); put the masks in a folder named "
        f"{', '.join(MASK_DIRS[:5])}, ... beside the images, or name them in a segworks.yaml "
        "spec file (splits: {train: {images: DIR, masks: DIR}})",
    )


def _list_pairs(source, list_file, image_dir, label_dir) -> Listing:
    if list_file is not None:
        if image_dir is None:
            raise SegworksError("a list file (-tt) needs the image folder (-tr) too")
        return stem_list(Path(list_file), Path(image_dir), label_dir and Path(label_dir), "train")
    if source is None:
        raise SegworksError("give a dataset folder, spec file or list file (or -tt/-tr/-ta)")
    path = Path(source)
    if not path.exists():
        raise DataError(path, "no such file or folder")
    if path.is_dir():
        return detect_dir(path)
    if yolo.is_yolo_yaml(path):
        return yolo_listing(yolo.from_yaml(path))
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        return spec_listing(path)
    if path.suffix.lower() == ".txt":
        if not is_pair_list(path):
            raise DataError(path, "not a pair list: expected 'IMAGE MASK' paths on each line")
        split = path.stem if path.stem in SPLIT_NAMES else "train"
        listing = pair_lists(path.parent, {split: path})
        listing.segnet = is_segnet(path.parent)
        return listing
    raise DataError(path, "expected a dataset folder, a spec file (.yaml/.json) or a list (.txt)")


def _given_names(class_names, spec: dict, listing: Listing) -> tuple[list[str] | None, str]:
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
