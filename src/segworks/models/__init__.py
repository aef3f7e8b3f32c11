"""The model registry: plain dicts from name to a keyword-only builder, one per task.

SEMANTIC_MODELS return {"out": logits (N, K, H, W) at input resolution, "aux": ... optional,
"presence": image-level class logits (N, K), optional}; binary models are semantic models with num_classes=1 (one logit channel). INSTANCE_MODELS follow
torchvision's detection dict contract (see models/mask_rcnn.py). `MODELS` holds both and
`model_task(name)` says which task an entry serves. `model_from_checkpoint` rebuilds a registered
model from a segworks checkpoint (see segworks.checkpoint for the layout).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from segworks.errors import DataError, SegworksError
from segworks.models import (
    deeplabv3,
    deeplabv3plus,
    fcn,
    fcn_resnet,
    mask_rcnn,
    refinenet,
    refinenet_seed,
    segnet,
    tutorial,
    unet,
    unet_resnet,
)

SEMANTIC_MODELS: dict[str, Callable[..., nn.Module]] = {
    # the seed tutorial's step-by-step nets (models/tutorial.py)
    "tutorial_convnet": tutorial.tutorial_convnet,
    "tutorial_upsample": tutorial.tutorial_upsample,
    "tutorial_transposed": tutorial.tutorial_transposed,
    "tutorial_concat": tutorial.tutorial_concat,
    # U-Net (models/unet.py, models/unet_resnet.py)
    "unet_original": unet.unet_original,
    "unet": unet.unet,
    "unet_resnet": unet_resnet.unet_resnet,
    "unet_resnet34": unet_resnet.unet_resnet34,
    "unet_mobilenet_v2": unet_resnet.unet_mobilenet_v2,
    "unet_efficientnet_lite0": unet_resnet.unet_efficientnet_lite0,
    "unet_efficientnet_lite1": unet_resnet.unet_efficientnet_lite1,
    "unet_efficientnet_lite2": unet_resnet.unet_efficientnet_lite2,
    # SegNet (models/segnet.py)
    "segnet": segnet.segnet,
    "segnet_basic": segnet.segnet_basic,
    # FCN (models/fcn.py on VGG16, models/fcn_resnet.py as in torchvision)
    "fcn32s": fcn.fcn32s,
    "fcn16s": fcn.fcn16s,
    "fcn8s": fcn.fcn8s,
    "fcn_resnet": fcn_resnet.fcn_resnet,
    "fcn_resnet50": fcn_resnet.fcn_resnet50,
    "fcn_resnet101": fcn_resnet.fcn_resnet101,
    # RefineNet (models/refinenet.py)
    "refinenet": refinenet.refinenet,
    "refinenet_resnet50": refinenet.refinenet_resnet50,
    "refinenet_resnet101": refinenet.refinenet_resnet101,
    "refinenet_resnet152": refinenet.refinenet_resnet152,
    # the RefineNet seed's Chainer network, for its snapshots (models/refinenet_seed.py)
    "refinenet_seed": refinenet_seed.refinenet_seed,
    "refinenet_seed_resnet50": refinenet_seed.refinenet_seed_resnet50,
    "refinenet_seed_resnet101": refinenet_seed.refinenet_seed_resnet101,
    "refinenet_seed_resnet152": refinenet_seed.refinenet_seed_resnet152,
    # DeepLabV3 (models/deeplabv3.py)
    "deeplabv3": deeplabv3.deeplabv3,
    "deeplabv3_resnet50": deeplabv3.deeplabv3_resnet50,
    "deeplabv3_resnet101": deeplabv3.deeplabv3_resnet101,
    # DeepLabV3+ (models/deeplabv3plus.py)
    "deeplabv3plus": deeplabv3plus.deeplabv3plus,
    "deeplabv3plus_resnet50": deeplabv3plus.deeplabv3plus_resnet50,
    "deeplabv3plus_resnet101": deeplabv3plus.deeplabv3plus_resnet101,
    "deeplabv3plus_mobilenet_v2": deeplabv3plus.deeplabv3plus_mobilenet_v2,
    "deeplabv3plus_efficientnet_lite0": deeplabv3plus.deeplabv3plus_efficientnet_lite0,
    "deeplabv3plus_efficientnet_lite2": deeplabv3plus.deeplabv3plus_efficientnet_lite2,
}

INSTANCE_MODELS: dict[str, Callable[..., nn.Module]] = {
    # Mask R-CNN (models/mask_rcnn.py)
    "maskrcnn_r50_c4": mask_rcnn.maskrcnn_r50_c4,
    "maskrcnn_r101_c4": mask_rcnn.maskrcnn_r101_c4,
    "maskrcnn_r50_fpn": mask_rcnn.maskrcnn_r50_fpn,
    "maskrcnn_r101_fpn": mask_rcnn.maskrcnn_r101_fpn,
    "maskrcnn_r50_fpn_v2": mask_rcnn.maskrcnn_r50_fpn_v2,
    "maskrcnn_encoder_fpn": mask_rcnn.maskrcnn_encoder_fpn,
    "maskrcnn_mobilenet_v2_fpn": mask_rcnn.maskrcnn_mobilenet_v2_fpn,
    "maskrcnn_efficientnet_lite0_fpn": mask_rcnn.maskrcnn_efficientnet_lite0_fpn,
    "maskrcnn_efficientnet_lite2_fpn": mask_rcnn.maskrcnn_efficientnet_lite2_fpn,
    "maskrcnn_tiny": mask_rcnn.maskrcnn_tiny,
}

MODELS: dict[str, Callable[..., nn.Module]] = SEMANTIC_MODELS | INSTANCE_MODELS
TASKS: dict[str, str] = {name: "semantic" for name in SEMANTIC_MODELS} | {
    name: "instance" for name in INSTANCE_MODELS
}


def model_task(name: str) -> str:
    """The task a registered model serves: "semantic" (binary too, num_classes=1) or "instance"."""
    _check_name(name)
    return TASKS[name]


def _check_name(name: str) -> None:
    if name not in MODELS:
        raise SegworksError(f"unknown model {name!r}; expected one of {sorted(MODELS)}")


def build_model(name: str, **kwargs) -> nn.Module:
    _check_name(name)
    check_keywords(name, kwargs)
    try:
        return MODELS[name](**kwargs)
    except SegworksError:
        raise
    except ValueError as error:  # a builder refusing a value the user gave (--model-arg)
        raise SegworksError(f"model {name!r}: {error}") from error


def check_keywords(name: str, kwargs: dict) -> None:
    """Refuse keywords the builder of `name` does not take, listing the ones it does."""
    parameters = inspect.signature(MODELS[name]).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return
    valid = sorted(
        p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    )
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise SegworksError(
            f"model {name!r} takes no keyword {', '.join(unknown)} (--model-arg); "
            f"valid keywords: {', '.join(valid)}"
        )


def model_from_checkpoint(
    checkpoint: dict[str, Any], path: str | Path = "<checkpoint>"
) -> nn.Module:
    """Rebuild a registered model from a segworks checkpoint and load its weights (eval mode)."""
    for key in ("model", "model_name", "model_kwargs"):
        if key not in checkpoint:
            raise DataError(path, f"not a segworks checkpoint: key {key!r} is missing")
    model = build_model(checkpoint["model_name"], **checkpoint["model_kwargs"])
    model.load_state_dict(checkpoint["model"])
    return model.eval()
