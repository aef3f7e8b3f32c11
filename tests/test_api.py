"""The Python API (`segworks.get_model`, `train`, `evaluate`, `Predictor.from_checkpoint`): it
gives what the commands give on the same checkpoint, and the README's example runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import segworks
from segworks.cli import main
from segworks.data.synthetic import write_shapes_dataset
from segworks.errors import DataError, SegworksError
from segworks.inference import Predictor

README = Path(__file__).resolve().parents[1] / "README.md"
MEAN, STD = [0.2, 0.3, 0.4], [0.1, 0.2, 0.3]  # not ImageNet's: a Predictor must read them


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return write_shapes_dataset(tmp_path_factory.mktemp("shapes"), num_train=4, num_val=3, size=40)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A U-Net with random weights (labels vary from pixel to pixel), "trained" at long side 24
    with its own mean/std."""
    torch.manual_seed(0)
    kwargs = {"num_classes": 3, "base_width": 4, "depth": 2}
    model = segworks.get_model("unet", **kwargs).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.zero_() if name.endswith("bias") else parameter.normal_(0.0, 0.5)
    meta = {"class_names": ["background", "circle", "square"], "task": "semantic"}
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    torch.save(
        {
            "model": model.state_dict(),
            "model_name": "unet",
            "model_kwargs": kwargs,
            "meta": {
                **meta,
                "palette": [[0, 0, 0], [128, 0, 0], [0, 128, 0]],
                "ignore_index": 255,
                "mean": MEAN,
                "std": STD,
            },  # fmt: skip
            "config": {"long_side": 24, "crop_size": 24},
        },
        path,
    )
    return path


def photo(folder: Path, height: int = 50, width: int = 70) -> Path:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "photo.png"
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def cli_labels(checkpoint: Path, image: Path, out: Path, *flags: str) -> np.ndarray:
    assert main(["predict", str(checkpoint), str(image), "--out", str(out), *flags]) == 0
    return np.array(Image.open(out / f"{image.stem}_index.png"))


def test_predictor_from_checkpoint_gives_the_cli_label_map(checkpoint, tmp_path):
    image = photo(tmp_path / "in")
    expected = cli_labels(checkpoint, image, tmp_path / "out")
    predictor = Predictor.from_checkpoint(checkpoint)
    labels = predictor.predict(image).labels
    assert labels.shape == (50, 70)
    np.testing.assert_array_equal(labels, expected)
    assert len(np.unique(labels)) == 3
    assert predictor.options.long_side == 24 and predictor.meta.class_names[1] == "circle"
    # control: a Predictor built by hand (ImageNet mean/std, no resize) gives other labels
    model = predictor.model
    assert not np.array_equal(Predictor(model).predict(image).labels, expected)


def test_predictor_options_override_the_checkpoint_like_the_flags(checkpoint, tmp_path):
    image = photo(tmp_path / "in", 33, 45)
    expected = cli_labels(checkpoint, image, tmp_path / "out", "--long-side", "0")
    predictor = Predictor.from_checkpoint(checkpoint, long_side=0)
    np.testing.assert_array_equal(predictor.predict(image).labels, expected)
    slide = Predictor.from_checkpoint(checkpoint, mode="slide")
    assert slide.options.tile == (24, 24)  # the training crop, as `--mode slide` takes it
    probabilities = predictor.probabilities(np.asarray(Image.open(image)))
    assert probabilities.shape == (3, 33, 45)
    torch.testing.assert_close(probabilities.sum(0), torch.ones(33, 45))


def test_predictor_rejects_what_is_not_a_semantic_checkpoint(tmp_path, checkpoint):
    with pytest.raises(DataError, match="checkpoint file not found"):
        Predictor.from_checkpoint(tmp_path / "missing.pt")
    state = torch.load(checkpoint, weights_only=True)
    state["meta"]["task"] = "instance"
    with pytest.raises(DataError, match="instance checkpoint: Predictor runs semantic or binary"):
        Predictor.from_checkpoint(state)


def test_evaluate_returns_the_numbers_of_segworks_eval(checkpoint, shapes, tmp_path):
    out = tmp_path / "m.json"
    assert main(["eval", str(checkpoint), "--data", str(shapes), "--json", str(out)]) == 0
    expected = json.loads(out.read_text())["variants"]["plain"]
    metrics = segworks.evaluate(checkpoint, shapes, split="val")
    assert metrics["split"] == "val" and metrics["num_images"] == 3
    assert metrics["confusion_matrix"] == expected["confusion_matrix"]
    assert metrics["miou"] == pytest.approx(expected["miou"])
    plain = segworks.evaluate(checkpoint, shapes, split="val", long_side=0)
    assert plain["confusion_matrix"] != expected["confusion_matrix"]  # the option reaches it


def test_get_model_builds_a_registered_model_and_checks_pretrained(tmp_path):
    model = segworks.get_model("unet", num_classes=4, base_width=4, depth=2)
    assert model(torch.zeros(1, 3, 20, 28))["out"].shape == (1, 4, 20, 28)
    with pytest.raises(SegworksError, match="unknown model 'unet9'"):
        segworks.get_model("unet9", num_classes=2)
    with pytest.raises(DataError, match="pretrained weight file not found"):
        segworks.get_model("deeplabv3_resnet50", num_classes=2, pretrained=tmp_path / "no.pth")
    with pytest.raises(SegworksError, match="'tutorial_convnet' has no pretrained backbone"):
        segworks.get_model("tutorial_convnet", num_classes=1, pretrained=tmp_path / "no.pth")


def test_train_rejects_unknown_settings_and_instance_tasks():
    with pytest.raises(SegworksError, match="not a training setting.*epochz"):
        segworks.train(data="x", epochz=3)
    with pytest.raises(SegworksError, match="segworks train --task instance"):
        segworks.train(data="x", task="instance")


def test_import_segworks_stays_light():
    code = "import sys, segworks; print('torch' in sys.modules, callable(segworks.train))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.split() == ["False", "True"], result.stderr


def readme_api_example() -> str:
    section = README.read_text(encoding="utf-8").split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_api_example_trains_evaluates_and_predicts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_api_example(), str(README), "exec"), namespace)
    result, prediction = namespace["result"], namespace["prediction"]
    assert (tmp_path / "runs" / "shapes" / "best.pt").is_file()
    assert result.run_dir == Path("runs/shapes") and result.metrics["epoch"] == 2
    assert 0 <= namespace["metrics"]["miou"] <= 1
    assert prediction.labels.shape == (48, 48)
    assert namespace["probabilities"].shape == (3, 48, 48)


def test_tta_stored_by_the_run_is_what_predict_and_the_predictor_apply(checkpoint, tmp_path):
    """A checkpoint whose run set `tta_flip` (recipe small) predicts with flip TTA by default,
    exactly as `--tta --tta-scales 1` does; `--no-tta` / ``tta_flip=False`` turn it off."""
    state = torch.load(checkpoint, weights_only=True)
    state["config"]["tta_flip"] = True
    stored = tmp_path / "tta.pt"
    torch.save(state, stored)
    image = photo(tmp_path / "in")
    by_default = cli_labels(stored, image, tmp_path / "a")
    asked = cli_labels(checkpoint, image, tmp_path / "b", "--tta", "--tta-scales", "1")
    np.testing.assert_array_equal(by_default, asked)
    plain = cli_labels(stored, image, tmp_path / "c", "--no-tta")
    np.testing.assert_array_equal(plain, cli_labels(checkpoint, image, tmp_path / "d"))
    assert not np.array_equal(plain, by_default)  # control: the flip changes labels here
    predictor = Predictor.from_checkpoint(stored)
    assert predictor.options.tta_flip and predictor.options.tta_scales == (1.0,)
    np.testing.assert_array_equal(predictor.predict(image).labels, by_default)
    off = Predictor.from_checkpoint(stored, tta_flip=False)
    np.testing.assert_array_equal(off.predict(image).labels, plain)
    assert main(["predict", str(stored), str(image), "--out", str(tmp_path / "e"), "--tta",
                 "--no-tta"]) == 2  # fmt: skip
