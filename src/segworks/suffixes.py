"""The file suffixes segworks reads, in one place (first suffix wins when stems collide)."""

from collections.abc import Iterable
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".gif")
MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".gif", ".npy", ".json", ".jpg", ".jpeg")
LOSSY_SUFFIXES = (".jpg", ".jpeg")


def dominant_suffix(paths: Iterable[Path]) -> str:
    """The most common suffix (lower case) of `paths`; .png when there is none."""
    suffixes = [p.suffix.lower() for p in paths]
    return max(set(suffixes), key=suffixes.count) if suffixes else ".png"
