"""A built-in synthetic dataset written to disk: circles and squares that only shape tells apart.

Every object is filled with the same kind of texture (a random colour times per-pixel noise,
drawn from one distribution for both classes), so a pixel's colour says nothing about its class:
a model has to look at the outline around it. The background is a smooth random gradient with
clutter (thin strokes and specks in the objects' texture, labelled background), so "textured"
does not mean "object" either. A per-pixel classifier can find the objects but cannot tell a
circle from a square; a small U-Net learns both in about a minute on a CPU.

Layout (read by `segworks.data.open_source`):
    ROOT/class_names.txt                       background, circle, square
    ROOT/{train,val}/images/NNNN.png           RGB
    ROOT/{train,val}/masks/NNNN.png            palette PNG, index = class
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from segworks.data.meta import voc_palette
from segworks.fileio import save_image, save_text

log = logging.getLogger(__name__)

SHAPE_CLASSES = ["background", "circle", "square"]


def write_shapes_dataset(
    root: str | Path,
    *,
    num_train: int = 320,
    num_val: int = 64,
    size: int = 64,
    seed: int = 0,
) -> Path:
    """Write the dataset under `root` (deterministic for a seed) and return `root`."""
    root = Path(root)
    if num_train < 1 or num_val < 1 or size < 32:
        raise ValueError(
            f"need num_train, num_val >= 1 and size >= 32, got {num_train}, {num_val}, {size}"
        )
    rng = np.random.default_rng(seed)
    palette = voc_palette(256)
    for split, count in (("train", num_train), ("val", num_val)):
        for index in range(count):
            image, label = render_shapes(rng, size)
            save_image(Image.fromarray(image), root / split / "images" / f"{index:04d}.png")
            mask = Image.fromarray(label)  # "L"; putpalette makes it "P" with the same indices
            mask.putpalette([v for colour in palette for v in colour])
            save_image(mask, root / split / "masks" / f"{index:04d}.png")
    save_text("\n".join(SHAPE_CLASSES) + "\n", root / "class_names.txt")
    log.info("wrote %d train + %d val synthetic images to %s", num_train, num_val, root)
    return root


def render_shapes(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One (uint8 RGB image (H, W, 3), uint8 labels (H, W)) pair with 1-2 objects."""
    image = _background(rng, size)
    label = np.zeros((size, size), dtype=np.uint8)
    _clutter(rng, image, size)
    for _ in range(int(rng.integers(1, 3))):
        cls = int(rng.integers(1, 3))
        shape = _shape_mask(rng, size, cls)
        image[shape] = _texture(rng, size)[shape]
        label[shape] = cls
    return image, label


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    start, end = rng.uniform(40, 200, size=(2, 3))
    ramp = np.linspace(0.0, 1.0, size)[:, None, None]
    if rng.random() < 0.5:
        ramp = ramp.transpose(1, 0, 2)
    image = start + (end - start) * ramp + rng.normal(0, 6, size=(size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random colour modulated by strong per-pixel noise: the same law for every class."""
    colour = rng.uniform(30, 255, size=3)
    noise = rng.uniform(0.7, 1.0, size=(size, size, 1))
    return np.clip(colour * noise, 0, 255).astype(np.uint8)


def _shape_mask(rng: np.random.Generator, size: int, cls: int) -> np.ndarray:
    """A filled circle (cls 1) or axis-aligned square (cls 2) of about the same area."""
    radius = rng.uniform(0.15, 0.25) * size
    half = radius * np.sqrt(np.pi) / 2  # square of the circle's area
    cy, cx = rng.uniform(radius, size - radius, size=2)
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if cls == 1:
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=1)
    else:
        draw.rectangle((cx - half, cy - half, cx + half, cy + half), fill=1)
    return np.asarray(canvas, dtype=bool)


def _clutter(rng: np.random.Generator, image: np.ndarray, size: int) -> None:
    """Thin strokes and small specks in object texture, left as background in the labels."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(1, 4))):
        x0, y0, x1, y1 = rng.uniform(0, size, size=4)
        draw.line((x0, y0, x1, y1), fill=1, width=int(rng.integers(1, 3)))
    for _ in range(int(rng.integers(0, 4))):
        x, y = rng.uniform(0, size, size=2)
        r = rng.uniform(1, 2.5)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=1)
    mask = np.asarray(canvas, dtype=bool)
    image[mask] = _texture(rng, size)[mask]
