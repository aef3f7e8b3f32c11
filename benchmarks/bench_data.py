"""Data pipeline throughput: decoded + augmented samples/s vs the UNet step rate it must feed.

segworks' own pipeline is measured: `open_source` on a folder of JPEG images and PNG masks,
`train_transforms` (random scale 0.5-2, crop, flip, normalise) and a DataLoader with N workers
(persistent workers; pinned memory when the device is CUDA). Loader configurations alternate
every round (one round = one pass over the samples). In the same run, a UNet-ResNet34 training
step at the same crop size gives the rate the loader has to sustain; the verdict line says whether
the loader would be the bottleneck. On a CPU-only machine the loader workers and the training
share the cores, so there the comparison is an upper bound on what the loader can do.

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

from benchmarks.common import Runtime, add_device_arguments, compare, format_table
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


def bench_loaders(dataset, *, workers: list[int], batch: int, repeats: int, pin: bool):
    fns = {f"workers={n}": loader_pass(dataset, workers=n, batch=batch, pin=pin) for n in workers}
    return compare(fns, repeats=repeats, warmup=1)


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


def unet_step_rate(runtime: Runtime, *, batch: int, size: int, repeats: int) -> float:
    """Training images/s of UNet-ResNet34 at size x size (median of `repeats` steps)."""
    from benchmarks.bench_models import Workload, semantic_batch
    from segworks.models import build_model

    torch.manual_seed(0)
    model = build_model("unet_resnet34", num_classes=len(CLASS_NAMES)).train()
    workload = Workload(model, runtime, semantic_batch(batch, size, len(CLASS_NAMES)), False)
    fns = {"unet_resnet34": workload.train_step}
    result = compare(fns, repeats=repeats, warmup=1, sync=runtime.sync)
    return batch / result["stats"]["unet_resnet34"]["median"]


def report_source(name: str, dataset, args, runtime: Runtime, step_rate: float) -> str:
    result = bench_loaders(
        dataset, workers=args.workers, batch=args.batch, repeats=args.repeats, pin=runtime.is_cuda
    )
    best_name = min(result["names"], key=lambda n: result["stats"][n]["median"])
    best_rate = len(dataset) / result["stats"][best_name]["median"]
    verdict = (
        "the loader would be the bottleneck" if best_rate < step_rate else "the loader keeps up"
    )
    return "\n".join(
        [
            f"{name}: {len(dataset)} samples per pass, crop {args.size}, batch {args.batch}"
            " (x first = time / time of workers=0)",
            format_table(result, items_per_call=len(dataset), item="sample"),
            f"best: {best_name} {best_rate:.1f} samples/s vs UNet-ResNet34 training "
            f"{step_rate:.2f} img/s on {runtime.device}: {verdict} "
            f"({best_rate / step_rate:.1f}x the step rate)",
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
    print(f"data pipeline, {runtime.describe()}, {torch.get_num_threads()} threads", flush=True)
    step_rate = unet_step_rate(runtime, batch=args.batch, size=args.size, repeats=args.repeats)
    with tempfile.TemporaryDirectory(prefix="segworks-bench-data-") as folder:
        root = write_synthetic(Path(folder), count=args.count, size=args.size)
        dataset = open_dataset(root, size=args.size, count=args.count, synthetic=True)
        print(report_source("synthetic JPEG+PNG", dataset, args, runtime, step_rate), flush=True)
        jpegs = sorted((root / "images").glob("*.jpg"))
        print(f"JPEG decoding, {len(jpegs)} images of {args.size}x{args.size}:")
        print(format_table(bench_decoders(jpegs, args.repeats), items_per_call=len(jpegs)))
    if args.camvid and CAMVID.is_dir():
        dataset = open_dataset(CAMVID, size=args.size, count=args.count, synthetic=False)
        print(report_source(f"CamVid ({CAMVID})", dataset, args, runtime, step_rate), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
