"""Loading weight files into models, with errors that say what does not fit.

Every loader of segworks.models reads files with `read_state_dict` and checks them with
`check_state_dict` (or `check_keys` for a renamed file), so every mismatch reads the same way:
"weights do not fit WHAT: N missing keys: ...; N unexpected keys: ...; N shape mismatches: ...".

Two kinds of file load into a segmentation model with `load_weights`:
- a segworks checkpoint: a dict whose "model" entry is the state dict (see segworks.checkpoint);
- a raw state dict, e.g. torchvision's `deeplabv3_resnet101_coco-586e9e4e.pth`: segworks'
  DeepLabV3 uses torchvision's module names, so its keys match one to one.

`reset_classifier=True` re-initialises the model's final classification layers (the modules named
by the model's `classifier_names`) instead of loading them, so a checkpoint trained on one label
set fine-tunes to another: the DeepLabV3 seed does this to move torchvision's COCO-trained model
to Pascal VOC. Nothing downloads; a file that does not fit raises DataError listing the missing
keys, the unexpected keys and the shape mismatches (the first few of each, with counts).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from segworks.checkpoint import read_torch_file
from segworks.errors import DataError, SegworksError

__all__ = [
    "check_keys",
    "check_state_dict",
    "load_state_dict_file",
    "load_weights",
    "read_state_dict",
]

logger = logging.getLogger(__name__)

_SHOWN = 5  # keys listed per kind of problem in an error message


def read_state_dict(path: str | Path, *, mmap: bool = False) -> dict[str, Tensor]:
    """The state dict in `path`: a segworks checkpoint's "model" entry or a raw state dict
    (`mmap`: tensors memory-mapped rather than read, as `read_torch_file`)."""
    loaded = read_torch_file(path, "weights", mmap=mmap)
    if not isinstance(loaded, dict):
        raise DataError(path, f"expected a state dict, got {type(loaded).__name__}")
    state = loaded["model"] if isinstance(loaded.get("model"), dict) else loaded
    not_tensors = [key for key, value in state.items() if not isinstance(value, Tensor)]
    if not_tensors:
        raise DataError(
            path,
            f"not a state dict: {len(not_tensors)} entries are not tensors "
            f"(e.g. {not_tensors[:_SHOWN]}); expected a segworks checkpoint or a state dict",
        )
    if state and all(key.startswith("module.") for key in state):  # saved from a DDP wrapper
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return state


def _listed(title: str, items: list[str]) -> str:
    more = f" (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
    return f"{len(items)} {title}: {', '.join(items[:_SHOWN])}{more}"


def check_state_dict(
    module: nn.Module,
    state: Mapping[str, Tensor],
    path: str | Path,
    *,
    skip_prefixes: Iterable[str] = (),
) -> None:
    """Raise DataError unless `state` has exactly `module`'s keys and shapes.

    Keys under `skip_prefixes` are not expected (the caller initialises them itself).
    """
    skip = tuple(skip_prefixes)
    expected = {
        key: value for key, value in module.state_dict().items() if not key.startswith(skip)
    }
    check_keys(expected, state, path, type(module).__name__)


def check_keys(
    expected: Mapping[str, Tensor], state: Mapping[str, Tensor], path: str | Path, what: str
) -> None:
    """Raise DataError unless `state` has exactly the keys and shapes of `expected`.

    BatchNorm's `num_batches_tracked` may be absent (old torch versions) or extra (a file from
    BatchNorm2d loaded into FrozenBatchNorm2d, which has no such buffer).
    """
    optional = "num_batches_tracked"
    missing = [key for key in expected if key not in state and not key.endswith(optional)]
    unexpected = [key for key in state if key not in expected and not key.endswith(optional)]
    mismatched = [
        f"{key} {tuple(state[key].shape)} in file vs {tuple(expected[key].shape)} in model"
        for key in state
        if key in expected and state[key].shape != expected[key].shape
    ]
    problems = [
        _listed(title, items)
        for title, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        )
        if items
    ]
    if problems:
        raise DataError(path, f"weights do not fit {what}: " + "; ".join(problems))


def load_state_dict_file(
    module: nn.Module, path: str | Path, *, skip_prefixes: Iterable[str] = ()
) -> None:
    """Load the file's state dict into `module`; keys under `skip_prefixes` keep the module's own
    values (the file's entries for them are ignored). Anything else that does not fit is a
    DataError."""
    skip = tuple(skip_prefixes)
    state = {key: value for key, value in read_state_dict(path).items() if not key.startswith(skip)}
    check_state_dict(module, state, path, skip_prefixes=skip)
    module.load_state_dict(state, strict=False)


def classifier_names(model: nn.Module) -> tuple[str, ...]:
    """Names of the model's final classification modules (its `classifier_names` attribute)."""
    names = getattr(model, "classifier_names", None)
    if names is None:
        raise SegworksError(
            f"{type(model).__name__} does not name its classifier modules "
            "(attribute `classifier_names`), so reset_classifier is not available for it"
        )
    return tuple(names)


def looks_like_whole_model(model: nn.Module, path: str | Path) -> bool:
    """True when most of the file's keys are `model`'s own (whole-model weights rather than an
    encoder's ImageNet file). Only the keys are needed: the tensors are mapped, not read."""
    state = read_state_dict(path, mmap=True)
    own = set(model.state_dict())
    return bool(state) and sum(key in own for key in state) >= 0.9 * len(state)


def _classifier_differs(model: nn.Module, state: Mapping[str, Tensor]) -> bool:
    names = tuple(f"{name}." for name in getattr(model, "classifier_names", ()))
    expected = model.state_dict()
    return any(
        key.startswith(names) and key in expected and value.shape != expected[key].shape
        for key, value in state.items()
    )


def load_weights(
    model: nn.Module,
    path: str | Path,
    *,
    reset_classifier: bool = False,
    auto_reset: bool = False,
) -> None:
    """Load the weights in `path` into `model` in place.

    With `reset_classifier`, the classifier modules' entries in the file are ignored (they may
    have another class count) and those modules are re-initialised by `model.reset_classifier()`.
    `auto_reset` does that only when the file's classifier has another class count (with a
    warning). An auxiliary head in the file is dropped (with a log line) when the model has none.
    """
    state = read_state_dict(path)
    if auto_reset and not reset_classifier and _classifier_differs(model, state):
        logger.warning(
            "%s: its classifier has another class count; training a new one "
            "(the rest of the model starts from the file)",
            path,
        )
        reset_classifier = True
    if getattr(model, "aux_classifier", "absent") is None:
        aux_keys = [key for key in state if key.startswith("aux_classifier.")]
        if aux_keys:
            logger.info("%s: ignoring %d auxiliary-head entries", path, len(aux_keys))
            state = {key: value for key, value in state.items() if key not in aux_keys}
    skip: tuple[str, ...] = ()
    if reset_classifier:
        skip = tuple(f"{name}." for name in classifier_names(model))
        state = {key: value for key, value in state.items() if not key.startswith(skip)}
    check_state_dict(model, state, path, skip_prefixes=skip)
    model.load_state_dict(state, strict=False)
    if reset_classifier:
        model.reset_classifier()
    logger.info("loaded weights from %s", path)


@torch.no_grad()
def fill_input_channels(weight: Tensor, in_channels: int) -> Tensor:
    """An RGB first-layer kernel adapted to `in_channels`: the channel mean, repeated."""
    if in_channels == weight.shape[1]:
        return weight
    return weight.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1)
