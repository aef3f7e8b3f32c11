"""Inference at any size: whole-image or sliding-window (Gaussian-blended), with TTA.

`predict_logits` works on normalised tensors; `Predictor` on RGB images at their original size
(what `segworks eval` and `segworks predict` use). See `sliding_window` for the memory bounds.

The names below are imported on first use, so that the torch-free modules of this package
(`instances`: drawing and saving instance predictions) can be used without torch.
"""

from __future__ import annotations

from segworks import lazy_attributes

_LAZY = {
    "MODES": "segworks.inference.predictor",
    "InferenceOptions": "segworks.inference.predictor",
    "Prediction": "segworks.inference.predictor",
    "Predictor": "segworks.inference.predictor",
    "predict_logits": "segworks.inference.predictor",
    "gaussian_weights": "segworks.inference.sliding_window",
    "iter_blocks": "segworks.inference.sliding_window",
    "iter_strips": "segworks.inference.sliding_window",
    "resolve_stride": "segworks.inference.sliding_window",
    "slide_logits": "segworks.inference.sliding_window",
    "window_starts": "segworks.inference.sliding_window",
    "model_forward": "segworks.inference.tta",
    "tta_forward": "segworks.inference.tta",
    "tta_logits": "segworks.inference.tta",
}

__all__ = list(_LAZY)


__getattr__ = lazy_attributes(__name__, _LAZY)
