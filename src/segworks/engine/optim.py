"""The optimiser of a training run and the backbone's frozen phase, the same for every task."""

from __future__ import annotations

import torch
from torch import nn

from segworks.config import TrainConfig


def backbone_of(model: nn.Module) -> nn.Module | None:
    """The pretrained part of a model: its `encoder` or `backbone` module, if it has one."""
    for name in ("encoder", "backbone"):
        part = getattr(model, name, None)
        if isinstance(part, nn.Module):
            return part
    return None


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Parameter groups: the backbone at `lr * backbone_lr_mult`, the rest at `lr`."""
    backbone = backbone_of(model)
    inner = {id(p) for p in backbone.parameters()} if backbone is not None else set()
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if id(p) not in inner], "lr": cfg.lr},
        {"params": [p for p in params if id(p) in inner], "lr": cfg.lr * cfg.backbone_lr_mult},
    ]
    groups = [group for group in groups if group["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def set_backbone_mode(model: nn.Module, cfg: TrainConfig, epoch: int) -> None:
    """Freeze the backbone's weights for the first `freeze_backbone_epochs` epochs, and keep its
    BatchNorm statistics as loaded while frozen or with `freeze_bn` (call after model.train())."""
    backbone = backbone_of(model)
    if backbone is None:
        return
    frozen = epoch < cfg.freeze_backbone_epochs
    if cfg.freeze_backbone_epochs > 0:  # layers the model froze itself stay frozen throughout
        for parameter in own_trainable(backbone):
            parameter.requires_grad_(not frozen)
    if frozen or cfg.freeze_bn:
        for module in backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def own_trainable(backbone: nn.Module) -> list[nn.Parameter]:
    """The parameters the model itself trains (as built: before any freezing here), cached on
    the module at the first call so later calls see the builder's choice, not ours."""
    if "_own_trainable" not in backbone.__dict__:
        backbone.__dict__["_own_trainable"] = [p for p in backbone.parameters() if p.requires_grad]
    return backbone.__dict__["_own_trainable"]
