"""Predict image files with a `Predictor` and write each through a `Writer`.

Images of the same model-input size (all of them, with a fixed size) go through the model
`batch_size` at a time; in slide mode each image is alone and windows are batched instead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import nullcontext
from typing import Any

from tqdm import tqdm

from segworks.data.reading import SLIDE_MAX_PIXELS, image_size, open_image, pixel_limit
from segworks.errors import DataError
from segworks.inference.inputs import InputItem
from segworks.inference.writer import Writer

__all__ = ["large_images", "predict_images"]

log = logging.getLogger(__name__)


def large_images(mode: str):
    """Sliding-window prediction is for large images: PIL's 179-megapixel guard is raised."""
    return pixel_limit(SLIDE_MAX_PIXELS) if mode == "slide" else nullcontext()


def predict_images(
    predictor, items: list[InputItem], writer: Writer, *, batch_size: int, skip_bad: bool
) -> int:
    """Predict and write every image; the number written (unreadable ones skipped with
    `skip_bad`, else they raise DataError)."""
    batches = list(_batches(predictor, items, batch_size, skip_bad))
    done = 0
    with tqdm(total=sum(len(b) for b in batches), desc="predict", unit="img") as bar:
        for batch in batches:
            loaded = [(item, image) for item in batch if (image := _load(item, skip_bad))]
            if loaded:
                predictions = predictor.predict_batch([image for _, image in loaded])
                for (item, image), prediction in zip(loaded, predictions):
                    writer.write(item.out_stem, image, prediction)
                done += len(loaded)
            bar.update(len(batch))
    return done


def _batches(predictor, items, batch_size: int, skip_bad: bool) -> Iterator[list[InputItem]]:
    """Items grouped by the size the model sees, in chunks of `batch_size`."""
    options = predictor.options
    groups: dict[Any, list[InputItem]] = {}
    for index, item in enumerate(items):
        try:
            size = image_size(item.path)
        except DataError as error:
            if not skip_bad:
                raise
            log.warning("skipping %s", error)
            continue
        if options.mode == "slide":
            key = ("single", index)  # windows are batched instead
        else:
            key = options.size or size
        groups.setdefault(key, []).append(item)
    for group in groups.values():
        for start in range(0, len(group), batch_size):
            yield group[start : start + batch_size]


def _load(item: InputItem, skip_bad: bool):
    try:
        return open_image(item.path).convert("RGB")
    except DataError as error:
        if not skip_bad:
            raise
        log.warning("skipping %s", error)
        return None
