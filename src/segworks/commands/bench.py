"""`segworks bench`: run the benchmark modules of a source checkout in sequence.

The benchmarks live in the `benchmarks/` package at the root of the repository (beside `src/`),
not inside the installed `segworks` package, so this command finds the checkout that segworks
was installed from (editable install) or the current folder, and imports from there. Each module
has a `main(argv)`; the command builds argv from its own flags, passing only the flags that a
module's parser accepts (read from its --help), prints the module's output and appends it to
benchmarks/RESULTS.md with the machine, versions, load average and the equivalent command.

Every module prints `ratio LABEL: MIN / MEDIAN / MAX (min / median / max over N ...)` lines
(benchmarks.common.ratio_line); a module that prints none counts as failed, and the run ends with
a summary of every ratio, appended to RESULTS.md too.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import logging
import os
import re
import sys
import time
from pathlib import Path

import segworks
from segworks.errors import SegworksError

log = logging.getLogger(__name__)

# name -> (module, title). Order is the order of a full run.
BENCHMARKS: dict[str, tuple[str, str]] = {
    "metrics": ("benchmarks.bench_metrics", "Confusion-matrix update: segworks vs torchmetrics"),
    "models": ("benchmarks.bench_models", "Models: training step and inference vs peers"),
    "data": ("benchmarks.bench_data", "Data pipeline vs the UNet step rate"),
    "memory": ("benchmarks.bench_memory", "Peak memory of a training step"),
    "sliding": ("benchmarks.bench_sliding_window", "Sliding-window inference memory"),
    "deeplabv3": ("benchmarks.bench_deeplabv3", "DeepLabV3"),
    "maskrcnn": ("benchmarks.bench_mask_rcnn", "Mask R-CNN"),
    "newts": ("benchmarks.bench_newts", "newts fine-tuning: the small recipe vs smp, same weights"),
    "camvid": ("benchmarks.bench_camvid", "CamVid fine-tuning: the camvid recipe vs smp"),
}
# Asked for by name only (--only newts,camvid): 10-CPU-minute trainings per side.
OPT_IN = {"newts", "camvid"}
# Flags wanted for a module, by mode; only those its parser accepts are passed.
QUICK_FLAGS: dict[str, dict[str, str | None]] = {
    "metrics": {
        "--batch": "1",
        "--height": "64",
        "--width": "128",
        "--repeats": "1",
        "--validated-repeats": "1",
    },
    "sliding": {"--big": "256", "--whole": "128", "--tile": "64", "--tile-batch": "1"},
    "maskrcnn": {"--reps": "1"},
    "memory": {"--models": "unet_resnet34"},  # a fresh process per side: one pair is enough
    "newts": {"--peer": "smp", "--seeds": "0", "--minutes": "0.2"},
    "camvid": {"--peer": "smp", "--minutes": "0.2", "--clock": "cpu", "--jobs": "2"},
}
# Full mode: sizes chosen so that the whole run fits in 10 minutes on 2 shared CPU cores (see
# benchmarks/RESULTS.md); with --device cuda the modules' own (larger) defaults apply instead.
# Every timing is 1 warm-up + 3 rounds alternating segworks and its peer.
FULL_FLAGS: dict[str, dict[str, str | None]] = {
    # torchmetrics' validated update takes ~30 s per call on 8x1024x2048: timed once
    "metrics": {"--repeats": "3", "--validated-repeats": "1"},
    "models": {"--repeats": "3", "--warmup": "1"},
    "data": {"--size": "256", "--batch": "2", "--count": "16", "--workers": "0,2"},
    "memory": {"--rounds": "1"},
    "sliding": {"--big": "2000", "--whole": "1000", "--tile": "512", "--rounds": "2"},
    "deeplabv3": {"--size": "128", "--batch": "2", "--repeats": "3", "--warmup": "1"},
    "maskrcnn": {"--size": "224", "--batch": "1", "--reps": "3", "--warmup": "1"},
    "newts": {"--peer": "smp", "--clock": "cpu", "--jobs": "2"},
    "camvid": {"--peer": "smp", "--clock": "cpu", "--jobs": "2"},
}
# Full mode on the CPU: (side, batch) per model for `models` (timing) and `memory`.
FULL_SHAPES = {
    "deeplabv3_resnet101": (128, 2),
    "fcn_resnet50": (160, 2),
    "unet_resnet34": (256, 2),
    "maskrcnn_r50_fpn": (224, 1),
}
MEMORY_SHAPES = {
    "deeplabv3_resnet101": (128, 2),
    "fcn_resnet50": (128, 2),
    "unet_resnet34": (128, 2),
    "maskrcnn_r50_fpn": (128, 1),
}
SUBCOMMANDS = {"maskrcnn": ["throughput"]}  # bench_mask_rcnn's timing mode
# bench_models skips the pairs that a selected dedicated module measures.
COVERED_BY = {"deeplabv3": "deeplabv3_resnet101", "maskrcnn": "maskrcnn_r50_fpn"}
GENERIC_QUICK_FLAGS = {"--quick": None}
RATIO = re.compile(r"^ratio .+: \S+ / \S+ / \S+ \(min / median / max", re.MULTILINE)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--only",
        help=f"comma-separated benchmarks to run (default: {','.join(selected(None))}; "
        f"by name only: {','.join(sorted(OPT_IN))})",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), help="autocast dtype")
    parser.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    parser.add_argument("--compile", action="store_true", help="torch.compile the models")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads for every benchmark (default 1 on the CPU: a 2-thread run "
        "on a shared, oversubscribed machine stalls at every parallel region; 0: torch's default)",
    )
    parser.add_argument("--results", type=Path, help="default: benchmarks/RESULTS.md")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md")


def run(args: argparse.Namespace) -> int:
    import torch

    root = checkout_root()
    names = selected(args.only)
    if args.threads is None:
        args.threads = 1 if args.device == "cpu" else 0
    if args.threads < 0:
        raise SegworksError(f"--threads {args.threads}: expected >= 0 (0: torch's default)")
    saved_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return run_all(args, root, names)
    finally:
        torch.set_num_threads(saved_threads)


def run_all(args: argparse.Namespace, root: Path, names: list[str]) -> int:
    results = args.results or root / "benchmarks" / "RESULTS.md"
    failed, ratios = [], {}
    load_before = load_average()
    started = time.perf_counter()
    args.covered = [model for name, model in COVERED_BY.items() if name in names]
    for name in names:
        print(f"\n=== {name}: {BENCHMARKS[name][1]} (load average {load_average()}) ===")
        sys.stdout.flush()
        began = time.perf_counter()
        ok, lines = run_one(name, args, None if args.no_write else results)
        ratios[name] = lines
        if ok and not lines:
            print(f"error: {name} printed no ratio line", file=sys.stderr)
            ok = False
        print(f"--- {name}: {'done' if ok else 'FAILED'} in {time.perf_counter() - began:.0f} s")
        if not ok:
            failed.append(name)
    total = time.perf_counter() - started
    summary = [
        f"segworks bench: {len(names) - len(failed)}/{len(names)} ran in {total:.0f} s, "
        f"{'quick' if args.quick else 'full'} mode, load average {load_before} before, "
        f"{load_average()} after",
        "ratios, min / median / max over alternated rounds (> 1 favours segworks):",
    ]
    for name, lines in ratios.items():
        summary += [f"  [{name}] {line.removeprefix('ratio ')}" for line in lines]
        summary += [] if lines else [f"  [{name}] no ratio"]
    print("\n" + "\n".join(summary))
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    if not args.no_write:
        from benchmarks.common import append_results, machine_info

        command = bench_command(args)
        info = machine_info(args.device)
        append_results(results, "segworks bench: summary", command, "\n".join(summary), info=info)
        print(f"results appended to {results}")
    return 1 if failed else 0


def bench_command(args: argparse.Namespace) -> str:
    """The `segworks bench` command line equivalent to `args` (without --results/--no-write)."""
    words = ["segworks bench"]
    words += [f"--only {args.only}"] if args.only else []
    words += ["--quick"] if args.quick else []
    words += [f"--device {args.device}"] if args.device != "cpu" else []
    default_threads = 1 if args.device == "cpu" else 0
    words += [f"--threads {args.threads}"] if args.threads != default_threads else []
    words += [f"--amp {args.amp}"] if args.amp else []
    words += ["--channels-last"] if args.channels_last else []
    words += ["--compile"] if args.compile else []
    return " ".join(words)


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, or "n/a" where the OS has none."""
    try:
        return "/".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "n/a"


def checkout_root() -> Path:
    """The source checkout holding `benchmarks/`, put first on sys.path."""
    candidates = [Path(segworks.__file__).resolve().parents[2], Path.cwd()]
    for root in candidates:
        if (root / "benchmarks" / "__init__.py").is_file():
            if str(root) not in sys.path:
                sys.path.insert(0, str(root))
            return root
    raise SegworksError(
        "the benchmarks package is missing: it lives in benchmarks/ at the root of a segworks "
        f"source checkout (looked in {', '.join(str(c) for c in candidates)}); install segworks "
        "editable from a checkout (pip install -e .) or run segworks bench from its root"
    )


def selected(only: str | None) -> list[str]:
    if not only:
        return [name for name in BENCHMARKS if name not in OPT_IN]
    names = [name.strip() for name in only.split(",") if name.strip()]
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown or not names:
        raise SegworksError(f"--only {only!r}: expected names from {', '.join(BENCHMARKS)}")
    return names


def run_one(name: str, args: argparse.Namespace, results: Path | None) -> tuple[bool, list[str]]:
    """Import, call and record one benchmark: (False when it failed, its `ratio` lines)."""
    module_name, title = BENCHMARKS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise
        print(f"skipped: {module_name.replace('.', '/')}.py is not in this checkout yet")
        return True, []
    argv = module_argv(name, module, args)
    from benchmarks.common import append_results, captured_stdout, machine_info

    load_before = load_average()
    try:
        with captured_stdout() as chunks:
            status = call_main(module, argv)
    except SystemExit as exit_:  # argparse errors and sys.exit() in a benchmark's main
        status = exit_.code
    except Exception as error:  # a broken benchmark must not stop the others
        log.debug("benchmark %s failed", name, exc_info=True)
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return False, []
    if status not in (0, None):
        return False, []
    text = "".join(chunks)
    lines = [line for line in text.splitlines() if RATIO.match(line)]
    if results is not None:
        command = " ".join(["python -m", module_name, *argv])
        info = machine_info(args.device)
        info["load average"] = f"{load_before} before, {load_average()} after"
        append_results(results, title, command, text, info=info)
    return True, lines


def module_argv(name: str, module, args: argparse.Namespace) -> list[str]:
    """The flags this run wants for `module`, restricted to those its parser accepts."""
    wanted: dict[str, str | None] = {"--device": args.device}
    if getattr(args, "threads", 0):
        wanted["--threads"] = str(args.threads)
    if args.amp:
        wanted["--amp"] = args.amp
    if args.channels_last:
        wanted["--channels-last"] = None
    if args.compile:
        wanted["--compile"] = None
    full_cpu = not args.quick and args.device == "cpu"
    if args.quick:
        wanted.update(GENERIC_QUICK_FLAGS)
        wanted.update(QUICK_FLAGS.get(name, {}))
    elif full_cpu:
        wanted.update(FULL_FLAGS.get(name, {}))
    if name == "models":
        left = models_left(module, getattr(args, "covered", []))
        wanted["--models"] = with_shapes(left, FULL_SHAPES) if full_cpu else ",".join(left)
    if name == "memory" and full_cpu:
        wanted["--models"] = with_shapes(list(MEMORY_SHAPES), MEMORY_SHAPES)
    prefix = SUBCOMMANDS.get(name, [])
    accepted = accepted_flags(module, prefix)
    if args.device != "cpu" and "--device" not in accepted:
        log.warning("%s has no --device flag; it runs on its default device", module.__name__)
    argv = list(prefix)
    for flag, value in wanted.items():
        if flag in accepted:
            argv += [flag] if value is None else [flag, value]
    return argv


def models_left(module, covered: list[str]) -> list[str]:
    """bench_models' pairs without those that a dedicated benchmark in this run measures."""
    return [name for name in getattr(module, "CONTESTS", {}) if name not in covered]


def with_shapes(names: list[str], shapes: dict[str, tuple[int, int]]) -> str:
    """`name@SIDExBATCH,...` for bench_models / bench_memory (bare names have no shape)."""
    items = []
    for name in names:
        side, batch = shapes.get(name, (None, None))
        items.append(f"{name}@{side}x{batch}" if side else name)
    return ",".join(items)


def accepted_flags(module, prefix: list[str] = ()) -> set[str]:
    """The --flags in the module's --help text (of its subcommand `prefix`, if any)."""
    out = io.StringIO()
    quiet = contextlib.redirect_stderr(io.StringIO())
    with contextlib.redirect_stdout(out), quiet, contextlib.suppress(SystemExit):
        call_main(module, [*prefix, "--help"])
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", out.getvalue()))


def call_main(module, argv: list[str]) -> int | None:
    """module.main(argv), or main() with sys.argv set for a module whose main takes none."""
    main = getattr(module, "main", None)
    if main is None:
        raise AttributeError(f"{module.__name__} has no main()")
    if inspect.signature(main).parameters:
        return main(argv)
    saved = sys.argv
    sys.argv = [module.__file__, *argv]
    try:
        return main()
    finally:
        sys.argv = saved
