"""Atomic file writes: a temporary file in the target's folder, then `os.replace`.

A reader (or a crashed run) never sees a half-written file: either the old file or the complete
new one is at `path`. The temporary name starts with a dot and ends with `.tmp`, and keeps the
target's suffix before that, so format-by-suffix writers (PIL, torch) still work on it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image

from segworks.errors import SegworksError

__all__ = ["atomic_path", "save_image", "save_json", "save_text"]


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`, on error delete it.

    The caller writes the whole file to the yielded path. Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=f"{path.suffix}.tmp", dir=path.parent
    )
    os.close(fd)
    tmp = Path(name)
    # mkstemp makes the file private (0600); give it the mode an ordinary open() would.
    os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else _default_mode())
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _default_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def save_image(image: Image.Image, path: str | Path) -> None:
    """Save a PIL image atomically; the format comes from the suffix of `path` (.png, .jpg...)."""
    path = Path(path)
    image_format = Image.registered_extensions().get(path.suffix.lower())
    if image_format is None:
        raise SegworksError(f"cannot tell the image format from the suffix of {path} (try .png)")
    with atomic_path(path) as tmp:
        image.save(tmp, format=image_format)


def save_json(data: Any, path: str | Path, *, indent: int = 2) -> None:
    """Write `data` as JSON atomically (NaN is written as JSON `NaN`, as Python's json does)."""
    save_text(json.dumps(data, indent=indent) + "\n", path)


def save_text(text: str, path: str | Path) -> None:
    """Write a UTF-8 text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
