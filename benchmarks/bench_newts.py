"""segworks' `small` recipe on the seed tutorial's newts (train -> test), against the tutorial's
own recipe.

    python -m benchmarks.bench_newts                   # the recipe, seeds 0 1 2, 10 minutes each
    python -m benchmarks.bench_newts --baseline        # the seed tutorial's recipe as well
    python -m benchmarks.bench_newts --validate        # choose settings: 4 train images held out

Every seed trains for `--minutes` on the CPU (the epochs are fitted to the time by timing a few
steps first, then refitted from the first epoch's measured time, `fit_minutes`; the recipe's
cosine schedule then ends on time) and is scored once on
the test split at the images' original resolution with the last checkpoint. `--clock cpu` fits
the epochs to CPU time of one process instead of wall time: on a machine shared with other jobs
that is what "N minutes on the CPU" means (with `--threads 1` a run gets no more work done than
a 2-thread run in the same wall time on two free cores). `--jobs 2` runs two seeds at once.
`--recipe-epochs` makes the budget a cap instead of a target: the recipe's own epochs are
trained when the budget holds more (as `segworks train --recipe small` does), the fitted
number when it holds fewer.

`--validate` holds out 4 of the 16 train images (the engine's fixed carve, seed 0) and scores
those instead of the test split: settings are chosen there, never on the test images. With
`--fold K` (0-3) the held-out four are images K and K + 4 of each species' folder, so the four
folds together score every train image once (4-fold cross-validation).

The seed tutorial's recipe (`--baseline`): its UNet-like net (BN U-Net, 32 channels, depth 4),
every image resized to 64x64, SGD lr 0.01 momentum 0.9, batch 4, horizontal flips, 1000
iterations; scored at the original resolution (the 64x64 logits resized back).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import multiprocessing
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.peers import peer_encoder, peer_title, train_peer

NEWTS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "newts"
VAL_FRACTION = 0.25  # 4 of 16 train images for --validate


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not (args.data / "train").is_dir():
        print(f"no newts data at {args.data}")
        return 2
    print(
        f"newts: {args.data} ({'validation: 4 train images held out' if args.validate else 'train -> test'})"
    )
    print(f"recipe {args.recipe} {args.set or ''}; {args.minutes} min per seed by the {args.clock} "
          f"clock; {args.threads} threads; {args.jobs} job(s) at once")  # fmt: skip
    rows = run_all(args, "recipe")
    print(table(f"segworks recipe '{args.recipe}'", rows))

    if args.baseline:
        print(table("seed tutorial recipe (64 px, SGD 0.01, 1000 it)", run_all(args, "baseline")))
    if args.peer:
        peer_rows = run_all(args, "peer")
        print(table(f"peer: {peer_title(peer_rows[0]['encoder'])}", peer_rows))
        from benchmarks.common import ratio_line

        ratios = [ours["miou"] / theirs["miou"] for ours, theirs in zip(rows, peer_rows)]
        print(ratio_line("newts test mIoU segworks/smp (same seed)", ratios, rounds="seeds"))
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=NEWTS)
    parser.add_argument("--recipe", default="small")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--minutes", type=float, default=10.0, help="training time per seed")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run")
    parser.add_argument("--jobs", type=int, default=1, help="seeds trained at once")
    parser.add_argument("--baseline", action="store_true", help="also the tutorial's recipe")
    parser.add_argument("--peer", choices=("smp",), help="also smp's Unet on the same weights")
    parser.add_argument("--validate", action="store_true", help="score held-out train images")
    parser.add_argument(
        "--fold",
        type=int,
        choices=range(4),
        default=None,
        help="with --validate: hold out images K, K+4 of every folder (4 folds)",
    )
    parser.add_argument("--recipe-epochs", action="store_true",
                        help="train the recipe's own epochs when the budget holds more (the "
                        "budget is then a cap, not a target)")  # fmt: skip
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="copy each run's last checkpoint to DIR (seed<S>[_fold<K>].pt)")  # fmt: skip
    parser.add_argument("--tta-scales", nargs="+", default=[], metavar="S,S,...",
                        help="also score with flip TTA at these scales, e.g. 0.75,1,1.25")  # fmt: skip
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe setting (JSON value), e.g. --set lr=0.001")  # fmt: skip
    return parser.parse_args(argv)


def run_all(args: argparse.Namespace, which: str) -> list[dict]:
    work = {"baseline": run_baseline, "peer": run_smp}.get(which, run_recipe)
    context = multiprocessing.get_context("spawn")  # a fresh torch per run: threads, RNG
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        futures = [pool.submit(work, vars(args), seed) for seed in args.seeds]
        rows = [future.result() for future in futures]
    for row in rows:
        print(json.dumps(row), flush=True)
    return rows


# --------------------------------------------------------------------------- the recipe
def run_recipe(options: dict, seed: int) -> dict:
    import segworks.engine.semantic as semantic
    from segworks.data import open_source
    from segworks.engine.train import train
    from segworks.recipes import epochs_for_budget, recipe_config

    torch.set_num_threads(options["threads"])
    held_out_set(options)
    source = open_source(str(options["data"]))
    with tempfile.TemporaryDirectory(prefix="bench_newts_") as folder:
        overrides = run_overrides(options["data"], seed, folder, source)
        overrides["val_split"] = VAL_FRACTION if options["validate"] else 0.0
        overrides.update(parse_sets(options["set"]))
        if options["clock"] == "cpu":
            overrides.update(workers=0, max_minutes=None)  # loading counted in this process
        else:
            overrides["max_minutes"] = options["minutes"]
        cfg = recipe_config(options["recipe"], **overrides)
        train_samples, val_samples = semantic.split_samples(cfg, source.splits)
        clock = time.process_time if options["clock"] == "cpu" else time.perf_counter
        budget = options["minutes"] * (options["threads"] if options["clock"] == "cpu" else 1)
        fitted = epochs_for_budget(cfg, budget, train_images=len(train_samples), clock=clock)
        capped = options["recipe_epochs"] and fitted >= cfg.epochs
        if not capped:
            cfg.epochs = fitted
        cfg.warmup = min(cfg.warmup, cfg.epochs * steps_per_epoch(cfg, len(train_samples)) // 4)
        cfg.max_minutes = budget  # stopped at the end of the budget
        cfg.fit_minutes = None if capped else budget  # refitted after epoch 1
        cfg.budget_clock = options["clock"]
        wall, cpu = time.perf_counter(), time.process_time()
        run_dir = train(cfg)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        test = val_samples if options["validate"] else source.splits["test"]
        scores = score(run_dir / "last.pt", source.dataset(test), tta=options["tta_scales"])
        keep(run_dir / "last.pt", options, seed)
    return {"seed": seed, "epochs": cfg.epochs, "train_min": wall / 60, "cpu_min": cpu / 60,
            **scores}  # fmt: skip


def keep(checkpoint: Path, options: dict, seed: int) -> None:
    """`--keep DIR`: the run's last checkpoint outlives its temporary folder."""
    if options.get("keep") is None:
        return
    fold = held_out_fold(options)
    name = f"seed{seed}.pt" if fold is None else f"seed{seed}_fold{fold}.pt"
    options["keep"].mkdir(parents=True, exist_ok=True)
    shutil.copyfile(checkpoint, options["keep"] / name)


def held_out_set(options: dict) -> None:
    """`--fold K`: the engine's train/val carve becomes fold K of 4 (in this process): images
    K and K + 4 (in name order) of every folder are held out, so each species loses two."""
    fold = held_out_fold(options)
    if fold is None:
        return
    import segworks.engine.semantic as semantic

    def fold_split(cfg, splits: dict) -> tuple[list, list]:
        by_folder: dict = {}
        for sample in sorted(splits[cfg.train_split], key=lambda s: s.image):
            by_folder.setdefault(sample.image.parent, []).append(sample)
        pairs = [(i % 4 == fold, s) for g in by_folder.values() for i, s in enumerate(g)]
        return [s for out, s in pairs if not out], [s for out, s in pairs if out]

    semantic.split_samples = fold_split


def held_out_fold(options: dict) -> int | None:
    """The fold `--validate --fold K` holds out; None when the run scores the test split or
    the engine's own carve."""
    return options.get("fold") if options.get("validate") else None


def steps_per_epoch(cfg, images: int) -> int:
    return max(1, images * cfg.epoch_repeats // cfg.batch_size)


def run_overrides(data, seed: int, folder: str, source) -> dict:
    """TrainConfig fields every benchmark run shares: CPU, quiet, no validation while training."""
    return dict(
        data=str(data),
        seed=seed,
        device="cpu",
        out=folder,
        progress=False,
        tensorboard=False,
        snapshot_every=0,
        val_name="no-validation-while-training",
        val_split=0.0,
        num_classes=len(source.meta.class_names),
    )


def parse_sets(items: list[str]) -> dict:
    settings = {}
    for item in items:
        key, _, value = item.partition("=")
        settings[key] = json.loads(value)
        if key in ("scale_range", "eval_size") and isinstance(settings[key], list):
            settings[key] = tuple(settings[key])
    return settings


def score(checkpoint: Path, dataset, size=None, tta: list[str] = ()) -> dict:
    """mIoU and per-class IoU at the original resolution, from the checkpoint alone (at the
    training run's long side, if it had one), plain and with flip TTA (`miou_flip`), and the
    optimizer steps the run took (`step`); `tta` adds flip TTA at each listed set of scales
    ("0.75,1,1.25") under `miou_tta`. A model with a class-presence head is scored with its
    gate off and on as well (`presence_gate_false`, `presence_gate_true`)."""
    from segworks.checkpoint import load_checkpoint
    from segworks.models import model_from_checkpoint

    saved = load_checkpoint(checkpoint)
    model = model_from_checkpoint(saved, checkpoint).eval()
    scores = score_model(model, saved, dataset, size) | {"step": saved.get("step")}
    if getattr(model, "presence_head", None) is not None:  # the class-presence gate off and on
        built = model.presence_gate
        for gate in (False, True):
            model.presence_gate = gate
            scores[f"presence_gate_{str(gate).lower()}"] = score_model(model, saved, dataset, size)
        model.presence_gate = built
    if tta:
        scores["miou_tta"] = {}
        for text in tta:
            scales = tuple(float(v) for v in text.split(","))
            flipped = score_with(model, saved, dataset, size=size, tta_flip=True, tta_scales=scales)
            scores["miou_tta"][text] = flipped["miou"]
    return scores


def score_model(model, saved: dict, dataset, size: tuple[int, int] | None = None) -> dict:
    """`score` of a model given apart from its checkpoint's meta and config (`saved`)."""
    plain = score_with(model, saved, dataset, size=size)
    flipped = score_with(model, saved, dataset, size=size, tta_flip=True)
    from segworks.inference.predictor import stored_tta

    stored = stored_tta(saved) == (True, (1.0,))  # flip TTA is what `segworks eval` reports
    return {"miou": plain["miou"], "iou": [round(v, 4) for v in plain["iou"]],
            "miou_flip": flipped["miou"], "flip_stored": stored}  # fmt: skip


def score_with(model, saved: dict, dataset, **option_fields) -> dict:
    """The evaluation loop's result for one set of InferenceOptions fields (plain unless they
    set TTA), with the other inference settings the checkpoint implies (its run's long side),
    as `segworks eval` reads them."""
    from segworks.engine.evaluate import evaluate
    from segworks.inference.predictor import options_from_checkpoint

    meta = saved["meta"]
    plain = {"tta_flip": False, "tta_scales": (1.0,)}
    options = options_from_checkpoint(saved, **(plain | option_fields))
    return evaluate(model, dataset, meta, mean=meta["mean"], std=meta["std"], options=options,
                    progress=False)  # fmt: skip


# --------------------------------------------------------------------------- the baseline
def run_baseline(options: dict, seed: int) -> dict:
    """The seed tutorial's recipe, written out as the tutorial does it."""
    from segworks.checkpoint import save_checkpoint
    from segworks.config import TrainConfig
    from segworks.data import open_source
    from segworks.data.meta import IMAGENET_MEAN, IMAGENET_STD
    from segworks.engine.semantic import split_samples
    from segworks.models import build_model

    torch.set_num_threads(options["threads"])
    held_out_set(options)
    torch.manual_seed(seed)
    source = open_source(str(options["data"]))
    cfg = TrainConfig(
        data=str(options["data"]), val_split=VAL_FRACTION if options["validate"] else 0.0
    )
    train_samples, val_samples = split_samples(cfg, source.splits)
    images, targets = load_resized(source.dataset(train_samples), 64)
    kwargs = {"base_width": 32, "depth": 4}
    model = build_model("unet", num_classes=3, **kwargs)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    generator = torch.Generator().manual_seed(seed)
    wall = time.perf_counter()
    model.train()
    for _ in range(1000):
        batch = torch.randint(0, len(images), (4,), generator=generator)
        x, y = images[batch], targets[batch]
        flip = torch.rand(4, generator=generator) < 0.5
        x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
        loss = F.cross_entropy(model(x)["out"], y, ignore_index=255)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    wall = time.perf_counter() - wall
    test = val_samples if options["validate"] else source.splits["test"]
    with tempfile.TemporaryDirectory(prefix="bench_newts_") as folder:
        path = Path(folder) / "baseline.pt"
        meta = {**source.meta.to_dict(), "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
        save_checkpoint(path, {"model": model.state_dict(), "model_name": "unet",
                               "model_kwargs": {"num_classes": 3, **kwargs}, "meta": meta})  # fmt: skip
        scores = score(path, source.dataset(test), size=(64, 64))
    return {"seed": seed, "epochs": None, "train_min": wall / 60, "cpu_min": None, **scores}


def load_resized(dataset, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image (bilinear) and label (nearest) resized to size x size, ImageNet-normalised."""
    from segworks.data.transforms import ToTensorNormalize, resize_pair

    to_tensor = ToTensorNormalize()
    pairs = [to_tensor(*resize_pair(*dataset.read(i), (size, size))) for i in range(len(dataset))]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


# --------------------------------------------------------------------------- the peer
def run_smp(options: dict, seed: int) -> dict:
    """smp's Unet with segworks' EfficientNet-Lite0 ImageNet file, the recipe's data pipeline,
    and smp's example training loop (Adam 1e-4, multiclass Dice loss), until the CPU budget."""
    import segworks.engine.semantic as semantic
    from segworks.data import open_source
    from segworks.engine.train import build_data
    from segworks.recipes import recipe_config

    torch.set_num_threads(options["threads"])
    held_out_set(options)
    torch.manual_seed(seed)
    source = open_source(str(options["data"]))
    with tempfile.TemporaryDirectory(prefix="bench_newts_") as folder:
        overrides = run_overrides(options["data"], seed, folder, source)
        overrides.update(parse_sets(options["set"]), workers=0)
        overrides["val_split"] = VAL_FRACTION if options["validate"] else 0.0
        cfg = recipe_config(options["recipe"], **overrides)
        budget = 60 * options["minutes"] * options["threads"]
        peer, epochs, cpu, wall = train_peer(cfg, build_data(cfg).train_set, budget)
        train_samples, val_samples = semantic.split_samples(cfg, source.splits)
        test = val_samples if options["validate"] else source.splits["test"]
        meta = {**source.meta.to_dict(), "mean": list(cfg.mean), "std": list(cfg.std)}
        saved = {"meta": meta, "config": {"long_side": cfg.long_side}}
        scores = score_model(peer, saved, source.dataset(test))
    return {"seed": seed, "epochs": epochs, "train_min": wall, "cpu_min": cpu,
            "encoder": peer_encoder(cfg), **scores}  # fmt: skip


# --------------------------------------------------------------------------- report
def table(title: str, rows: list[dict]) -> str:
    mious = [row["miou"] for row in rows]
    per_class = np.array([row["iou"] for row in rows])
    lines = [title, "seed  epochs  train min  cpu min   mIoU   IoU background akahara madara"]
    for row in rows:
        cpu = "-" if row["cpu_min"] is None else f"{row['cpu_min']:.1f}"
        lines.append(f"{row['seed']:>4}  {row['epochs'] or '-':>6}  {row['train_min']:>9.1f}  "
                     f"{cpu:>7}  {row['miou']:.4f}      " + "  ".join(f"{v:.3f}" for v in row["iou"]))  # fmt: skip
    lines.append(f"mean mIoU {statistics.mean(mious):.4f}  min {min(mious):.4f}  "
                 f"max {max(mious):.4f}  (over {len(rows)} seeds)")  # fmt: skip
    lines.append("mean IoU per class: " + "  ".join(f"{v:.3f}" for v in per_class.mean(axis=0)))
    flips = [row["miou_flip"] for row in rows if row.get("miou_flip") is not None]
    if flips:
        mean_flip = statistics.mean(flips)
        lines.append(
            f"with flip TTA (segworks eval --tta --tta-scales 1): mean mIoU {mean_flip:.4f}"
            + (
                "  <- the recipe's own (stored in its checkpoints)"
                if rows[0].get("flip_stored")
                else ""
            )
        )
    for text in rows[0].get("miou_tta") or {}:
        mean_tta = statistics.mean(row["miou_tta"][text] for row in rows)
        scales = text.replace(",", " ")
        lines.append(f"with flip TTA (--tta --tta-scales {scales}): mean mIoU {mean_tta:.4f}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
