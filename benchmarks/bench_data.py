"""Data pipeline throughput: decoded + augmented samples/s vs the UNet step rate it must feed.

segworks' own pipeline is measured: `open_source` on a folder of JPEG images and PNG masks,
`train_transforms` (random scale 0.5-2, crop, flip, normalise) and a DataLoader with N workers
(persistent workers; pinned memory when the device is CUDA). A UNet-ResNet34 training step at
the same crop size and batch gives the rate the loader has to sustain; the step and every loader
configuration alternate round by round (one round = one step and one pass over the samples of
each configuration), and the `ratio` line gives, per round, the best configuration's samples/s
over the step's images/s (> 1: the loader keeps up). On a CPU-only machine the loader workers
and the training share the cores, so there the comparison is an upper bound on what the loader
can do.

The samples are a synthetic 512x512 set written to a temporary folder, plus CamVid from
../shared/datasets/camvid when present. A second table compares JPEG decoders (PIL, which
segworks uses, and torchvision.io).

    python -m benchmarks.bench_data [--workers 0,1,2] [--size 512] [--batch 4] [--repeats 3]
        [--device cuda]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from benchmarks.common import (
    Runtime,
    add_device_arguments,
    compare,
    format_table,
    ratio_line,
    summarise,
)
from segworks.data import open_source
from segworks.data.transforms import train_transforms

CAMVID = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "camvid"
CLASS_NAMES = ["background", "a", "b", "c", "d"]


def write_synthetic(root: Path, *, count: int, size: int) -> Path:
    """`count` JPEG photos-like images (smooth colours + noise) and PNG index masks of blobs."""
    generator = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for index in range(count):
        mask = np.zeros((size, size), dtype=np.uint8)
        for cls in range(1, len(CLASS_NAMES)):
            cy, cx, r = generator.uniform(0.1, 0.9), generator.uniform(0.1, 0.9), 0.15
            mask[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = cls
        colours = generator.integers(0, 256, (len(CLASS_NAMES), 3))
        image = colours[mask] + generator.normal(0, 12, (size, size, 3))
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
            root / "images" / f"{index:04d}.jpg", quality=90
        )
        Image.fromarray(mask).save(root / "masks" / f"{index:04d}.png")
    return root


def open_dataset(root: Path, *, size: int, count: int, synthetic: bool):
    if synthetic:
        source = open_source(root, mask_format="index", class_names=CLASS_NAMES, task="semantic")
    else:
        source = open_source(root)
    split = "train" if "train" in source.splits else next(iter(source.splits))
    samples = source.splits[split][:count]
    return source.dataset(samples, transform=train_transforms(crop_size=size))


def loader_pass(dataset, *, workers: int, batch: int, pin: bool):
    """A function running one pass over a loader built once (workers persist between passes)."""
    loader = DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        pin_memory=pin,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )

    def one_pass() -> None:
        for _images, _labels in loader:
            pass

    return one_pass


def bench_decoders(paths: list[Path], repeats: int) -> dict:
    """JPEG decoding to an RGB array: PIL (segworks' reader) vs torchvision.io."""
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    def with_pil() -> None:
        for path in paths:
            with Image.open(path) as image:
                np.asarray(image.convert("RGB"))

    def with_torchvision() -> None:
        for path in paths:
            decode_jpeg(read_file(str(path)), mode=ImageReadMode.RGB)

    fns = {"PIL (segworks)": with_pil, "torchvision.io.decode_jpeg": with_torchvision}
    return compare(fns, repeats=repeats, warmup=1)


STEP = "unet_resnet34 training step"


def unet_step(runtime: Runtime, *, batch: int, size: int):
    """A function running one UNet-ResNet34 training step on a size x size batch."""
    from benchmarks.bench_models import Workload, semantic_batch
    from segworks.models import build_model

    torch.manual_seed(0)
    model = build_model("unet_resnet34", num_classes=len(CLASS_NAMES)).train()
    workload = Workload(model, runtime, semantic_batch(batch, size, len(CLASS_NAMES)), False)
    return workload.train_step


def bench_pipeline(sources: dict[str, object], args, runtime: Runtime) -> dict:
    """One compare() over the UNet step and every (source, workers) loader, alternating."""
    fns = {STEP: unet_step(runtime, batch=args.batch, size=args.size)}
    for source, dataset in sources.items():
        for workers in args.workers:
            fns[f"{source} workers={workers}"] = loader_pass(
                dataset, workers=workers, batch=args.batch, pin=runtime.is_cuda
            )
    return compare(fns, repeats=args.repeats, warmup=1, sync=runtime.sync)


def report_source(source: str, dataset, result: dict, args, runtime: Runtime) -> str:
    """The loader table of one source, the best configuration and its `ratio` line."""
    names = [f"{source} workers={n}" for n in args.workers]
    table = summarise({name: result["times"][name] for name in names})
    best = min(names, key=lambda name: table["stats"][name]["median"])
    samples = len(dataset)
    # per round: loader samples/s over the UNet step's images/s in the same round
    ratios = [
        (samples / loader) / (args.batch / step)
        for loader, step in zip(result["times"][best], result["times"][STEP])
    ]
    best_rate = samples / table["stats"][best]["median"]
    step_rate = args.batch / result["stats"][STEP]["median"]
    verdict = (
        "the loader would be the bottleneck" if best_rate < step_rate else "the loader keeps up"
    )
    return "\n".join(
        [
            f"{source}: {samples} samples per pass, crop {args.size}, batch {args.batch}"
            " (x first = time / time of the first configuration)",
            format_table(table, items_per_call=samples, item="sample"),
            f"best: {best} {best_rate:.1f} samples/s vs UNet-ResNet34 training "
            f"{step_rate:.2f} img/s on {runtime.device}: {verdict}",
            ratio_line(f"data {source} loader samples/s / UNet step img/s", ratios),
        ]
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_arguments(parser)
    parser.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    parser.add_argument("--size", type=int, default=512, help="image side and crop size")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--count", type=int, default=24, help="samples per pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-camvid", dest="camvid", action="store_false")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.size, args.count, args.repeats, args.batch, args.camvid = 64, 4, 1, 2, False
    args.workers = [int(n) for n in args.workers.split(",") if n.strip()]
    runtime = Runtime.from_args(args)
    print(
        f"data pipeline, {runtime.describe()}, {torch.get_num_threads()} threads; the UNet step "
        f"and every loader pass alternate, {args.repeats} rounds after 1 warm-up",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="segworks-bench-data-") as folder:
        root = write_synthetic(Path(folder), count=args.count, size=args.size)
        sources = {
            "synthetic": open_dataset(root, size=args.size, count=args.count, synthetic=True)
        }
        if args.camvid and CAMVID.is_dir():
            sources["camvid"] = open_dataset(
                CAMVID, size=args.size, count=args.count, synthetic=False
            )
        result = bench_pipeline(sources, args, runtime)
        step = result["stats"][STEP]
        print(
            f"{STEP}, batch {args.batch}, {args.size}x{args.size}: median "
            f"{1e3 * step['median']:.0f} ms ({1e3 * step['min']:.0f}-{1e3 * step['max']:.0f}), "
            f"{args.batch / step['median']:.2f} img/s"
        )
        for source, dataset in sources.items():
            print(report_source(source, dataset, result, args, runtime), flush=True)
        jpegs = sorted((root / "images").glob("*.jpg"))
        print(f"JPEG decoding, {len(jpegs)} synthetic images of {args.size}x{args.size}:")
        print(format_table(bench_decoders(jpegs, args.repeats), items_per_call=len(jpegs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
