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

from segworks.export.checks import ParityError, sample_image
from segworks.export.instance import export_instance_model
from segworks.export.semantic import ExportWrapper, export_model
from segworks.export.writers import METADATA_KEY

__all__ = [
    "METADATA_KEY",
    "ExportWrapper",
    "ParityError",
    "export_instance_model",
    "export_model",
    "sample_image",
]
