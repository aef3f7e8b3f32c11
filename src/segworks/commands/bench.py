"""`segworks bench`: run the benchmark modules of a source checkout in sequence.

The benchmarks live in the `benchmarks/` package at the root of the repository (beside `src/`),
not inside the installed `segworks` package, so this command finds the checkout that segworks
was installed from (editable install) or the current folder, and imports from there. Each module
has a `main(argv)`; the command builds argv from its own flags, passing only the flags that a
module's parser accepts (read from its --help), prints the module's output and appends it to
benchmarks/RESULTS.md with the machine, versions and the equivalent command.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import logging
import re
import sys
import time
from pathlib import Path

import segworks

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
}
# Flags wanted for a module, by mode; only those its parser accepts are passed.
QUICK_FLAGS: dict[str, dict[str, str | None]] = {
    "metrics": {"--batch": "1", "--height": "64", "--width": "128", "--repeats": "1"},
    "sliding": {"--big": "256", "--whole": "128", "--tile": "64", "--tile-batch": "1"},
    "deeplabv3": {"--size": "64", "--repeats": "1"},
    "maskrcnn": {"--size": "64", "--reps": "1"},
}
FULL_FLAGS: dict[str, dict[str, str | None]] = {
    "metrics": {"--repeats": "3"},  # torchmetrics' validated update takes ~10 s per call on CPU
    "sliding": {"--big": "2000", "--whole": "1000", "--tile": "512"},
    "deeplabv3": {"--size": "192", "--repeats": "3"},
    "maskrcnn": {"--size": "192", "--reps": "3"},
}
SUBCOMMANDS = {"maskrcnn": ["throughput"]}  # bench_mask_rcnn's timing mode
# bench_models skips the pairs that a selected dedicated module measures.
COVERED_BY = {"deeplabv3": "deeplabv3_resnet101"}
GENERIC_QUICK_FLAGS = {"--quick": None}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--only",
        help=f"comma-separated benchmarks to run (default all: {','.join(BENCHMARKS)})",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), help="autocast dtype")
    parser.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    parser.add_argument("--compile", action="store_true", help="torch.compile the models")
    parser.add_argument("--results", type=Path, help="default: benchmarks/RESULTS.md")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md")


def run(args: argparse.Namespace) -> int:
    root = checkout_root()
    names = selected(args.only)
    results = args.results or root / "benchmarks" / "RESULTS.md"
    failed = []
    started = time.perf_counter()
    args.covered = [model for name, model in COVERED_BY.items() if name in names]
    for name in names:
        print(f"\n=== {name}: {BENCHMARKS[name][1]} ===", flush=True)
        began = time.perf_counter()
        ok = run_one(name, args, None if args.no_write else results)
        print(f"--- {name}: {'done' if ok else 'FAILED'} in {time.perf_counter() - began:.0f} s")
        if not ok:
            failed.append(name)
    total = time.perf_counter() - started
    print(f"\nsegworks bench: {len(names) - len(failed)}/{len(names)} ran in {total:.0f} s")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    if not args.no_write:
        print(f"results appended to {results}")
    return 1 if failed else 0


def checkout_root() -> Path:
    """The source checkout holding `benchmarks/`, put first on sys.path."""
    candidates = [Path(segworks.__file__).resolve().parents[2], Path.cwd()]
    for root in candidates:
        if (root / "benchmarks" / "__init__.py").is_file():
            if str(root) not in sys.path:
                sys.path.insert(0, str(root))
            return root
    raise FileNotFoundError(
        "the benchmarks package is missing: it lives in benchmarks/ at the root of a segworks "
        f"source checkout (looked in {', '.join(str(c) for c in candidates)}); install segworks "
        "editable from a checkout (pip install -e .) or run segworks bench from its root"
    )


def selected(only: str | None) -> list[str]:
    if not only:
        return list(BENCHMARKS)
    names = [name.strip() for name in only.split(",") if name.strip()]
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown or not names:
        raise ValueError(f"--only {only!r}: expected names from {', '.join(BENCHMARKS)}")
    return names


def run_one(name: str, args: argparse.Namespace, results: Path | None) -> bool:
    """Import, call and record one benchmark; False when it failed (skips count as done)."""
    module_name, title = BENCHMARKS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise
        print(f"skipped: {module_name.replace('.', '/')}.py is not in this checkout yet")
        return True
    argv = module_argv(name, module, args)
    from benchmarks.common import append_results, captured_stdout, machine_info

    try:
        with captured_stdout() as chunks:
            status = call_main(module, argv)
    except SystemExit as exit_:  # argparse errors and sys.exit() in a benchmark's main
        status = exit_.code
    except Exception as error:  # a broken benchmark must not stop the others
        log.debug("benchmark %s failed", name, exc_info=True)
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return False
    if status not in (0, None):
        return False
    if results is not None:
        command = " ".join(["python -m", module_name, *argv])
        append_results(results, title, command, "".join(chunks), info=machine_info(args.device))
    return True


def module_argv(name: str, module, args: argparse.Namespace) -> list[str]:
    """The flags this run wants for `module`, restricted to those its parser accepts."""
    wanted: dict[str, str | None] = {"--device": args.device}
    if args.amp:
        wanted["--amp"] = args.amp
    if args.channels_last:
        wanted["--channels-last"] = None
    if args.compile:
        wanted["--compile"] = None
    if args.quick:
        wanted.update(GENERIC_QUICK_FLAGS)
        wanted.update(QUICK_FLAGS.get(name, {}))
    else:
        wanted.update(FULL_FLAGS.get(name, {}))
    if name == "models":
        wanted["--models"] = models_left(module, getattr(args, "covered", []))
    prefix = SUBCOMMANDS.get(name, [])
    accepted = accepted_flags(module, prefix)
    if args.device != "cpu" and "--device" not in accepted:
        log.warning("%s has no --device flag; it runs on its default device", module.__name__)
    argv = list(prefix)
    for flag, value in wanted.items():
        if flag in accepted:
            argv += [flag] if value is None else [flag, value]
    return argv


def models_left(module, covered: list[str]) -> str:
    """bench_models' pairs without those that a dedicated benchmark in this run measures."""
    names = [name for name in getattr(module, "CONTESTS", {}) if name not in covered]
    return ",".join(names)


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
