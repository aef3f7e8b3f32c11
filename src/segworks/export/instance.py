"""Export of a torchvision-style Mask R-CNN to ONNX, with a parity check on its detections."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from segworks.errors import SegworksError
from segworks.export.checks import DEFAULT_TOLERANCE, ParityError, _check_images, _check_size
from segworks.export.writers import _CLASSIC_EXPORTER, METADATA_KEY, _onnx_runner, _quiet
from segworks.fileio import atomic_path


class InstanceExportWrapper(nn.Module):
    """A torchvision detection model on one float image (3, H, W) in 0..1 -> four tensors."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        result = self.model([image])[0]
        return result["boxes"], result["labels"], result["scores"], result["masks"]


def export_instance_model(
    model: nn.Module,
    path: str | Path,
    *,
    size: tuple[int, int],
    opset: int = 11,
    metadata: dict[str, Any] | None = None,
    sample: np.ndarray | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> dict[str, Any]:
    """Export a torchvision-style Mask R-CNN to ONNX and compare its detections with PyTorch.

    Height and width are dynamic. The check runs ONNX Runtime and PyTorch on the sample and on
    a second size; it passes when both find the same number of detections with the same labels
    and boxes, scores and mask probabilities agree within `tolerance` (relative to the box
    coordinate scale for boxes). Raises ParityError otherwise.
    """
    if opset < 11:
        raise SegworksError(f"Mask R-CNN needs ONNX opset >= 11, got {opset}")
    _check_size(size)
    wrapper = InstanceExportWrapper(model.eval()).eval()
    inputs = [_instance_input(image) for image in _check_images(size, sample, another_size=True)]
    outputs = ["boxes", "labels", "scores", "masks"]
    info = {
        **(metadata or {}),
        "task": "instance",
        "input_name": "image",
        "output_names": outputs,
        "size": [int(size[0]), int(size[1])],
    }
    axes = {"image": {1: "height", 2: "width"}, "boxes": {0: "n"}, "labels": {0: "n"}}
    axes |= {"scores": {0: "n"}, "masks": {0: "n", 2: "height", 3: "width"}}
    started = time.perf_counter()
    path = Path(path)
    with atomic_path(path) as tmp:
        _export_detector(wrapper, inputs[0], tmp, opset=opset, axes=axes, info=info)
        run = _onnx_runner(tmp)
        checks = [_check_instances(wrapper, run, x, tolerance) for x in inputs]
        report = {
            "format": "onnx",
            "path": str(path),
            "opset": opset,
            "passed": all(c["passed"] for c in checks),
            "tolerance": tolerance,
            "checks": checks,
            "export_seconds": round(time.perf_counter() - started, 2),
            "torch": torch.__version__,
        }
        if not report["passed"]:
            raise ParityError(f"Mask R-CNN ONNX export does not match PyTorch: {checks}", report)
    return report


def _export_detector(
    wrapper: nn.Module, example: Tensor, path: Path, *, opset: int, axes: dict, info: dict
) -> None:
    import onnx

    with _quiet():
        torch.onnx.export(
            wrapper,
            (example,),
            str(path),
            input_names=["image"],
            output_names=info["output_names"],
            opset_version=opset,
            dynamic_axes=axes,
            do_constant_folding=True,
            **_CLASSIC_EXPORTER,
        )
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = json.dumps(info)
    onnx.save(proto, str(path))


def _instance_input(image: np.ndarray) -> Tensor:
    return torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1) / 255.0


def _check_instances(wrapper: nn.Module, run, x: Tensor, tolerance: float) -> dict:
    with torch.no_grad():
        reference = [t.numpy() for t in wrapper(x)]
    got = run(x)
    check = {"input_shape": list(x.shape), "detections": int(reference[0].shape[0])}
    check["onnx_detections"] = int(got[0].shape[0])
    if got[0].shape[0] != reference[0].shape[0]:
        return {**check, "passed": False, "error": "different number of detections"}
    if reference[0].shape[0] == 0:
        return {**check, "passed": True}
    box_scale = max(1.0, float(np.abs(reference[0]).max()))
    diffs = {
        "boxes": float(np.abs(got[0] - reference[0]).max()),
        "scores": float(np.abs(got[2] - reference[2]).max()),
        "masks": float(np.abs(got[3] - reference[3]).max()),
    }
    same_labels = bool(np.array_equal(got[1], reference[1]))
    passed = (
        same_labels
        and diffs["boxes"] <= tolerance * box_scale
        and diffs["scores"] <= tolerance
        and diffs["masks"] <= 10 * tolerance
    )
    return {
        **check,
        "same_labels": same_labels,
        **{f"max_abs_{k}_diff": v for k, v in diffs.items()},
        "passed": passed,
    }
