"""Peak memory of sliding-window inference on a large image vs whole-image inference.

Runs, each in a fresh subprocess so the numbers do not mix, with the same small fully
convolutional model (three 3x3 convolutions, `--width` channels, `--classes` outputs):

  tile_batch   one forward pass over a batch of `--tile-batch` tiles (the unit slide mode repeats)
  whole        segworks.inference.Predictor, whole-image mode, on a `--whole` x `--whole` image
  slide        Predictor, slide mode (Gaussian blending, blocks reduced to labels at once), on a
               `--big` x `--big` image
  slide_logits (with --full-logits) slide_logits on the big image, keeping the full float logits

For each: the resident memory before the prediction (imports, model and the uint8 input image),
the peak resident memory during it (Linux VmHWM, reset through /proc/self/clear_refs), the peak
minus the before value ("extra"), and the wall time. The big image's own uint8 pixels (3 bytes
per pixel) and the uint8 label map (1 byte per pixel) are floors no tiling removes; they are
printed too, with the ratio of slide's extra to one tile batch's extra, with and without the
label map (the target: about 2 without it).

With `--rounds N` the cases run N times (the order reversed every other round) and the `ratio`
lines give min / median / max over the rounds of
- slide extra without the label map / one tile batch extra (the target: about 2), and
- whole-image extra per megapixel / slide extra per megapixel (> 1: sliding needs less memory
  per pixel than whole-image inference).

    .venv/bin/python -m benchmarks.bench_sliding_window            # 8000 vs 2000, tile 512
    .venv/bin/python -m benchmarks.bench_sliding_window --big 2000 --whole 1000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import ratio_line

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024


def build_model(width: int, classes: int):
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, classes, 3, padding=1),
    ).eval()


def memory_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def child(args: argparse.Namespace) -> None:
    """Run one case and print a JSON line with the memory figures."""
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from segworks.inference import InferenceOptions, Predictor, slide_logits
    from segworks.inference.sliding_window import resolve_stride
    from segworks.inference.tta import model_forward

    model = build_model(args.width, args.classes)
    tile = (args.tile, args.tile)
    side = {"whole": args.whole, "tile_batch": args.tile}.get(args.child, args.big)
    rng = np.random.default_rng(0)
    count = args.tile_batch if args.child == "tile_batch" else 1
    image = rng.integers(0, 256, (count, side, side, 3), dtype=np.uint8)
    if args.child == "whole":
        predictor = Predictor(model)
        run = lambda: predictor.predict(image[0])  # noqa: E731
    elif args.child == "slide":
        options = InferenceOptions(
            mode="slide", tile=tile, overlap=args.overlap, tile_batch=args.tile_batch
        )
        predictor = Predictor(model, options=options)
        run = lambda: predictor.predict(image[0])  # noqa: E731
    elif args.child == "slide_logits":
        predictor = Predictor(model)
        stride = resolve_stride(tile, overlap=args.overlap)
        pixels = torch.from_numpy(image[0]).permute(2, 0, 1)[None]
        run = lambda: slide_logits(  # noqa: E731
            model_forward(model),
            pixels,
            tile=tile,
            stride=stride,
            batch_size=args.tile_batch,
            prepare=predictor._prepare,
        )
    else:  # tile_batch
        predictor = Predictor(model)
        batch = torch.from_numpy(image).permute(0, 3, 1, 2)
        run = lambda: predictor.forward(predictor._prepare(batch)).argmax(1)  # noqa: E731
    with torch.no_grad():
        before = memory_kib("VmRSS")
        reset_peak()
        start = time.perf_counter()
        result = run()
        seconds = time.perf_counter() - start
        peak = memory_kib("VmHWM")
    del result
    print(
        json.dumps(
            {
                "case": args.child,
                "side": side,
                "before_kib": before,
                "peak_kib": peak,
                "seconds": seconds,
            }
        )
    )


def run_case(case: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, "-m", "benchmarks.bench_sliding_window", "--child", case]
    for name in ("big", "whole", "tile", "overlap", "tile_batch", "width", "classes", "threads"):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"case {case} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def extra_mib(row: dict) -> float:
    return (row["peak_kib"] - row["before_kib"]) / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--big", type=int, default=8000, help="side of the slide-mode image")
    parser.add_argument("--whole", type=int, default=2000, help="side of the whole-mode image")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--tile-batch", type=int, default=4)
    parser.add_argument("--width", type=int, default=8, help="channels of the model")
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="runs of every case")
    parser.add_argument("--full-logits", action="store_true", help="also time slide_logits")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return 0
    if args.rounds < 1 or args.tile > args.big:
        raise ValueError(
            f"--rounds {args.rounds}, --tile {args.tile}, --big {args.big}: expected rounds >= 1 "
            "and tile <= big"
        )
    cases = ["tile_batch", "whole", "slide"] + (["slide_logits"] if args.full_logits else [])
    print(
        f"model: 3 convs 3x3, width {args.width}, {args.classes} classes; tile {args.tile}, "
        f"overlap {args.overlap}, tile batch {args.tile_batch}, {args.threads} threads, "
        f"{args.rounds} round(s), a fresh process per case and round"
    )
    print(
        f"{'case':<13} {'image':>11} {'before MiB':>10} {'peak MiB':>9} {'extra MiB':>9} "
        f"{'seconds':>8}"
    )
    label_map = args.big * args.big / MIB
    tile_ratios, pixel_ratios = [], []
    for index in range(args.rounds):
        rows = {}
        for case in cases if index % 2 == 0 else cases[::-1]:
            row = rows[case] = run_case(case, args)
            print(
                f"{case:<13} {row['side']:>5}x{row['side']:<5} {row['before_kib'] / 1024:>10.0f} "
                f"{row['peak_kib'] / 1024:>9.0f} {extra_mib(row):>9.0f} {row['seconds']:>8.1f}"
            )
        tile_extra = max(extra_mib(rows["tile_batch"]), 1e-9)
        slide_extra = extra_mib(rows["slide"])
        tile_ratios.append((slide_extra - label_map) / tile_extra)
        whole_per_mpx = extra_mib(rows["whole"]) / (args.whole**2 / 1e6)
        pixel_ratios.append(whole_per_mpx / max(slide_extra / (args.big**2 / 1e6), 1e-9))
    print(
        f"\nfloors of the {args.big}x{args.big} image: uint8 input {3 * label_map:.0f} MiB "
        f"(in 'before'), uint8 labels {label_map:.0f} MiB (in 'extra')"
    )
    print(ratio_line("sliding slide extra without label map / one tile batch extra", tile_ratios))
    print(ratio_line("sliding whole-image / slide extra MiB per megapixel", pixel_ratios))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
