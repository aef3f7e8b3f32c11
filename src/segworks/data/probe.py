"""How the masks of a dataset are encoded: a sample of them is read and the format, task,
colour map and palette settled."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from segworks import IGNORE_INDEX
from segworks.data.formats import Colour, colour_map_from_palette, read_palette
from segworks.data.meta import voc_palette
from segworks.data.reading import PIL_ERRORS
from segworks.errors import DataError
from segworks.suffixes import LOSSY_SUFFIXES, dominant_suffix

log = logging.getLogger(__name__)

PROBE_COUNT = 24
UNPROBED = (".npy", ".json", ".txt")  # probed as arrays, or shapes drawn later
LOSSY_NEAR = 64  # a lossy binary mask's values lie within this of 0 or of 255
LOSSY_THRESHOLD = 128


def probe_masks(masks: list[Path], fmt: str) -> dict:
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


def guess_format(masks: list[Path], probe: dict) -> str:
    if not masks:
        return "index"
    suffix = dominant_suffix(masks)
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


def guess_task(fmt: str, probe: dict, names: list[str] | None) -> str:
    if fmt in ("binary", "trimap"):
        return "binary" if names is None or len(names) == 2 else "semantic"
    if names is not None and len(names) == 2 and probe["values"] and probe["values"] <= {0, 1, 255}:
        return "binary"
    return "semantic"


def lossy_binary(masks: list[Path], fmt: str, probe: dict) -> bool:
    """Binary masks saved lossily (JPEG): values cluster near 0 and near 255 instead of being
    exactly 0 and 255. They are thresholded at LOSSY_THRESHOLD, with a warning."""
    if fmt not in ("auto", "binary") or not masks or probe["colours"]:
        return False
    values = probe["values"]
    low = {v for v in values if v < LOSSY_NEAR}
    high = {v for v in values if v > 255 - LOSSY_NEAR}
    jpeg = dominant_suffix(masks) in LOSSY_SUFFIXES
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


def trimap_format(masks: list[Path], probe: dict) -> str:
    """A trimaps/ folder holding only 1, 2 and 3 is read as trimaps; else as detection finds."""
    if probe["values"] and probe["values"] <= {1, 2, 3} and not probe["colours"]:
        return "trimap"
    found = sorted(probe["values"])[:8] or sorted(probe["colours"])[:4]
    log.warning("%s: not read as trimaps: values %s besides 1, 2, 3", masks[0].parent, found)
    return "auto"


def warn_merged_classes(probe: dict, names: list[str] | None) -> None:
    """--task binary on multi-class masks: every class above 0 becomes foreground."""
    merged = sorted(v for v in probe["values"] if 0 < v != IGNORE_INDEX)
    if len(merged) < 2:
        return
    if names and len(names) > max(merged):
        shown = ", ".join(f"{v} ({names[v]})" for v in merged)
    else:
        shown = ", ".join(str(v) for v in merged)
    log.warning("--task binary: classes %s are merged into one foreground class", shown)


def settle_colour_map(fmt: str, options: dict, probe: dict, masks: list[Path]) -> dict[Colour, int]:
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


def settle_palette(fmt, task, given, colour_map, masks, count) -> list[Colour]:
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
