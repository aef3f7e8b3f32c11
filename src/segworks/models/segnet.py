"""SegNet (Badrinarayanan, Kendall and Cipolla, "SegNet: A Deep Convolutional Encoder-Decoder
Architecture for Image Segmentation", TPAMI 2017).

The encoder is the 13 convolutions of VGG16 with BatchNorm, in five stages; every stage ends in a
2x2 max-pooling that keeps its argmax indices. The decoder mirrors the encoder: every stage
starts by max-unpooling its input to the positions stored by the matching encoder pooling (a
sparse map, no learned upsampling), then densifies it with 3x3 Conv+BN+ReLU. A final 3x3
convolution gives the class logits (the released Caffe model ends this way too).

SegNet-Basic (the paper's smaller net for its decoder study) has four stages of one 7x7,
64-channel convolution each, BatchNorm after every convolution, no biases and no ReLU in the
decoder, and a 1x1 classifier.

Inputs are padded by replication to a multiple of the output stride (32, or 16 for SegNet-Basic)
and the logits are cropped back to the input size.
"""

from __future__ import annotations

from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from segworks.models.unet import check_positive, pad_to_multiple
from segworks.models.weights import check_keys, read_state_dict

VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def conv_bn(
    in_channels: int, out_channels: int, kernel_size: int = 3, relu: bool = True, bias: bool = True
) -> list[nn.Module]:
    layers = [
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias),
        nn.BatchNorm2d(out_channels),
    ]
    return [*layers, nn.ReLU(inplace=True)] if relu else layers


class SegNet(nn.Module):
    """Encoder stages, each followed by index-keeping 2x2 max-pooling; decoder stages (deepest
    first), each preceded by max-unpooling with the matching indices; a classifier conv."""

    def __init__(self, encoder: nn.ModuleList, decoder: nn.ModuleList, classifier: nn.Module):
        super().__init__()
        if len(encoder) != len(decoder):
            raise ValueError(f"{len(encoder)} encoder stages but {len(decoder)} decoder stages")
        self.encoder = encoder
        self.decoder = decoder
        self.classifier = classifier
        self.stride = 2 ** len(encoder)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, self.stride)
        pools = []
        for stage in self.encoder:
            x = stage(x)
            size = x.shape[-2:]
            x, indices = F.max_pool2d(x, 2, stride=2, return_indices=True)
            pools.append((indices, size))
        for stage, (indices, size) in zip(self.decoder, reversed(pools)):
            x = stage(F.max_unpool2d(x, indices, 2, stride=2, output_size=size))
        return {"out": self.classifier(x)[..., :h, :w]}


def segnet(
    *,
    num_classes: int,
    in_channels: int = 3,
    base_width: int = 64,
    backbone_weights: Path | None = None,
) -> SegNet:
    """SegNet: VGG16-BN encoder (13 convs), max-unpooling decoder with stored pooling indices.

    base_width=64 gives the paper's widths (64 ... 512); smaller values scale every stage.
    backbone_weights is a torchvision vgg16_bn state dict file (`torch.save(model.state_dict())`,
    the classifier entries are ignored); its `features` load into the encoder, which needs
    in_channels=3 and base_width=64.
    """
    check_positive(num_classes=num_classes, in_channels=in_channels, base_width=base_width)
    stages = [tuple(c * base_width // 64 for c in stage) for stage in VGG16_STAGES]
    if min(min(stage) for stage in stages) < 1:
        raise ValueError(f"base_width must be at least 1 per stage, got {base_width}")
    encoder = nn.ModuleList()
    previous = in_channels
    for stage in stages:
        layers = []
        for width in stage:
            layers += conv_bn(previous, width)
            previous = width
        encoder.append(nn.Sequential(*layers))
    model = SegNet(
        encoder, _vgg_decoder(stages), nn.Conv2d(stages[0][0], num_classes, 3, padding=1)
    )
    if backbone_weights is not None:
        load_vgg16_bn_features(model.encoder, Path(backbone_weights))
    return model


def _vgg_decoder(stages: list[tuple[int, ...]]) -> nn.ModuleList:
    """Mirror of the encoder: a stage of widths (a, a, a) decodes a -> a -> a -> (previous width);
    the first stage's last conv is the classifier, so it decodes 64 -> 64 only."""
    decoder = nn.ModuleList()
    for index in reversed(range(len(stages))):
        stage = stages[index]
        outputs = list(stage[:-1]) + ([stages[index - 1][-1]] if index > 0 else [])
        layers = []
        previous = stage[-1]
        for width in outputs:
            layers += conv_bn(previous, width)
            previous = width
        decoder.append(nn.Sequential(*layers))
    return decoder


def segnet_basic(
    *, num_classes: int, in_channels: int = 3, width: int = 64, kernel_size: int = 7
) -> SegNet:
    """SegNet-Basic: 4 encoders and 4 decoders of one 7x7, 64-channel conv each (output stride 16).

    As in the paper: BatchNorm after every convolution, no biases, no ReLU in the decoder, and a
    1x1 classifier. The paper's LRN on the input is left out.
    """
    check_positive(num_classes=num_classes, in_channels=in_channels, width=width)
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    encoder = nn.ModuleList(
        nn.Sequential(*conv_bn(c, width, kernel_size, bias=False))
        for c in [in_channels, width, width, width]
    )
    decoder = nn.ModuleList(
        nn.Sequential(*conv_bn(width, width, kernel_size, relu=False, bias=False)) for _ in range(4)
    )
    return SegNet(encoder, decoder, nn.Conv2d(width, num_classes, 1))


# ---------------------------------------------------------------------------------------------
# Loading torchvision's vgg16_bn weights into the encoder
# ---------------------------------------------------------------------------------------------


def vgg16_bn_key_map(encoder: nn.ModuleList) -> dict[str, str]:
    """torchvision `features.N.*` key (without the prefix) -> encoder state_dict key.

    torchvision numbers the layers of vgg16_bn.features in one sequence, a max-pool after every
    stage; each encoder stage holds the same conv, bn, relu sequence without the pool.
    """
    mapping = {}
    offset = 0
    for stage_index, stage in enumerate(encoder):
        for key in stage.state_dict():
            layer, rest = key.split(".", 1)
            mapping[f"{offset + int(layer)}.{rest}"] = f"{stage_index}.{key}"
        offset += len(stage) + 1
    return mapping


def load_vgg16_bn_features(encoder: nn.ModuleList, path: Path) -> None:
    """Copy the `features` of a torchvision vgg16_bn state dict file into `encoder`.

    Raises DataError naming every missing, unexpected and shape-mismatched key (in the file's
    names, without the `features.` prefix).
    """
    features = {
        key.removeprefix("features."): value
        for key, value in read_state_dict(path).items()
        if not key.startswith("classifier.")
    }
    mapping = vgg16_bn_key_map(encoder)
    own = encoder.state_dict()
    expected = {key: own[ours] for key, ours in mapping.items()}
    what = "the SegNet encoder as torchvision vgg16_bn features (in_channels=3, base_width=64)"
    check_keys(expected, features, path, what)
    encoder.load_state_dict({mapping[key]: value for key, value in features.items()}, strict=False)
