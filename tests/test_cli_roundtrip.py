"""`segworks train` -> `segworks eval` -> `segworks predict` on a tiny dataset, through the CLI
entry point, plus bad inputs that must end in exit code 2 and one line on stderr."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segworks.checkpoint import load_checkpoint
from segworks.cli import main
from segworks.data.synthetic import write_shapes_dataset


def command_exists(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


needs_eval = pytest.mark.skipif(
    not command_exists("segworks.commands.evaluate"), reason="segworks eval not written yet"
)
needs_predict = pytest.mark.skipif(
    not command_exists("segworks.commands.predict"), reason="segworks predict not written yet"
)
TRAIN_FLAGS = [
    "--model-arg", "base_width=4", "--model-arg", "depth=2", "-e", "2", "-b", "4",
    "--crop-size", "28", "-g", "-1", "--workers", "0", "--no-tensorboard", "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_shapes_dataset(tmp_path_factory.mktemp("shapes"), num_train=8, num_val=3, size=32)


@pytest.fixture(scope="module")
def run_dir(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", "--data", str(data), "--out", str(out), "-n", "3", *TRAIN_FLAGS]) == 0
    return out


def test_train_writes_a_run_directory(run_dir):
    for name in ("last.pt", "best.pt", "metrics.csv", "config.json"):
        assert (run_dir / name).is_file(), name
    checkpoint = load_checkpoint(run_dir / "best.pt")
    assert checkpoint["meta"]["class_names"] == ["background", "circle", "square"]
    assert checkpoint["config"]["device"] == "cpu"  # from -g -1


def test_seed_style_flags_train_from_a_stem_list(data, tmp_path):
    stems = sorted(p.stem for p in (data / "train" / "images").iterdir())
    (tmp_path / "train.txt").write_text("\n".join(stems) + "\n")
    flags = ["-tt", str(tmp_path / "train.txt"), "-tr", str(data / "train" / "images")]
    flags += ["-ta", str(data / "train" / "masks"), "-l", "0.001", "--out", str(tmp_path / "r")]
    assert main(["train", *flags, *TRAIN_FLAGS]) == 0
    assert (tmp_path / "r" / "last.pt").is_file()


@needs_eval
def test_eval_scores_the_checkpoint(run_dir, data, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    code = main(["eval", str(run_dir / "best.pt"), "--data", str(data), "--split", "val",
                 "--json", str(out), "--device", "cpu"])  # fmt: skip
    assert code == 0
    results = json.loads(out.read_text())
    text = json.dumps(results)
    assert "miou" in text
    assert "mIoU" in capsys.readouterr().out


@needs_predict
def test_predict_writes_outputs_at_original_size(run_dir, data, tmp_path):
    image = data / "val" / "images" / "0000.png"
    out = tmp_path / "pred"
    assert main(["predict", str(run_dir / "best.pt"), str(image), "-o", str(out), "-g", "-1"]) == 0
    written = sorted(p for p in out.rglob("*.png"))
    assert written, "predict wrote no PNG"
    index_pngs = [p for p in written if Image.open(p).mode == "P"]
    assert index_pngs, f"no index (palette) PNG among {[p.name for p in written]}"
    labels = np.array(Image.open(index_pngs[0]))
    assert labels.shape == (32, 32) and set(np.unique(labels)) <= {0, 1, 2}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--data", "/nonexistent/dataset"], "/nonexistent/dataset"),
        (["-n", "2"], "num-classes 2 is below what the data holds: it has 3 classes"),
        (["--model", "no_such_net"], "unknown model 'no_such_net'"),
        (["--optimizer", "adam", "-b", "0"], "batch_size must be >= 1"),
    ],
    ids=["missing-dir", "wrong-num-classes", "unknown-model", "zero-batch"],
)
def test_bad_input_exits_2_with_one_line(data, tmp_path, capsys, flags, message):
    argv = ["train", "--data", str(data), "--out", str(tmp_path / "r"), *TRAIN_FLAGS, *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err
    assert len(err.splitlines()) == 1, err


def test_diverging_run_exits_1(data, tmp_path, monkeypatch):
    from segworks import losses

    real = losses.criterion
    monkeypatch.setattr(losses, "criterion", lambda *a, **k: real(*a, **k) * float("inf"))
    argv = ["train", "--data", str(data), "--out", str(tmp_path / "r"), *TRAIN_FLAGS]
    assert main(argv) == 1
