"""The benchmark harness and `segworks bench`: order, structure and end-to-end smoke runs.

No assertion here depends on how fast anything runs: timings are only checked for structure.
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import pytest

from segworks.cli import main as cli_main
from segworks.commands import bench

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

common = pytest.importorskip("benchmarks.common")


def test_compare_alternates_contenders_and_their_order_every_round():
    calls: list[str] = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    result = common.compare(fns, repeats=3, warmup=2)
    assert calls == ["a", "b", "c", "c", "b", "a"] * 2 + ["a", "b", "c"]
    assert result["names"] == ["a", "b", "c"]
    assert all(len(result["times"][name]) == 3 for name in "abc")
    for name in "abc":
        stats = result["stats"][name]
        assert stats["min"] <= stats["median"] <= stats["max"]
    assert result["ratio"]["a"] == 1.0
    assert result["paired"]["a"] == {"min": 1.0, "median": 1.0, "max": 1.0}


def test_compare_calls_sync_around_every_timed_call():
    events: list[str] = []
    fns = {"a": lambda: events.append("a"), "b": lambda: events.append("b")}
    common.compare(fns, repeats=1, warmup=0, sync=lambda: events.append("sync"))
    assert events == ["sync", "a", "sync", "sync", "b", "sync"]


def test_summary_statistics_and_ratios_from_known_times():
    result = common.summarise({"ours": [1.0, 2.0, 3.0], "peer": [2.0, 4.0, 9.0]})
    assert result["stats"]["peer"] == {"min": 2.0, "median": 4.0, "max": 9.0}
    assert result["ratio"]["peer"] == 2.0  # peer median / first median
    assert result["paired"]["peer"] == {"min": 2.0, "median": 2.0, "max": 3.0}
    table = common.format_table(result, items_per_call=2)
    lines = table.splitlines()
    assert lines[1].startswith("ours") and lines[2].startswith("peer")
    assert "img/s" in lines[0] and "2.00x" in lines[2] and "2.00/2.00/3.00" in lines[2]
    assert " 1.00 " in lines[1] and " 0.50 " in lines[2]  # 2 images / median seconds


@pytest.mark.parametrize("repeats, warmup", [(0, 1), (1, -1)])
def test_compare_rejects_bad_counts(repeats, warmup):
    with pytest.raises(ValueError, match="repeats"):
        common.compare({"a": lambda: None}, repeats=repeats, warmup=warmup)


def test_append_results_keeps_earlier_sections(tmp_path):
    path = tmp_path / "RESULTS.md"
    info = {"cpu": "test cpu", "torch": "x"}
    common.append_results(path, "First", "cmd one", "table 1", info=info)
    common.append_results(path, "Second", "cmd two", "table 2\n", info=info)
    text = path.read_text()
    assert text.startswith("# Benchmark results")
    assert text.count("# Benchmark results") == 1
    assert text.index("## First") < text.index("## Second")
    assert "- command: `cmd two`" in text and "```\ntable 2\n```" in text
    assert "cpu test cpu" in text
    assert [p.name for p in tmp_path.iterdir()] == ["RESULTS.md"]  # no temporary left


def test_machine_info_names_versions():
    info = common.machine_info()
    assert {"cpu", "cores", "torch", "torchvision", "device"} <= set(info)


def fake_module(flags: list[str], takes_argv: bool = True) -> types.ModuleType:
    module = types.ModuleType("fake_bench")
    module.__file__ = "fake_bench.py"
    seen: list = []

    def parse(argv):
        parser = argparse.ArgumentParser()
        for flag in flags:
            parser.add_argument(flag)
        seen.append(vars(parser.parse_args(argv)))
        return 0

    if takes_argv:
        module.main = parse
    else:
        module.main = lambda: parse(sys.argv[1:])
    module.seen = seen
    return module


@pytest.mark.parametrize("takes_argv", [True, False])
def test_only_flags_a_module_accepts_are_passed(takes_argv):
    module = fake_module(["--device", "--batch"], takes_argv)
    args = argparse.Namespace(
        device="cuda", amp="bf16", channels_last=True, compile=False, quick=True
    )
    argv = bench.module_argv("metrics", module, args)
    assert argv == ["--device", "cuda", "--batch", "1"]
    assert bench.call_main(module, argv) == 0
    assert module.seen[-1] == {"device": "cuda", "batch": "1"}


def test_unknown_benchmark_name_is_a_usage_error(capsys):
    assert cli_main(["bench", "--only", "models,nope", "--no-write"]) == 2
    assert "nope" in capsys.readouterr().err


def test_segworks_bench_quick_metrics_runs_end_to_end(tmp_path, capsys):
    results = tmp_path / "RESULTS.md"
    assert cli_main(["bench", "--quick", "--only", "metrics", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "torchmetrics" in out and "1/1 ran" in out
    text = results.read_text()
    assert "## Confusion-matrix update" in text
    assert "python -m benchmarks.bench_metrics --device cpu --batch 1" in text


def test_segworks_bench_no_write_leaves_results_alone(tmp_path, capsys):
    results = tmp_path / "RESULTS.md"
    args = ["bench", "--quick", "--only", "metrics", "--no-write", "--results", str(results)]
    assert cli_main(args) == 0
    assert not results.exists()
    assert "segworks" in capsys.readouterr().out


def test_quick_model_benchmark_prints_ratios_and_agreeing_outputs(capsys):
    from benchmarks import bench_models

    assert bench_models.main(["--quick", "--models", "unet_resnet34", "--size", "32"]) == 0
    out = capsys.readouterr().out
    assert out.count("x first") >= 2  # training and inference tables
    assert "smp Unet(resnet34)" in out
    assert "logits max |diff| 0.00e+00" in out  # same weights, same input: same logits


def test_memory_child_measures_a_training_step_in_a_fresh_process():
    from benchmarks import bench_memory

    args = argparse.Namespace(batch=2, size=32, device="cpu", amp="none", channels_last=False)
    result = bench_memory.run_child("unet_resnet34", "segworks", args)
    assert "error" not in result, result
    assert result["kind"] == "cpu rss" and result["bytes"] > 0 and result["baseline"] > 0
    table = bench_memory.report(
        {"m": {"segworks": {"bytes": 2**20}, "peer": {"bytes": 3 * 2**20}}}, {"m": "peer m"}
    )
    assert table.splitlines()[1].split() == ["m", "1", "3", "3.00x", "peer", "m"]


@pytest.mark.slow
def test_segworks_bench_quick_runs_every_benchmark_and_prints_its_ratios(tmp_path, capsys):
    results = tmp_path / "RESULTS.md"
    assert cli_main(["bench", "--quick", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    names = [name for name in bench.BENCHMARKS if name not in bench.OPT_IN]
    assert f"{len(names)}/{len(names)} ran" in out
    summary = out[out.index("ratios, min / median / max") :]
    for name in names:
        section = out[out.index(f"=== {name}:") : out.index(f"--- {name}: done")]
        ratio_lines = [line for line in section.splitlines() if bench.RATIO.match(line)]
        assert ratio_lines, f"{name} printed no ratio line"
        for line in ratio_lines:  # min <= median <= max, all positive
            low, mid, high = (float(v) for v in line.split(": ")[-1].split(" (")[0].split(" / "))
            assert 0 < low <= mid <= high, line
        assert f"[{name}] " in summary and f"[{name}] no ratio" not in summary
    for pair in ("fcn_resnet50", "unet_resnet34", "deeplabv3_resnet101", "maskrcnn_r50_fpn"):
        assert f"ratio {pair} training step throughput" in out
        assert f"ratio {pair} inference throughput" in out
    assert "outputs equal before timing: True" in out  # deeplabv3: same weights, same math
    assert "workers=0" in out and "decode_jpeg" in out and "the loader" in out  # data verdict
    text = results.read_text()
    for title in (bench.BENCHMARKS[name][1] for name in names):
        assert f"## {title}" in text
    assert text.count("; load average ") == len(names)  # before and after each benchmark
    assert "## segworks bench: summary" in text and "- command: `segworks bench --quick`" in text


def test_a_benchmark_without_a_ratio_line_fails_the_run(monkeypatch, capsys):
    module = types.ModuleType("benchmarks.bench_silent")
    module.__file__ = "bench_silent.py"
    module.main = lambda argv: print("a table but no ratio") or 0
    monkeypatch.setitem(sys.modules, "benchmarks.bench_silent", module)
    monkeypatch.setitem(bench.BENCHMARKS, "silent", ("benchmarks.bench_silent", "Silent"))
    assert cli_main(["bench", "--only", "silent", "--no-write"]) == 1
    captured = capsys.readouterr()
    assert "silent printed no ratio line" in captured.err
    assert "[silent] no ratio" in captured.out


def test_full_cpu_run_gives_every_model_its_shape():
    from benchmarks import bench_memory, bench_models

    args = argparse.Namespace(
        device="cpu", amp=None, channels_last=False, compile=False, quick=False, threads=1
    )
    args.covered = ["deeplabv3_resnet101", "maskrcnn_r50_fpn"]
    argv = bench.module_argv("models", bench_models, args)
    models = argv[argv.index("--models") + 1]
    assert models == "fcn_resnet50@160x2,unet_resnet34@256x2"
    assert bench_models.parse_models(models, size=64, batch=1) == [
        ("fcn_resnet50", 160, 2),
        ("unet_resnet34", 256, 2),
    ]
    assert "--threads" not in argv  # bench_models has no such flag: it runs in this process
    argv = bench.module_argv("memory", bench_memory, args)
    assert len(argv[argv.index("--models") + 1].split(",")) == len(bench_models.CONTESTS)
    assert argv[argv.index("--threads") + 1] == "1"  # its fresh processes get the thread count


@pytest.mark.parametrize("item", ["nope", "unet_resnet34@abc", "unet_resnet34@16x1", ","])
def test_model_plan_rejects_bad_items(item):
    from benchmarks import bench_models

    with pytest.raises(ValueError, match="expected"):
        bench_models.parse_models(item, size=64, batch=1)


def test_ratio_line_orders_min_median_max():
    line = common.ratio_line("x", [1.2, 0.9, 1.0])
    assert line.startswith("ratio x: 0.900 / 1.000 / 1.200 (min / median / max over 3")
    assert bench.RATIO.match(line)
    with pytest.raises(ValueError, match="no values"):
        common.ratio_line("x", [])


@pytest.mark.slow
def test_the_fine_tuning_benchmarks_print_segworks_against_smp(shared_datasets, tmp_path, capsys):
    """`segworks bench --only newts,camvid` (by name only): both sides and their ratio."""
    if not (shared_datasets / "newts" / "train").is_dir():
        pytest.skip("no newts dataset")
    if not (shared_datasets / "camvid" / "train.txt").is_file():
        pytest.skip("no CamVid dataset")
    pytest.importorskip("segmentation_models_pytorch")
    argv = ["bench", "--quick", "--only", "newts,camvid", "--results", str(tmp_path / "R.md")]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "2/2 ran" in out
    newts, camvid = out[: out.index("=== camvid:")], out[out.index("=== camvid:") :]
    assert "peer: smp Unet('tu-tf_efficientnet_lite2')" in newts  # each recipe's own encoder
    assert "peer: smp Unet('tu-tf_efficientnet_lite0')" in camvid
    assert bench.RATIO.search(out[out.index("=== camvid:") :])
    assert "ratio newts test mIoU segworks/smp" in out
    assert "ratio CamVid val mIoU segworks/smp" in out
