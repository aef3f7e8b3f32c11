"""The PNGs of one semantic or binary prediction, at the input's original size.

    semantic  <stem>_index.png    'P' PNG: pixel values are class indices, palette = class colours
              <stem>_color.png    the class colours as RGB
              <stem>_overlay.png  the colours alpha-blended over the photo, with a legend of the
                                  classes present on a panel at the right (legend=False: none)
    binary    <stem>_prob.png     foreground probability, 0..255
              <stem>_mask.png     the predicted foreground: 0 / 255
              <stem>_overlay.png  the foreground blended over the photo

`meta` needs task, palette and class_names; a prediction needs labels (H, W) and, binary, prob.
numpy and PIL only: `predict --onnx` writes through it without torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from segworks import IGNORE_INDEX, visualize
from segworks.fileio import save_image

__all__ = ["Writer"]


class Writer:
    """Writes the PNGs of one prediction (see the module docstring)."""

    def __init__(self, out_dir: Path, meta, *, alpha: float, legend: bool):
        self.out_dir = out_dir
        self.meta = meta
        self.alpha = alpha
        self.legend = legend

    def write(self, stem: Path, image, prediction) -> None:
        base = self.out_dir / stem
        files = {"overlay": self.overlay(image, prediction, legend=self.legend)}
        if self.meta.task == "binary":
            files["prob"] = visualize.probability_image(prediction.prob)
            files["mask"] = Image.fromarray(prediction.labels * 255)
        else:
            files["index"] = visualize.index_image(prediction.labels, self.meta.palette)
            files["color"] = visualize.colorize(prediction.labels, self.meta.palette)
        for kind, picture in files.items():
            save_image(picture, base.with_name(f"{base.name}_{kind}.png"))

    def overlay(self, image, prediction, *, legend: bool):
        """Binary: only the foreground is coloured (background shows the photo unchanged)."""
        labels = prediction.labels
        if self.meta.task == "binary":
            labels = np.where(labels == 1, 1, IGNORE_INDEX).astype(np.uint8)
        return visualize.overlay(
            image,
            labels,
            self.meta.palette,
            class_names=self.meta.class_names,
            alpha=self.alpha,
            legend=legend,
        )
