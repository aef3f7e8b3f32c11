"""The one training loop of every task: `train(cfg) -> run_dir`.

What differs between semantic (and binary) and instance segmentation (datasets, model, loss of
a batch, validation metrics, the metric that picks best.pt) is asked of a task adapter
(`segworks.engine.tasks`); everything else (optimiser, schedule, accumulation, clipping, AMP,
early stopping, time limit, checkpoints, resuming, DDP) is this module's, the same for all.

Run directory (`cfg.out`):
    config.json      the resolved config
    last.pt          resumable checkpoint (with optimizer state), written after every epoch
    best.pt          the epoch with the best validation score (mIoU; mask AP for instances;
                     needs a validation split): weights, meta, config and metrics only
    epoch_NNNN.pt    a snapshot every `snapshot_every` epochs
    interrupt.pt     written on Ctrl-C (KeyboardInterrupt): resumable from the last finished step
    metrics.csv      one row per epoch; tb/ holds TensorBoard event files when it is installed

Resuming (`cfg.resume` = run dir or checkpoint file) restores the model, optimizer, scheduler,
AMP scaler, epoch, step, position inside the epoch, RNG states, best score and early-stopping
counter (`segworks.engine.resume`). On the CPU a resumed run is bit-identical to an
uninterrupted one, wherever it was stopped and with any number of loader workers
(`segworks.engine.loaders`).

`max_minutes` bounds training and validation together: validation stops at the limit (scoring
the images it saw) and the run ends after that epoch's checkpoint.

With `ema_decay` > 0 a moving average of the weights (`segworks.engine.ema`) is validated, picks
best.pt and is the checkpoints' "model"; the trained weights travel in last.pt for resuming.

A NaN or infinite loss raises `TrainingDiverged` (the CLI exits with code 1) before the bad step
is applied, so `last.pt` is still the last good checkpoint.

Distributed: launched by torchrun (see `segworks.engine.distributed`), every rank trains on its
shard of each epoch (batch_size is per process), rank 0 writes every file, and validation
combines the evaluators of all ranks.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from segworks.checkpoint import save_checkpoint
from segworks.config import TrainConfig
from segworks.devices import resolve_device
from segworks.engine import distributed as ddp
from segworks.engine.budget import budget_clock, refit_steps
from segworks.engine.ema import ema_copy, ema_update
from segworks.engine.evaluators import inference_on_dataset
from segworks.engine.instance import InstanceTask
from segworks.engine.loaders import train_loader, val_loader
from segworks.engine.optim import build_optimizer, set_backbone_mode
from segworks.engine.resume import (
    buffer_snapshot,
    checkpoint_dict,
    gather_rng,
    restore,
    resume_path,
    rng_state,
    run_folder_config,
    set_rng_state,
    slim_checkpoint,
)
from segworks.engine.schedules import build_scheduler
from segworks.engine.semantic import (
    SemanticTask,
    build_data,
    build_train_model,
    predict_labels,
    split_samples,
)
from segworks.engine.tasks import Data
from segworks.fileio import save_json, save_text
from segworks.outputs import clear_run

log = logging.getLogger(__name__)

__all__ = [
    "TrainingDiverged", "Run", "train", "setup", "fit", "build_optimizer", "resolve_device",
    "resume_path", "build_data", "build_train_model", "predict_labels", "split_samples",
]  # fmt: skip


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


@dataclass
class Run:
    """Everything the loop mutates, in one place (so a checkpoint is one function)."""

    cfg: TrainConfig
    task: Any  # the task adapter (segworks.engine.tasks)
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
    best_score: float | None = None  # of the task's best_metric (mIoU, mask AP)
    best_epoch: int = 0
    bad_epochs: int = 0
    rng: dict[str, Any] = field(default_factory=dict)  # RNG state at the last step boundary
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)  # BN stats at that boundary
    last_metrics: dict[str, Any] = field(default_factory=dict)
    csv_rows: list[dict[str, Any]] = field(default_factory=list)
    started: float = 0.0  # budget_clock() when the run was set up
    writer: Any = None
    ema: nn.Module | None = None  # the moving average of the weights (cfg.ema_decay > 0)

    @property
    def bare(self) -> nn.Module:
        return ddp.unwrap(self.model)


def task_for(cfg: TrainConfig):
    """The adapter of `cfg.task` (semantic and binary data share one)."""
    return InstanceTask() if cfg.task == "instance" else SemanticTask()


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
    task = task_for(cfg)
    data = task.build_data(cfg)
    model = task.build_model(cfg, data).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, model)
    loader = train_loader(cfg, data.train_set, info, 0, collate=task.collate)
    steps_per_epoch = max(1, len(loader) // cfg.accum_steps)
    amp_dtype, scaler = amp_settings(cfg, device)
    unused_head = cfg.model_kwargs.get("presence_head") and not cfg.presence_weight
    find_unused = cfg.freeze_backbone_epochs > 0 or bool(unused_head)
    wrapped = ddp.wrap_model(model, info, device, sync_bn=cfg.sync_bn, find_unused=find_unused)
    run = Run(
        cfg=cfg,
        task=task,
        info=info,
        device=device,
        data=data,
        model=torch.compile(wrapped) if cfg.compile else wrapped,
        optimizer=optimizer,
        scheduler=build_schedule(cfg, optimizer, steps_per_epoch),
        scaler=scaler,
        run_dir=Path(cfg.out),
        steps_per_epoch=steps_per_epoch,
        amp_dtype=amp_dtype,
        started=budget_clock(cfg)(),
        ema=ema_copy(model) if cfg.ema_decay else None,  # copied after DDP synced the ranks
    )
    start_run(run)
    return run


def build_schedule(cfg: TrainConfig, optimizer, steps_per_epoch: int):
    return build_scheduler(
        optimizer,
        cfg.schedule,
        total_steps=planned_steps(cfg, steps_per_epoch),
        steps_per_epoch=steps_per_epoch,
        warmup=cfg.warmup,
        milestones=cfg.milestones,
    )


def planned_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """The run's optimizer steps: `epochs` of `steps_per_epoch`, at most `max_steps`."""
    return min(steps_per_epoch * cfg.epochs, cfg.max_steps or steps_per_epoch * cfg.epochs)


def amp_settings(cfg: TrainConfig, device: torch.device):
    """The autocast dtype (None: no AMP; only ever on CUDA) and the gradient scaler."""
    amp_dtype = None
    if cfg.amp and device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return amp_dtype, torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)


def start_run(run: Run) -> None:
    """Restore a resumed run's state, prepare the run folder, set the RNG for the first step."""
    cfg, info = run.cfg, run.info
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


# 1. The loop ------------------------------------------------------------------------------


def fit(run: Run) -> None:
    """Epochs of training and validation with checkpoints, early stopping and Ctrl-C handling."""
    cfg = run.cfg
    log_main(run, "training %s on %s: %d train / %s val images, %d steps per epoch, %d epochs",
             cfg.model, run.device, len(run.data.train_set),
             len(run.data.val_set) if run.data.val_set is not None else "no",
             run.steps_per_epoch, cfg.epochs)  # fmt: skip
    try:
        clock = budget_clock(cfg)
        while run.epoch < cfg.epochs and run.step < planned_steps(cfg, run.steps_per_epoch):
            epoch_start, epoch_clock = time.monotonic(), clock()
            train_loss = train_one_epoch(run)
            run.epoch += 1
            run.batches_done = 0
            val_clock = clock()
            metrics = validate(run) if run.data.val_set is not None else {}
            if cfg.fit_minutes and run.epoch == 1 and not cfg.resume:
                train_seconds, val_seconds = val_clock - epoch_clock, clock() - val_clock
                refit_steps(run, train_seconds, val_seconds, build_schedule)
            stop = end_of_epoch(run, train_loss, metrics, time.monotonic() - epoch_start)
            if stop or out_of_time(run):
                break
    except KeyboardInterrupt:
        if run.info.is_main:
            path = run.run_dir / "interrupt.pt"
            # no collective here: the other ranks may be anywhere; they restart from rank 0's RNG
            checkpoint = checkpoint_dict(run, {"ranks": [run.rng]})
            # a forward pass of the unfinished step may have moved BatchNorm statistics
            checkpoint["model" if run.ema is None else "train_model"].update(run.buffers)
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
    loader = train_loader(
        cfg,
        run.data.train_set,
        run.info,
        run.epoch,
        skip=run.batches_done,
        collate=run.task.collate,
    )
    steps = epoch_steps(run)
    micro_batches = steps * accum
    bar = tqdm(
        total=steps,
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
    set_backbone_mode(run.bare, cfg, run.epoch)
    optimizer.zero_grad(set_to_none=True)
    for micro, (inputs, targets) in enumerate(loader, start=run.batches_done):
        if micro >= micro_batches:
            break
        inputs = run.task.inputs_to(inputs, run.device, cfg)
        targets = run.task.targets_to(targets, run.device)
        steps_now = (micro + 1) % accum == 0
        # 1. forward and loss (DDP syncs gradients on the last micro-batch of a step only)
        no_sync = getattr(model, "no_sync", None)
        with no_sync() if (no_sync and not steps_now) else nullcontext():
            with torch.autocast(
                run.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None
            ):
                loss = run.task.loss(model, inputs, targets, cfg, run.data)
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
        if run.ema is not None:
            ema_update(run.ema, run.bare, cfg.ema_decay, run.step)
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


def epoch_steps(run: Run) -> int:
    """Optimizer steps of the current epoch: all of them, or what `max_steps` leaves."""
    before = run.step - run.batches_done // run.cfg.accum_steps  # steps of earlier epochs
    left = planned_steps(run.cfg, run.steps_per_epoch) - before
    return max(1, min(run.steps_per_epoch, left))


def diverged(run: Run, micro: int, value: float) -> TrainingDiverged:
    last = run.run_dir / "last.pt"
    kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written"
    return TrainingDiverged(
        f"loss is {value} at step {run.step + 1} (epoch {run.epoch + 1}, batch {micro + 1}); "
        f"training stopped before applying it and {kept}. Try a lower --lr, --clip-grad or "
        "--no-amp"
    )


def out_of_time(run: Run) -> bool:
    """True once --max-minutes have passed since the run started (by `budget_clock`)."""
    limit = run.cfg.max_minutes
    return limit is not None and budget_clock(run.cfg)() >= run.started + 60.0 * limit


def validate(run: Run) -> dict[str, Any]:
    """The task's evaluator over this rank's share of the val split, combined over ranks; on
    one process it stops at the --max-minutes limit (scoring the images it saw). With
    `ema_decay` the moving average is what is scored."""
    model, task = (run.bare if run.ema is None else run.ema), run.task
    was_training = model.training
    model.eval()

    def predict(inputs, targets):
        inputs = task.inputs_to(inputs, run.device, run.cfg)
        with torch.autocast(
            run.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None
        ):
            return task.predict(model, inputs, task.targets_to(targets, run.device))

    batches = val_loader(run.cfg, run.data.val_set, run.info, collate=task.collate)
    stop = None if run.info.enabled else (lambda: out_of_time(run))
    metrics = inference_on_dataset(
        predict, batches, task.evaluator(run.data, run.device), stop=stop, info=run.info
    )
    model.train(was_training)
    return metrics


def end_of_epoch(run: Run, train_loss: float, metrics: dict[str, Any], seconds: float) -> bool:
    """Log, write CSV/TensorBoard and checkpoints; returns True when early stopping triggers."""
    cfg = run.cfg
    improved = update_best(run, metrics)
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
        log_epoch(run, train_loss, run.task.score(metrics), lr, seconds)
    ddp.barrier(run.info)
    if cfg.patience is not None and run.bad_epochs >= cfg.patience:
        log_main(run, "early stop: val %s has not improved for %d epochs (best %.4f at epoch %d)",
                 run.task.best_metric, run.bad_epochs, run.best_score, run.best_epoch)  # fmt: skip
        return True
    return False


def update_best(run: Run, metrics: dict[str, Any]) -> bool:
    """Count the epoch for early stopping; True when its score beats every earlier one."""
    score = run.task.score(metrics)
    if score is None:
        return False
    improved = not math.isnan(score) and (run.best_score is None or score > run.best_score)
    if improved:
        run.best_score, run.best_epoch, run.bad_epochs = score, run.epoch, 0
    else:
        run.bad_epochs += 1
    return improved


def log_epoch(run: Run, train_loss: float, score: float | None, lr: float, seconds: float):
    best = "" if run.best_score is None else f" (best {run.best_score:.4f} @ {run.best_epoch})"
    shown = "-" if score is None else f"{score:.4f}"
    log.info("epoch %d/%d  loss %.4f  val %s %s%s  lr %.2e  %.1fs", run.epoch, run.cfg.epochs,
             train_loss, run.task.best_metric, shown, best, lr, seconds)  # fmt: skip


def record_epoch(run: Run, train_loss: float, metrics: dict, lr: float, seconds: float) -> None:
    row = {"epoch": run.epoch, "step": run.step, "lr": lr, "train_loss": train_loss}
    row |= run.task.csv_values(metrics) | {"seconds": round(seconds, 3)}
    run.csv_rows.append(row)
    buffer = io.StringIO()
    fields = ("epoch", "step", "lr", "train_loss", *run.task.csv_fields, "seconds")
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(run.csv_rows)
    save_text(buffer.getvalue(), run.run_dir / "metrics.csv")
    if run.writer is not None:
        run.writer.add_scalar("epoch/train_loss", train_loss, run.epoch)
        for key, value in row.items():
            if key.startswith("val_") and value is not None:
                run.writer.add_scalar(f"epoch/{key}", value, run.epoch)
        run.writer.flush()


# 3. Building blocks -----------------------------------------------------------------------


def configure_determinism(cfg: TrainConfig, device: torch.device) -> None:
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not cfg.deterministic
    if cfg.deterministic:
        import os

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def tensorboard_writer(cfg: TrainConfig, run_dir: Path):
    if not cfg.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.debug("tensorboard is not installed: no event files")
        return None
    return SummaryWriter(log_dir=str(run_dir / "tb"))


def log_main(run: Run, message: str, *args) -> None:
    if run.info.is_main:
        log.info(message, *args)
