"""Mask R-CNN (He et al., 2017) on torchvision's detection components: R-50-C4 and R-50/101-FPN.

Both variants are `torchvision.models.detection.MaskRCNN` models (RPN, RoIAlign, NMS and the
RoI heads are torchvision's), so they follow torchvision's detection contract: input a list of
float images in 0..1 (3, H, W) (the model normalises with ImageNet statistics and resizes by
shortest side itself); in training mode `model(images, targets)` returns a loss dict, in eval mode
a list of `{"boxes", "labels", "scores", "masks" (N, 1, H, W) probabilities}`.

`num_classes` counts the background, as in torchvision: a dataset with K object classes needs
`num_classes=K + 1`, and labels run 1..K (0 is background).

- **R-50-C4** (Detectron's `e2e_mask_rcnn_R-50-C4`): ResNet-50 up to res4 (layer3, stride 16)
  is the shared trunk that the RPN reads. Each RoI is pooled to `roi_size` x `roi_size` (14) by
  RoIAlign and passed through res5 (layer4, stride 2 -> 7x7); the box branch average-pools it
  into the box predictor, the mask branch upsamples it with a 2x2 deconvolution to 14x14 masks.
  res5 is ONE module used by both branches (the mask head holds an unregistered reference, so
  its weights appear once in the state dict and get gradients from both losses).
- **R-50-FPN**: identical to `torchvision.models.detection.maskrcnn_resnet50_fpn` (same module
  names, so its state dict loads and gives the same detections); `roi_size` is the mask RoIAlign
  size (14 -> 28x28 masks).

- **R-50-FPN v2** (`maskrcnn_r50_fpn_v2`, Li et al., 2021, "Benchmarking Detection Transfer
  Learning with Vision Transformers"): torchvision's `maskrcnn_resnet50_fpn_v2` module for module
  (BatchNorm in the FPN and in the heads, a two-convolution RPN head, a four-convolution box
  head), so the `maskrcnn_r50_fpn_v2.coco` state dict loads.
- **Encoder-FPN** (`maskrcnn_mobilenet_v2_fpn`, `maskrcnn_efficientnet_lite0_fpn`, ...): any
  encoder of `segworks.models.encoders`; its 1/4..1/32 levels feed torchvision's FPN (256
  channels, max-pooled 1/64 level), with torchvision's default RPN and RoI heads. The model
  normalises inputs with the statistics the encoder's ImageNet weights expect (mean and std 0.5
  for EfficientNet-Lite, ImageNet's for MobileNetV2 and ResNets).

Options: `gamma` weights the mask loss (the seed's mask loss balancing factor); `freeze_bn=True`
replaces BatchNorm by `FrozenBatchNorm2d` (fixed statistics and affine, the seed's `--bn2affine`;
`--freeze-bn` maps to the same), `False` keeps trainable `nn.BatchNorm2d`, and the default
`None` follows torchvision (frozen when `backbone_weights` are given, else trainable). `compute_losses()`
gives the loss dict without putting BatchNorm into training mode (for validation loss).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.models import resnet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import (
    FastRCNNConvFCHead,
    FastRCNNPredictor,
    TwoMLPHead,
)
from torchvision.models.detection.mask_rcnn import MaskRCNN, MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from segworks.errors import SegworksError
from segworks.models.backbones import stride_in_1x1
from segworks.models.encoders import build_encoder, freeze_levels
from segworks.models.pretrained import WEIGHTS
from segworks.models.weights import load_state_dict_file

__all__ = [
    "SegMaskRCNN",
    "maskrcnn_r50_c4",
    "maskrcnn_r101_c4",
    "maskrcnn_r50_fpn",
    "maskrcnn_r101_fpn",
    "maskrcnn_r50_fpn_v2",
    "maskrcnn_encoder_fpn",
    "maskrcnn_mobilenet_v2_fpn",
    "maskrcnn_efficientnet_lite0_fpn",
    "maskrcnn_efficientnet_lite2_fpn",
    "maskrcnn_tiny",
    "load_weights",
    "CLASSIFIER_PREFIXES",
]

RESNETS = {"resnet50": resnet.resnet50, "resnet101": resnet.resnet101}
_LAYERS_TOP_DOWN = ["layer4", "layer3", "layer2", "layer1", "conv1"]
# (ResNet body, num_classes, roi_size) -> (trunk, MaskRCNN arguments): fpn_layout, c4_layout
Layout = Callable[[resnet.ResNet, int, int], tuple[nn.Module, dict]]
# The layers whose shapes depend on num_classes (the same names in every variant here).
CLASSIFIER_PREFIXES = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits.")


class SegMaskRCNN(MaskRCNN):
    """torchvision's MaskRCNN with a mask loss weight, a BatchNorm-safe loss evaluation and,
    as Detectron's MIN_SIZE_TEST / MAX_SIZE_TEST, its own input size in eval mode."""

    def __init__(
        self,
        backbone: nn.Module,
        *,
        mask_loss_weight: float = 1.0,
        min_size_test: int | None = None,
        max_size_test: int | None = None,
        **kwargs,
    ):
        super().__init__(backbone, **kwargs)
        self.mask_loss_weight = float(mask_loss_weight)
        self.train_sizes = (self.transform.min_size, self.transform.max_size)
        self.test_sizes = eval_sizes(self.train_sizes, min_size_test, max_size_test)

    def train(self, mode: bool = True) -> SegMaskRCNN:
        """Sets the mode, and the transform's input size with it (`test_sizes` in eval)."""
        super().train(mode)
        self.transform.min_size, self.transform.max_size = (
            self.train_sizes if mode else self.test_sizes
        )
        return self

    def forward(self, images, targets=None):
        output = super().forward(images, targets)
        if self.training and isinstance(output, dict) and "loss_mask" in output:
            output["loss_mask"] = output["loss_mask"] * self.mask_loss_weight
        return output

    def compute_losses(self, images: list[Tensor], targets: list[dict]) -> dict[str, Tensor]:
        """The training loss dict, with every BatchNorm kept in eval mode (running statistics).

        torchvision returns losses only in training mode; this sets `training` on every module
        except BatchNorm layers for the call and restores the previous modes afterwards, so a
        validation loss neither uses batch statistics nor updates the running ones.
        """
        modes = {module: module.training for module in self.modules()}
        for module in self.modules():
            module.training = not isinstance(module, _BatchNorm)
        try:
            return self(images, targets)
        finally:
            for module, mode in modes.items():
                module.training = mode


def eval_sizes(
    train_sizes: tuple[tuple[int, ...], int], min_size: int | None, max_size: int | None
) -> tuple[tuple[int, ...], int]:
    """(min_size, max_size) in eval mode: torchvision's (the last training shorter side, the
    same cap) unless given; a shorter side given alone scales the longer side's cap with it."""
    for name, value in (("min_size_test", min_size), ("max_size_test", max_size)):
        if value is not None and (type(value) is not int or value < 1):
            raise SegworksError(f"{name} must be a positive number of pixels, got {value!r}")
    train_min, train_max = train_sizes[0][-1], train_sizes[1]
    shorter = int(min_size) if min_size else train_min
    longer = int(max_size) if max_size else round(train_max * shorter / train_min)
    return (shorter,), longer


class C4BoxHead(nn.Module):
    """res5 on the RoI features, then global average pooling: (R, C, 14, 14) -> (R, 2048)."""

    def __init__(self, res5: nn.Module):
        super().__init__()
        self.res5 = res5

    def forward(self, x: Tensor) -> Tensor:
        return self.res5(x).mean(dim=(2, 3))


class C4MaskHead(nn.Module):
    """res5 shared with the box head (not registered here, so it is stored and trained once)."""

    def __init__(self, res5: nn.Module):
        super().__init__()
        object.__setattr__(self, "_shared_res5", res5)

    def forward(self, x: Tensor) -> Tensor:
        return self._shared_res5(x)


class TinyTrunk(nn.Sequential):
    """A 4x4 stride-4 stem and two 3x3 conv-BN-ReLU layers, stride 8: for tests and demos only."""

    def __init__(self, width: int, norm_layer: type[nn.Module]):
        channels = [3, width, 2 * width, 4 * width]
        kernels, strides, paddings = [4, 3, 3], [4, 1, 2], [0, 1, 1]
        layers = []
        for index, (k, s, p) in enumerate(zip(kernels, strides, paddings)):
            layers += [
                nn.Conv2d(channels[index], channels[index + 1], k, s, p, bias=False),
                norm_layer(channels[index + 1]),
                nn.ReLU(inplace=True),
            ]
        super().__init__(*layers)
        self.out_channels = 4 * width


class EncoderFPN(nn.Module):
    """An encoder's 1/4..1/32 levels through torchvision's FPN: maps "0".."3" and "pool" (1/64)."""

    def __init__(self, encoder: nn.Module, out_channels: int = 256):
        super().__init__()
        self.body = encoder
        self.fpn = FeaturePyramidNetwork(
            list(encoder.pyramid_channels[1:]), out_channels, extra_blocks=LastLevelMaxPool()
        )
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        levels = self.body.pyramid(x)[1:]
        return self.fpn(OrderedDict((str(index), level) for index, level in enumerate(levels)))


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d inside `module` by a frozen copy (fixed statistics and affine):
    torchvision's FrozenBatchNorm2d, or timm's frozen kind for timm's BatchNormAct2d (which keeps
    its activation). Returns `module`, changed in place."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.load_state_dict(child.state_dict())
            setattr(module, name, frozen)
        elif isinstance(child, nn.BatchNorm2d):
            from timm.layers import freeze_batch_norm_2d  # only timm's encoders have these

            setattr(module, name, freeze_batch_norm_2d(child))
        else:
            freeze_batchnorm(child)
    return module


def load_weights(module: nn.Module, path: str | Path, *, ignore_prefixes: tuple = ()) -> None:
    """Load a state dict (or a segworks checkpoint's "model") strictly, except the keys under
    `ignore_prefixes`, which keep their initial values; mismatches -> DataError."""
    load_state_dict_file(module, path, skip_prefixes=ignore_prefixes)


def _resnet(
    name: str, freeze_bn: bool | None, backbone_weights: Path | None, caffe_stride: bool = False
) -> resnet.ResNet:
    if name not in RESNETS:
        raise ValueError(f"backbone must be one of {sorted(RESNETS)}, got {name!r}")
    if freeze_bn is None:  # torchvision's rule: frozen statistics only for a pretrained backbone
        freeze_bn = backbone_weights is not None
    norm_layer = FrozenBatchNorm2d if freeze_bn else nn.BatchNorm2d
    model = RESNETS[name](weights=None, norm_layer=norm_layer)
    if caffe_stride:
        stride_in_1x1(model)
    if backbone_weights is not None:
        load_weights(model, backbone_weights, ignore_prefixes=("fc.",))
    return model


def _freeze_layers(model: resnet.ResNet, trainable_layers: int | None, pretrained: bool) -> None:
    """Freeze the bottom ResNet stages as torchvision does (3 trainable when pretrained, else 5)."""
    if trainable_layers is None:
        trainable_layers = 3 if pretrained else 5
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in 0..5, got {trainable_layers}")
    trainable = _LAYERS_TOP_DOWN[:trainable_layers]
    if trainable_layers == 5:
        trainable.append("bn1")
    for name, parameter in model.named_parameters():
        if not name.startswith(tuple(trainable)):
            parameter.requires_grad_(False)


def _assemble(backbone: nn.Module, *, weights: Path | None, gamma: float, **kwargs) -> SegMaskRCNN:
    model = SegMaskRCNN(backbone, mask_loss_weight=gamma, **kwargs)
    if weights is not None:
        load_weights(model, weights)
    return model


def fpn_layout(body: resnet.ResNet, num_classes: int, roi_size: int) -> tuple[nn.Module, dict]:
    """torchvision's ResNet-FPN: the trunk and the MaskRCNN arguments that differ from its
    defaults (a four-level mask RoIAlign of `roi_size`)."""
    fpn = BackboneWithFPN(
        body,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=[256, 512, 1024, 2048],
        out_channels=256,
        extra_blocks=LastLevelMaxPool(),
    )
    mask_roi_pool = MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=roi_size, sampling_ratio=2)
    return fpn, {"num_classes": num_classes, "mask_roi_pool": mask_roi_pool}


def fpn_v2_layout(body: resnet.ResNet, num_classes: int, roi_size: int) -> tuple[nn.Module, dict]:
    """torchvision's `maskrcnn_resnet50_fpn_v2`: BatchNorm in the FPN, two-convolution RPN head,
    four 3x3 convolutions and one fully connected layer in the box head, BatchNorm in the mask
    head."""
    fpn = BackboneWithFPN(
        body,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=[256, 512, 1024, 2048],
        out_channels=256,
        extra_blocks=LastLevelMaxPool(),
        norm_layer=nn.BatchNorm2d,
    )
    anchors = pyramid_anchors((32, 64, 128, 256, 512))
    mask_roi_pool = MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=roi_size, sampling_ratio=2)
    return fpn, {
        "num_classes": num_classes,
        "rpn_anchor_generator": anchors,
        "rpn_head": RPNHead(256, anchors.num_anchors_per_location()[0], conv_depth=2),
        "box_head": FastRCNNConvFCHead((256, 7, 7), [256] * 4, [1024], norm_layer=nn.BatchNorm2d),
        "mask_roi_pool": mask_roi_pool,
        "mask_head": MaskRCNNHeads(256, [256] * 4, 1, norm_layer=nn.BatchNorm2d),
    }


def c4_layout(body: resnet.ResNet, num_classes: int, roi_size: int) -> tuple[nn.Module, dict]:
    """Detectron's C4: res2-res4 as the trunk, res5 shared by the box and mask RoI heads."""
    trunk = nn.Sequential(
        OrderedDict(
            (name, getattr(body, name))
            for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3")
        )
    )
    trunk.out_channels = 1024
    res5 = body.layer4
    anchors = AnchorGenerator(sizes=((32, 64, 128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),))
    roi_pool = MultiScaleRoIAlign(["0"], output_size=roi_size, sampling_ratio=2)
    return trunk, {
        "rpn_anchor_generator": anchors,
        "rpn_head": RPNHead(1024, anchors.num_anchors_per_location()[0]),
        "box_roi_pool": roi_pool,
        "box_head": C4BoxHead(res5),
        "box_predictor": FastRCNNPredictor(2048, num_classes),
        "mask_roi_pool": roi_pool,
        "mask_head": C4MaskHead(res5),
        "mask_predictor": MaskRCNNPredictor(2048, 256, num_classes),
    }


def maskrcnn_resnet(
    *,
    num_classes: int,
    layout: Layout = fpn_layout,
    backbone: str = "resnet50",
    weights: Path | None = None,
    backbone_weights: Path | None = None,
    gamma: float = 1.0,
    roi_size: int = 14,
    freeze_bn: bool | None = None,
    trainable_layers: int | None = None,
    caffe_stride: bool = False,
    **detector_kwargs,
) -> SegMaskRCNN:
    """Mask R-CNN on a ResNet; `layout` (`fpn_layout` or `c4_layout`) builds the trunk and heads.

    `caffe_stride=True` strides in the first 1x1 convolution of each stage, as Detectron's
    MSRA ResNet does (needed by weights imported from Detectron).

    `detector_kwargs` go to torchvision's MaskRCNN (min_size, max_size, box_score_thresh, ...).
    """
    body = _resnet(backbone, freeze_bn, backbone_weights, caffe_stride)
    _freeze_layers(body, trainable_layers, backbone_weights is not None)
    trunk, heads = layout(body, num_classes, roi_size)
    return _assemble(trunk, weights=weights, gamma=gamma, **heads, **detector_kwargs)


def maskrcnn_fpn(*, num_classes: int, **kwargs) -> SegMaskRCNN:
    """Mask R-CNN with a ResNet-FPN backbone, module-for-module torchvision's maskrcnn_*_fpn;
    keyword arguments as `maskrcnn_resnet`."""
    return maskrcnn_resnet(num_classes=num_classes, layout=fpn_layout, **kwargs)


def maskrcnn_c4(*, num_classes: int, **kwargs) -> SegMaskRCNN:
    """Detectron's ResNet-C4 Mask R-CNN: res2-res4 trunk, res5 as the shared RoI head; keyword
    arguments as `maskrcnn_resnet`."""
    return maskrcnn_resnet(num_classes=num_classes, layout=c4_layout, **kwargs)


def maskrcnn_r50_c4(*, num_classes: int, **kwargs) -> SegMaskRCNN:
    """Mask R-CNN R-50-C4 (Detectron): ResNet-50 res2-res4 trunk, res5 as the RoI head."""
    return maskrcnn_c4(num_classes=num_classes, backbone="resnet50", **kwargs)


def maskrcnn_r101_c4(*, num_classes: int, **kwargs) -> SegMaskRCNN:
    """Mask R-CNN R-101-C4: as maskrcnn_r50_c4 on ResNet-101."""
    return maskrcnn_c4(num_classes=num_classes, backbone="resnet101", **kwargs)


def maskrcnn_r50_fpn(*, num_classes: int, **kwargs) -> SegMaskRCNN:
    """Mask R-CNN R-50-FPN, equivalent to torchvision's maskrcnn_resnet50_fpn."""
    return maskrcnn_fpn(num_classes=num_classes, backbone="resnet50", **kwargs)


def maskrcnn_r101_fpn(*, num_classes: int, **kwargs) -> SegMaskRCNN:
    """Mask R-CNN R-101-FPN: as maskrcnn_r50_fpn on ResNet-101."""
    return maskrcnn_fpn(num_classes=num_classes, backbone="resnet101", **kwargs)


def maskrcnn_r50_fpn_v2(*, num_classes: int, **kwargs) -> SegMaskRCNN:
    """Mask R-CNN R-50-FPN v2, module for module torchvision's maskrcnn_resnet50_fpn_v2."""
    return maskrcnn_resnet(num_classes=num_classes, layout=fpn_v2_layout, **kwargs)


def maskrcnn_encoder_fpn(
    *,
    num_classes: int,
    encoder: str = "mobilenet_v2",
    weights: Path | None = None,
    backbone_weights: Path | None = None,
    gamma: float = 1.0,
    roi_size: int = 14,
    freeze_bn: bool | None = None,
    fpn_channels: int = 256,
    trainable_levels: int | None = None,
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512),
    mask_head_channels: int = 256,
    **detector_kwargs,
) -> SegMaskRCNN:
    """Mask R-CNN with an FPN over an encoder of `segworks.models.encoders` (1/4..1/32 levels).

    `backbone_weights` is the encoder's ImageNet file; `freeze_bn` as in `maskrcnn_resnet`.
    `fpn_channels` is the width of the FPN, RPN and box head input (torchvision's 256; 128 makes
    a CPU step about 2.5x cheaper, benchmarks/RESULTS.md). `trainable_levels` of the encoder's
    five are trained, the ones below frozen (default as torchvision: 3 with ImageNet weights,
    else all 5). `anchor_sizes` are the RPN's anchor sides on the five maps, 1/4 to 1/64
    (torchvision's for 800 px images by default; halve them for images near 400 px).
    `mask_head_channels` is the width of the four-convolution mask head (torchvision's 256).
    The model normalises its input with the statistics of the encoder's registered ImageNet
    weights (`image_mean` / `image_std` in `detector_kwargs` override them).
    """
    for name, width in (("fpn_channels", fpn_channels), ("mask_head_channels", mask_head_channels)):
        if not isinstance(width, int) or width < 1:
            raise SegworksError(f"{name} must be a positive integer, got {width!r}")
    body = build_encoder(encoder, weights=backbone_weights)
    if freeze_bn if freeze_bn is not None else backbone_weights is not None:
        freeze_batchnorm(body)
    if trainable_levels is None:
        trainable_levels = 3 if backbone_weights is not None else 5
    freeze_levels(body, trainable_levels)
    entry = WEIGHTS.get(encoder)
    normalise = {"image_mean": list(entry.mean), "image_std": list(entry.std)} if entry else {}
    mask_roi_pool = MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=roi_size, sampling_ratio=2)
    return _assemble(
        EncoderFPN(body, out_channels=fpn_channels),
        weights=weights,
        gamma=gamma,
        mask_roi_pool=mask_roi_pool,
        rpn_anchor_generator=pyramid_anchors(anchor_sizes),
        box_predictor=FastRCNNPredictor(1024, num_classes),  # torchvision's TwoMLPHead width
        mask_head=MaskRCNNHeads(fpn_channels, [mask_head_channels] * 4, 1),
        mask_predictor=MaskRCNNPredictor(mask_head_channels, mask_head_channels, num_classes),
        **(normalise | detector_kwargs),
    )


def pyramid_anchors(sizes: tuple[int, ...]) -> AnchorGenerator:
    """One anchor side per FPN map (five, 1/4 to 1/64), three aspect ratios each."""
    if len(sizes) != 5 or any(not isinstance(s, int) or s <= 0 for s in sizes):
        raise SegworksError(f"anchor_sizes needs five positive integers, got {list(sizes)}")
    return AnchorGenerator(sizes=tuple((s,) for s in sizes), aspect_ratios=((0.5, 1.0, 2.0),) * 5)


def maskrcnn_mobilenet_v2_fpn(*, num_classes: int, **kwargs) -> SegMaskRCNN:
    """Mask R-CNN with an FPN on torchvision's MobileNetV2; arguments as maskrcnn_encoder_fpn."""
    return maskrcnn_encoder_fpn(num_classes=num_classes, encoder="mobilenet_v2", **kwargs)


def maskrcnn_efficientnet_lite0_fpn(*, num_classes: int, **kwargs) -> SegMaskRCNN:
    """Mask R-CNN with an FPN on EfficientNet-Lite0 (timm); arguments as maskrcnn_encoder_fpn."""
    return maskrcnn_encoder_fpn(num_classes=num_classes, encoder="efficientnet_lite0", **kwargs)


def maskrcnn_efficientnet_lite2_fpn(*, num_classes: int, **kwargs) -> SegMaskRCNN:
    """Mask R-CNN with an FPN on EfficientNet-Lite2 (timm); arguments as maskrcnn_encoder_fpn."""
    return maskrcnn_encoder_fpn(num_classes=num_classes, encoder="efficientnet_lite2", **kwargs)


def maskrcnn_tiny(
    *,
    num_classes: int,
    width: int = 16,
    weights: Path | None = None,
    gamma: float = 1.0,
    roi_size: int = 14,
    freeze_bn: bool | None = None,
    min_size: int = 128,
    max_size: int = 128,
    anchor_sizes: tuple[int, ...] = (16, 32, 64),
    **detector_kwargs,
) -> SegMaskRCNN:
    """A small single-level Mask R-CNN (4 conv trunk, stride 8) for tests and CPU demos."""
    trunk = TinyTrunk(width, FrozenBatchNorm2d if freeze_bn else nn.BatchNorm2d)
    channels = trunk.out_channels
    anchors = AnchorGenerator(sizes=(tuple(anchor_sizes),), aspect_ratios=((0.5, 1.0, 2.0),))
    defaults = {
        "rpn_pre_nms_top_n_train": 300,
        "rpn_post_nms_top_n_train": 150,
        "rpn_pre_nms_top_n_test": 150,
        "rpn_post_nms_top_n_test": 50,
        "rpn_batch_size_per_image": 64,
        "box_batch_size_per_image": 32,
        "box_detections_per_img": 20,
    }
    return _assemble(
        trunk,
        weights=weights,
        gamma=gamma,
        min_size=min_size,
        max_size=max_size,
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(channels, anchors.num_anchors_per_location()[0]),
        box_roi_pool=MultiScaleRoIAlign(["0"], output_size=7, sampling_ratio=2),
        box_head=TwoMLPHead(channels * 49, 128),
        box_predictor=FastRCNNPredictor(128, num_classes),
        mask_roi_pool=MultiScaleRoIAlign(["0"], output_size=roi_size, sampling_ratio=2),
        mask_head=MaskRCNNHeads(channels, (32, 32), 1),
        mask_predictor=MaskRCNNPredictor(32, 32, num_classes),
        **(defaults | detector_kwargs),
    )
