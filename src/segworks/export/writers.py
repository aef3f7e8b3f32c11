"""Writing ONNX and TorchScript files, and running them back for the parity check.

Both writers trace with tracer warnings sent to the debug log (`_quiet`) and with
F.max_unpool2d swapped for a traceable scatter (`_traceable_unpool`). The segworks metadata goes
under METADATA_KEY in the ONNX model's metadata_props (TorchScript: the extra file
"segworks.json").
"""

from __future__ import annotations

import inspect
import json
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

METADATA_KEY = "segworks"
# torch >= 2.9 defaults to the dynamo exporter (needs onnxscript); older ones lack the flag.
_CLASSIC_EXPORTER = (
    {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
)


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
