"""The inputs of `segworks predict`: files, folders (searched recursively), globs and videos.

Each input becomes an `InputItem` whose `out_stem` (relative to the output folder) keeps a
folder input's sub-folders and is made unique. numpy, PIL and torch are not needed here.
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from segworks.errors import DataError
from segworks.suffixes import IMAGE_SUFFIXES

__all__ = ["VIDEO_SUFFIXES", "InputItem", "collect_inputs"]

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class InputItem:
    path: Path
    out_stem: Path  # relative to --out, without the _index.png etc. suffix
    video: bool = False


def collect_inputs(inputs: list[str]) -> list[InputItem]:
    """Expand files, folders (recursive) and globs; output stems are made unique."""
    items: list[InputItem] = []
    seen: set[Path] = set()
    for text in inputs:
        for path, stem in _expand(text):
            unique, number = stem, 1
            while unique in seen:
                number += 1
                unique = stem.with_name(f"{stem.name}_{number}")
            if unique != stem:
                log.warning("%s: output name %s is taken, writing %s", path, stem, unique)
            seen.add(unique)
            items.append(InputItem(path, unique, path.suffix.lower() in VIDEO_SUFFIXES))
    return items


def _expand(text: str) -> Iterator[tuple[Path, Path]]:
    path = Path(text)
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and _is_media(p))
        if not found:
            raise DataError(path, "folder holds no image or video files")
        for file in found:
            yield file, file.relative_to(path).with_suffix("")
    elif path.is_file():
        yield path, Path(path.stem)
    elif GLOB_CHARS & set(text):
        found = sorted(Path(p) for p in glob.glob(text, recursive=True))
        found = [p for p in found if p.is_file() and _is_media(p)]
        if not found:
            raise DataError(text, "the pattern matches no image or video file")
        for file in found:
            yield file, Path(file.stem)
    else:
        raise DataError(path, "no such file or folder")


def _is_media(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES
