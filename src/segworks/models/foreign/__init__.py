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
from pathlib import Path
from typing import Any

from segworks.errors import DataError
from segworks.models.foreign.common import ImportReport  # noqa: F401  (re-exported)

__all__ = [
    "FORMATS",
    "ImportReport",
    "detect_foreign_format",
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
