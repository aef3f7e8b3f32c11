"""Spec files (segworks.yaml / .json): the splits, classes and encoding detection cannot settle.

See segworks.data.layouts for the keys."""

from __future__ import annotations

import json
from pathlib import Path

from segworks.data.formats import Colour
from segworks.data.listing import Listing, pair_folders, pair_lists, stem_list, with_roi
from segworks.errors import DataError, SegworksError

SPEC_NAMES = ("segworks.yaml", "segworks.yml", "segworks.json", "dataset.yaml", "dataset.yml")
SPEC_KEYS = (
    "root", "mask_format", "task", "class_names", "classes_file", "palette", "colour_map",
    "color_map", "ignore_index", "reduce_zero_label", "roi_masks", "splits",
)  # fmt: skip
SPLIT_KEYS = ("list", "images", "masks", "labels", "annotations", "roi_masks")


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


def spec_listing(path: Path) -> Listing:
    spec = load_spec(path)
    root = (path.parent / str(spec.get("root", "."))).resolve()
    listing = Listing({}, "spec", root, class_dirs=[root, path.parent], spec=spec)
    for split, entry in spec["splits"].items():
        _add_spec_split(listing, path, str(split), entry)
    return listing


def _add_spec_split(listing: Listing, spec_path: Path, split: str, entry) -> None:
    root = listing.root
    if isinstance(entry, str):
        entry = {"list": entry}
    if not isinstance(entry, dict):
        raise DataError(spec_path, f"split {split!r}: expected a mapping or a list-file path")
    masks = entry.get("masks", entry.get("labels", entry.get("annotations")))
    if "list" in entry and "images" in entry:
        found = stem_list(
            root / entry["list"], root / entry["images"], masks and root / masks, split
        )
    elif "list" in entry:
        found = pair_lists(root, {split: root / entry["list"]})
    elif "images" in entry:
        images = root / entry["images"]
        if not images.is_dir():
            raise DataError(images, f"split {split!r}: image folder not found")
        found = Listing({split: pair_folders(images, masks and root / masks)}, "spec", root)
    else:
        raise DataError(spec_path, f"split {split!r}: give 'list' and/or 'images' (+ 'masks')")
    roi = entry.get("roi_masks", listing.spec.get("roi_masks"))
    samples = found.splits[split]
    if roi and samples:
        roi_of = dict(zip(samples, with_roi(samples, root / roi)))
        samples = list(roi_of.values())
        for name, entries in found.entries.items():
            found.entries[name] = [(text, roi_of.get(s, s)) for text, s in entries]
    listing.splits[split] = samples
    listing.entries.update(found.entries)
    listing.problems.extend(found.problems)
    listing.list_kind = listing.list_kind or found.list_kind


def spec_palette(spec: dict) -> list[Colour] | None:
    palette = spec.get("palette")
    if not palette:
        return None
    return [tuple(int(v) for v in colour) for colour in palette]


def spec_colour_map(spec: dict) -> dict[Colour, int]:
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
