"""Weights from other tools: the seeds' Chainer snapshots and Detectron's pickles.

`detect_foreign_format(path)` names a file's format ("chainer-npz", "detectron-pkl") or returns
None; `import_foreign(path, model=NAME)` returns a segworks checkpoint dict (see
`segworks.checkpoint`) whose meta records the input the original model expects (channel order,
mean and std), so `segworks predict` feeds it what the original tool fed it.

Every key of the file is accounted for: `ImportReport` lists what mapped to which segworks key
and what was ignored and why; a model weight that no key fills raises DataError instead of being
left at its random initialisation.
"""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from segworks.errors import DataError

__all__ = [
    "FORMATS",
    "ImportReport",
    "detect_foreign_format",
    "fill_model",
    "import_foreign",
]

logger = logging.getLogger(__name__)

# format -> (what it reads, the segworks models it loads into); `segworks weights` lists these.
FORMATS: dict[str, tuple[str, str]] = {
    "chainer-npz": (
        "Chainer save_npz snapshot of the RefineNet seed (chainer_refinenet)",
        "refinenet_seed_resnet50/101/152 (--model refinenet_resnet101 resolves to it)",
    ),
    "detectron-pkl": (
        "Detectron (Caffe2) pickle: ImageNet R-50/R-101, model_final.pkl of Mask R-CNN C4/FPN",
        "resnet50/resnet101 (an encoder state dict), maskrcnn_r50_c4/r101_c4/r50_fpn/r101_fpn",
    ),
}

# Caffe's ImageNet means on the 0..255 scale, in BGR order (chainer-ResNet, MSRA ResNet).
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


@dataclass
class ImportReport:
    """What happened to every key of a foreign file."""

    source: str
    mapped: list[tuple[str, str]] = field(default_factory=list)  # (file key, segworks key)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (file key, reason)

    def ignore(self, key: str, reason: str) -> None:
        self.ignored.append((key, reason))

    def lines(self) -> list[str]:
        """A summary: counts, then each ignored key with its reason."""
        out = [f"{self.source}: {len(self.mapped)} weights mapped, {len(self.ignored)} ignored"]
        out += [f"  ignored {key}: {reason}" for key, reason in self.ignored]
        return out


def detect_foreign_format(path: str | Path) -> str | None:
    """ "chainer-npz" for a numpy .npz archive, "detectron-pkl" for a pickle, else None."""
    path = Path(path)
    if not path.is_file():
        return None
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head.startswith(b"PK") and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if names and all(name.endswith(".npy") for name in names):
            return "chainer-npz"
        return None  # a torch.save zip file holds data.pkl, not .npy members
    if head[:1] == b"\x80" or path.suffix == ".pkl":
        return "detectron-pkl"
    return None


def import_foreign(path: str | Path, *, model: str, **model_kwargs: Any) -> dict[str, Any]:
    """A segworks checkpoint dict from a foreign weight file (the format is detected)."""
    checkpoint, report = import_with_report(path, model=model, **model_kwargs)
    for line in report.lines():
        logger.info("%s", line)
    return checkpoint


def import_with_report(
    path: str | Path, *, model: str, **model_kwargs: Any
) -> tuple[dict[str, Any], ImportReport]:
    """As `import_foreign`, returning the report too (the CLI prints it)."""
    if not Path(path).is_file():
        raise DataError(path, "weight file not found")
    kind = detect_foreign_format(path)
    if kind == "chainer-npz":
        from segworks.models.foreign.chainer import import_chainer

        return import_chainer(path, model=model, **model_kwargs)
    if kind == "detectron-pkl":
        from segworks.models.foreign.detectron import import_detectron

        return import_detectron(path, model=model, **model_kwargs)
    raise DataError(
        path, f"not a weight file segworks can import; expected one of {sorted(FORMATS)}"
    )


def as_tensor(array: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).clone()


def fill_model(
    module: nn.Module, state: dict[str, Tensor], path: str | Path, report: ImportReport
) -> None:
    """Load `state` into `module`; refuse (DataError) when a weight would stay random.

    A target key the module does not have, or a shape that differs, is an error too: the
    mapping table and the file disagree, and the import would not reproduce the original.
    """
    expected = module.state_dict()
    unknown = [key for key in state if key not in expected]
    wrong = [
        f"{key} {tuple(state[key].shape)} in file vs {tuple(expected[key].shape)} in model"
        for key in state
        if key in expected and state[key].shape != expected[key].shape
    ]
    missing = [
        key for key in expected if key not in state and not key.endswith("num_batches_tracked")
    ]
    problems = [
        f"{len(items)} {title}: {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}"
        for title, items in (
            ("weights would be left at random (no key of the file fills them)", missing),
            ("mapped keys the model does not have", unknown),
            ("shape mismatches", wrong),
        )
        if items
    ]
    if problems:
        raise DataError(path, f"cannot import into {type(module).__name__}: " + "; ".join(problems))
    module.load_state_dict(state, strict=False)


def bgr_meta(num_classes: int, mean_bgr: tuple[float, ...], source: str) -> dict[str, Any]:
    """Checkpoint meta for a model that takes BGR 0..255 input minus `mean_bgr` (no std).

    segworks normalises (x / 255 - mean) / std, so mean = m / 255 and std = 1 / 255 give
    x - m exactly (up to float rounding)."""
    return {
        "task": "semantic" if num_classes > 1 else "binary",
        "class_names": [f"class_{index}" for index in range(max(num_classes, 2))],
        "palette": [],
        "ignore_index": 255,
        "channel_order": "bgr",
        "mean": [value / 255 for value in mean_bgr],
        "std": [1 / 255] * 3,
        "imported_from": source,
    }
