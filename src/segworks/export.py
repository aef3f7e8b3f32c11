"""Export segmentation models to ONNX or TorchScript, with a parity check at export time.

`export_model` wraps a semantic model in `ExportWrapper`, which can fold the pre- and
post-processing into the exported graph:

    include_normalize  input is uint8 (N, 3, H, W), or (N, H, W, 3) with input_layout="nhwc";
                       the graph divides by 255 and applies mean/std. Without it the input is
                       float32 (N, 3, H, W), already normalised.
    include_resize     the graph resizes any input to `size` (bilinear), runs the model and
                       resizes the logits back to the input size; height and width are dynamic.
    include_argmax     a first output "labels" (N, H, W) int64 is added (argmax over classes, or
                       logit > 0 for a one-channel binary model); "logits" is always an output.

The file is written to a temporary path, checked, and only then renamed into place: ONNX files
are run with ONNX Runtime, TorchScript files are loaded back with `torch.jit.load`, on a
deterministic sample image, and compared with the eager PyTorch wrapper on the same input. The
check passes when the max abs logit difference is at most `tolerance * max(1, max |logit|)` and
the labels agree at every pixel whose reference top-2 margin exceeds twice that difference (a
pixel that flips between two near-equal logits is reported, not failed). A failure raises
`ParityError` carrying the report, and nothing is written.

ONNX uses the TorchScript-based exporter (`dynamo=False`): the dynamo exporter needs the
`onnxscript` package, which segworks does not depend on, and the classic one works on
torch 2.4 .. 2.14. Class names, palette, normalisation and the wrapper's options are stored as
JSON under the "segworks" key of the ONNX model's metadata_props (TorchScript: the extra file
"segworks.json"), so `segworks predict --onnx` needs nothing else.

TorchScript files take any batch, height and width: the wrapper is traced, and the models'
size-dependent steps (pads to a multiple of the stride, crops, resizes) are written so that the
tracer records them as functions of the input size, not as the example size's constants. Every
TorchScript export is therefore checked at a second size too. A model that cannot be traced that
way sets a `fixed_size_trace` reason (the paper's U-Net); export refuses it without
include_resize, as it does ONNX with dynamic axes.

`export_instance_model` does the same for torchvision-style Mask R-CNN models (opset >= 11):
input one float32 image (3, H, W) in 0..1, outputs boxes, labels, scores, masks.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segworks.data.meta import IMAGENET_MEAN, IMAGENET_STD
from segworks.errors import SegworksError
from segworks.fileio import atomic_path

__all__ = [
    "METADATA_KEY",
    "ExportWrapper",
    "ParityError",
    "export_instance_model",
    "export_model",
    "sample_image",
]

log = logging.getLogger(__name__)

METADATA_KEY = "segworks"
FORMATS = ("onnx", "torchscript")
# torch >= 2.9 defaults to the dynamo exporter (needs onnxscript); older ones lack the flag.
_CLASSIC_EXPORTER = (
    {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
)
DEFAULT_TOLERANCE = 1e-3


class ParityError(RuntimeError):
    """The exported model disagrees with PyTorch beyond the tolerance; `.report` has the numbers."""

    def __init__(self, message: str, report: dict[str, Any]):
        super().__init__(message)
        self.report = report


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
# writers and runners


def _write_onnx(
    wrapper: nn.Module, example: Tensor, path: Path, *, opset: int, dynamic: bool, info: dict
) -> None:
    import onnx

    outputs = info["output_names"]
    axes = _dynamic_axes(info, dynamic)
    with _quiet(), _traceable_unpool():
        torch.onnx.export(
            wrapper,
            (example,),
            str(path),
            input_names=[info["input_name"]],
            output_names=outputs,
            opset_version=opset,
            dynamic_axes=axes or None,
            do_constant_folding=True,
            **_CLASSIC_EXPORTER,
        )
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = json.dumps(info)
    proto.producer_name = "segworks"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def _dynamic_axes(info: dict, dynamic: bool) -> dict[str, dict[int, str]]:
    spatial = dynamic or info["include_resize"]
    if not spatial:
        return {}
    in_axes = {2: "height", 3: "width"}
    if info["input_layout"] == "nhwc":
        in_axes = {1: "height", 2: "width"}
    if dynamic:
        in_axes[0] = "batch"
    axes = {info["input_name"]: in_axes}
    axes["logits"] = {2: "height", 3: "width", **({0: "batch"} if dynamic else {})}
    if "labels" in info["output_names"]:
        axes["labels"] = {1: "height", 2: "width", **({0: "batch"} if dynamic else {})}
    return axes


def _write_torchscript(wrapper: nn.Module, example: Tensor, path: Path, *, info: dict) -> None:
    with _quiet(), _traceable_unpool(), torch.no_grad():
        traced = torch.jit.trace(wrapper, (example,), check_trace=False, strict=False)
        torch.jit.save(traced, str(path), _extra_files={"segworks.json": json.dumps(info)})


def _onnx_runner(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: Tensor) -> list[np.ndarray]:
        return session.run(None, {name: x.numpy()})

    return run


def _torchscript_runner(path: Path):
    with _quiet():
        loaded = torch.jit.load(str(path), map_location="cpu").eval()

    def run(x: Tensor) -> list[np.ndarray]:
        with torch.no_grad(), _quiet():
            out = loaded(x)
        return [t.numpy() for t in (out if isinstance(out, tuple | list) else (out,))]

    return run


class _quiet(warnings.catch_warnings):
    """Exporter deprecation and tracer warnings go to the debug log instead of the terminal."""

    def __init__(self):
        super().__init__(record=True)

    def __enter__(self):
        self._caught = super().__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        for warning in self._caught:
            log.debug("export warning: %s", warning.message)
        return super().__exit__(*exc)


@contextmanager
def _traceable_unpool() -> Iterator[None]:
    """Swap F.max_unpool2d for an equivalent scatter while tracing (SegNet's decoder needs it).

    Two reasons: torch 2.14's max_unpool2d cannot be traced at all (its output-size check calls
    `torch._check_value` on a traced size and raises TypeError), and the classic ONNX exporter
    has no symbolic for aten::max_unpool2d. A scatter into a zero plane at the pooling indices
    is the same function and exports as ScatterElements. The parity check runs the original.
    """
    original = F.max_unpool2d
    F.max_unpool2d = _max_unpool2d_scatter
    try:
        yield
    finally:
        F.max_unpool2d = original


def _max_unpool2d_scatter(
    x: Tensor, indices: Tensor, kernel_size, stride=None, padding=0, output_size=None
) -> Tensor:
    kernel, step, pad = _pair(kernel_size), _pair(stride or kernel_size), _pair(padding)
    n, c, height, width = x.shape
    if output_size is not None:
        out_h, out_w = output_size[-2], output_size[-1]
    else:
        out_h = (height - 1) * step[0] + kernel[0] - 2 * pad[0]
        out_w = (width - 1) * step[1] + kernel[1] - 2 * pad[1]
    plane = x.new_zeros(n, c, out_h * out_w)
    plane = plane.scatter(2, indices.reshape(n, c, -1), x.reshape(n, c, -1))
    return plane.reshape(n, c, out_h, out_w)


def _pair(value) -> tuple:
    return tuple(value) if isinstance(value, list | tuple) else (value, value)


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


def _wrapper_input(image: np.ndarray, wrapper: ExportWrapper) -> Tensor:
    """The batch of one the wrapper expects for this uint8 (H, W, 3) image."""
    x = torch.from_numpy(np.array(image, dtype=np.uint8))[None]  # (1, H, W, 3), a copy
    if wrapper.include_normalize:
        return x if wrapper.nhwc else x.permute(0, 3, 1, 2).contiguous()
    x = x.permute(0, 3, 1, 2).float() / 255.0
    return ((x - wrapper.mean) / wrapper.std).contiguous()


# ---------------------------------------------------------------------------------------------
# Mask R-CNN


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
