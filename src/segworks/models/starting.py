"""Starting weights for a model: what `--pretrained SPEC` means for it.

SPEC is a name of the registry in `segworks.models.pretrained`, "imagenet" (the model's
encoder's ImageNet weights), a file (a segworks checkpoint, a state dict of the model or of its
encoder, or a Chainer / Detectron file, imported once into the hub cache), or "none". This
module sits above the model registry (it builds models); `pretrained` holds data only, so the
model files can read it without an import cycle.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from segworks.errors import SegworksError
from segworks.models.pretrained import (
    WEIGHTS,
    PretrainedWeights,
    cache_path,
    model_encoder,
    names_for,
    resolve_name,
    weights_file,
)

__all__ = ["Choice", "choose", "pretrained_checkpoint", "whole_model_file"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Choice:
    """Resolved `--pretrained`: which part it loads into, the local file, the registry entry."""

    kind: str  # "encoder" | "model" | "file" (a path whose kind the caller tells from its keys)
    path: Path
    entry: PretrainedWeights | None = None


def choose(
    spec: str | None, *, model: str, model_kwargs: dict | None = None, download: bool = True
) -> Choice | None:
    """What `--pretrained SPEC` means for `model`: None for "none", else a Choice.

    SPEC is a registry name, "imagenet" (the model's encoder weights) or a file path.
    """
    if spec is None or spec in ("", "none"):
        return None
    name = resolve_name(spec, model, model_kwargs)
    if name in WEIGHTS:
        entry = WEIGHTS[name]
        _check_fits(entry, model, model_kwargs)
        return Choice(entry.kind, weights_file(entry, download=download), entry)
    path = Path(spec).expanduser()
    if path.is_file():
        return _foreign_choice(path, model, model_kwargs) or Choice("file", path)
    fits = ", ".join(names_for(model, model_kwargs)) or "none registered"
    raise SegworksError(
        f"--pretrained {spec!r}: no such weights name or file; names that fit {model}: {fits} "
        "(all of them: `segworks weights`)"
    )


def _foreign_choice(path: Path, model: str, model_kwargs: dict | None) -> Choice | None:
    """A Chainer or Detectron file, imported once for `model` (or its encoder) into the hub
    cache; None for files in torch's own format."""
    from segworks.checkpoint import save_checkpoint
    from segworks.models.foreign import detect_foreign_format, import_foreign

    kind = detect_foreign_format(path)
    if kind is None:
        return None
    digest = file_digest(path)[:8]
    encoder = model_encoder(model, model_kwargs)
    for target, part in ((model, "model"), (encoder, "encoder")):
        if target is None:
            continue
        cached = (
            Path(torch.hub.get_dir()) / "segworks-imports" / f"{path.stem}-{digest}-{target}.pt"
        )
        if cached.is_file():
            return Choice(part, cached)
        try:
            checkpoint = import_foreign(path, model=target)
        except SegworksError as error:
            last = error
            continue
        cached.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(cached, checkpoint)
        log.warning("%s: %s file imported for %s (%s); it was trained on %s input, and "
                    "training continues with this run's normalisation", path, kind, target,
                    cached, checkpoint.get("meta", {}).get("channel_order", "rgb").upper())  # fmt: skip
        return Choice(part, cached)
    raise SegworksError(f"{path}: a {kind} file that fits neither {model} nor its encoder ({last})")


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file read in 1 MiB pieces (weight files run to hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _check_fits(entry: PretrainedWeights, model: str, model_kwargs: dict | None) -> None:
    encoder = model_encoder(model, model_kwargs)
    fits = entry.fits == (encoder if entry.kind == "encoder" else model)
    if not fits:
        part = f"encoder {entry.fits}" if entry.kind == "encoder" else f"model {entry.fits}"
        names = ", ".join(names_for(model, model_kwargs)) or "none registered"
        raise SegworksError(
            f"--pretrained {entry.name}: these weights fit the {part}, not model {model!r}"
            f"{f' (encoder {encoder})' if encoder else ''}; names that fit it: {names}"
        )


# Whole-model weights as a segworks checkpoint -------------------------------------------------


def pretrained_checkpoint(name: str, *, download: bool = True) -> Path:
    """A segworks checkpoint file of whole-model weights `name` (class names, palette and
    normalisation included), made once beside the downloaded file, so `segworks predict
    --pretrained NAME` and `segworks eval` run it like a trained model."""
    entry = WEIGHTS.get(name)
    if entry is None or entry.kind != "model":
        models = ", ".join(e.name for e in WEIGHTS.values() if e.kind == "model")
        raise SegworksError(f"--pretrained {name!r}: not whole-model weights; these are: {models}")
    source = weights_file(entry, download=download)
    target = cache_path(entry).with_suffix(".segworks.pt")
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_checkpoint(entry, source, target)
    return target


def _write_checkpoint(entry: PretrainedWeights, source: Path, target: Path) -> None:
    from segworks.checkpoint import save_checkpoint
    from segworks.data.meta import voc_palette
    from segworks.models import build_model
    from segworks.models.weights import load_weights

    names = ["background", *entry.class_names[1:]]  # torchvision's "__background__"
    kwargs = {"num_classes": len(names)}
    model = build_model(entry.fits, **kwargs)
    load_weights(model, source)
    meta = {
        "task": entry.task,
        "class_names": names,
        "palette": [list(c) for c in voc_palette(len(names))],
        "ignore_index": 255,
        "mean": list(entry.mean),
        "std": list(entry.std),
    }
    if entry.task == "instance":
        meta["category_ids"] = list(range(1, len(names)))
    checkpoint = {
        "model": model.state_dict(),
        "model_name": entry.fits,
        "model_kwargs": kwargs,
        "meta": meta,
        "config": {"pretrained": entry.name},
    }
    save_checkpoint(target, checkpoint)


def whole_model_file(path: str | Path, model: str, model_kwargs: dict | None = None) -> Path:
    """`--weights FILE`: a Chainer or Detectron file imported for `model` (once, into the hub
    cache); any other file as it is."""
    choice = _foreign_choice(Path(path), model, model_kwargs)
    if choice is None:
        return Path(path)
    if choice.kind != "model":
        raise SegworksError(
            f"--weights {path}: it fits only the encoder of {model}; use --pretrained {path}"
        )
    return choice.path
