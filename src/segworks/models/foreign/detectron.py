"""Detectron (Caffe2) pickles -> segworks ResNet encoders and Mask R-CNN.

A Detectron weight file is a pickled dict of numpy arrays with Caffe2 names (`model_final.pkl`
wraps it as {"blobs": {...}, "cfg": ...}). Only numpy arrays are unpickled: any other object in
the file is refused, so a weight file cannot run code. BatchNorm is stored folded into an affine
scale and bias (`_bn_s`, `_bn_b`); it becomes a BatchNorm with mean 0 and variance 1 - eps, the
same function. The convolutions are the MSRA ResNet's (stride in the first 1x1 of a stage), so
the import builds the model with `caffe_stride=True`.

Name map (Detectron -> torchvision ResNet, as the seed's parser reads it):

| Detectron | segworks (torchvision names) |
|---|---|
| `conv1_w`, `res_conv1_bn_s`, `res_conv1_bn_b` | `conv1.weight`, `bn1.weight`, `bn1.bias` |
| `res{s}_{i}_branch2{a,b,c}_w` (s = 2..5) | `layer{s-1}.{i}.conv{1,2,3}.weight` |
| `res{s}_{i}_branch2{a,b,c}_bn_s`, `_bn_b` | `layer{s-1}.{i}.bn{1,2,3}.weight`, `.bias` |
| `res{s}_0_branch1_w`, `_bn_s`, `_bn_b` | `layer{s-1}.0.downsample.0.weight`, `.downsample.1.*` |

Mask R-CNN adds (C4: trunk under `backbone.`, res5 under `roi_heads.box_head.res5.`; FPN: the
ResNet under `backbone.body.`):

| Detectron | segworks |
|---|---|
| `conv_rpn[_fpn2]`, `rpn_cls_logits[_fpn2]`, `rpn_bbox_pred[_fpn2]` | `rpn.head.conv.0.0`, `rpn.head.cls_logits`, `rpn.head.bbox_pred` |
| `cls_score`, `bbox_pred` | `roi_heads.box_predictor.cls_score`, `.bbox_pred` |
| `conv5_mask`, `mask_fcn_logits` | `roi_heads.mask_predictor.conv5_mask`, `.mask_fcn_logits` |
| `fc6`, `fc7` (FPN) | `roi_heads.box_head.fc6`, `.fc7` |
| `_[mask]_fcn{1..4}` (FPN) | `roi_heads.mask_head.{0..3}.0` |
| `fpn_inner_res5_{i}_sum`, `fpn_inner_res{s}_{i}_sum_lateral` | `backbone.fpn.inner_blocks.{s-2}.0` |
| `fpn_res{s}_{i}_sum` | `backbone.fpn.layer_blocks.{s-2}.0` |

`_w` -> weight, `_b` -> bias. Detectron feeds BGR images minus its pixel means (102.98, 115.95,
122.77) without scaling; the import reverses conv1's input channels so the model takes RGB, and
sets the Mask R-CNN's `image_mean`/`image_std` to those means on the 0..1 scale and 1/255.
Ignored, with the reason: `*_momentum` (SGD state), `fc1000_*` (the ImageNet classifier).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from segworks.errors import DataError
from segworks.models.foreign.common import ImportReport, as_tensor, fill_model

__all__ = ["detectron_key", "import_detectron", "read_pkl", "to_detectron"]

DETECTRON_BGR_MEAN = (102.9801, 115.9465, 122.7717)
BN_EPS = 1e-5
ENCODERS = ("resnet50", "resnet101")
MASK_RCNNS = ("maskrcnn_r50_c4", "maskrcnn_r101_c4", "maskrcnn_r50_fpn", "maskrcnn_r101_fpn")
_BRANCH = {"branch2a": "conv1", "branch2b": "conv2", "branch2c": "conv3"}
_HEADS = {
    "conv_rpn": "rpn.head.conv.0.0",
    "rpn_cls_logits": "rpn.head.cls_logits",
    "rpn_bbox_pred": "rpn.head.bbox_pred",
    "cls_score": "roi_heads.box_predictor.cls_score",
    "bbox_pred": "roi_heads.box_predictor.bbox_pred",
    "conv5_mask": "roi_heads.mask_predictor.conv5_mask",
    "mask_fcn_logits": "roi_heads.mask_predictor.mask_fcn_logits",
    "fc6": "roi_heads.box_head.fc6",
    "fc7": "roi_heads.box_head.fc7",
}
_HEADS |= {f"_[mask]_fcn{i}": f"roi_heads.mask_head.{i - 1}.0" for i in range(1, 5)}
_HEADS |= {f"{name}_fpn2": target for name, target in list(_HEADS.items())[:3]}
_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("collections", "OrderedDict"),
}


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (not a numpy array)")
        return super().find_class(module, name)


def read_pkl(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a Detectron pickle by name (the "blobs" entry when there is one)."""
    try:
        with open(path, "rb") as handle:
            data = _ArraysOnly(handle, encoding="latin1").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as error:
        raise DataError(path, f"not a readable Detectron pickle ({error})") from error
    if isinstance(data, dict) and isinstance(data.get("blobs"), dict):
        data = data["blobs"]
    if not isinstance(data, dict):
        raise DataError(path, f"expected a dict of arrays, got {type(data).__name__}")
    return data


def _resnet_key(name: str) -> str | None:
    """torchvision ResNet key of a Detectron body blob, or None."""
    if name == "conv1_w":
        return "conv1.weight"
    bn = {"s": "weight", "b": "bias"}
    if name in ("res_conv1_bn_s", "res_conv1_bn_b"):
        return f"bn1.{bn[name[-1]]}"
    match = re.fullmatch(r"res([2-5])_(\d+)_(branch2[abc]|branch1)(_bn_s|_bn_b|_w)", name)
    if match is None:
        return None
    stage, block, branch, kind = match.groups()
    prefix = f"layer{int(stage) - 1}.{int(block)}"
    if branch == "branch1":
        module = "downsample.0" if kind == "_w" else "downsample.1"
    else:
        module = _BRANCH[branch] if kind == "_w" else _BRANCH[branch].replace("conv", "bn")
    return f"{prefix}.{module}.{'weight' if kind == '_w' else bn[kind[-1]]}"


def _fpn_key(name: str) -> str | None:
    match = re.fullmatch(r"fpn_(inner_)?res([2-5])_\d+_sum(_lateral)?_([wb])", name)
    if match is None:
        return None
    inner, stage, _, kind = match.groups()
    blocks = "inner_blocks" if inner else "layer_blocks"
    return f"backbone.fpn.{blocks}.{int(stage) - 2}.0.{'weight' if kind == 'w' else 'bias'}"


def detectron_key(name: str, model: str) -> str | None:
    """The segworks key of one Detectron blob for `model` (an encoder or a Mask R-CNN)."""
    body = _resnet_key(name)
    if body is not None:
        if model in ENCODERS:
            return body
        if "fpn" in model:
            return f"backbone.body.{body}"
        if body.startswith("layer4."):
            return f"roi_heads.box_head.res5.{body.removeprefix('layer4.')}"
        return f"backbone.{body}"
    if model in ENCODERS:
        return None
    head, _, kind = name.rpartition("_")
    if head in _HEADS and kind in ("w", "b"):
        return f"{_HEADS[head]}.{'weight' if kind == 'w' else 'bias'}"
    return _fpn_key(name) if "fpn" in model else None


def _ignore_reason(name: str, value: Any) -> str:
    if not isinstance(value, np.ndarray):
        return f"not an array ({type(value).__name__})"
    if name.endswith("_momentum"):
        return "SGD momentum buffer (optimizer state)"
    if name.startswith("fc1000"):
        return "the ImageNet classifier; segworks encoders end at res5"
    return "no counterpart in the segworks model"


def _convert(blobs: dict[str, Any], model: str, report: ImportReport) -> dict[str, Tensor]:
    state = {}
    for name, value in sorted(blobs.items()):
        target = detectron_key(name, model) if isinstance(value, np.ndarray) else None
        if target is None:
            report.ignore(name, _ignore_reason(name, value))
            continue
        tensor = as_tensor(value.astype(np.float32))
        if name == "conv1_w":
            tensor = tensor.flip(1)  # BGR -> RGB input channels
        state[target] = tensor
        report.mapped.append((name, target))
        if name.endswith("_bn_s"):  # the folded BN's statistics: mean 0, variance 1 - eps
            module = target.rpartition(".")[0]
            state[f"{module}.running_mean"] = torch.zeros_like(tensor)
            state[f"{module}.running_var"] = torch.full_like(tensor, 1 - BN_EPS)
    return state


def to_detectron(state: dict[str, Tensor], model: str) -> dict[str, np.ndarray]:
    """The inverse: a segworks/torchvision state dict as Detectron blobs (BN folded, conv1 BGR).

    For tests and for exporting back; keys without a Detectron name are left out."""
    blobs = {}
    for key, name in _inverse_names(set(state), model).items():
        value = state[key].detach().float()
        module, _, kind = key.rpartition(".")
        if name.endswith(("_bn_s", "_bn_b")):
            scale = state[f"{module}.weight"] / torch.sqrt(state[f"{module}.running_var"] + BN_EPS)
            value = (
                scale if name.endswith("_s") else value - state[f"{module}.running_mean"] * scale
            )
        if name == "conv1_w":
            value = value.flip(1)
        blobs[name] = value.numpy().copy()
    return blobs


def _inverse_names(keys: set[str], model: str) -> dict[str, str]:
    """segworks key -> Detectron name, by trying the candidate names of each key's module."""
    candidates = _candidate_names(keys)
    return {key: name for name in candidates if (key := detectron_key(name, model)) in keys}


def _candidate_names(keys: set[str]) -> list[str]:
    names = ["conv1_w", "res_conv1_bn_s", "res_conv1_bn_b"]
    for key in keys:
        match = re.search(r"(layer\d|res5)\.(\d+)\.(conv[123]|bn[123]|downsample\.[01])\.", key)
        if match:
            layer, block, module = match.groups()
            stage = 5 if layer == "res5" else int(layer[-1]) + 1
            branch = {"1": "branch2a", "2": "branch2b", "3": "branch2c"}.get(module[-1], "branch1")
            branch = "branch1" if module.startswith("downsample") else branch
            base = f"res{stage}_{block}_{branch}"
            names += [f"{base}_w", f"{base}_bn_s", f"{base}_bn_b"]
    names += [f"{head}_{kind}" for head in _HEADS for kind in ("w", "b")]
    for stage in range(2, 6):
        suffix = "sum" if stage == 5 else "sum_lateral"
        names += [f"fpn_inner_res{stage}_0_{suffix}_{k}" for k in "wb"]
        names += [f"fpn_res{stage}_0_sum_{k}" for k in "wb"]
    return sorted(set(names))


def _model_kwargs(model: str, blobs: dict[str, Any], overrides: dict[str, Any]) -> dict:
    if model in ENCODERS:
        return {}
    classes = blobs.get("cls_score_w")
    kwargs = {
        "num_classes": int(classes.shape[0]) if isinstance(classes, np.ndarray) else 81,
        "caffe_stride": True,
        "freeze_bn": True,
        "image_mean": [value / 255 for value in DETECTRON_BGR_MEAN[::-1]],
        "image_std": [1 / 255] * 3,
    }
    return kwargs | overrides


def import_detectron(
    path: str | Path, *, model: str, **model_kwargs: Any
) -> tuple[dict[str, Any], ImportReport]:
    """(segworks checkpoint, report) of a Detectron pickle.

    `model` is an encoder ("resnet50", "resnet101": the checkpoint's "model" is a torchvision
    ResNet state dict for `--backbone-weights`) or a Mask R-CNN (`MASK_RCNNS`).
    `model_kwargs` override the builder's arguments (e.g. `caffe_stride=False`).
    """
    from segworks.models import build_model
    from segworks.models.backbones import RESNETS, stride_in_1x1

    if model not in ENCODERS + MASK_RCNNS:
        raise DataError(
            path, f"a Detectron file imports into {ENCODERS + MASK_RCNNS}, not {model!r}"
        )
    report = ImportReport(str(path))
    blobs = read_pkl(path)
    kwargs = _model_kwargs(model, blobs, model_kwargs)
    state = _convert(blobs, model, report)
    if model in ENCODERS:
        network = RESNETS[model](weights=None)
        if model_kwargs.get("caffe_stride", True):
            stride_in_1x1(network)
        fill_model(_without_fc(network), state, path, report)
        weights = network.state_dict()
    else:
        network = build_model(model, **kwargs)
        fill_model(network, state, path, report)
        weights = network.state_dict()
    meta = {
        "task": "instance" if model in MASK_RCNNS else "encoder",
        "imported_from": f"detectron-pkl:{Path(path).name}",
        "channel_order": "rgb",
        "mean": [value / 255 for value in DETECTRON_BGR_MEAN[::-1]],
        "std": [1 / 255] * 3,
        "caffe_stride": bool(kwargs.get("caffe_stride", model_kwargs.get("caffe_stride", True))),
    }
    checkpoint = {"model": weights, "model_name": model, "model_kwargs": kwargs, "meta": meta}
    return checkpoint, report


def _without_fc(network: torch.nn.Module) -> torch.nn.Module:
    network.fc = torch.nn.Identity()
    return network
