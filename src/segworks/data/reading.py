"""Reading image and mask files: decoded images with PIL's pixel limit, image sizes from headers,
labelme JSON files and the raw values stored in a mask file (see segworks.data.formats)."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from segworks.errors import DataError

SLIDE_MAX_PIXELS = 2_000_000_000  # sliding-window prediction reads images up to this size

# Errors PIL raises for a missing, truncated or corrupt file.
PIL_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


# --------------------------------------------------------------------------- reading raw files
def open_image(path: Path) -> Image.Image:
    """Open and fully decode an image file; a labelme JSON yields its embedded imageData."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        return _labelme_image(path)
    with _pil_errors(path, "cannot decode image"):
        image = Image.open(path)
        image.load()  # PIL closes the file it opened once the pixels are loaded
    return image


@contextmanager
def _pil_errors(path: Path, problem: str) -> Iterator[None]:
    """PIL's errors on `path` as DataErrors: missing file, too many pixels, or `problem`."""
    try:
        yield
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except Image.DecompressionBombError:
        raise DataError(path, _too_large()) from None
    except PIL_ERRORS as error:
        raise DataError(path, f"{problem} ({error})") from None


def _too_large() -> str:
    limit = (Image.MAX_IMAGE_PIXELS or 0) * 2 // 1_000_000
    if limit >= SLIDE_MAX_PIXELS // 1_000_000:
        return f"the image is over the {limit}-megapixel cap of sliding-window prediction"
    return (
        f"the image is over the {limit}-megapixel limit for reading it whole; predict it with "
        f"--mode slide --tile H W (up to {SLIDE_MAX_PIXELS // 1_000_000} megapixels)"
    )


@contextmanager
def pixel_limit(pixels: int) -> Iterator[None]:
    """Let PIL open images of up to `pixels` (its own guard stops at 2 x MAX_IMAGE_PIXELS)."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max(saved or 0, pixels // 2)
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image from its header only (labelme JSON: imageHeight/imageWidth)."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        data = read_labelme(path)
        return int(data["imageHeight"]), int(data["imageWidth"])
    with _pil_errors(path, "cannot read image header"), Image.open(path) as image:
        width, height = image.size
    return height, width


def read_labelme(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(path, f"not a readable labelme JSON file ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        raise DataError(path, "not a labelme file (no 'shapes' list)")
    return data


def _labelme_image(path: Path) -> Image.Image:
    data = read_labelme(path)
    image_path = path.parent / str(data.get("imagePath") or "")
    if data.get("imagePath") and image_path.is_file():
        return open_image(image_path)
    if not data.get("imageData"):
        raise DataError(path, "labelme file has no imageData and its imagePath does not exist")
    try:
        with Image.open(io.BytesIO(base64.b64decode(data["imageData"]))) as image:
            image.load()
            return image.copy()
    except (PIL_ERRORS, base64.binascii.Error) as error:
        raise DataError(path, f"cannot decode the embedded imageData ({error})") from None


def read_raw(path: Path, mask_format: str) -> np.ndarray:
    """The values stored in a mask file, before any class mapping: (H, W) for every format
    except "rgb", which gives (H, W, 3) uint8. labelme files are not raw arrays: use
    rasterize_labelme."""
    path = Path(path)
    if mask_format == "npy":
        return _read_npy(path)
    image = open_image(path)
    if mask_format == "rgb":
        return np.asarray(image.convert("RGB"))
    if mask_format == "palette" and image.mode not in ("P", "L"):
        raise DataError(path, f"expected a palette (P mode) PNG, found mode {image.mode}")
    if image.mode in ("RGB", "RGBA"):
        rgb = np.asarray(image.convert("RGB"))
        if not (
            np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
        ):
            raise DataError(path, f"{mask_format} mask is a colour image; use mask format 'rgb'")
        return rgb[..., 0]
    if image.mode in ("LA", "PA"):
        image = image.getchannel(0)
    return np.asarray(image)


def _read_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except (OSError, ValueError, EOFError) as error:
        raise DataError(path, f"cannot load .npy array ({error})") from None
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
        array = array.reshape(array.shape[0], -1) if array.shape[-1] == 1 else array[0]
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
        raise DataError(
            path, f"expected a 2-D integer label array, got {array.dtype} {array.shape}"
        )
    return array
