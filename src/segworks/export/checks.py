"""The parity check of an export (exported outputs vs the eager PyTorch wrapper), and its
check inputs: a deterministic sample image at the export size and at a second size."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from segworks.errors import SegworksError

log = logging.getLogger(__name__)

DEFAULT_TOLERANCE = 1e-3


class ParityError(RuntimeError):
    """The exported model disagrees with PyTorch beyond the tolerance; `.report` has the numbers."""

    def __init__(self, message: str, report: dict[str, Any]):
        super().__init__(message)
        self.report = report


def sample_image(size: tuple[int, int], *, seed: int = 0) -> np.ndarray:
    """A deterministic uint8 (H, W, 3) test picture: smooth gradients, a disc and a bar."""
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack(
        [xx / max(width - 1, 1), yy / max(height - 1, 1), 0.5 + 0.5 * np.sin(xx / 5 + yy / 7)],
        axis=-1,
    )
    disc = (yy - height * 0.4) ** 2 + (xx - width * 0.6) ** 2 < (min(height, width) * 0.2) ** 2
    image[disc] = (0.9, 0.1, 0.2)
    image[int(height * 0.7) : int(height * 0.8), int(width * 0.1) : int(width * 0.5)] = 0.05
    noise = np.random.default_rng(seed).normal(0, 0.03, image.shape)
    return (np.clip(image + noise, 0, 1) * 255).round().astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# parity


def _parity(
    wrapper: nn.Module, run, inputs: list[Tensor], *, tolerance: float, argmax: bool
) -> dict[str, Any]:
    checks = [_check_one(wrapper, run, x, tolerance=tolerance, argmax=argmax) for x in inputs]
    return {
        "passed": all(c["passed"] for c in checks),
        "max_abs_logit_diff": max(c["max_abs_logit_diff"] for c in checks),
        "argmax_mismatch_pixels": sum(c["argmax_mismatch_pixels"] for c in checks),
        "argmax_near_tie_pixels": sum(c["argmax_near_tie_pixels"] for c in checks),
        "tolerance": tolerance,
        "checks": checks,
    }


def _check_one(wrapper: nn.Module, run, x: Tensor, *, tolerance: float, argmax: bool) -> dict:
    with torch.no_grad():
        reference = wrapper(x)
    ref_logits = (reference[1] if argmax else reference).numpy()
    outputs = run(x)
    got_logits = outputs[-1]
    if got_logits.shape != ref_logits.shape:
        return _shape_failure(x, ref_logits.shape, got_logits.shape)
    diff = float(np.abs(got_logits.astype(np.float64) - ref_logits).max())
    scale = max(1.0, float(np.abs(ref_logits).max()))
    ref_labels = reference[0].numpy() if argmax else _labels(ref_logits)
    got_labels = outputs[0] if argmax else _labels(got_logits)
    mismatch = ref_labels != got_labels
    near_tie = _margin(ref_logits) <= 2 * diff
    unexplained = int((mismatch & ~near_tie).sum())
    return {
        "input_shape": list(x.shape),
        "input_dtype": str(x.dtype).replace("torch.", ""),
        "max_abs_logit_diff": diff,
        "max_abs_logit": scale,
        "argmax_mismatch_pixels": int(mismatch.sum()),
        "argmax_near_tie_pixels": int((mismatch & near_tie).sum()),
        "pixels": int(mismatch.size),
        "passed": diff <= tolerance * scale and unexplained == 0,
    }


def _shape_failure(x: Tensor, expected: tuple, got: tuple) -> dict:
    log.error("exported model returned logits %s for input %s; expected %s", got, x.shape, expected)
    return {
        "input_shape": list(x.shape),
        "error": f"logits shape {list(got)}, expected {list(expected)}",
        "max_abs_logit_diff": float("inf"),
        "argmax_mismatch_pixels": 0,
        "argmax_near_tie_pixels": 0,
        "passed": False,
    }


def _labels(logits: np.ndarray) -> np.ndarray:
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).astype(np.int64)
    return logits.argmax(axis=1)


def _margin(logits: np.ndarray) -> np.ndarray:
    """Distance of each pixel's decision from a tie: top-1 minus top-2 logit (|logit| if binary)."""
    if logits.shape[1] == 1:
        return np.abs(logits[:, 0])
    top2 = np.partition(logits, -2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def _failure_text(report: dict) -> str:
    problems = []
    for check in report["checks"]:
        if check.get("error"):
            problems.append(f"input {check['input_shape']}: {check['error']}")
        elif not check["passed"]:
            problems.append(
                f"input {check['input_shape']}: max abs logit diff {check['max_abs_logit_diff']:.3g}"
                f" (allowed {report['tolerance'] * check['max_abs_logit']:.3g}), "
                f"{check['argmax_mismatch_pixels']} of {check['pixels']} labels differ"
            )
    return f"{report['format']} export does not match PyTorch: " + "; ".join(problems)


# ---------------------------------------------------------------------------------------------
# inputs


def _check_size(size: Sequence[int]) -> None:
    if len(size) != 2 or any(int(v) < 8 for v in size):
        raise SegworksError(f"size must be (height, width) with both >= 8, got {tuple(size)}")


def _check_sample(sample: np.ndarray) -> np.ndarray:
    sample = np.asarray(sample)
    if sample.dtype != np.uint8 or sample.ndim != 3 or sample.shape[2] != 3:
        raise ValueError(
            f"sample must be a uint8 (H, W, 3) image, got {sample.dtype} {sample.shape}"
        )
    return sample


def _check_images(
    size: Sequence[int], sample: np.ndarray | None, *, another_size: bool
) -> list[np.ndarray]:
    """The sample at the export size (also the trace input), and at a second size if asked:
    the sample's own size when it differs, else `_other_size(size)`."""
    size = (int(size[0]), int(size[1]))
    image = sample_image(size) if sample is None else _check_sample(sample)
    images = [_resize_uint8(image, size)]
    if another_size:
        own = tuple(image.shape[:2])
        images.append(image if own != size else _resize_uint8(image, _other_size(size)))
    return images


def _other_size(size: Sequence[int]) -> tuple[int, int]:
    """A second check size, different from the trace size in both dimensions and odd, so that
    a pad to a multiple of the stride that the trace skipped at the example size shows."""
    height, width = int(size[0]) + 21, int(size[1]) + 35
    return height | 1, width | 1


def _resize_uint8(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if tuple(image.shape[:2]) == tuple(size):
        return image
    from PIL import Image

    resized = Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(resized)
