"""The model registry: a plain dict from name to a keyword-only builder.

Semantic models return {"out": logits (N, K, H, W) at input resolution, "aux": ... optional}.
Binary models are semantic models with num_classes=1 (one logit channel).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

MODELS: dict[str, Callable[..., nn.Module]] = {
    # entries are added here, one line per model, grouped by file
}


def build_model(name: str, **kwargs) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(MODELS)}")
    return MODELS[name](**kwargs)
