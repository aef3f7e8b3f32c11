"""FCN-32s, FCN-16s and FCN-8s on VGG16 (Long, Shelhamer and Darrell, CVPR 2015 / PAMI 2017).

VGG16 keeps its classifier as convolutions (fc6 7x7 and fc7 1x1, 4096 channels, dropout 0.5),
a 1x1 "score" layer turns fc7 (and, for 16s/8s, pool4 and pool3) into class scores, and
transposed convolutions (kernel 2s, stride s, no bias) initialised as bilinear interpolation
upsample them. The skip score layers (score_pool4, score_pool3) start at zero, as in the
reference Caffe nets, so a finer net initialised from a coarser one (`init_from`) starts out
predicting what the coarser one did. score_fr starts from PyTorch's default initialisation (the
reference zero-fills it too; a random start lets gradients reach VGG from the first step). The
upsampling filters are learnable here (the reference Caffe nets freeze them with lr_mult 0; call
`requires_grad_(False)` on `upscore*` to do the same).

Geometry (`pad100=True`, the paper's). conv1_1 pads by 100, pooling rounds up (Caffe), fc6 has
no padding. Following the centre of each unit back to input pixels, an index i of a map of
stride s sits at pixel s*i + b, with b = -99 after conv1_1 and b_pool(n) = b_pool(n-1) +
s(n-1)/2 after each pooling: pool3 -95.5, pool4 -91.5, pool5 -83.5; fc6 (7x7, no pad) adds 3*32:
+12.5. A transposed convolution of kernel 2s and stride s puts output j at input (j - s + 0.5)/s.
Hence the crops (offsets into the larger map):
    FCN-32s: upscore32 output j sits at pixel j - 19                  -> crop 19
    FCN-16s: upscore2 (score_fr) at 16j - 11.5, pool4 at 16i - 91.5   -> score_pool4 crop 5;
             upscore16 output at pixel j - 27                         -> crop 27
    FCN-8s:  upscore_pool4 at 8j - 23.5, pool3 at 8i - 95.5           -> score_pool3 crop 9;
             upscore8 output at pixel j - 31                          -> crop 31
These are the offsets of the reference `voc-fcn*s/net.py`.

Geometry (`pad100=False`, memory-friendly; the FCN seed ran out of GPU memory with pad 100). The
input is zero-padded (right and bottom) to a multiple of 32, convolutions are "same"-padded, and
the transposed convolutions are padded by s/2: a map of stride s then has its units at
s*i + (s-1)/2, a kernel-2s stride-s transposed convolution with padding s/2 maps them onto the
finer map's units exactly, so all crop offsets are 0, and the output is cropped to the input.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segworks.models.backbones import VGG16Encoder, vgg16_encoder
from segworks.models.weights import check_state_dict, load_weights, read_state_dict

__all__ = ["FCN", "bilinear_kernel", "fcn8s", "fcn16s", "fcn32s", "init_from_coarser"]

# Crop offsets of the pad-100 geometry (derived in the module docstring).
PAD100_CROPS = {"score_pool4": 5, "score_pool3": 9, 32: 19, 16: 27, 8: 31}


def bilinear_kernel(channels: int, kernel_size: int) -> Tensor:
    """Weights (C, C, k, k) of a transposed convolution doing per-channel bilinear upsampling."""
    factor = (kernel_size + 1) // 2
    centre = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    steps = torch.arange(kernel_size, dtype=torch.float64)
    profile = 1 - (steps - centre).abs() / factor
    weight = torch.zeros(channels, channels, kernel_size, kernel_size, dtype=torch.float64)
    weight[range(channels), range(channels)] = profile[:, None] * profile[None, :]
    return weight.float()


def _upscore(num_classes: int, stride: int, pad100: bool) -> nn.ConvTranspose2d:
    padding = 0 if pad100 else stride // 2
    return nn.ConvTranspose2d(num_classes, num_classes, 2 * stride, stride, padding, bias=False)


def _crop(x: Tensor, offset: int, size: tuple[int, int] | torch.Size) -> Tensor:
    return x[:, :, offset : offset + size[0], offset : offset + size[1]]


class FCN(nn.Module):
    """VGG16 FCN at stride 32, 16 or 8; forward returns {"out": logits at input size}."""

    def __init__(self, backbone: VGG16Encoder, num_classes: int, stride: int, pad100: bool):
        super().__init__()
        if stride not in (8, 16, 32):
            raise ValueError(f"FCN stride {stride} is not supported; expected 8, 16 or 32")
        self.stride, self.pad100 = stride, pad100
        self.backbone = backbone
        pool3_channels, pool4_channels, fc_channels = backbone.channels
        self.score_fr = nn.Conv2d(fc_channels, num_classes, 1)
        if stride == 32:
            self.upscore32 = _upscore(num_classes, 32, pad100)
        else:
            self.score_pool4 = nn.Conv2d(pool4_channels, num_classes, 1)
            self.upscore2 = _upscore(num_classes, 2, pad100)
        if stride == 16:
            self.upscore16 = _upscore(num_classes, 16, pad100)
        if stride == 8:
            self.score_pool3 = nn.Conv2d(pool3_channels, num_classes, 1)
            self.upscore_pool4 = _upscore(num_classes, 2, pad100)
            self.upscore8 = _upscore(num_classes, 8, pad100)
        self.classifier_names = tuple(
            name for name, _ in self.named_children() if name.startswith(("score", "upscore"))
        )
        self.reset_classifier()

    @torch.no_grad()
    def reset_classifier(self) -> None:
        """Skip score layers to zero, score_fr to PyTorch's default, upsampling to bilinear."""
        for name in self.classifier_names:
            module = getattr(self, name)
            if isinstance(module, nn.ConvTranspose2d):
                module.weight.copy_(bilinear_kernel(module.in_channels, module.kernel_size[0]))
            elif name == "score_fr":
                module.reset_parameters()
            else:
                nn.init.zeros_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        size = x.shape[-2:]
        if not self.pad100:
            x = F.pad(x, (0, -size[1] % 32, 0, -size[0] % 32))
        features = self.backbone(x)
        score = self.score_fr(features["fc7"])
        if self.stride == 32:
            return {"out": self._finish(self.upscore32(score), 32, size)}
        score = self.upscore2(score)
        score = score + self._skip(self.score_pool4(features["pool4"]), "score_pool4", score)
        if self.stride == 16:
            return {"out": self._finish(self.upscore16(score), 16, size)}
        score = self.upscore_pool4(score)
        score = score + self._skip(self.score_pool3(features["pool3"]), "score_pool3", score)
        return {"out": self._finish(self.upscore8(score), 8, size)}

    def _skip(self, skip: Tensor, name: str, like: Tensor) -> Tensor:
        offset = PAD100_CROPS[name] if self.pad100 else 0
        return _crop(skip, offset, like.shape[-2:])

    def _finish(self, score: Tensor, stride: int, size: torch.Size) -> Tensor:
        return _crop(score, PAD100_CROPS[stride] if self.pad100 else 0, size)


def _fcn(
    stride: int,
    *,
    num_classes: int,
    in_channels: int,
    pad100: bool,
    width: int,
    fc_channels: int,
    backbone_weights: Path | str | None,
    weights: Path | str | None,
    init_from: Path | str | None,
) -> FCN:
    """The FCN-`stride` net; the public builders pass their arguments as `**locals()`."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    backbone = vgg16_encoder(
        in_channels=in_channels,
        pad100=pad100,
        width=width,
        fc_channels=fc_channels,
        weights=backbone_weights,
    )
    model = FCN(backbone, num_classes, stride, pad100)
    if init_from is not None:
        init_from_coarser(model, read_state_dict(init_from), path=init_from)
    if weights is not None:
        load_weights(model, weights)
    return model


def init_from_coarser(
    model: FCN, coarser_state_dict: dict[str, Tensor], *, path: Path | str = "<state dict>"
) -> None:
    """Staged training: copy the weights a coarser FCN shares with `model` (32s -> 16s -> 8s).

    The backbone and score_fr come from the coarser net (and score_pool4 and upscore2 from an
    FCN-16s); the new skip layers keep their zero initialisation, so `model` starts out
    predicting what the coarser net did, up to the upsampling path.
    """
    own = model.state_dict()
    required = ("backbone.", "score_fr.")
    taken = required + (("score_pool4.", "upscore2.") if model.stride == 8 else ())
    shared = {k: v for k, v in coarser_state_dict.items() if k in own and k.startswith(taken)}
    fresh = tuple(k for k in own if k not in shared and not k.startswith(required))
    check_state_dict(model, shared, path, skip_prefixes=fresh)
    model.load_state_dict(shared, strict=False)


def fcn32s(
    *,
    num_classes: int,
    in_channels: int = 3,
    pad100: bool = False,
    width: int = 64,
    fc_channels: int = 4096,
    backbone_weights: Path | str | None = None,
    weights: Path | str | None = None,
) -> FCN:
    """FCN-32s: score_fr upsampled 32x. `width`/`fc_channels` shrink VGG16 (tests only)."""
    return _fcn(32, init_from=None, **locals())


def fcn16s(
    *,
    num_classes: int,
    in_channels: int = 3,
    pad100: bool = False,
    width: int = 64,
    fc_channels: int = 4096,
    backbone_weights: Path | str | None = None,
    weights: Path | str | None = None,
    init_from: Path | str | None = None,
) -> FCN:
    """FCN-16s: + pool4 skip. `init_from` = an FCN-32s checkpoint (staged training)."""
    return _fcn(16, **locals())


def fcn8s(
    *,
    num_classes: int,
    in_channels: int = 3,
    pad100: bool = False,
    width: int = 64,
    fc_channels: int = 4096,
    backbone_weights: Path | str | None = None,
    weights: Path | str | None = None,
    init_from: Path | str | None = None,
) -> FCN:
    """FCN-8s: + pool4 and pool3 skips. `init_from` = an FCN-16s checkpoint (staged training)."""
    return _fcn(8, **locals())
