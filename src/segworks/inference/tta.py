"""Test-time augmentation: horizontal flip and multi-scale, logits averaged.

A *forward* here is any callable mapping a float batch ``(N, C, h, w)`` to logits
``(N, K, h, w)`` at the same size (`model_forward` makes one from a segworks model). `tta_forward`
wraps a forward so the sliding window can apply the same augmentation to every tile.

For every scale ``s`` the input is resized to ``round(s * h) x round(s * w)`` (bilinear), the
logits are resized back to ``h x w`` (bilinear) and, with ``flip``, the prediction of the
mirrored input is mirrored back. The result is the plain mean of the ``len(scales) * (1 + flip)``
logit maps, so with flip it is exactly mirror-equivariant: ``tta(flip(x)) == flip(tta(x))``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from segworks.errors import SegworksError

Forward = Callable[[Tensor], Tensor]

__all__ = ["Forward", "model_forward", "tta_forward", "tta_logits", "check_scales"]


def model_forward(model: nn.Module) -> Forward:
    """A forward returning ``model(x)["out"]`` (or the tensor itself), at the input's size."""

    def forward(x: Tensor) -> Tensor:
        out = model(x)
        if isinstance(out, dict):
            out = out["out"]
        if out.shape[-2:] != x.shape[-2:]:
            out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return out

    return forward


def check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    """The scales as a tuple; ValueError for an empty list or a scale that is not > 0."""
    scales = tuple(float(s) for s in scales)
    if not scales:
        raise SegworksError("TTA scales must not be empty (use 1.0 for the plain size)")
    bad = [s for s in scales if not s > 0]
    if bad:
        raise SegworksError(f"TTA scales must be > 0, got {bad}")
    return scales


def tta_logits(
    forward: Forward, x: Tensor, *, flip: bool = False, scales: Sequence[float] = (1.0,)
) -> Tensor:
    """Mean logits over the scales (and their mirror images with ``flip``), at x's size."""
    scales = check_scales(scales)
    height, width = x.shape[-2:]
    total: Tensor | None = None
    for scale in scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        scaled = x if size == (height, width) else _resize(x, size)
        views = [forward(scaled)]
        if flip:
            views.append(forward(scaled.flip(-1)).flip(-1))
        for view in views:
            view = view if size == (height, width) else _resize(view, (height, width))
            total = view.float() if total is None else total + view.float()
    return total / (len(scales) * (2 if flip else 1))


def tta_forward(
    forward: Forward, *, flip: bool = False, scales: Sequence[float] = (1.0,)
) -> Forward:
    """`forward` itself when there is nothing to augment, else its TTA-averaged version."""
    scales = check_scales(scales)
    if not flip and scales == (1.0,):
        return forward
    return lambda x: tta_logits(forward, x, flip=flip, scales=scales)


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False)
