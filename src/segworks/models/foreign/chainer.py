"""Chainer snapshots of the RefineNet seed (`serializers.save_npz`) -> `refinenet_seed_*`.

An npz holds one array per parameter, named by the link path: `res4/b3/bn2/gamma`. A trainer
snapshot prefixes them (`updater/model:main/...`); the prefix in front of `res2/a/conv1/W` is
removed and every key outside it (optimizer and trainer state) is ignored.

Mapping table (seed link -> segworks module of `models/refinenet_seed.py`):

| seed (chainer_refinenet, chainer-ResNet v2) | segworks |
|---|---|
| `conv1`, `bn1` | `backbone.conv1`, `backbone.bn1` |
| `res{s}/a/conv{1,2,3}`, `bn{1,2,3}` (s = 2..5) | `backbone.layer{s-1}.0.conv{k}`, `bn{k}` |
| `res{s}/a/conv4`, `bn4` (projection shortcut) | `backbone.layer{s-1}.0.downsample.0`, `.1` |
| `res{s}/b{i}/...` | `backbone.layer{s-1}.{i}...` |
| `pool2`, `pool3`, `pool4`, `pool5` (1x1 adaptation) | `adapt.0` .. `adapt.3` |
| `rfn5`, `rfn4`, `rfn3`, `rfn2` | `refine4`, `refine3`, `refine2`, `refine1` |
| `rfn*/rcu1_1`, `rcu1_2`; `rcu2_1`, `rcu2_2` | `rcus_x.0`, `.1`; `rcus_y.0`, `.1` |
| `rfn*/mrf/conv1`, `mrf/conv2`, `mrf/upsample` | `fusion.conv_x`, `fusion.conv_y`, `fusion.up` |
| `rfn*/crp/conv1`, `crp/conv2` | `crp.blocks.0.1`, `crp.blocks.1.1` |
| `rfn*/rcu3` | `output_conv` |
| `pool6`, `rcu1`, `upsample`, `final` | `reduce4`, `head`, `upsample`, `classifier` |

Parameters: `W` -> weight, `b` -> bias; BatchNormalization `gamma`, `beta`, `avg_mean`,
`avg_var` -> weight, bias, running_mean, running_var. Chainer's BatchNormalization divides by
sqrt(var + 2e-5), torch's by sqrt(var + 1e-5): the import adds the 1e-5 difference to the
running variance, which gives the same function. Ignored, with the reason printed: BN's `N`
(Chainer's count of averaged batches), `rfn5`'s second-path links and `rcu2` (defined by the seed,
never called by its forward).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from segworks.errors import DataError
from segworks.models.foreign.common import (
    CAFFE_BGR_MEAN,
    ImportReport,
    as_tensor,
    bgr_meta,
    fill_model,
)

__all__ = ["import_chainer", "read_npz", "seed_refinenet_key"]

CHAINER_BN_EPS = 2e-5
TORCH_BN_EPS = 1e-5
_ANCHOR = "res2/a/conv1/W"
_DEPTHS = {6: "resnet50", 23: "resnet101", 36: "resnet152"}  # res4 blocks -> backbone
_PARAMS = {
    "W": "weight",
    "b": "bias",
    "gamma": "weight",
    "beta": "bias",
    "avg_mean": "running_mean",
    "avg_var": "running_var",
}
_TOP = {"pool2": "adapt.0", "pool3": "adapt.1", "pool4": "adapt.2", "pool5": "adapt.3"}
_TOP |= {"pool6": "reduce4", "upsample": "upsample", "final": "classifier"}
_BLOCKS = {"rfn5": "refine4", "rfn4": "refine3", "rfn3": "refine2", "rfn2": "refine1"}
_INSIDE = {
    "rcu1_1": "rcus_x.0",
    "rcu1_2": "rcus_x.1",
    "rcu2_1": "rcus_y.0",
    "rcu2_2": "rcus_y.1",
    "mrf/conv1": "fusion.conv_x",
    "mrf/conv2": "fusion.conv_y",
    "mrf/upsample": "fusion.up",
    "crp/conv1": "crp.blocks.0.1",
    "crp/conv2": "crp.blocks.1.1",
    "rcu3": "output_conv",
}
_UNUSED = {
    "rcu2": "defined by the seed but never called (its forward applies rcu1 twice)",
    "rfn5/rcu2_": "the 1/32 RefineNet block has one path; the seed never calls its second path",
    "rfn5/mrf/conv2": "the 1/32 RefineNet block has one path; the seed never calls its fusion",
    "rfn5/mrf/upsample": "the 1/32 RefineNet block has one path; the seed never calls it",
}


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of an npz file, by name (pickled objects are refused)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as error:
        raise DataError(path, f"not a readable Chainer npz file ({error})") from error


def _backbone_key(link: str) -> str | None:
    if link in ("conv1", "bn1"):
        return f"backbone.{link}"
    match = re.fullmatch(r"res([2-5])/(a|b(\d+))/(conv|bn)([1-4])", link)
    if match is None:
        return None
    stage, block, index, kind, number = match.groups()
    prefix = f"backbone.layer{int(stage) - 1}.{0 if block == 'a' else int(index)}"
    if number == "4":
        return f"{prefix}.downsample.{0 if kind == 'conv' else 1}"
    return f"{prefix}.{kind}{number}"


def _module_key(link: str) -> str | None:
    if link in _TOP:
        return _TOP[link]
    head, _, rest = link.partition("/")
    if head == "rcu1" and rest in ("conv1", "conv2"):
        return f"head.{rest}"
    if head not in _BLOCKS:
        return None
    unit, _, conv = rest.rpartition("/") if rest.startswith("rcu") else (rest, "", "")
    if unit not in _INSIDE or conv not in ("", "conv1", "conv2"):
        return None
    return f"{_BLOCKS[head]}.{_INSIDE[unit]}" + (f".{conv}" if conv else "")


def seed_refinenet_key(key: str) -> str | None:
    """The segworks state-dict key of one seed npz key, or None if it has no counterpart."""
    link, _, param = key.rpartition("/")
    if param not in _PARAMS:
        return None
    target = _backbone_key(link) or _module_key(link)
    return f"{target}.{_PARAMS[param]}" if target is not None else None


def _strip_prefix(arrays: dict[str, np.ndarray], path: str | Path, report: ImportReport):
    anchors = [key for key in arrays if key.endswith(_ANCHOR)]
    if not anchors:
        raise DataError(
            path, f"not a RefineNet seed snapshot: no key ends with {_ANCHOR!r} (ResNet conv1)"
        )
    prefix = anchors[0][: -len(_ANCHOR)]
    model = {}
    for key, value in arrays.items():
        if key.startswith(prefix):
            model[key[len(prefix) :]] = value
        else:
            report.ignore(key, f"outside the model ({prefix!r}): trainer or optimizer state")
    return model


def _seed_backbone(arrays: dict[str, np.ndarray], path: str | Path) -> str:
    blocks = 1 + len({key.split("/")[1] for key in arrays if re.match(r"res4/b\d+/", key)})
    if blocks not in _DEPTHS:
        raise DataError(path, f"res4 has {blocks} blocks; expected 6, 23 or 36 (ResNet-50/101/152)")
    return _DEPTHS[blocks]


def _resolve_model(name: str, backbone: str, path: str | Path) -> str:
    wanted = f"refinenet_seed_{backbone}"
    if name in ("refinenet", "refinenet_seed"):
        return wanted
    if name.removeprefix("refinenet_seed_") == backbone or name == f"refinenet_{backbone}":
        return wanted
    raise DataError(
        path,
        f"the snapshot is the seed's RefineNet on {backbone}; --model {name!r} cannot take it"
        f" (expected {wanted} or refinenet_{backbone})",
    )


def _convert(arrays: dict[str, np.ndarray], report: ImportReport) -> dict[str, Tensor]:
    state = {}
    for key, value in arrays.items():
        unused = next((why for prefix, why in _UNUSED.items() if key.startswith(prefix)), None)
        target = None if unused else seed_refinenet_key(key)
        if target is None:
            reason = unused or (
                "Chainer's count of averaged batches (torch keeps its own)"
                if key.endswith("/N")
                else "no counterpart in the seed's network"
            )
            report.ignore(key, reason)
            continue
        if key.endswith("/avg_var"):
            value = value + (CHAINER_BN_EPS - TORCH_BN_EPS)
        state[target] = as_tensor(value.astype(np.float32))
        report.mapped.append((key, target))
    return state


def import_chainer(
    path: str | Path, *, model: str, channel_order: str = "bgr", **model_kwargs: Any
) -> tuple[dict[str, Any], ImportReport]:
    """(segworks checkpoint, report) of a RefineNet seed snapshot.

    The class count and width come from the file; `model` names the target (see `FORMATS`).
    `channel_order` is what the snapshot's model was fed: BGR minus Caffe's means (the
    chainer-ResNet convention) unless you trained it on RGB.
    """
    from segworks.models import build_model

    report = ImportReport(str(path))
    arrays = _strip_prefix(read_npz(path), path, report)
    name = _resolve_model(model, _seed_backbone(arrays, path), path)
    kwargs = {
        "num_classes": int(arrays["final/W"].shape[0]) if "final/W" in arrays else 21,
        "features": int(arrays["pool2/W"].shape[0]) if "pool2/W" in arrays else 256,
    } | model_kwargs
    network = build_model(name, **kwargs)
    fill_model(network, _convert(arrays, report), path, report)
    mean = CAFFE_BGR_MEAN if channel_order == "bgr" else CAFFE_BGR_MEAN[::-1]
    meta = bgr_meta(kwargs["num_classes"], mean, f"chainer-npz:{Path(path).name}")
    meta["channel_order"] = channel_order
    checkpoint = {
        "model": network.state_dict(),
        "model_name": name,
        "model_kwargs": kwargs,
        "meta": meta,
    }
    return checkpoint, report
