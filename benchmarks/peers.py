"""The smp peer of the pretrained recipes: smp's `Unet("tu-tf_efficientnet_liteN")` on the
recipe's own EfficientNet-Lite ImageNet file, trained the way smp's examples do (Adam lr 1e-4,
multiclass Dice loss, constant learning rate) on segworks' data pipeline, until a CPU-time
budget is spent.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

LITE_ENCODERS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def peer_title(encoder: str) -> str:
    return (
        f"smp Unet('tu-tf_{encoder}') on the same ImageNet weights, trained as smp's examples do "
        "(Adam 1e-4, Dice loss, constant lr), same images, crops and CPU budget"
    )


def peer_encoder(cfg) -> str:
    """The recipe's encoder weights (`cfg.pretrained`), which the peer starts from too."""
    from segworks.errors import SegworksError

    if cfg.pretrained not in LITE_ENCODERS:
        raise SegworksError(
            f"the smp peer (--peer smp) needs one of {LITE_ENCODERS} as the recipe's "
            f"pretrained weights, got {cfg.pretrained!r}"
        )
    return cfg.pretrained


class PaddedPeer(torch.nn.Module):
    """smp models need sides divisible by 32: pad (reflect), run, crop; {"out": logits}."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> dict:
        height, width = x.shape[-2:]
        pad_h, pad_w = (-height) % 32, (-width) % 32
        out = self.model(F.pad(x, (0, pad_w, 0, pad_h), mode="reflect"))
        return {"out": out[..., :height, :width]}


def smp_unet(encoder: str, num_classes: int) -> PaddedPeer:
    """smp's Unet on an EfficientNet-Lite (`encoder`, a name of LITE_ENCODERS) with the package's
    ImageNet weights, loaded strictly."""
    import segmentation_models_pytorch as smp

    from segworks.models.encoders import lite_to_timm
    from segworks.models.pretrained import WEIGHTS, weights_file
    from segworks.models.weights import read_state_dict

    model = smp.Unet(f"tu-tf_{encoder}", encoder_weights=None, classes=num_classes)
    state = read_state_dict(weights_file(WEIGHTS[encoder]))
    depths = [len(stage) for stage in model.encoder.model.blocks]
    state = {k: v for k, v in lite_to_timm(state, depths).items()
             if not k.startswith(("conv_head.", "bn2.", "classifier."))}  # fmt: skip
    model.encoder.model.load_state_dict(state)
    return PaddedPeer(model)


def train_peer(cfg, train_set, cpu_seconds: float) -> tuple[PaddedPeer, int, float, float]:
    """The peer on the recipe's encoder (`cfg.pretrained`) trained on `train_set` through
    segworks' train loader of `cfg` (crops, augmentation, batch size; `cfg.workers` must be 0 so
    loading is counted) until this process has spent `cpu_seconds`; returns it in eval mode,
    its epochs, CPU and wall minutes."""
    import segmentation_models_pytorch as smp

    from segworks import IGNORE_INDEX
    from segworks.engine.distributed import DistInfo
    from segworks.engine.train import train_loader

    wall = time.perf_counter()
    peer = smp_unet(peer_encoder(cfg), cfg.num_classes).train()
    optimizer = torch.optim.Adam(peer.parameters(), lr=1e-4)
    dice = smp.losses.DiceLoss("multiclass", ignore_index=IGNORE_INDEX)
    start, epoch = time.process_time(), 0
    while time.process_time() - start < cpu_seconds:
        for images, targets in train_loader(cfg, train_set, DistInfo(), epoch):
            loss = dice(peer(images)["out"], targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if time.process_time() - start >= cpu_seconds:
                break
        epoch += 1
    cpu_minutes, wall_minutes = (
        (time.process_time() - start) / 60,
        (time.perf_counter() - wall) / 60,
    )
    return peer.eval(), epoch, cpu_minutes, wall_minutes
