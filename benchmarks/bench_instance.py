"""Instance segmentation on real photographs: balloon and fruits_nuts, COCO box and mask AP.

    python -m benchmarks.bench_instance --threads 1 --clock cpu              # both, 12 min each
    python -m benchmarks.bench_instance --datasets balloon --minutes 12 --set lr=0.01

Each dataset's labelled images are split once with a fixed seed (`--split-seed`, default 0):
balloon's 61 `train/` images -> 49 train / 12 val (its own val folder is held back for judging
the project and is never read here), fruits_nuts' 18 images -> 14 train / 4 val. The model
trains from scratch, or with `--pretrained` from the MobileNetV2 ImageNet encoder (`PRETRAINED`:
the weights of an installed package, no download), through `segworks train --task
instance` (segworks.engine.train.train) for `--minutes` of training, then the last
checkpoint is scored once on the val images at their original resolution with pycocotools'
COCOeval: box and mask AP, AP50, AP75. `--validate` chooses settings without the val images:
the train part is split again the same way (balloon: 37 train / 12 held out) and the held-out
train images are scored (`--draw K` holds out another random draw of them). `--score CKPT`
scores a kept checkpoint (`--keep DIR`) again, `--eval-min-size N` at another test size.

The budget: one calibration epoch is trained and timed first (not counted), then the run gets
as many whole epochs as fit `--minutes`, refitted from its own first epoch (`fit_minutes`: a
busy machine slows the steps after the calibration) and stopped at `--minutes` by the same
clock (`max_minutes`), so the LR schedule ends on time and the budget is never exceeded. `--clock cpu` measures
the process's CPU time, so on a shared machine "12 minutes" means 12 minutes of work of one
core with `--threads 1`; `--clock wall` measures wall time.

Default recipe (`RECIPE`; change any entry with `--set KEY=VALUE`, a JSON value, or a model
builder keyword with `--set model.KEY=VALUE`): `maskrcnn_tiny` (a 4-layer stride-8 trunk; a
ResNet-50 FPN step takes ~5 s per 384 px image on one core, so it would see each image only 2-3
times in the budget) at a short side of 384 px (long side <= 640), anchors 32-256 px, SGD lr
0.02, batch 2. The train images are resized to that size once before training (lossless PNG in
a temporary folder, polygons scaled with them), so the budget is spent on steps rather than on
decoding 2048x1536 JPEGs.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
# name -> (annotation source relative to the datasets folder, val images)
DATASETS = {
    "balloon": ("balloon/train", 12),
    "fruits_nuts": ("fruits_nuts/trainval.json", 4),
}
RECIPE = {
    "model": "maskrcnn_tiny",
    "min_size": 384,
    "max_size": 640,
    "batch_size": 2,
    "optimizer": "sgd",
    "lr": 0.02,
    "gamma": 1.0,
    "roi_size": 14,
    "model_arg": ["anchor_sizes=[32, 64, 128, 256]"],
}
# --pretrained: Mask R-CNN on the MobileNetV2 ImageNet encoder (the package weights, no download)
PRETRAINED = {
    "model": "maskrcnn_mobilenet_v2_fpn",
    "pretrained": "mobilenet_v2",
    "model_arg": ["fpn_channels=128", "box_batch_size_per_image=128"],
    "lr": 0.005,
    "clip_grad": 5.0,
    "ema_decay": 0.99,  # on the held-out train images (--validate, 15 min): mask AP50 0.645 -> 0.715
}
STATS = ("AP", "AP50", "AP75")

log = logging.getLogger("bench_instance")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    recipe = recipe_for(args)
    print(f"recipe {json.dumps(recipe)}")
    if not args.score:
        print(f"{args.minutes} min per dataset by the {args.clock} clock; {args.threads} "
              f"thread(s); split seed {args.split_seed}, training seed {args.seed}"
              + ("; validation: train images held out, val not read" if args.validate else ""))  # fmt: skip
    if args.score and len(args.datasets) != 1:
        raise ValueError(f"--score needs exactly one dataset in --datasets, got {args.datasets}")
    rows = []
    for name in args.datasets:
        source = args.root / DATASETS[name][0]
        if not source.exists():
            print(f"{name}: no data at {source}")
            return 2
        if args.score:
            rows.append(score_checkpoint(name, source, DATASETS[name][1], args.score, args))
        else:
            rows.append(run_dataset(name, source, DATASETS[name][1], recipe, args))
        print(json.dumps(rows[-1]), flush=True)
    print(table(rows))
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=SHARED, help="the shared datasets folder")
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--minutes", type=float, default=12.0, help="training budget per dataset")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the train/val split")
    parser.add_argument("--keep", type=Path, help="keep the run folders under this folder")
    parser.add_argument("--validate", action="store_true",
                        help="choose settings: train on the train part less as many images as "
                        "val holds, score those; the val images are not read")  # fmt: skip
    parser.add_argument("--draw", type=int, default=0,
                        help="with --validate: hold out another random draw of the train part "
                             "(0: the usual one)")  # fmt: skip
    parser.add_argument("--score", type=Path, metavar="CHECKPOINT",
                        help="no training: score this checkpoint on the val part of the one "
                             "dataset given with --datasets")  # fmt: skip
    parser.add_argument("--eval-min-size", type=int, metavar="N",
                        help="score at this shorter side (the longer side's cap scaled alike) "
                             "instead of the training size")  # fmt: skip
    parser.add_argument("--pretrained", action="store_true",
                        help="fine-tune the MobileNetV2 ImageNet encoder (PRETRAINED)")  # fmt: skip
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe entry (JSON value), e.g. --set lr=0.01 or "
                             "--set model.width=32")  # fmt: skip
    args = parser.parse_args(argv)
    if args.draw and not args.validate:
        parser.error(f"--draw {args.draw} holds out train images only with --validate; add it")
    return args


# --------------------------------------------------------------------------- pure helpers
def split_indices(count: int, val_count: int, *, seed: int = 0) -> tuple[list[int], list[int]]:
    """Sorted (train, val) indices of `count` items: `val_count` drawn at random with `seed`.

    The same arguments always give the same split (torch's seeded generator, not global state);
    the two parts are disjoint and together cover 0..count-1.
    """
    if count < 2:
        raise ValueError(f"count must be >= 2 to split into train and val, got {count}")
    if not 1 <= val_count < count:
        raise ValueError(
            f"val_count must be in [1, {count - 1}] for {count} items, got {val_count}"
        )
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[val_count:]), sorted(order[:val_count])


def bench_split(
    count: int, val_count: int, *, seed: int = 0, validate: bool = False, draw: int = 0
) -> tuple[list[int], list[int]]:
    """(train, scored) indices: the fixed split of `split_indices`, or with `validate` its train
    part split again the same way (`val_count` of it held out and scored), so that settings are
    chosen without ever reading the val images. `draw` > 0 holds out another random draw of the
    train part (draws may overlap; the val images are in none)."""
    train, val = split_indices(count, val_count, seed=seed)
    if not validate:
        return train, val
    inner_train, inner_val = split_indices(len(train), val_count, seed=seed + draw)
    return [train[i] for i in inner_train], [train[i] for i in inner_val]


def recipe_for(args: argparse.Namespace) -> dict:
    """RECIPE, with PRETRAINED's entries under --pretrained, then the --set overrides."""
    return apply_sets(RECIPE | (PRETRAINED if args.pretrained else {}), args.set)


def apply_sets(recipe: dict, items: list[str]) -> dict:
    """The recipe with `KEY=VALUE` overrides (JSON values; bare words are strings).

    `model.KEY=VALUE` adds a builder keyword (`--model-arg KEY=VALUE`), replacing an earlier one
    of the same KEY.
    """
    result = {**recipe, "model_arg": list(recipe.get("model_arg", []))}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        if key.startswith("model."):
            name = key.removeprefix("model.")
            if not name.isidentifier():
                raise ValueError(f"--set model.KEY needs a Python name as KEY, got {item!r}")
            result["model_arg"] = [a for a in result["model_arg"] if a.split("=")[0] != name]
            result["model_arg"].append(f"{name}={text}")
            continue
        try:
            result[key] = json.loads(text)
        except json.JSONDecodeError:
            result[key] = text
    return result


def resized_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """Short side to `min_size`, long side at most `max_size`, never enlarged (as the dataset)."""
    scale = min(min_size / min(height, width), max_size / max(height, width), 1.0)
    return max(1, round(height * scale)), max(1, round(width * scale))


def coco_subset(instance_set, indices: list[int]) -> dict:
    """A COCO instances dict of the records `indices` of an InstanceSet (polygons or RLE).

    Image file names are absolute paths, category ids those of the source, so the file reads
    back with `read_instances` into the same classes.
    """
    categories = [
        {"id": int(cid), "name": name}
        for cid, name in zip(instance_set.category_ids, instance_set.class_names)
    ]
    images, annotations = [], []
    for index in indices:
        record = instance_set.records[index]
        images.append({"id": record.image_id, "file_name": str(Path(record.image).resolve()),
                       "height": record.height, "width": record.width})  # fmt: skip
        for instance in record.instances:
            if instance.label == 0:
                raise ValueError(f"{record.image}: ignore regions are not supported here")
            entry = {
                "id": len(annotations) + 1,
                "image_id": record.image_id,
                "category_id": int(instance_set.category_ids[instance.label - 1]),
                "iscrowd": int(instance.iscrowd),
            }
            if instance.polygons is not None:
                xs = np.concatenate([np.asarray(p[0::2], dtype=float) for p in instance.polygons])
                ys = np.concatenate([np.asarray(p[1::2], dtype=float) for p in instance.polygons])
                x, y = float(xs.min()), float(ys.min())
                entry["segmentation"] = [list(map(float, p)) for p in instance.polygons]
                entry["bbox"] = [x, y, float(xs.max()) - x, float(ys.max()) - y]
            else:
                entry["segmentation"] = instance.rle
            annotations.append(entry)
    return {"images": images, "annotations": annotations, "categories": categories}


def scale_coco(coco: dict, sizes: dict[int, tuple[int, int]], files: dict[int, str]) -> dict:
    """`coco` with image `id` moved to `files[id]` at `sizes[id]` (h, w), polygons scaled along.

    Images with an RLE annotation keep their original file and size.
    """
    rle_images = {a["image_id"] for a in coco["annotations"] if isinstance(a["segmentation"], dict)}
    factors, images = {}, []
    for image in coco["images"]:
        if image["id"] in rle_images or image["id"] not in sizes:
            images.append(image)
            continue
        height, width = sizes[image["id"]]
        factors[image["id"]] = (width / image["width"], height / image["height"])
        images.append({**image, "file_name": files[image["id"]], "height": height, "width": width})
    annotations = []
    for ann in coco["annotations"]:
        if ann["image_id"] not in factors:
            annotations.append(ann)
            continue
        sx, sy = factors[ann["image_id"]]
        polygons = [[v * (sx if i % 2 == 0 else sy) for i, v in enumerate(p)]
                    for p in ann["segmentation"]]  # fmt: skip
        x, y, w, h = ann["bbox"]
        annotations.append(
            {**ann, "segmentation": polygons, "bbox": [x * sx, y * sy, w * sx, h * sy]}
        )
    return {**coco, "images": images, "annotations": annotations}


# --------------------------------------------------------------------------- one dataset
def run_dataset(name: str, source: Path, val_count: int, recipe: dict, args) -> dict:
    from segworks.data.instances import read_instances

    instance_set = read_instances(source)
    train_idx, val_idx = bench_split(len(instance_set.records), val_count, seed=args.split_seed,
                                     validate=args.validate, draw=args.draw)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix=f"bench_instance_{name}_") as folder:
        work = Path(folder)
        if args.keep:
            work = args.keep / name
            work.mkdir(parents=True, exist_ok=True)
        train_json = prepare_train(instance_set, train_idx, recipe, work / "train")

        def train(epochs: int, out: Path, budget: dict | None = None) -> tuple[float, float]:
            torch.manual_seed(args.seed)
            settings = {**recipe, "data": str(train_json), "out": str(out), "epochs": epochs,
                        "val_split": 0.0, "seed": args.seed, "device": "cpu", "workers": 0,
                        "progress": False, "tensorboard": False, **(budget or {})}  # fmt: skip
            wall, cpu = time.perf_counter(), time.process_time()
            train_instance(settings)
            return time.perf_counter() - wall, time.process_time() - cpu

        wall, cpu = train(1, work / "calibration")
        epoch_cost = cpu if args.clock == "cpu" else wall
        epochs = max(1, int(60 * args.minutes / epoch_cost))
        log.warning("%s: %.1f s per epoch (%s clock) -> %d epochs", name, epoch_cost,
                    args.clock, epochs)  # fmt: skip
        budget = {
            "fit_minutes": args.minutes,
            "max_minutes": args.minutes,
            "budget_clock": args.clock,
        }  # refitted after epoch 1, stopped on time
        wall, cpu = train(epochs, work / "run", budget)
        row = score_checkpoint(name, source, val_count, work / "run" / "last.pt", args)
    return row | {"train_min": wall / 60, "cpu_min": cpu / 60}  # epochs: the checkpoint's


def train_instance(settings: dict) -> None:
    """`segworks train --task instance` (the `instance` recipe) with these flag values."""
    from segworks.commands.train import parse_model_args
    from segworks.config import TrainConfig
    from segworks.engine.train import train
    from segworks.recipes import recipe_settings

    given = {key: value for key, value in settings.items() if key != "model_arg"}
    given |= {"task": "instance", "model_kwargs": parse_model_args(settings.get("model_arg", []))}
    train(TrainConfig(**recipe_settings("instance", given)))


def score_checkpoint(name: str, source: Path, val_count: int, checkpoint: Path, args) -> dict:
    """COCO box and mask AP of `checkpoint` on the val part (with --validate the held-out
    train images), at the original resolution."""
    from segworks.checkpoint import load_checkpoint
    from segworks.data.instances import InstanceDataset, read_instances
    from segworks.engine.instance import evaluate_model
    from segworks.models import model_from_checkpoint

    instance_set = read_instances(source)
    train_idx, val_idx = bench_split(len(instance_set.records), val_count, seed=args.split_seed,
                                     validate=args.validate, draw=args.draw)  # fmt: skip
    saved = load_checkpoint(checkpoint)
    model = model_from_checkpoint(saved, checkpoint)
    if args.eval_min_size:
        rescale_input(model, args.eval_min_size)
    val = InstanceDataset(instance_set, val_idx, min_size=None)  # original resolution
    metrics = evaluate_model(model, val, torch.device("cpu"), desc=f"{name} val")
    kwargs = saved.get("model_kwargs", {})
    size = f"{kwargs.get('min_size', '?')}/{kwargs.get('max_size', '?')}"
    if args.eval_min_size:
        size += f" at {model.transform.min_size[0]}/{model.transform.max_size}"
    return {
        "dataset": name,
        "model": saved.get("model_name", "?"),
        "size": size,
        "train": len(train_idx),
        "val": len(val_idx),
        "val_instances": sum(len(instance_set.records[i].instances) for i in val_idx),
        "epochs": saved.get("epoch"),
        "train_min": math.nan,
        "cpu_min": math.nan,
        "bbox": {k: metrics["bbox"][k] for k in STATS},
        "segm": {k: metrics["segm"][k] for k in STATS},
        "per_class_mask_ap": metrics["segm"]["per_class"],
        "val_loss": metrics["loss"],
    }


def rescale_input(model, min_size: int) -> None:
    """Score the detector at shorter side `min_size`, its longer-side cap scaled by the same
    factor: the model's `min_size_test` as if it had been built with it."""
    from segworks.models.mask_rcnn import eval_sizes

    model.test_sizes = eval_sizes(model.train_sizes, min_size, None)
    model.eval()


def prepare_train(instance_set, indices: list[int], recipe: dict, folder: Path) -> Path:
    """The train records as a COCO file, their images resized to the recipe's size (PNG)."""
    folder.mkdir(parents=True, exist_ok=True)
    coco = coco_subset(instance_set, indices)
    sizes, files = {}, {}
    for index in indices:
        record = instance_set.records[index]
        size = resized_size(record.height, record.width, recipe["min_size"], recipe["max_size"])
        if size == (record.height, record.width):
            continue
        path = folder / f"{record.image_id:05d}.png"
        with Image.open(record.image) as image:
            image.convert("RGB").resize(size[::-1], Image.BILINEAR).save(path)
        sizes[record.image_id], files[record.image_id] = size, str(path.resolve())
    path = folder / "train.json"
    path.write_text(json.dumps(scale_coco(coco, sizes, files)), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- report
def table(rows: list[dict]) -> str:
    header = (f"{'dataset':<12} {'model':<14} {'size':>8} {'tr/val':>6} {'epochs':>6} "
              f"{'cpu min':>7} {'wall min':>8} | {'box AP':>6} {'AP50':>6} {'AP75':>6} | "
              f"{'mask AP':>7} {'AP50':>6} {'AP75':>6}")  # fmt: skip
    lines = [header]
    for row in rows:
        box = " ".join(f"{_num(row['bbox'][k]):>6}" for k in STATS)
        mask = f"{_num(row['segm']['AP']):>7} " + " ".join(
            f"{_num(row['segm'][k]):>6}" for k in STATS[1:]
        )
        lines.append(
            f"{row['dataset']:<12} {row['model']:<14} {row['size']:>8} "
            f"{row['train']:>2}/{row['val']:<3} {row['epochs']:>6} {_num(row['cpu_min'], 1):>7} "
            f"{_num(row['train_min'], 1):>8} | {box} | {mask}"
        )
    return "\n".join(lines)


def _num(value: float, digits: int = 3) -> str:
    return "nan" if math.isnan(value) else f"{value:.{digits}f}"


if __name__ == "__main__":
    raise SystemExit(main())
