"""The training loop: `train(cfg) -> run_dir`.

Run directory (`cfg.out`):
    config.json      the resolved config
    last.pt          resumable checkpoint (with optimizer state), written after every epoch
    best.pt          the epoch with the best validation mIoU (needs a validation split): the
                     weights, meta, config and metrics only, what prediction needs
    epoch_NNNN.pt    a snapshot every `snapshot_every` epochs
    interrupt.pt     written on Ctrl-C (KeyboardInterrupt): resumable from the last finished step
    metrics.csv      one row per epoch; tb/ holds TensorBoard event files when it is installed

Resuming (`cfg.resume` = run dir or checkpoint file) restores the model, optimizer, scheduler,
AMP scaler, epoch, step, position inside the epoch, RNG states, best score and early-stopping
counter. On the CPU a resumed run is bit-identical to an uninterrupted one, wherever it was
stopped and with any number of loader workers: each epoch's shuffling depends only on the seed,
the rank and the epoch, and each sample's augmentation on those and its position in the epoch.

A NaN or infinite loss raises `TrainingDiverged` (the CLI exits with code 1) before the bad step
is applied, so `last.pt` is still the last good checkpoint.

Distributed: launched by torchrun (see `segworks.engine.distributed`), every rank trains on its
shard of each epoch (batch_size is per process), rank 0 writes every file, and validation sums
the confusion matrices of all ranks.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import (
    ConcatDataset,
    DataLoader,
    Dataset,
    DistributedSampler,
    Sampler,
    Subset,
)
from tqdm import tqdm

import segworks
from segworks import IGNORE_INDEX, losses
from segworks.checkpoint import load_checkpoint, save_checkpoint
from segworks.config import WEIGHT_FILE_KEYS, TrainConfig, model_kwargs_for_checkpoint
from segworks.data.meta import DatasetMeta
from segworks.devices import resolve_device
from segworks.engine import distributed as ddp
from segworks.engine.schedules import build_scheduler
from segworks.errors import SegworksError
from segworks.fileio import save_json, save_text
from segworks.metrics import ConfusionMatrix
from segworks.outputs import clear_run

log = logging.getLogger(__name__)

CSV_FIELDS = (
    "epoch", "step", "lr", "train_loss", "val_miou", "val_pixel_accuracy",
    "val_mean_accuracy", "val_mean_dice", "val_fwiou", "seconds",
)  # fmt: skip
RESUME_ONLY_KEYS = ("optimizer", "scheduler", "scaler", "rng", "batches_done", "bad_epochs")
VAL_SPLIT_SEED = 0  # carving a val split from train never depends on --seed


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


@dataclass
class Data:
    meta: DatasetMeta
    train_set: Dataset
    val_set: Dataset | None
    class_weights: torch.Tensor | None = None


@dataclass
class Run:
    """Everything the loop mutates, in one place (so a checkpoint is one function)."""

    cfg: TrainConfig
    info: ddp.DistInfo
    device: torch.device
    data: Data
    model: nn.Module  # what is called: possibly DDP- or compile-wrapped
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    run_dir: Path
    steps_per_epoch: int
    amp_dtype: torch.dtype | None = None
    epoch: int = 0  # epochs completed
    batches_done: int = 0  # micro-batches consumed in the current epoch (at a step boundary)
    step: int = 0  # optimizer steps completed
    best_miou: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    rng: dict[str, Any] = field(default_factory=dict)  # RNG state at the last step boundary
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)  # BN stats at that boundary
    last_metrics: dict[str, Any] = field(default_factory=dict)
    csv_rows: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    writer: Any = None

    @property
    def bare(self) -> nn.Module:
        return ddp.unwrap(self.model)


def train(cfg: TrainConfig) -> Path:
    """Train a model as `cfg` says; returns the run directory (see the module doc)."""
    device = resolve_device(cfg.device)
    info = ddp.init_from_env(device)
    device = ddp.device_for(info, device)
    previous_determinism = torch.are_deterministic_algorithms_enabled()
    try:
        run = setup(cfg, info, device)
        fit(run)
        return run.run_dir
    finally:
        torch.use_deterministic_algorithms(previous_determinism)
        ddp.cleanup(info)


def setup(cfg: TrainConfig, info: ddp.DistInfo, device: torch.device) -> Run:
    """Data, model, optimiser, schedule and (when resuming) their saved state."""
    configure_determinism(cfg, device)
    torch.manual_seed(cfg.seed + info.rank)  # DDP copies rank 0's initial weights to all ranks
    data = build_data(cfg)
    model = build_train_model(cfg, data.meta).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, model)
    steps_per_epoch = max(1, len(train_loader(cfg, data.train_set, info, 0)) // cfg.accum_steps)
    scheduler = build_scheduler(
        optimizer,
        cfg.schedule,
        total_steps=steps_per_epoch * cfg.epochs,
        steps_per_epoch=steps_per_epoch,
        warmup=cfg.warmup,
    )
    use_amp = cfg.amp and device.type == "cuda"
    amp_dtype = None
    if use_amp:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    wrapped = ddp.wrap_model(
        model, info, device, sync_bn=cfg.sync_bn, find_unused=cfg.freeze_backbone_epochs > 0
    )
    if cfg.compile:
        wrapped = torch.compile(wrapped)
    run = Run(
        cfg=cfg,
        info=info,
        device=device,
        data=data,
        model=wrapped,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        run_dir=Path(cfg.out),
        steps_per_epoch=steps_per_epoch,
        amp_dtype=amp_dtype,
    )
    if cfg.resume:
        restore(run, cfg.resume)
    else:
        run.rng = rng_state(info)
    if info.is_main:
        if not cfg.resume:
            clear_run(run.run_dir)  # --overwrite: nothing of the earlier run survives
        run.run_dir.mkdir(parents=True, exist_ok=True)
        save_json(run_folder_config(cfg, run.run_dir / "config.json"), run.run_dir / "config.json")
        run.writer = tensorboard_writer(cfg, run.run_dir)
    run.buffers = buffer_snapshot(run.bare)
    set_rng_state(run.rng, info)  # last: nothing after this may draw random numbers
    return run


# 1. The loop ------------------------------------------------------------------------------


def fit(run: Run) -> None:
    """Epochs of training and validation with checkpoints, early stopping and Ctrl-C handling."""
    cfg = run.cfg
    log_main(run, "training %s on %s: %d train / %s val images, %d steps per epoch, %d epochs",
             cfg.model, run.device, len(run.data.train_set),
             len(run.data.val_set) if run.data.val_set is not None else "no",
             run.steps_per_epoch, cfg.epochs)  # fmt: skip
    try:
        while run.epoch < cfg.epochs:
            epoch_start = time.monotonic()
            train_loss = train_one_epoch(run)
            run.epoch += 1
            run.batches_done = 0
            metrics = validate(run) if run.data.val_set is not None else {}
            stop = end_of_epoch(run, train_loss, metrics, time.monotonic() - epoch_start)
            if stop or out_of_time(run):
                break
    except KeyboardInterrupt:
        if run.info.is_main:
            path = run.run_dir / "interrupt.pt"
            # no collective here: the other ranks may be anywhere; they restart from rank 0's RNG
            checkpoint = checkpoint_dict(run, {"ranks": [run.rng]})
            # a forward pass of the unfinished step may have moved BatchNorm statistics
            checkpoint["model"].update(run.buffers)
            save_checkpoint(path, checkpoint)
            log.warning(
                "interrupted at step %d (epoch %d); saved %s. Resume with: "
                "segworks train --resume %s",
                run.step, run.epoch + 1, path, run.run_dir,
            )  # fmt: skip
        raise
    finally:
        if run.writer is not None:
            run.writer.close()


def train_one_epoch(run: Run) -> float:
    """One epoch (or the rest of one, when resumed mid-epoch); returns the mean training loss.

    Forward and loss under autocast, backward through the AMP scaler, `accum_steps` micro-batches
    per optimizer step, optional gradient clipping, optimizer step, schedule step, log.
    """
    cfg, model, optimizer, scaler = run.cfg, run.model, run.optimizer, run.scaler
    accum = cfg.accum_steps
    loader = train_loader(cfg, run.data.train_set, run.info, run.epoch, skip=run.batches_done)
    micro_batches = run.steps_per_epoch * accum
    bar = tqdm(
        total=run.steps_per_epoch,
        initial=run.batches_done // accum,
        desc=f"epoch {run.epoch + 1}/{cfg.epochs}",
        unit="step",
        dynamic_ncols=True,
        leave=False,
        disable=not (cfg.progress and run.info.is_main),
    )
    loss_sum = torch.zeros((), device=run.device)
    loss_count = 0
    model.train()
    set_backbone_mode(run)
    optimizer.zero_grad(set_to_none=True)
    for micro, (images, targets) in enumerate(loader, start=run.batches_done):
        if micro >= micro_batches:
            break
        images = images.to(run.device, non_blocking=True)
        targets = targets.to(run.device, non_blocking=True)
        if cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        steps_now = (micro + 1) % accum == 0
        # 1. forward and loss (DDP syncs gradients on the last micro-batch of a step only)
        no_sync = getattr(model, "no_sync", None)
        with no_sync() if (no_sync and not steps_now) else nullcontext():
            with torch.autocast(
                run.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None
            ):
                outputs = model(images)
                loss = losses.criterion(
                    outputs,
                    targets,
                    loss=cfg.loss,
                    aux_weight=cfg.aux_weight,
                    class_weights=run.data.class_weights,
                    ignore_index=IGNORE_INDEX,
                )
            if ddp.any_rank(not bool(torch.isfinite(loss)), run.info, run.device):
                raise diverged(run, micro, float(loss.detach()))
            # 2. backward (scaled for fp16; divided so accumulated gradients are a mean)
            scaler.scale(loss / accum).backward()
        loss_sum += loss.detach()
        loss_count += 1
        if not steps_now:
            continue
        # 3. clip, step, schedule
        if cfg.clip_grad:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(run.bare.parameters(), cfg.clip_grad)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        run.scheduler.step()
        run.step += 1
        run.batches_done = micro + 1
        run.rng = rng_state(run.info)
        run.buffers = buffer_snapshot(run.bare)
        # 4. log
        if run.info.is_main and (run.step % 10 == 0 or micro + 1 == micro_batches):
            lr = optimizer.param_groups[0]["lr"]
            value = float(loss.detach())
            bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}", refresh=False)
            if run.writer is not None:
                run.writer.add_scalar("train/loss", value, run.step)
                run.writer.add_scalar("train/lr", lr, run.step)
        bar.update(1)
        if out_of_time(run):
            break
    bar.close()
    return float(loss_sum) / max(1, loss_count)


def diverged(run: Run, micro: int, value: float) -> TrainingDiverged:
    last = run.run_dir / "last.pt"
    kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written"
    return TrainingDiverged(
        f"loss is {value} at step {run.step + 1} (epoch {run.epoch + 1}, batch {micro + 1}); "
        f"training stopped before applying it and {kept}. Try a lower --lr, --clip-grad or "
        "--no-amp"
    )


def out_of_time(run: Run) -> bool:
    limit = run.cfg.max_minutes
    return limit is not None and time.monotonic() - run.started >= 60.0 * limit


@torch.no_grad()
def validate(run: Run) -> dict[str, Any]:
    """Dataset-level confusion matrix on this rank's share of the val split, summed over ranks."""
    model = run.bare
    meta = run.data.meta
    matrix = ConfusionMatrix(meta.num_classes, device=run.device, class_names=meta.class_names)
    was_training = model.training
    model.eval()
    for images, targets in val_loader(run.cfg, run.data.val_set, run.info):
        images = images.to(run.device, non_blocking=True)
        if run.cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(
            run.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None
        ):
            logits = model(images)["out"]
        matrix.update(predict_labels(logits), targets.to(run.device))
    model.train(was_training)
    ddp.all_reduce_sum(matrix.matrix, run.info)
    return matrix.compute()


def predict_labels(logits: torch.Tensor) -> torch.Tensor:
    """Argmax over classes; one channel (binary) thresholds the logit at 0 (p = 0.5)."""
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).long()
    return logits.argmax(dim=1)


def end_of_epoch(run: Run, train_loss: float, metrics: dict[str, Any], seconds: float) -> bool:
    """Log, write CSV/TensorBoard and checkpoints; returns True when early stopping triggers."""
    cfg = run.cfg
    miou = metrics.get("miou")
    improved = (
        miou is not None
        and not math.isnan(miou)
        and (run.best_miou is None or miou > run.best_miou)
    )
    if improved:
        run.best_miou, run.best_epoch, run.bad_epochs = miou, run.epoch, 0
    elif miou is not None:
        run.bad_epochs += 1
    run.last_metrics = {k: v for k, v in metrics.items() if k != "per_class"}
    rng = gather_rng(run)  # a collective: every rank takes part
    if run.info.is_main:
        lr = run.optimizer.param_groups[0]["lr"]
        record_epoch(run, train_loss, metrics, lr, seconds)
        checkpoint = checkpoint_dict(run, rng)
        save_checkpoint(run.run_dir / "last.pt", checkpoint)
        if improved:
            save_checkpoint(run.run_dir / "best.pt", slim_checkpoint(checkpoint))
        if cfg.snapshot_every and run.epoch % cfg.snapshot_every == 0:
            save_checkpoint(run.run_dir / f"epoch_{run.epoch:04d}.pt", checkpoint)
        best = "" if run.best_miou is None else f" (best {run.best_miou:.4f} @ {run.best_epoch})"
        shown = "-" if miou is None else f"{miou:.4f}"
        log.info("epoch %d/%d  loss %.4f  val mIoU %s%s  lr %.2e  %.1fs",
                 run.epoch, cfg.epochs, train_loss, shown, best, lr, seconds)  # fmt: skip
    ddp.barrier(run.info)
    if cfg.patience is not None and run.bad_epochs >= cfg.patience:
        log_main(run, "early stop: val mIoU has not improved for %d epochs (best %.4f at epoch %d)",
                 run.bad_epochs, run.best_miou, run.best_epoch)  # fmt: skip
        return True
    return False


def record_epoch(run: Run, train_loss: float, metrics: dict, lr: float, seconds: float) -> None:
    row = {
        "epoch": run.epoch,
        "step": run.step,
        "lr": lr,
        "train_loss": train_loss,
        "seconds": round(seconds, 3),
    }
    for key in ("miou", "pixel_accuracy", "mean_accuracy", "mean_dice", "fwiou"):
        if key in metrics:
            row[f"val_{key}"] = metrics[key]
    run.csv_rows.append(row)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(run.csv_rows)
    save_text(buffer.getvalue(), run.run_dir / "metrics.csv")
    if run.writer is not None:
        run.writer.add_scalar("epoch/train_loss", train_loss, run.epoch)
        for key, value in row.items():
            if key.startswith("val_"):
                run.writer.add_scalar(f"epoch/{key}", value, run.epoch)
        run.writer.flush()


# 2. Checkpoints and resuming --------------------------------------------------------------


def checkpoint_dict(run: Run, rng: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint layout of `segworks.checkpoint` plus the state needed to resume."""
    cfg = run.cfg
    meta = run.data.meta.to_dict()
    meta.update(mean=list(cfg.mean), std=list(cfg.std))
    return {
        "model": run.bare.state_dict(),
        "model_name": cfg.model,
        "model_kwargs": model_kwargs_for_checkpoint(
            {"num_classes": run.data.meta.model_channels, **cfg.model_kwargs}
        ),
        "meta": meta,
        "config": cfg.to_dict(),
        "epoch": run.epoch,
        "batches_done": run.batches_done,
        "step": run.step,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "rng": rng,
        "best": {"miou": run.best_miou, "epoch": run.best_epoch},
        "bad_epochs": run.bad_epochs,
        "metrics": run.last_metrics,
        "world_size": run.info.world_size,
        "segworks_version": segworks.__version__,
    }


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
    run.bare.load_state_dict(checkpoint["model"])
    run.optimizer.load_state_dict(checkpoint["optimizer"])
    run.scheduler.load_state_dict(checkpoint["scheduler"])
    if checkpoint.get("scaler"):
        run.scaler.load_state_dict(checkpoint["scaler"])
    run.epoch, run.step = int(checkpoint["epoch"]), int(checkpoint["step"])
    run.batches_done = int(checkpoint.get("batches_done", 0))
    best = checkpoint.get("best") or {}
    run.best_miou, run.best_epoch = best.get("miou"), int(best.get("epoch", 0))
    run.bad_epochs = int(checkpoint.get("bad_epochs", 0))
    run.last_metrics = checkpoint.get("metrics") or {}
    run.rng = checkpoint.get("rng") or rng_state(run.info)
    if int(checkpoint.get("world_size", 1)) != run.info.world_size:
        log.warning("resuming a %s-process run on %d processes: shuffling will differ",
                    checkpoint.get("world_size"), run.info.world_size)  # fmt: skip
    run.csv_rows = read_csv_rows(run.run_dir / "metrics.csv", upto_epoch=run.epoch)
    log_main(run, "resumed from %s: epoch %d, step %d", path, run.epoch, run.step)


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


# 3. Building blocks -----------------------------------------------------------------------


def configure_determinism(cfg: TrainConfig, device: torch.device) -> None:
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not cfg.deterministic
    if cfg.deterministic:
        import os

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def build_data(cfg: TrainConfig) -> Data:
    """Open the source, pick train/val samples, check the class count, build both datasets."""
    from segworks.data import open_source
    from segworks.data.transforms import eval_transforms, train_transforms

    def opened(class_names):
        return open_source(
            cfg.data if cfg.data is not None else cfg.train_images,
            list_file=cfg.train_list,
            image_dir=cfg.train_images,
            label_dir=cfg.train_annotations,
            mask_format=cfg.mask_format or "auto",
            ignore_index=cfg.ignore_index,
            class_names=class_names,
            task=cfg.task if cfg.task != "instance" else None,
            reduce_zero_label=cfg.reduce_zero_label,
        )

    source = opened(cfg.class_names)
    names = declared_class_names(cfg, source.meta)
    if names != source.meta.class_names:
        source = opened(names)
    meta = source.meta
    train_samples, val_samples = split_samples(cfg, source.splits)
    train_set = source.dataset(
        train_samples,
        transform=train_transforms(
            crop_size=cfg.crop_size,
            scale_range=cfg.scale_range,
            hflip=cfg.hflip,
            jitter=cfg.jitter,
            dihedral=cfg.dihedral,
            long_side=cfg.long_side,
            mean=cfg.mean,
            std=cfg.std,
        ),
        skip_bad=cfg.skip_bad,
    )
    val_set = None
    if val_samples:
        transform = eval_transforms(
            size=cfg.eval_size, long_side=cfg.long_side, mean=cfg.mean, std=cfg.std
        )
        val_set = source.dataset(val_samples, transform=transform, skip_bad=cfg.skip_bad)
    for dataset in (train_set, val_set):
        if dataset is not None:
            dataset.check_headers()  # every pair, before the first step (check-data does too)
    weights = median_weights(train_set, meta) if cfg.class_weights == "median" else None
    if cfg.epoch_repeats > 1:
        train_set = ConcatDataset([train_set] * cfg.epoch_repeats)
    return Data(meta=meta, train_set=train_set, val_set=val_set, class_weights=weights)


def declared_class_names(cfg: TrainConfig, meta: DatasetMeta) -> list[str]:
    """The class names to train with: the data's, extended to -n/--num-classes when that is
    more (a subset of VOC lacks some of its 21 classes). Fewer than the data has is an error."""
    wanted = cfg.num_classes
    if wanted is None or wanted in (meta.num_classes, meta.model_channels):
        return list(meta.class_names)
    if meta.task == "binary" or wanted < meta.num_classes:
        raise SegworksError(
            f"-n/--num-classes {wanted} is below what the data holds: it has "
            f"{meta.num_classes} classes ({', '.join(meta.class_names)}); give at least "
            f"{meta.num_classes}"
        )
    log.warning("-n/--num-classes %d: the data has labels up to %d; classes %d..%d are absent",
                wanted, meta.num_classes - 1, meta.num_classes, wanted - 1)  # fmt: skip
    extra = range(meta.num_classes, wanted)
    return list(meta.class_names) + [f"class_{index}" for index in extra]


def split_samples(cfg: TrainConfig, splits: dict[str, list]) -> tuple[list, list]:
    """The train samples and the val samples: the data's own val split, or a carved fraction."""
    if cfg.train_split not in splits:
        raise SegworksError(
            f"the data has no {cfg.train_split!r} split; it has: {', '.join(sorted(splits))}"
        )
    train_samples = list(splits[cfg.train_split])
    if not train_samples:
        raise SegworksError(f"the {cfg.train_split!r} split is empty")
    if cfg.val_name in splits and cfg.val_name != cfg.train_split and splits[cfg.val_name]:
        return train_samples, list(splits[cfg.val_name])
    if cfg.val_split <= 0 or len(train_samples) < 2:
        log.warning("no validation split: best.pt and early stopping are off")
        return train_samples, []
    count = min(len(train_samples) - 1, max(1, round(cfg.val_split * len(train_samples))))
    generator = torch.Generator().manual_seed(VAL_SPLIT_SEED)
    order = torch.randperm(len(train_samples), generator=generator).tolist()
    val = sorted(order[:count])
    keep = sorted(order[count:])
    log.info("validation: %d of %d train images held out (--val-split %.2f)",
             count, len(train_samples), cfg.val_split)  # fmt: skip
    return [train_samples[i] for i in keep], [train_samples[i] for i in val]


def median_weights(train_set, meta: DatasetMeta) -> torch.Tensor:
    labels = (torch.from_numpy(train_set.read(i)[1]) for i in range(len(train_set)))
    if meta.task == "binary":
        labels = (torch.where(t == IGNORE_INDEX, t, (t > 0).long()) for t in labels)
    pixels, images = losses.class_pixel_counts(labels, meta.num_classes)
    weights = losses.median_frequency_weights(pixels, images)
    log.info("median-frequency class weights: %s", [round(float(w), 3) for w in weights])
    return weights


def build_train_model(cfg: TrainConfig, meta: DatasetMeta) -> nn.Module:
    """The registered model with its starting weights: `--pretrained` (a name or a file), or
    the precise forms `--backbone-weights` / `--weights`. Nothing is loaded when resuming."""
    from segworks.models import build_model
    from segworks.models.pretrained import choose
    from segworks.models.weights import load_weights, looks_like_whole_model

    kwargs = dict(cfg.model_kwargs)
    choice = None if cfg.resume else choose(cfg.pretrained, model=cfg.model, model_kwargs=kwargs)
    if cfg.backbone_weights:
        kwargs["backbone_weights"] = cfg.backbone_weights
    weights = cfg.weights
    model = build_model(cfg.model, num_classes=meta.model_channels, **kwargs)
    if choice is not None:
        whole = choice.kind == "model" or (
            choice.kind == "file" and looks_like_whole_model(model, choice.path)
        )
        if whole:
            weights = weights or choice.path
        else:
            kwargs["backbone_weights"] = choice.path
            model = build_model(cfg.model, num_classes=meta.model_channels, **kwargs)
        log.info("pretrained %s: %s (%s)", "model" if whole else "encoder", cfg.pretrained,
                 choice.path)  # fmt: skip
    if weights:
        load_weights(model, weights, reset_classifier=cfg.reset_classifier, auto_reset=True)
    return model


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


def set_backbone_mode(run: Run) -> None:
    """Freeze the backbone's weights for the first `freeze_backbone_epochs` epochs, and keep its
    BatchNorm statistics as loaded while frozen or with `freeze_bn` (call after model.train())."""
    backbone = backbone_of(run.bare)
    if backbone is None:
        return
    frozen = run.epoch < run.cfg.freeze_backbone_epochs
    for parameter in backbone.parameters():
        parameter.requires_grad_(not frozen)
    if frozen or run.cfg.freeze_bn:
        for module in backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


class PositionedSampler(Sampler[tuple[int, int]]):
    """(position in the epoch, dataset index) pairs of `sampler`, after the first `skip`
    (resuming in the middle of an epoch)."""

    def __init__(self, sampler: Sampler[int], skip: int = 0):
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        return iter(list(enumerate(self.sampler))[self.skip :])

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


class SeededSamples(Dataset):
    """Loads the sample of a (position, index) pair with torch's RNG seeded from (`seed`,
    position): an epoch's augmentation is the same whatever the number of loader workers and
    wherever a run was stopped and resumed. The caller's RNG state is left as it was."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        position, index = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + position) % 2**63)
            return self.dataset[index]


def train_loader(
    cfg: TrainConfig, dataset: Dataset, info: ddp.DistInfo, epoch: int, *, skip: int = 0
) -> DataLoader:
    """This epoch's loader: shuffling and every sample's random transforms depend only on
    (seed, rank, epoch, position in the epoch), never on the worker that loads it.

    `skip` counts micro-batches already consumed in this epoch (resume); the loader's batches
    then start where the interrupted run stopped, with the same augmentation.
    """
    sampler = DistributedSampler(
        dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=cfg.seed
    )
    sampler.set_epoch(epoch)
    drop_last = len(sampler) >= cfg.batch_size  # no tiny last batch (BatchNorm) unless needed
    epoch_seed = (cfg.seed * 1_000_003 + epoch) * 1009 + info.rank
    return DataLoader(
        SeededSamples(dataset, epoch_seed),
        batch_size=cfg.batch_size,
        sampler=PositionedSampler(sampler, skip * cfg.batch_size),
        num_workers=cfg.workers,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available() and cfg.device != "cpu",
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(epoch_seed),
    )


def val_loader(cfg: TrainConfig, dataset: Dataset, info: ddp.DistInfo) -> DataLoader:
    """This rank's share of the val images, unpadded; batched only when resized to one size."""
    indices = ddp.shard(list(range(len(dataset))), info)
    return DataLoader(
        Subset(dataset, indices),
        batch_size=cfg.batch_size if cfg.eval_size else 1,
        num_workers=min(cfg.workers, len(indices)),
        pin_memory=torch.cuda.is_available() and cfg.device != "cpu",
        generator=torch.Generator().manual_seed(0),  # never draw from the global RNG
    )


def seed_worker(worker_id: int) -> None:
    """Seed numpy and random in a loader worker from its torch seed (for user transforms)."""
    import random

    import numpy as np

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def tensorboard_writer(cfg: TrainConfig, run_dir: Path):
    if not cfg.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.debug("tensorboard is not installed: no event files")
        return None
    return SummaryWriter(log_dir=str(run_dir / "tb"))


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


def log_main(run: Run, message: str, *args) -> None:
    if run.info.is_main:
        log.info(message, *args)
