"""segworks' `camvid` recipe: a U-Net trained on CamVid's train split at 180x240 for a fixed time
on the CPU, scored on the val split.

    python -m benchmarks.bench_camvid                  # 10 minutes
    python -m benchmarks.bench_camvid --minutes 30     # a longer budget
    python -m benchmarks.bench_camvid --models unet,segnet_basic,fcn8s --minutes 5 \
        --threads 1 --clock cpu                        # one table, the same budget per model

The epochs are fitted to `--minutes` by timing a few steps first and refitted from the first
epoch's measured time (`fit_minutes`; the cosine schedule then ends on time). Training sees 176 px crops of images scaled to about half size (180x240); there is no
validation during training, so every minute goes to training. The last checkpoint is scored on
the 101 val images: each is resized to 180x240, and the logits are resized back, so the numbers
count every pixel at CamVid's 360x480 (void excluded). `--clock cpu` fits the epochs to this
process's CPU time instead of wall time, for a machine shared with other jobs (see
bench_newts). CamVid's test split is held back and never read here.

`--models a,b,c` trains each named architecture from scratch with the recipe's data settings
(180x240, crops, median-frequency weights) and optimiser, and prints one table: parameters,
optimizer steps done, CPU minutes, val mIoU, pixel accuracy and IoU per class. A budget of a
few CPU-minutes is less than one epoch (91 steps) for the ResNet-50 and VGG16 models, so this
mode fits a number of *steps* to the budget instead of whole epochs: `epochs_for_budget` times
a training step (as it does for whole epochs), the budget divided by that time gives the steps,
`plan_steps` spreads them over as few epochs as hold them, and the cosine schedule ends on the
last one. The
warm-up is capped at a quarter of the steps (as bench_newts does). Big models therefore get few
steps: the table compares what each architecture learns in the same CPU time, not what it
reaches when trained to convergence. `--jobs N` trains N models at once in worker processes
(every run seeds torch itself, so a model's result does not depend on what ran before it).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import logging
import math
import multiprocessing
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import torch

from benchmarks.bench_newts import parse_sets, run_overrides, score, score_model
from benchmarks.common import ratio_line
from benchmarks.peers import peer_encoder, peer_title, train_peer

CAMVID = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "camvid"
SIZE = (180, 240)  # (H, W): CamVid at half resolution, "240x180"
# Not measured here: the SegNet paper's CamVid test figures (11 classes, 360x480, full training
# on a GPU) and ChainerCV's reproduction of SegNet-Basic, for orientation only.
REFERENCES = (
    ("SegNet-Basic, SegNet paper (Badrinarayanan et al. 2017), test split, GPU", 46.3),
    ("SegNet-Basic, ChainerCV reproduction, test split", 49.4),
)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not (args.data / "train.txt").is_file():
        print(f"no CamVid data at {args.data}")
        return 2
    if args.models:
        from segworks.models import MODELS

        try:
            names = parse_models(args.models, known=MODELS)
        except ValueError as error:
            print(error)
            return 2
        rows = run_models(args, names)
        print(models_table(args, rows))
        return 0
    if not args.peer:
        row = run(args)
        print(json.dumps(row), flush=True)
        print(table(args, row))
        return 0
    context = multiprocessing.get_context("spawn")  # a fresh torch per run: threads, RNG
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        ours, theirs = pool.submit(run, args), pool.submit(run_peer, args)
        row, peer_row = ours.result(), theirs.result()
    for line in (json.dumps(row), table(args, row), json.dumps(peer_row)):
        print(line, flush=True)
    print(table(args, peer_row, title=f"peer: {peer_title(peer_row['encoder'])}"))
    ratio = row["miou"] / peer_row["miou"]
    print(ratio_line("CamVid val mIoU segworks/smp (one seed)", [ratio], rounds="seeds"))
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=CAMVID)
    parser.add_argument("--recipe", default="camvid")
    parser.add_argument("--minutes", type=float, default=10.0, help="training time")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--models",
        default="",
        metavar="A,B,C",
        help="train each of these models for --minutes and print one table",
    )
    parser.add_argument("--jobs", type=int, default=1,
                        help="models trained at once (--models; 2 with --peer runs both at once)")  # fmt: skip
    parser.add_argument("--peer", choices=("smp",),
                        help="also smp's Unet on the same weights, same data and CPU budget")  # fmt: skip
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe setting (JSON value)")  # fmt: skip
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    from segworks.data import open_source
    from segworks.engine.train import train
    from segworks.recipes import epochs_for_budget, recipe_config

    torch.set_num_threads(args.threads)
    source = open_source(str(args.data))
    with tempfile.TemporaryDirectory(prefix="bench_camvid_") as folder:
        overrides = run_overrides(args.data, args.seed, folder, source)
        overrides.update(parse_sets(args.set))
        if args.clock == "cpu":
            overrides.update(workers=0, max_minutes=None)
        else:
            overrides["max_minutes"] = args.minutes
        cfg = recipe_config(args.recipe, **overrides)
        images = len(source.splits["train"])
        clock = time.process_time if args.clock == "cpu" else time.perf_counter
        budget = args.minutes * (args.threads if args.clock == "cpu" else 1)
        cfg.epochs = epochs_for_budget(cfg, budget, train_images=images, clock=clock)
        cfg.fit_minutes = cfg.max_minutes = budget  # refitted after epoch 1, stopped at the end
        cfg.budget_clock = args.clock
        wall, cpu = time.perf_counter(), time.process_time()
        run_dir = train(cfg)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        scores = score(run_dir / "last.pt", source.dataset("val"), size=SIZE)
    names = source.meta.class_names
    return {"seed": args.seed, "epochs": cfg.epochs, "steps": scores["step"], "train_min": wall / 60,
            "cpu_min": cpu / 60, "class_names": names, **scores}  # fmt: skip


# --------------------------------------------------------------------------- --models
def parse_models(text: str, *, known: Iterable[str]) -> list[str]:
    """`"unet, fcn8s"` -> ["unet", "fcn8s"]; ValueError on an unknown, repeated or empty list."""
    known = set(known)
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ValueError(f"--models needs comma-separated model names, got {text!r}")
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(
            f"unknown model(s) {unknown} in --models; expected names of {sorted(known)}"
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"--models names {repeated} more than once; give each model once")
    return names


def plan_steps(total_steps: int, steps_per_epoch: int) -> tuple[int, int]:
    """(epochs, steps per epoch) that do at most `total_steps` in as few epochs as possible.

    Fewer steps than one epoch: one shortened epoch of `total_steps`. More: the steps are spread
    evenly over ceil(total / steps_per_epoch) epochs, each a prefix of that epoch's shuffle.
    """
    if total_steps < 1 or steps_per_epoch < 1:
        raise ValueError(
            f"total_steps and steps_per_epoch must be >= 1, got {total_steps}, {steps_per_epoch}"
        )
    epochs = math.ceil(total_steps / steps_per_epoch)
    return epochs, total_steps // epochs


def count_parameters(model: torch.nn.Module, *, skip_prefix: str = "aux") -> int:
    """Parameters of `model` for inference: those of auxiliary heads (training only) left out."""
    return sum(
        p.numel() for name, p in model.named_parameters() if not name.startswith(skip_prefix)
    )


def run_models(args: argparse.Namespace, names: list[str]) -> list[dict]:
    """Every model of `names` trained and scored in worker processes, `args.jobs` at a time."""
    context = multiprocessing.get_context("spawn")  # workers start with a fresh torch
    options = vars(args)
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        futures = [pool.submit(run_model, options, name) for name in names]
        rows = []
        for future in futures:
            rows.append(future.result())
            print(json.dumps(rows[-1]), flush=True)
    return rows


def run_model(options: dict, name: str) -> dict:
    """One architecture from scratch on the recipe's data settings, steps fitted to the budget."""
    from segworks.data import open_source
    from segworks.engine.train import TrainingDiverged
    from segworks.recipes import epochs_for_budget, recipe_config

    # force: a pool worker runs several models one after another; name the current one
    logging.basicConfig(level=logging.INFO, format=f"%(levelname)s {name}: %(message)s", force=True)
    torch.set_num_threads(options["threads"])
    source = open_source(str(options["data"]))
    cpu_clock = options["clock"] == "cpu"
    with tempfile.TemporaryDirectory(prefix=f"bench_camvid_{name}_") as folder:
        overrides = run_overrides(options["data"], options["seed"], folder, source)
        overrides.update(model=name, max_minutes=None)
        overrides.update(parse_sets(options["set"]))
        if cpu_clock:
            overrides["workers"] = 0  # loading counted in this process's CPU time
        cfg = recipe_config(options["recipe"], **overrides)
        images = len(source.splits["train"])
        clock = time.process_time if cpu_clock else time.perf_counter
        budget = options["minutes"] * (options["threads"] if cpu_clock else 1)
        # steps that fit: epochs_for_budget of a one-step "epoch" (one batch, one pass)
        one_step = dataclasses.replace(cfg, epoch_repeats=1)
        total = epochs_for_budget(one_step, budget, train_images=cfg.batch_size, clock=clock)
        full_epoch = max(1, images * cfg.epoch_repeats // cfg.batch_size)
        cfg.epochs, steps_per_epoch = plan_steps(total, full_epoch)
        cfg.warmup = min(cfg.warmup, cfg.epochs * steps_per_epoch // 4)
        row = {"model": name, "seed": options["seed"], "lr": cfg.lr, "optimizer": cfg.optimizer,
               "schedule": cfg.schedule, "warmup": cfg.warmup, "epochs": cfg.epochs,
               "steps": cfg.epochs * steps_per_epoch, "full_epoch_steps": full_epoch}  # fmt: skip
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            run_dir = train_steps(cfg, steps_per_epoch)
        except TrainingDiverged as error:
            return {**row, "error": str(error), "class_names": source.meta.class_names}
        row.update(train_min=(time.perf_counter() - wall) / 60,
                   cpu_min=(time.process_time() - cpu) / 60)  # fmt: skip
        cpu = time.process_time()
        row.update(score_checkpoint(run_dir / "last.pt", source.dataset("val")))
        row["eval_cpu_min"] = (time.process_time() - cpu) / 60
    return {**row, "class_names": source.meta.class_names}


def train_steps(cfg, steps_per_epoch: int) -> Path:
    """`segworks.engine.train.train(cfg)` with epochs of `steps_per_epoch` optimizer steps."""
    from segworks.engine import distributed as ddp
    from segworks.engine.schedules import build_scheduler
    from segworks.engine.train import fit, resolve_device, setup

    device = resolve_device(cfg.device)
    info = ddp.init_from_env(device)
    previous_determinism = torch.are_deterministic_algorithms_enabled()
    try:
        run = setup(cfg, info, device)
        run.steps_per_epoch = min(run.steps_per_epoch, steps_per_epoch)
        run.scheduler = build_scheduler(
            run.optimizer,
            cfg.schedule,
            total_steps=run.steps_per_epoch * cfg.epochs,
            steps_per_epoch=run.steps_per_epoch,
            warmup=cfg.warmup,
        )
        fit(run)
        return run.run_dir
    finally:
        torch.use_deterministic_algorithms(previous_determinism)
        ddp.cleanup(info)


def score_checkpoint(checkpoint: Path, dataset) -> dict:
    """Parameters, mIoU, pixel accuracy and IoU per class at 360x480 (inputs at 180x240)."""
    from segworks.checkpoint import load_checkpoint
    from segworks.engine.evaluate import evaluate
    from segworks.inference import InferenceOptions
    from segworks.models import model_from_checkpoint

    saved = load_checkpoint(checkpoint)
    model = model_from_checkpoint(saved, checkpoint).eval()
    meta = saved["meta"]
    options = InferenceOptions(size=SIZE)
    results = evaluate(model, dataset, meta, mean=meta["mean"], std=meta["std"], options=options,
                       progress=False)  # fmt: skip
    return {"params_m": count_parameters(model) / 1e6, "miou": results["miou"],
            "pixel_accuracy": results["pixel_accuracy"],
            "iou": [round(v, 4) for v in results["iou"]]}  # fmt: skip


def models_table(args: argparse.Namespace, rows: list[dict]) -> str:
    """One line per model: params, steps, CPU minutes, mIoU, pixel accuracy, IoU per class."""
    names = rows[0]["class_names"] if rows else []
    heads = [name[:5] for name in names]
    lines = [
        f"CamVid train -> val, recipe '{args.recipe}' data settings {' '.join(args.set)}, input "
        f"180x240, scored at 360x480; {args.minutes} min per model ({args.clock} clock, "
        f"{args.threads} threads)",
        f"{'model':<20} {'params M':>8} {'steps':>5} {'CPU min':>7} {'mIoU':>6} {'pix acc':>7}  "
        + " ".join(f"{head:>5}" for head in heads),
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"{row['model']:<20} failed: {row['error']}")
            continue
        lines.append(
            f"{row['model']:<20} {row['params_m']:>8.2f} {row['steps']:>5} {row['cpu_min']:>7.1f} "
            f"{row['miou']:>6.3f} {row['pixel_accuracy']:>7.3f}  "
            + " ".join(f"{iou:>5.3f}" for iou in row["iou"])
        )
    lines.append(
        "steps: optimizer steps of batch 8 (one epoch is "
        f"{rows[0]['full_epoch_steps'] if rows else '-'} steps); each model: "
        + "; ".join(
            f"{r['model']} {r['optimizer']} lr {r['lr']:g} {r['schedule']}, warm-up {r['warmup']}"
            for r in rows
        )  # fmt: skip
    )
    lines.append("not measured here (reference only): " + "; ".join(
        f"{what}: {value} mIoU" for what, value in REFERENCES))  # fmt: skip
    return "\n".join(lines)


def run_peer(args: argparse.Namespace) -> dict:
    """smp's Unet (benchmarks.peers) on the recipe's data pipeline for the same CPU budget."""
    from segworks.data import open_source
    from segworks.engine.train import build_data
    from segworks.recipes import recipe_config

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    source = open_source(str(args.data))
    with tempfile.TemporaryDirectory(prefix="bench_camvid_peer_") as folder:
        overrides = run_overrides(args.data, args.seed, folder, source)
        overrides.update(parse_sets(args.set), workers=0)
        cfg = recipe_config(args.recipe, **overrides)
        budget = 60 * args.minutes * args.threads
        peer, epochs, cpu, wall = train_peer(cfg, build_data(cfg).train_set, budget)
        meta = {**source.meta.to_dict(), "mean": list(cfg.mean), "std": list(cfg.std)}
        scores = score_model(peer, {"meta": meta, "config": {}}, source.dataset("val"), size=SIZE)
    return {"seed": args.seed, "epochs": epochs, "train_min": wall, "cpu_min": cpu,
            "encoder": peer_encoder(cfg), "class_names": source.meta.class_names,
            **scores}  # fmt: skip


def table(args: argparse.Namespace, row: dict, title: str | None = None) -> str:
    steps = f" ({row['steps']} steps)" if "steps" in row else ""
    lines = [
        title
        or f"CamVid train -> val, recipe '{args.recipe}' {' '.join(args.set)}, input 180x240, "
        f"scored at 360x480",
        f"budget {args.minutes} min ({args.clock} clock, {args.threads} threads): "
        f"{row['epochs']} epochs{steps}, "
        f"{row['train_min']:.1f} min wall, {row['cpu_min']:.1f} min CPU",
        f"val mIoU {row['miou']:.4f}   (flip TTA {row['miou_flip']:.4f})",
        "IoU per class:",
    ]
    lines += [f"  {name:<12} {iou:.3f}" for name, iou in zip(row["class_names"], row["iou"])]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
