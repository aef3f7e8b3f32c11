"""Peak memory of a training step: segworks' models vs their peers at a given batch and size.

Every model runs in a fresh Python process, so nothing allocated by another model (or by the
allocator's caches) is counted. The child builds the model and its batch, then runs two training
steps (the second one holds the optimiser's momentum buffers) and reports:
- CPU: the peak resident set size during the steps (Linux: VmHWM, restarted just before them
  through /proc/self/clear_refs; elsewhere `resource.getrusage(...).ru_maxrss`) minus the
  resident size just before the first step: what a step adds to the model and its inputs.
- CUDA: `torch.cuda.max_memory_allocated()` minus the memory allocated before the first step.
The pairs, the inputs and the loss are those of `benchmarks.bench_models` (and its
`NAME@SIDExBATCH` syntax). With `--rounds N` each child runs N times, segworks and peer
alternating, and the `ratio` line gives peer memory / segworks memory per round, min / median /
max (> 1: segworks needs less).

    python -m benchmarks.bench_memory [--models fcn_resnet50,unet_resnet34@256x1] [--batch 2]
        [--size 192] [--rounds 2] [--device cuda --amp bf16 --channels-last]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks.common import Runtime, add_device_arguments, ratio_line

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20


def current_rss() -> int:
    """Resident set size of this process in bytes (Linux /proc; the peak elsewhere)."""
    return _status_kib("VmRSS") * 1024 if _STATUS.is_file() else peak_rss()


def peak_rss() -> int:
    """Peak resident set size in bytes since the last `reset_peak` (or the process start)."""
    if _STATUS.is_file():
        return _status_kib("VmHWM") * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # KiB on Linux


def reset_peak() -> bool:
    """Restart the peak RSS from the current RSS (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


_STATUS = Path("/proc/self/status")


def _status_kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} is not in {_STATUS}")


def measure(name: str, which: str, runtime: Runtime, *, batch: int, size: int) -> dict:
    """In this (fresh) process: memory added by two training steps of one model."""
    from benchmarks.bench_models import (
        CONTESTS,
        NUM_CLASSES,
        Workload,
        detection_batch,
        semantic_batch,
    )
    from segworks.models import build_model

    contest = CONTESTS[name]
    torch.manual_seed(0)
    if which == "segworks":
        kwargs = {"min_size": size, "max_size": size} if contest.detection else {}
        model = build_model(name, num_classes=NUM_CLASSES, **kwargs)
    else:
        model = contest.build_peer(NUM_CLASSES, size)
    inputs = (detection_batch if contest.detection else semantic_batch)(batch, size, NUM_CLASSES)
    workload = Workload(model.train(), runtime, inputs, contest.detection)
    gc.collect()
    if runtime.is_cuda:
        runtime.sync()
        torch.cuda.reset_peak_memory_stats(runtime.device)
        before = torch.cuda.memory_allocated(runtime.device)
    else:
        exact = reset_peak()
        before, peak_before = current_rss(), peak_rss()
    for _ in range(2):
        workload.train_step()
    runtime.sync()
    if runtime.is_cuda:
        peak = torch.cuda.max_memory_allocated(runtime.device)
        return {"bytes": peak - before, "baseline": before, "kind": "cuda allocated"}
    peak = peak_rss()
    note = "" if exact or peak > peak_before else "build peak above step peak (ru_maxrss)"
    return {"bytes": peak - before, "baseline": before, "kind": "cpu rss", "note": note}


def run_child(
    name: str, which: str, args: argparse.Namespace, *, size: int | None = None, batch=None
) -> dict:
    """`measure` in a fresh interpreter; its last stdout line is the JSON result."""
    size, batch = size or args.size, batch or args.batch
    command = [sys.executable, "-m", "benchmarks.bench_memory", "--child", f"{name}:{which}"]
    command += ["--batch", str(batch), "--size", str(size), "--device", args.device]
    command += ["--amp", args.amp] + (["--channels-last"] if args.channels_last else [])
    command += ["--threads", str(getattr(args, "threads", 0))]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-3:]
        return {"error": f"child failed ({done.returncode}): {' | '.join(tail)}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_rounds(
    name: str, args: argparse.Namespace, *, size: int, batch: int, rounds: int
) -> list[dict[str, dict]]:
    """`rounds` fresh-process measurements of each side, alternating which side goes first."""
    results = []
    for index in range(rounds):
        order = ("segworks", "peer") if index % 2 == 0 else ("peer", "segworks")
        results.append(
            {which: run_child(name, which, args, size=size, batch=batch) for which in order}
        )
    return results


def ratio_of_rounds(name: str, rounds: list[dict[str, dict]]) -> str:
    """The `ratio` line of one model: peer bytes / segworks bytes per round."""
    values = [
        pair["peer"]["bytes"] / pair["segworks"]["bytes"]
        for pair in rounds
        if "error" not in pair["peer"] and "error" not in pair["segworks"]
        if pair["segworks"]["bytes"] > 0
    ]
    if not values:
        return f"no ratio for {name}: every round failed or measured nothing"
    return ratio_line(f"{name} training-step peak memory peer/segworks", values)


def report(results: dict[str, dict[str, dict]], peers: dict[str, str]) -> str:
    """A table of the (median-round) bytes per model: segworks, peer and peer / segworks."""
    lines = [f"{'model':<22} {'segworks MiB':>13} {'peer MiB':>10} {'peer/ours':>10}  peer"]
    for name, pair in results.items():
        ours, peer = pair["segworks"], pair["peer"]
        if "error" in ours or "error" in peer:
            lines.append(f"{name:<22} {ours.get('error') or peer.get('error')}")
            continue
        ratio = peer["bytes"] / ours["bytes"] if ours["bytes"] > 0 else float("nan")
        lines.append(
            f"{name:<22} {ours['bytes'] / MIB:13.0f} {peer['bytes'] / MIB:10.0f} "
            f"{ratio:9.2f}x  {peers[name]}"
        )
        notes = {n for n in (ours.get("note"), peer.get("note")) if n}
        lines += [f"  note: {n}" for n in notes]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_arguments(parser)
    parser.add_argument("--models", help="comma-separated (default: every bench_models pair)")
    parser.add_argument("--batch", type=int, help="images per step (CPU 2, CUDA 8)")
    parser.add_argument("--size", type=int, help="square input side (CPU 192, CUDA 512)")
    parser.add_argument("--rounds", type=int, default=1, help="fresh processes per side")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: its default)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    from benchmarks.bench_models import CONTESTS, parse_models

    args = build_parser().parse_args(argv)
    runtime = Runtime.from_args(args)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    args.batch = args.batch or (8 if runtime.is_cuda else 2)
    args.size = args.size or (64 if args.quick else 512 if runtime.is_cuda else 192)
    if args.child:
        name, which = args.child.split(":")
        print(json.dumps(measure(name, which, runtime, batch=args.batch, size=args.size)))
        return 0
    if args.rounds < 1:
        raise ValueError(f"--rounds {args.rounds}: expected >= 1")
    plan = parse_models(args.models or ",".join(CONTESTS), size=args.size, batch=args.batch)
    print(
        f"peak memory added by a training step, {runtime.describe()}, "
        f"{torch.get_num_threads()} threads, one fresh process per "
        f"model and round, {args.rounds} round(s) alternating which side goes first",
        flush=True,
    )
    results, ratios = {}, []
    for name, size, batch in plan:
        rounds = measure_rounds(name, args, size=size, batch=batch, rounds=args.rounds)
        label = f"{name} b{batch} {size}x{size}"
        ordered = sorted(rounds, key=lambda pair: pair["segworks"].get("bytes", 0))
        results[label] = ordered[len(ordered) // 2]  # the round of segworks' median figure
        ratios.append(ratio_of_rounds(name, rounds))
    peers = {f"{n} b{b} {s}x{s}": CONTESTS[n].peer_name for n, s, b in plan}
    print(report(results, peers))
    print("\n".join(ratios))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
