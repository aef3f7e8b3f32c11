"""The pure helpers of benchmarks/bench_camvid.py's `--models` mode (no training here)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

bench_camvid = pytest.importorskip("benchmarks.bench_camvid")

KNOWN = ("unet", "segnet", "fcn8s")


def test_parse_models_keeps_order_and_strips_spaces():
    assert bench_camvid.parse_models(" fcn8s, unet ,segnet,", known=KNOWN) == [
        "fcn8s",
        "unet",
        "segnet",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "comma-separated"), (" , ", "comma-separated"), ("unet,segnett", "segnett"),
     ("unet,fcn8s,unet", "more than once")],
)  # fmt: skip
def test_parse_models_rejects_bad_lists_naming_the_problem(text, message):
    with pytest.raises(ValueError, match=message):
        bench_camvid.parse_models(text, known=KNOWN)


@pytest.mark.parametrize(
    ("total", "per_epoch", "expected"),
    [
        (37, 91, (1, 37)),  # less than an epoch: one shortened epoch
        (91, 91, (1, 91)),
        (92, 91, (2, 46)),  # just over: two even halves, never a 1-step epoch
        (150, 91, (2, 75)),
        (364, 91, (4, 91)),
        (365, 91, (5, 73)),
        (1, 1, (1, 1)),
    ],
)
def test_plan_steps_spreads_the_budget_over_as_few_epochs_as_hold_it(total, per_epoch, expected):
    epochs, steps = bench_camvid.plan_steps(total, per_epoch)
    assert (epochs, steps) == expected
    assert steps <= per_epoch
    assert epochs * steps <= total
    assert total - epochs * steps < epochs  # at most a remainder of the division is dropped


@pytest.mark.parametrize(("total", "per_epoch"), [(0, 91), (10, 0), (-3, 5)])
def test_plan_steps_rejects_non_positive_counts(total, per_epoch):
    with pytest.raises(ValueError, match="must be >= 1"):
        bench_camvid.plan_steps(total, per_epoch)


class _WithAux(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Conv2d(3, 4, 3)  # 4*3*3*3 + 4 = 112
        self.classifier = nn.Conv2d(4, 2, 1)  # 8 + 2 = 10
        self.aux_classifier = nn.Conv2d(4, 2, 1)  # training only


def test_count_parameters_leaves_out_auxiliary_heads_only():
    model = _WithAux()
    assert bench_camvid.count_parameters(model) == 122
    assert bench_camvid.count_parameters(model, skip_prefix="none") == 132


def _row(model: str, **extra) -> dict:
    return {"model": model, "params_m": 1.5, "steps": 40, "cpu_min": 5.04, "miou": 0.25,
            "pixel_accuracy": 0.7, "iou": [0.5, 0.0], "optimizer": "adamw", "lr": 0.002,
            "schedule": "cosine", "warmup": 10, "full_epoch_steps": 91,
            "class_names": ["Sky", "Building"], **extra}  # fmt: skip


def test_models_table_has_a_line_per_model_with_its_figures_and_the_references():
    args = argparse.Namespace(recipe="camvid", set=[], minutes=5.0, clock="cpu", threads=1)
    rows = [_row("unet"), {**_row("fcn8s"), "error": "loss is nan at step 3"}]
    text = bench_camvid.models_table(args, rows)
    lines = text.splitlines()
    assert "Sky" in lines[1] and "Build" in lines[1]
    unet = next(line for line in lines if line.startswith("unet"))
    assert unet.split() == ["unet", "1.50", "40", "5.0", "0.250", "0.700", "0.500", "0.000"]
    assert any(line.startswith("fcn8s") and "failed: loss is nan" in line for line in lines)
    assert "fcn8s adamw lr 0.002 cosine, warm-up 10" in text
    assert "46.3" in text and "49.4" in text and "not measured here" in text
