"""The shared harness: alternate contenders, summarise, describe the machine, record results.

`compare` times each contender once per round, in the same order every round (A B A B ...), so
slow drifts of a shared machine (other jobs, thermal limits) fall on every contender alike. The
first contender is the reference of the ratios: a ratio > 1 means it is faster than the other.

The GPU path (device, AMP, channels_last, cudnn.benchmark, torch.compile) is set up here too, so
every benchmark offers the same flags: `add_device_arguments(parser)` and `Runtime.from_args`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from segworks.fileio import atomic_path

__all__ = [
    "Runtime",
    "add_device_arguments",
    "append_results",
    "compare",
    "format_machine",
    "format_table",
    "machine_info",
    "paired_ratios",
    "ratio_line",
]

RESULTS_HEADER = """# Benchmark results

Written by `segworks bench` (or `python -m benchmarks.<module>`): each section is one run, with
the machine, the library versions and the command. Ratios are other / first contender (the first
is segworks): > 1 means segworks is faster or smaller. Paired ratios compare the timings of the
same round, so machine noise that hits both contenders cancels.
"""


# --------------------------------------------------------------------------- timing
def compare(
    fns: dict[str, Callable[[], object]],
    *,
    repeats: int,
    warmup: int = 1,
    sync: Callable[[], None] | None = None,
) -> dict:
    """Time every function `repeats` times, alternating them; `warmup` untimed rounds first.

    Odd rounds run the contenders in reverse order (A B, B A, A B, ...), so neither side always
    runs first, straight after the other's allocations or in a warmer cache.

    Returns {"names": [...], "times": {name: [seconds]}, "stats": {name: {min, median, max}},
    "ratio": {name: median / first's median}, "paired": {name: {min, median, max} of the
    per-round ratios name / first}}. `sync` runs before and after each call (CUDA: synchronize).
    """
    if not fns:
        raise ValueError("compare needs at least one function")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    sync = sync or (lambda: None)
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns.items())
    for round_index in range(warmup + repeats):
        for name, fn in order if round_index % 2 == 0 else order[::-1]:
            sync()
            start = time.perf_counter()
            fn()
            sync()
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
    return summarise(times)


def summarise(times: dict[str, list[float]]) -> dict:
    """The statistics and ratios of `compare` for per-call seconds gathered elsewhere."""
    names = list(times)
    first = times[names[0]]
    stats = {name: _spread(values) for name, values in times.items()}
    base = stats[names[0]]["median"]
    return {
        "names": names,
        "times": times,
        "stats": stats,
        "ratio": {name: stats[name]["median"] / base for name in names},
        "paired": {name: _spread([t / f for t, f in zip(times[name], first)]) for name in names},
    }


def _spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


# --------------------------------------------------------------------------- reporting
def format_table(result: dict, *, items_per_call: int | None = None, item: str = "img") -> str:
    """One line per contender: ms min/median/max, items/s at the median, ratios vs the first."""
    rate = f"{item}/s" if items_per_call else ""
    header = (
        f"{'contender':<34} {'min ms':>9} {'median':>9} {'max':>9} {rate:>8} "
        f"{'x first':>8} {'paired min/median/max':>22}"
    )
    lines = [header]
    for name in result["names"]:
        stats, paired = result["stats"][name], result["paired"][name]
        per_second = f"{items_per_call / stats['median']:8.2f}" if items_per_call else " " * 8
        lines.append(
            f"{name:<34} {1e3 * stats['min']:9.1f} {1e3 * stats['median']:9.1f} "
            f"{1e3 * stats['max']:9.1f} {per_second} {result['ratio'][name]:7.2f}x "
            f"{paired['min']:8.2f}/{paired['median']:.2f}/{paired['max']:.2f}"
        )
    return "\n".join(lines)


def paired_ratios(result: dict, name: str) -> list[float]:
    """Per-round `name` time / first contender's time: the first's speed over `name`'s."""
    first = result["times"][result["names"][0]]
    return [t / f for t, f in zip(result["times"][name], first)]


def ratio_line(label: str, values: list[float], *, rounds: str = "alternated rounds") -> str:
    """`ratio LABEL: min / median / max` of per-round ratios, the line `segworks bench` collects.

    Every benchmark prints at least one such line; its ratios are oriented so that > 1 favours
    segworks (its throughput over the peer's, or the peer's memory over segworks').
    """
    if not values:
        raise ValueError(f"ratio {label!r}: no values")
    spread = _spread(values)
    return (
        f"ratio {label}: {spread['min']:.3f} / {spread['median']:.3f} / {spread['max']:.3f} "
        f"(min / median / max over {len(values)} {rounds})"
    )


def machine_info(device: str = "cpu") -> dict[str, str]:
    """CPU model, cores, threads, Python/torch/torchvision versions and the device's name."""
    info = {
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "os": platform.platform(),
        "device": _device_name(device),
    }
    try:
        import segmentation_models_pytorch as smp

        info["segmentation_models_pytorch"] = smp.__version__
    except ImportError:
        pass
    return info


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        name = torch.cuda.get_device_name(index)
        return (
            f"{device} ({name}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})"
        )
    return device


def format_machine(info: dict[str, str]) -> str:
    return "; ".join(f"{key} {value}" for key, value in info.items())


def append_results(
    path: str | Path, title: str, command: str, table: str, *, info: dict | None = None
) -> None:
    """Append one section (title, date, machine, command, table) to a Markdown results file.

    The whole file is rewritten atomically, so an interrupted run leaves the old file intact.
    """
    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.is_file() else RESULTS_HEADER
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = format_machine(info or machine_info())
    section = (
        f"\n## {title}\n\n- date: {stamp}\n- machine: {machine}\n- command: `{command}`\n\n"
        f"```\n{table.rstrip()}\n```\n"
    )
    with atomic_path(path) as tmp:
        tmp.write_text(old.rstrip("\n") + "\n" + section, encoding="utf-8")


def command_line() -> str:
    """The command that started this process, as a user would type it."""
    program = Path(sys.argv[0]).name
    if program == "__main__.py" or program.endswith(".py"):
        program = f"python -m {_main_module()}"
    return " ".join([program, *sys.argv[1:]])


def _main_module() -> str:
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec.name if spec is not None else sys.argv[0]


# --------------------------------------------------------------------------- the GPU path
def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """--device, --amp, --channels-last, --compile, --no-cudnn-benchmark."""
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--amp", choices=("none", "bf16", "fp16"), default="none", help="autocast dtype"
    )
    parser.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    parser.add_argument("--compile", action="store_true", help="torch.compile the models")
    parser.add_argument(
        "--no-cudnn-benchmark",
        dest="cudnn_benchmark",
        action="store_false",
        help="do not let cuDNN pick kernels by timing them",
    )


@dataclass(frozen=True)
class Runtime:
    """Where and how models run: device, autocast dtype, memory format, compilation."""

    device: torch.device
    amp: str = "none"
    channels_last: bool = False
    compile: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Runtime:
        device = torch.device(args.device)
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise ValueError(f"--device {args.device}: CUDA is not available on this machine")
            torch.backends.cudnn.benchmark = getattr(args, "cudnn_benchmark", True)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if args.amp == "fp16" and device.type != "cuda":
            raise ValueError("--amp fp16 needs a CUDA device; use --amp bf16 on CPU")
        return cls(device, args.amp, args.channels_last, args.compile)

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.is_cuda:
            torch.cuda.synchronize(self.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp == "none":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A loss scaler for fp16 (disabled, a pass-through, otherwise)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")

    def model(self, model: nn.Module) -> nn.Module:
        """Move to the device and memory format; compile when asked."""
        memory_format = torch.channels_last if self.channels_last else torch.preserve_format
        model = model.to(self.device, memory_format=memory_format)
        return torch.compile(model) if self.compile else model

    def images(self, images: torch.Tensor) -> torch.Tensor:
        """A batch on the device (pinned, non-blocking copy from the CPU) in the memory format."""
        if self.is_cuda and images.device.type == "cpu":
            images = images.pin_memory().to(self.device, non_blocking=True)
        else:
            images = images.to(self.device)
        return (
            images.contiguous(memory_format=torch.channels_last) if self.channels_last else images
        )

    def describe(self) -> str:
        flags = [f"device {self.device}", f"amp {self.amp}"]
        flags += ["channels_last"] if self.channels_last else []
        flags += ["torch.compile"] if self.compile else []
        if self.is_cuda:
            flags.append(f"cudnn.benchmark {torch.backends.cudnn.benchmark}")
        return ", ".join(flags)


@contextlib.contextmanager
def captured_stdout() -> Iterator[list[str]]:
    """Print as usual and also collect what was printed (joined into one string at exit)."""
    chunks: list[str] = []

    class Tee:
        def write(self, text: str) -> int:
            chunks.append(text)
            return original.write(text)

        def flush(self) -> None:
            original.flush()

    original = sys.stdout
    with contextlib.redirect_stdout(Tee()):
        yield chunks
