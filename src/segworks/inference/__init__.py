"""Inference at any size: whole-image or sliding-window (Gaussian-blended), with TTA.

`predict_logits` works on normalised tensors; `Predictor` on RGB images at their original size
(what `segworks eval` and `segworks predict` use). See `sliding_window` for the memory bounds.
"""

from segworks.inference.predictor import (
    MODES,
    InferenceOptions,
    Prediction,
    Predictor,
    predict_logits,
)
from segworks.inference.sliding_window import (
    gaussian_weights,
    iter_blocks,
    iter_strips,
    resolve_stride,
    slide_logits,
    window_starts,
)
from segworks.inference.tta import model_forward, tta_forward, tta_logits

__all__ = [
    "MODES",
    "InferenceOptions",
    "Prediction",
    "Predictor",
    "predict_logits",
    "gaussian_weights",
    "iter_blocks",
    "iter_strips",
    "resolve_stride",
    "slide_logits",
    "window_starts",
    "model_forward",
    "tta_forward",
    "tta_logits",
]
