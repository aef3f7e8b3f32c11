"""Export of a semantic model: `ExportWrapper` and `export_model` (see the package doc)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segworks.data.meta import IMAGENET_MEAN, IMAGENET_STD
from segworks.errors import SegworksError
from segworks.export.checks import (
    DEFAULT_TOLERANCE,
    ParityError,
    _check_images,
    _check_size,
    _failure_text,
    _parity,
)
from segworks.export.writers import (
    _onnx_runner,
    _torchscript_runner,
    _write_onnx,
    _write_torchscript,
)
from segworks.fileio import atomic_path

FORMATS = ("onnx", "torchscript")


class ExportWrapper(nn.Module):
    """A semantic model plus optional uint8 normalisation, resize and argmax (see module doc)."""

    def __init__(
        self,
        model: nn.Module,
        *,
        size: tuple[int, int],
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        include_normalize: bool = False,
        include_resize: bool = False,
        include_argmax: bool = False,
        input_layout: str = "nchw",
    ):
        super().__init__()
        if input_layout not in ("nchw", "nhwc"):
            raise SegworksError(f"input_layout must be 'nchw' or 'nhwc', got {input_layout!r}")
        if input_layout == "nhwc" and not include_normalize:
            raise SegworksError("input_layout='nhwc' needs include_normalize (uint8 image input)")
        self.model = model
        self.size = (int(size[0]), int(size[1]))
        self.include_normalize = include_normalize
        self.include_resize = include_resize
        self.include_argmax = include_argmax
        self.nhwc = input_layout == "nhwc"
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        if self.include_normalize:
            if self.nhwc:
                x = x.permute(0, 3, 1, 2)
            x = (x.float() / 255.0 - self.mean) / self.std
        height, width = x.shape[-2], x.shape[-1]
        if self.include_resize:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        logits = self.model(x)["out"]
        if self.include_resize:
            logits = F.interpolate(
                logits, size=(height, width), mode="bilinear", align_corners=False
            )
        if not self.include_argmax:
            return logits
        if logits.shape[1] == 1:
            labels = (logits[:, 0] > 0).long()
        else:
            labels = logits.argmax(dim=1)
        return labels, logits


def export_model(
    model: nn.Module,
    path: str | Path,
    *,
    format: str = "onnx",
    size: tuple[int, int],
    include_normalize: bool = False,
    include_resize: bool = False,
    include_argmax: bool = False,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    opset: int = 17,
    dynamic: bool = False,
    input_layout: str = "nchw",
    metadata: dict[str, Any] | None = None,
    sample: np.ndarray | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> dict[str, Any]:
    """Export a semantic model, check it against PyTorch, and return the parity report.

    `size` is the (H, W) the model runs at (the trace size; with include_resize every input is
    resized to it). `dynamic` makes batch, height and width dynamic axes (always so for
    TorchScript). `metadata` (class
    names, palette, task, ...) is stored in the file. `sample` is an optional uint8 (H, W, 3)
    image for the check; by default a synthetic one is drawn. Raises ParityError on mismatch.
    """
    if format not in FORMATS:
        raise SegworksError(f"format must be one of {FORMATS}, got {format!r}")
    _check_size(size)
    dynamic = dynamic or format == "torchscript"  # a trace takes any size (see module doc)
    if dynamic and not include_resize:
        _check_size_agnostic(model, format)
    wrapper = ExportWrapper(
        model.eval(),
        size=size,
        mean=mean,
        std=std,
        include_normalize=include_normalize,
        include_resize=include_resize,
        include_argmax=include_argmax,
        input_layout=input_layout,
    ).eval()
    options = {
        "size": [int(size[0]), int(size[1])],
        "include_normalize": include_normalize,
        "include_resize": include_resize,
        "include_argmax": include_argmax,
        "input_layout": input_layout,
        "dynamic": dynamic or include_resize,
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "input_name": "image",
        "output_names": ["labels", "logits"] if include_argmax else ["logits"],
    }
    info = {**(metadata or {}), **options}
    inputs = [
        _wrapper_input(image, wrapper)
        for image in _check_images(size, sample, another_size=include_resize or dynamic)
    ]
    started = time.perf_counter()
    path = Path(path)
    with atomic_path(path) as tmp:
        if format == "onnx":
            _write_onnx(wrapper, inputs[0], tmp, opset=opset, dynamic=dynamic, info=info)
            run = _onnx_runner(tmp)
        else:
            _write_torchscript(wrapper, inputs[0], tmp, info=info)
            run = _torchscript_runner(tmp)
        report = _parity(wrapper, run, inputs, tolerance=tolerance, argmax=include_argmax)
        report.update(
            format=format,
            path=str(path),
            opset=opset if format == "onnx" else None,
            export_seconds=round(time.perf_counter() - started, 2),
            torch=torch.__version__,
            **{k: options[k] for k in ("size", "include_normalize", "include_resize")},
            include_argmax=include_argmax,
            dynamic=options["dynamic"],
        )
        if not report["passed"]:
            raise ParityError(_failure_text(report), report)
    return report


def _check_size_agnostic(model: nn.Module, format: str) -> None:
    """Refuse a model whose traced graph would only work at the example size."""
    reason = getattr(model, "fixed_size_trace", None)
    if reason:
        raise SegworksError(
            f"{type(model).__name__} cannot be exported for any input size ({reason}); "
            f"export it with --resize, so that the {format} graph resizes every input to --size"
        )


def _wrapper_input(image: np.ndarray, wrapper: ExportWrapper) -> Tensor:
    """The batch of one the wrapper expects for this uint8 (H, W, 3) image."""
    x = torch.from_numpy(np.array(image, dtype=np.uint8))[None]  # (1, H, W, 3), a copy
    if wrapper.include_normalize:
        return x if wrapper.nhwc else x.permute(0, 3, 1, 2).contiguous()
    x = x.permute(0, 3, 1, 2).float() / 255.0
    return ((x - wrapper.mean) / wrapper.std).contiguous()
