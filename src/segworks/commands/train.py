"""`segworks train`: flags -> TrainConfig -> segworks.engine.train.train.

The RefineNet seed's flags work as they did (`-g 0 -tt train.txt -tr images/ -ta annotations/
-e 500 -b 16 -n 21 -l 0.0001`), with the seed's schedule (x0.1 at epochs 10, 50, then every
100) and weights every 10 epochs unless --schedule / --snapshot-every say otherwise; `--data DIR|SPEC` is the short way for any layout segworks
reads. Every other flag maps to the TrainConfig field of the same name; `--task instance`
starts from the `instance` recipe and refuses the flags only semantic data can use.

Exit codes: 0 done; 1 training diverged (NaN/inf loss; the last good checkpoint is kept);
2 bad input (data, flags, files); 130 interrupted (an `interrupt.pt` to resume from is saved).
Run on several processes with `torchrun --nproc_per_node=N -m segworks train ...`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

import yaml

from segworks.config import LOSSES, OPTIMIZERS, SCHEDULES, TASKS, TrainConfig
from segworks.devices import device_name
from segworks.errors import SegworksError
from segworks.recipes import RECIPES, recipe_settings

log = logging.getLogger(__name__)

DEFAULT_MODEL = {"semantic": "unet", "binary": "unet"}
# A run given the RefineNet seed's data flags (-tt/-tr/-ta) without --schedule trains as the
# seed did: Adam's alpha x0.1 at epochs 10 and 50, then every 100; weights every 10 epochs.
SEED_DEFAULTS = {"schedule": "step", "snapshot_every": 10}
# Flags that may change when resuming; everything else comes from the checkpoint's config.
RESUME_OVERRIDES = (
    "epochs", "max_steps", "device", "workers", "progress", "tensorboard", "patience",
    "max_minutes", "snapshot_every", "out", "amp", "compile",
)  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(**{f.name: None for f in dataclasses.fields(TrainConfig)})
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data", metavar="DIR|SPEC", help="dataset directory, spec file or pair list"
    )
    data.add_argument("-tt", "--train-list", metavar="LIST", help="file of image stems (seed)")
    data.add_argument("-tr", "--train-images", metavar="DIR", help="image directory (seed)")
    data.add_argument("-ta", "--train-annotations", metavar="DIR", help="mask directory (seed)")
    data.add_argument("-n", "--num-classes", type=int, help="class count, checked against the data")
    data.add_argument("--task", choices=TASKS, help="default: what the data says")
    data.add_argument("--mask-format", help="palette|index|binary|rgb|npy|labelme (default auto)")
    data.add_argument("--ignore-index", type=int, help="the void value in the mask files")
    data.add_argument("--class-names", type=_names, help="comma-separated class names")
    data.add_argument("--reduce-zero-label", action="store_true", default=None)
    data.add_argument("--train-split", help="split to train on (default train)")
    data.add_argument("--val", dest="val_name", metavar="SPLIT", help="val split (default val)")
    data.add_argument("--val-split", type=float, metavar="FRACTION",
                      help="without a val split, hold out this fraction of train (default 0.1)")  # fmt: skip
    data.add_argument("--skip-bad", action="store_true", default=None, help="skip unreadable pairs")

    recipe = parser.add_argument_group("recipe")
    recipe.add_argument("--recipe", choices=sorted(RECIPES), help=_recipe_help())

    model = parser.add_argument_group("model")
    model.add_argument("--model", help="registry name (segworks models); default unet")
    model.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                       help="builder keyword, e.g. --model-arg base_width=32 (repeatable)")  # fmt: skip
    model.add_argument("--pretrained", metavar="NAME|PATH|none",
                       help="starting weights: a name from `segworks weights`, 'imagenet' (the "
                       "model's encoder), a file, or none (from scratch). Input normalisation "
                       "follows the weights")  # fmt: skip
    model.add_argument("--backbone-lr-mult", type=float, metavar="X",
                       help="encoder learning rate = lr * X (default 1)")  # fmt: skip
    model.add_argument("--freeze-backbone-epochs", type=int, metavar="N",
                       help="keep the encoder frozen for the first N epochs")  # fmt: skip
    model.add_argument("--freeze-bn", action="store_true", default=None,
                       help="keep the encoder's BatchNorm statistics as loaded")  # fmt: skip
    model.add_argument("--backbone-weights", metavar="PATH", help="pretrained backbone file")
    model.add_argument("--weights", metavar="PATH", help="initial weights (checkpoint/state_dict)")
    model.add_argument("--reset-classifier", action="store_true", default=None,
                       help="with --weights: drop the classifier (different classes)")  # fmt: skip
    model.add_argument("--sync-bn", action="store_true", default=None, help="SyncBatchNorm (DDP)")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("-e", "--epochs", type=int)
    optim.add_argument("--max-steps", type=int, metavar="N",
                       help="stop after N optimizer steps (the last epoch partial); the "
                       "schedule ends there")  # fmt: skip
    optim.add_argument("--epoch-repeats", type=int, help="passes over the train images per epoch")
    optim.add_argument("-b", "--batch-size", type=int, help="per process")
    optim.add_argument("-l", "--lr", type=float, help="learning rate (Adam's alpha)")
    optim.add_argument("--optimizer", choices=OPTIMIZERS)
    optim.add_argument("--momentum", type=float)
    optim.add_argument("--weight-decay", type=float)
    optim.add_argument("--schedule", choices=SCHEDULES,
                       help="default poly; with the seed's -tt/-tr/-ta flags the seed's step "
                       "schedule (x0.1 at epochs 10, 50, then every 100; epoch_N.pt every 10)")  # fmt: skip
    optim.add_argument("--warmup", type=int, metavar="ITERS", help="linear warm-up iterations")
    optim.add_argument("--milestones", type=float, nargs="+", metavar="FRACTION",
                       help="multistep: x0.1 at these fractions of the run (default 0.75 0.9)")  # fmt: skip
    optim.add_argument("--accum-steps", type=int, help="micro-batches per optimizer step")
    optim.add_argument("--clip-grad", type=float, metavar="NORM")
    optim.add_argument("--loss", choices=LOSSES)
    optim.add_argument("--class-weights", choices=("none", "median"))
    optim.add_argument("--aux-weight", type=float)
    optim.add_argument("--presence-weight", type=float,
                       help="class-presence loss weight (a model built with presence_head=true)")  # fmt: skip
    optim.add_argument("--ema-decay", type=float, metavar="D",
                       help="validate, save and predict with a moving average of the weights "
                       "(decay D, e.g. 0.99; 0 = off)")  # fmt: skip
    optim.add_argument("--max-minutes", type=float, help="stop after this much training time")
    optim.add_argument("--fit-minutes", type=float, metavar="M",
                       help="refit --epochs (and --max-steps) after the first epoch so training "
                       "takes M minutes")  # fmt: skip
    optim.add_argument("--budget-clock", choices=("wall", "cpu"),
                       help="--max/--fit-minutes by wall time (default) or this process's CPU time")  # fmt: skip

    aug = parser.add_argument_group("augmentation")
    aug.add_argument("--crop-size", type=int)
    aug.add_argument("--scale-range", type=float, nargs=2, metavar=("LOW", "HIGH"))
    aug.add_argument("--no-hflip", dest="hflip", action="store_false", default=None)
    aug.add_argument("--jitter", type=float, help="colour jitter strength (0 = off)")
    aug.add_argument("--dihedral", action="store_true", default=None,
                     help="also vertical flips and 90-degree turns (data with no 'up')")  # fmt: skip
    aug.add_argument("--long-side", type=int, metavar="N",
                     help="resize images to longer side N before augmenting and evaluating")  # fmt: skip
    aug.add_argument("--eval-size", type=int, nargs="+", metavar="N",
                     help="validate resized to N x N, or to H W")  # fmt: skip
    aug.add_argument("--mean", type=float, nargs=3, help="normalisation mean (0..1 scale)")
    aug.add_argument("--std", type=float, nargs=3)
    aug.add_argument("--tta-flip", action="store_true", default=None,
                     help="stored in the checkpoint: eval and predict average with the mirror "
                     "image unless --no-tta")  # fmt: skip
    aug.add_argument("--tta-scales", type=float, nargs="+", metavar="S",
                     help="stored in the checkpoint: eval and predict average over these input "
                     "scales unless --no-tta")  # fmt: skip

    runtime = parser.add_argument_group("runtime")
    runtime.add_argument("-g", "--gpu", type=int, help="GPU index; -1 = CPU (as in the seed)")
    runtime.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    runtime.add_argument("--seed", type=int)
    runtime.add_argument("--workers", type=int, help="data loader processes")
    runtime.add_argument("--no-amp", dest="amp", action="store_false", default=None)
    runtime.add_argument("--channels-last", action="store_true", default=None)
    runtime.add_argument("--compile", action="store_true", default=None, help="torch.compile")
    runtime.add_argument("--deterministic", action="store_true", default=None)
    runtime.add_argument("--no-tensorboard", dest="tensorboard", action="store_false", default=None)
    runtime.add_argument("--no-progress", dest="progress", action="store_false", default=None)

    run = parser.add_argument_group("run directory")
    run.add_argument("--out", metavar="RUN_DIR", help="default runs/<model>-<time>")
    run.add_argument("--resume", metavar="RUN_DIR|CKPT", help="continue an interrupted run")
    run.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    run.add_argument("--patience", type=int, help="early stop after N epochs without progress")
    run.add_argument("--snapshot-every", type=int, metavar="N", help="epoch_N.pt (default 10)")

    instance = parser.add_argument_group(
        "instance segmentation (--task instance; trains with --recipe instance unless told)"
    )
    instance.add_argument("--gamma", type=float, help="mask loss weight (default 1)")
    instance.add_argument("--roi-size", type=int, help="mask head RoIAlign size (default 14)")
    instance.add_argument("--bn2affine", action="store_true", default=None,
                          help="BatchNorm -> frozen affine")  # fmt: skip
    instance.add_argument("--min-size", type=int, help="shortest side (recipe: 800)")
    instance.add_argument("--max-size", type=int, help="longest side (recipe: 1333)")
    instance.add_argument("--min-size-test", type=int, metavar="N",
                          help="evaluate and predict at shorter side N (default: --min-size)")  # fmt: skip
    instance.add_argument("--max-size-test", type=int, metavar="N",
                          help="... and longer side at most N (default: --max-size scaled alike)")  # fmt: skip
    instance.add_argument("--instance-format", choices=("auto", "coco", "labelme", "via", "voc"))
    instance.add_argument("--val-data", metavar="ANNOTATIONS", help="a separate validation set")


def run(args: argparse.Namespace) -> int:
    from segworks.engine.train import TrainingDiverged, train

    cfg = config_from_args(args)
    check_out(cfg.out, resume=cfg.resume, overwrite=args.overwrite)
    try:
        run_dir = train(cfg)
    except TrainingDiverged as error:
        log.error("%s", error)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        report(run_dir)
    return 0


def check_out(out: str, *, resume: str | None, overwrite: bool) -> None:
    """The run folder is writable, and holds no other run unless resumed or overwritten."""
    from segworks.outputs import check_output_dir, check_run_dir

    if int(os.environ.get("RANK", "0")) != 0:
        return  # rank 0 checks, before any rank writes
    check_output_dir(out, "--out")
    check_run_dir(out, resume=bool(resume), overwrite=overwrite)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of the given flags; with --resume, the checkpoint's config plus the
    flags that may change between the two runs (RESUME_OVERRIDES)."""
    given = _given_fields(args)
    if args.resume:
        return _resume_config(args.resume, given)
    recipe = getattr(args, "recipe", None)
    if given.get("task") == "instance":
        _refuse_normalisation(given)
        recipe = recipe or "instance"
    if recipe:
        given = recipe_settings(recipe, given)
    if given.get("train_list") or given.get("train_images"):
        for key, value in SEED_DEFAULTS.items():
            given.setdefault(key, value)
    given.setdefault("model", DEFAULT_MODEL.get(given.get("task") or "semantic", "unet"))
    given.setdefault("out", f"runs/{given['model']}-{time.strftime('%Y%m%d-%H%M%S')}")
    return TrainConfig(**given)


def _given_fields(args: argparse.Namespace) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    if args.model_arg:
        given["model_kwargs"] = parse_model_args(args.model_arg)
    if args.gpu is not None or "device" in given:
        given["device"] = device_name(given.get("device"), args.gpu)
    for key in ("scale_range", "mean", "std", "milestones", "tta_scales"):
        if key in given:
            given[key] = tuple(given[key])
    if "eval_size" in given:
        given["eval_size"] = _eval_size(given["eval_size"])
    return given


def _resume_config(resume: str, given: dict[str, Any]) -> TrainConfig:
    from segworks.checkpoint import load_checkpoint
    from segworks.engine.train import resume_path

    saved = load_checkpoint(resume_path(resume)).get("config")
    if not isinstance(saved, dict):
        raise SegworksError(f"--resume {resume}: the checkpoint holds no training config")
    ignored = sorted(set(given) - set(RESUME_OVERRIDES) - {"resume"})
    if ignored:
        log.warning("--resume: using the run's own settings; ignoring --%s",
                    ", --".join(k.replace("_", "-") for k in ignored))  # fmt: skip
    config = dict(saved)
    if "epochs" in given and "max_steps" not in given:
        config["max_steps"] = None  # a longer run is not held to the steps of the shorter one
    config.update({k: v for k, v in given.items() if k in RESUME_OVERRIDES})
    config["resume"] = resume
    if "out" not in given:
        config["out"] = str(Path(resume) if Path(resume).is_dir() else Path(resume).parent)
    return TrainConfig.from_dict(config)


def _refuse_normalisation(given: dict[str, Any]) -> None:
    for key in ("mean", "std"):
        if key in given:
            raise SegworksError(
                f"--{key} does not apply to --task instance: Mask R-CNN normalises its input itself"
            )


def parse_model_args(items: list[str]) -> dict[str, Any]:
    """["base_width=32", "batch_norm=false"] -> {"base_width": 32, "batch_norm": False}."""
    kwargs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise SegworksError(
                f"--model-arg expects KEY=VALUE with a Python name as KEY, got {item!r}"
            )
        kwargs[key] = yaml.safe_load(value)
    return kwargs


def _eval_size(values: list[int]) -> int | tuple[int, int]:
    if len(values) not in (1, 2):
        raise SegworksError(f"--eval-size takes N or H W, got {len(values)} numbers")
    return values[0] if len(values) == 1 else (values[0], values[1])


def _recipe_help() -> str:
    names = "; ".join(f"{r.name}: {r.summary}" for r in RECIPES.values())
    return f"start from a named recipe (flags still win): {names}"


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated class names, got {text!r}")
    return names


def report(run_dir: Path) -> None:
    best = run_dir / "best.pt"
    print(f"run directory: {run_dir}")
    print(f"  checkpoints: {best if best.exists() else run_dir / 'last.pt'} (best), last.pt")
    print(f"  metrics:     {run_dir / 'metrics.csv'}")
    print(
        f"  evaluate:    segworks eval {best if best.exists() else run_dir / 'last.pt'} --data DIR"
    )
