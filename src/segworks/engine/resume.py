"""Checkpoints of a training run, resuming from them, and the RNG states they carry.

`checkpoint_dict` is the layout of `segworks.checkpoint` plus the state a resumed run needs
(optimizer, scheduler, AMP scaler, epoch, step, position in the epoch, every rank's RNG state,
best score, early-stopping counter); `slim_checkpoint` is what prediction needs (best.pt). With
`ema_decay` "model" holds the averaged weights (validated and predicted with) and "train_model"
the trained ones. The layout is the same for every task: the task adapter gives the model
kwargs and the meta.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

import segworks
from segworks.checkpoint import load_checkpoint
from segworks.config import WEIGHT_FILE_KEYS, TrainConfig, model_kwargs_for_checkpoint
from segworks.engine import distributed as ddp
from segworks.errors import SegworksError

if TYPE_CHECKING:
    from segworks.engine.train import Run

log = logging.getLogger(__name__)

RESUME_ONLY_KEYS = ("train_model", "optimizer", "scheduler", "scaler", "rng", "batches_done",
                    "bad_epochs")  # fmt: skip


def checkpoint_dict(run: Run, rng: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint layout of `segworks.checkpoint` plus the state needed to resume."""
    cfg = run.cfg
    checkpoint = {
        "model": (run.bare if run.ema is None else run.ema).state_dict(),
        "model_name": cfg.model,
        "model_kwargs": model_kwargs_for_checkpoint(run.task.model_kwargs(cfg, run.data)),
        "meta": run.task.checkpoint_meta(cfg, run.data),
        "config": cfg.to_dict(),
        "epoch": run.epoch,
        "batches_done": run.batches_done,
        "step": run.step,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "rng": rng,
        "best": {"metric": run.task.best_metric, "score": run.best_score, "epoch": run.best_epoch},
        "bad_epochs": run.bad_epochs,
        "metrics": run.last_metrics,
        "world_size": run.info.world_size,
        "segworks_version": segworks.__version__,
    }
    if run.ema is not None:  # "model" is the average (what predicts); these weights train on
        checkpoint["train_model"] = run.bare.state_dict()
    return checkpoint


def slim_checkpoint(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """What prediction and evaluation need (weights, meta, config, metrics), without the
    optimizer, scheduler and RNG state that only resuming needs (those stay in last.pt)."""
    return {key: value for key, value in checkpoint.items() if key not in RESUME_ONLY_KEYS}


def resume_path(path: str | Path) -> Path:
    """A checkpoint file, or for a run dir the newer of interrupt.pt and last.pt (by step)."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise SegworksError(f"--resume {path}: no such run directory or checkpoint file")
    candidates = [p for p in (path / "interrupt.pt", path / "last.pt") if p.is_file()]
    if not candidates:
        raise SegworksError(f"--resume {path}: the run directory has no last.pt or interrupt.pt")
    return max(
        candidates,
        key=lambda p: (int(load_checkpoint(p).get("step", -1)), p.name == "interrupt.pt"),
    )


def restore(run: Run, path: str | Path) -> None:
    path = resume_path(path)
    checkpoint = load_checkpoint(path)
    for key in ("model", "optimizer", "scheduler", "epoch", "step"):
        if key not in checkpoint:
            raise SegworksError(
                f"--resume {path}: not a resumable segworks checkpoint (no {key!r})"
            )
    run.bare.load_state_dict(checkpoint.get("train_model", checkpoint["model"]))
    if run.ema is not None:
        run.ema.load_state_dict(checkpoint["model"])
    run.optimizer.load_state_dict(checkpoint["optimizer"])
    run.scheduler.load_state_dict(checkpoint["scheduler"])
    if checkpoint.get("scaler"):
        run.scaler.load_state_dict(checkpoint["scaler"])
    run.epoch, run.step = int(checkpoint["epoch"]), int(checkpoint["step"])
    run.batches_done = int(checkpoint.get("batches_done", 0))
    best = checkpoint.get("best") or {}
    run.best_score, run.best_epoch = best.get("score", best.get("miou")), int(best.get("epoch", 0))
    run.bad_epochs = int(checkpoint.get("bad_epochs", 0))
    run.last_metrics = checkpoint.get("metrics") or {}
    run.rng = checkpoint.get("rng") or rng_state(run.info)
    if int(checkpoint.get("world_size", 1)) != run.info.world_size:
        log.warning("resuming a %s-process run on %d processes: shuffling will differ",
                    checkpoint.get("world_size"), run.info.world_size)  # fmt: skip
    run.csv_rows = read_csv_rows(run.run_dir / "metrics.csv", upto_epoch=run.epoch)
    if run.info.is_main:
        log.info("resumed from %s: epoch %d, step %d", path, run.epoch, run.step)


def read_csv_rows(path: Path, *, upto_epoch: int) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return [row for row in csv.DictReader(handle) if int(row["epoch"]) <= upto_epoch]


def buffer_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the saved buffers (BatchNorm statistics) as they are now."""
    names = set(model.state_dict())
    return {name: b.detach().clone() for name, b in model.named_buffers() if name in names}


def rng_state(info: ddp.DistInfo) -> dict[str, Any]:
    """This rank's RNG states (torch CPU, and CUDA when initialised)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def gather_rng(run: Run) -> dict[str, Any]:
    """{"ranks": [state of rank 0, rank 1, ...]}: every rank's state at the last step boundary."""
    if not run.info.enabled:
        return {"ranks": [run.rng]}
    states: list[Any] = [None] * run.info.world_size
    dist.all_gather_object(states, {k: v.cpu() for k, v in run.rng.items()})
    return {"ranks": states}


def set_rng_state(rng: dict[str, Any], info: ddp.DistInfo) -> None:
    states = rng.get("ranks", [rng])
    state = states[info.rank] if info.rank < len(states) else states[0]
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def run_folder_config(cfg: TrainConfig, path: Path) -> dict[str, Any]:
    """config.json: the checkpoint's config plus the weight files the run started from (a
    checkpoint drops them; a resumed run keeps those its first start named in `path`)."""
    data = cfg.to_dict()
    data["model_kwargs"] = {k: _plain_path(v) for k, v in cfg.model_kwargs.items()}
    for key in WEIGHT_FILE_KEYS:
        if getattr(cfg, key, None) is not None:
            data[key] = _plain_path(getattr(cfg, key))
    if cfg.resume and path.is_file():
        before = json.loads(path.read_text(encoding="utf-8"))
        for key in WEIGHT_FILE_KEYS:
            if data.get(key) is None and before.get(key) is not None:
                data[key] = before[key]
            if key in before.get("model_kwargs", {}):
                data["model_kwargs"].setdefault(key, before["model_kwargs"][key])
    return data


def _plain_path(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value
