"""`segworks predict`: images, folders, globs, videos; outputs at the original size."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TinyNet, reference_predictions, register_tiny_net, write_checkpoint
from PIL import Image

from segworks import visualize
from segworks.cli import main
from segworks.inference import Predictor

PALETTE = [(0, 0, 0), (128, 0, 0), (0, 128, 0)]  # DatasetMeta's default (VOC) colours


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    register_tiny_net(monkeypatch)


def write_images(folder: Path, sizes, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = []
    for index, (height, width) in enumerate(sizes):
        array = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(array).save(folder / f"img{index}.png")
        arrays.append(array)
    return arrays


def loaded_model(checkpoint: Path) -> TinyNet:
    state = torch.load(checkpoint, weights_only=True)
    model = TinyNet(state["model_kwargs"]["num_classes"])
    model.load_state_dict(state["model"])
    return model.eval()


def test_folder_prediction_writes_index_colour_overlay_at_original_size(tmp_path):
    checkpoint = write_checkpoint(tmp_path / "m.pt", num_classes=3)
    arrays = write_images(tmp_path / "in" / "sub", [(20, 30), (17, 25)])
    out = tmp_path / "out"
    assert main(["predict", str(checkpoint), str(tmp_path / "in"), "--out", str(out)]) == 0
    expected = reference_predictions(loaded_model(checkpoint), [(a, None) for a in arrays])
    for index, (array, labels) in enumerate(zip(arrays, expected)):
        stem = out / "sub" / f"img{index}"
        index_png = Image.open(f"{stem}_index.png")
        assert index_png.mode == "P" and index_png.size == (array.shape[1], array.shape[0])
        np.testing.assert_array_equal(np.array(index_png), labels)
        assert index_png.getpalette()[:9] == [v for colour in PALETTE for v in colour]
        colour = np.array(Image.open(f"{stem}_color.png").convert("RGB"))
        np.testing.assert_array_equal(colour, np.array(PALETTE, np.uint8)[labels])
        overlay = Image.open(f"{stem}_overlay.png")
        # the legend panel is added at the right; the photo keeps its place and size
        assert overlay.height >= array.shape[0] and overlay.width > array.shape[1]
        photo = np.array(overlay.convert("RGB"))[: array.shape[0], : array.shape[1]]
        expected = visualize.overlay(Image.fromarray(array), labels, PALETTE, legend=False)
        np.testing.assert_array_equal(photo, np.asarray(expected))


def test_no_legend_and_alpha(tmp_path):
    checkpoint = write_checkpoint(tmp_path / "m.pt", num_classes=3)
    (array,) = write_images(tmp_path / "in", [(16, 21)])
    out = tmp_path / "out"
    args = ["predict", str(checkpoint), str(tmp_path / "in" / "img0.png"), "--out", str(out)]
    assert main([*args, "--no-legend", "--alpha", "0"]) == 0
    overlay = np.array(Image.open(out / "img0_overlay.png").convert("RGB"))
    np.testing.assert_array_equal(overlay, array)  # alpha 0: the photo itself, same size
    assert main([*args, "--alpha", "1.5"]) == 2


def test_binary_prediction_writes_probability_and_mask(tmp_path):
    checkpoint = write_checkpoint(tmp_path / "m.pt", num_classes=2, task="binary")
    (array,) = write_images(tmp_path / "in", [(19, 23)])
    out = tmp_path / "out"
    code = main(
        ["predict", str(checkpoint), str(tmp_path / "in"), "--out", str(out), "--threshold", "0.45"]
    )
    assert code == 0
    prob = np.array(Image.open(out / "img0_prob.png"))
    mask = np.array(Image.open(out / "img0_mask.png"))
    assert prob.shape == mask.shape == (19, 23)
    assert set(np.unique(mask)) <= {0, 255}
    expected = reference_predictions(
        loaded_model(checkpoint), [(array, None)], binary_threshold=0.45
    )
    np.testing.assert_array_equal(mask == 255, expected[0] == 1)
    assert (out / "img0_overlay.png").is_file()
    assert not (out / "img0_index.png").exists()


def test_batches_group_same_size_images(tmp_path, monkeypatch):
    checkpoint = write_checkpoint(tmp_path / "m.pt", num_classes=3)
    write_images(tmp_path / "in", [(10, 12), (14, 9), (10, 12), (10, 12), (14, 9)])
    seen = []
    original = Predictor.predict_batch

    def spy(self, images):
        seen.append([image.size for image in images])
        return original(self, images)

    monkeypatch.setattr(Predictor, "predict_batch", spy)
    args = ["predict", str(checkpoint), str(tmp_path / "in"), "-o", str(tmp_path / "out")]
    assert main([*args, "--batch-size", "2"]) == 0
    assert all(len(set(sizes)) == 1 and len(sizes) <= 2 for sizes in seen)
    assert sorted(len(sizes) for sizes in seen) == [1, 2, 2]
    seen.clear()
    assert main([*args, "--batch-size", "8", "--size", "16"]) == 0
    assert len(seen) == 1 and len(seen[0]) == 5  # one resized batch of mixed sizes
    for index in range(5):
        size = Image.open(tmp_path / "in" / f"img{index}.png").size
        assert Image.open(tmp_path / "out" / f"img{index}_index.png").size == size


def test_sliding_window_flags_match_whole_image(tmp_path):
    checkpoint = write_checkpoint(tmp_path / "m.pt", num_classes=3)
    write_images(tmp_path / "in", [(37, 45)])
    whole, tiled = tmp_path / "whole", tmp_path / "tiled"
    base = ["predict", str(checkpoint), str(tmp_path / "in")]
    assert main([*base, "-o", str(whole)]) == 0
    assert main([*base, "-o", str(tiled), "--tile", "16", "20", "--margin", "2"]) == 0
    np.testing.assert_array_equal(
        np.array(Image.open(whole / "img0_index.png")),
        np.array(Image.open(tiled / "img0_index.png")),
    )
    assert main([*base, "-o", str(tiled), "--tile", "16", "--margin", "5"]) == 2


def test_globs_seed_input_flag_and_duplicate_stems(tmp_path):
    checkpoint = write_checkpoint(tmp_path / "m.pt", num_classes=3)
    write_images(tmp_path / "a", [(8, 8), (9, 9)])
    write_images(tmp_path / "b", [(10, 10)])
    out = tmp_path / "out"
    code = main(
        ["predict", str(checkpoint), str(tmp_path / "a" / "*.png"), "-i", str(tmp_path / "b")]
        + ["--out", str(out)]
    )
    assert code == 0
    assert {p.name for p in out.glob("*_index.png")} == {
        "img0_index.png",
        "img1_index.png",
        "img0_2_index.png",
    }
    assert Image.open(out / "img0_2_index.png").size == (10, 10)


def test_unreadable_image_is_named_or_skipped(tmp_path, capsys):
    checkpoint = write_checkpoint(tmp_path / "m.pt", num_classes=3)
    write_images(tmp_path / "in", [(8, 8)])
    (tmp_path / "in" / "broken.png").write_bytes(b"not a png at all")
    out = tmp_path / "out"
    base = ["predict", str(checkpoint), str(tmp_path / "in"), "--out", str(out)]
    assert main(base) == 2
    assert "broken.png" in capsys.readouterr().err
    assert main([*base, "--skip-bad"]) == 0
    assert (out / "img0_index.png").is_file() and not (out / "broken_index.png").exists()
    assert main(["predict", str(checkpoint), str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "nope" in capsys.readouterr().err


def test_video_in_annotated_video_out(tmp_path):
    cv2 = pytest.importorskip("cv2")
    checkpoint = write_checkpoint(tmp_path / "m.pt", num_classes=3)
    video_path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video_path), cv2.VideoWriter_fourcc(*"mp4v"), 5, (32, 24))
    rng = np.random.default_rng(0)
    for _ in range(5):
        writer.write(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    writer.release()
    out = tmp_path / "out"
    assert main(["predict", str(checkpoint), str(video_path), "--out", str(out), "-b", "2"]) == 0
    capture = cv2.VideoCapture(str(out / "clip_overlay.mp4"))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    assert len(frames) == 5 and frames[0].shape == (24, 32, 3)
    assert not list(out.glob(".*partial*"))


def test_video_without_opencv_is_a_clear_error(tmp_path, monkeypatch, capsys):
    checkpoint = write_checkpoint(tmp_path / "m.pt", num_classes=3)
    (tmp_path / "clip.avi").write_bytes(b"\0" * 16)
    monkeypatch.setitem(sys.modules, "cv2", None)
    out = str(tmp_path / "out")
    assert main(["predict", str(checkpoint), str(tmp_path / "clip.avi"), "--out", out]) == 2
    assert "opencv-python-headless" in capsys.readouterr().err


def test_onnx_and_instance_checkpoints_are_delegated(tmp_path, monkeypatch):
    calls = {}
    onnx_module = types.ModuleType("segworks.inference.onnx")

    def fake_predict_onnx(model, inputs, out, **options):
        calls["onnx"] = (model, inputs, out, options)
        return len(inputs)

    onnx_module.predict_onnx = fake_predict_onnx
    monkeypatch.setitem(sys.modules, "segworks.inference.onnx", onnx_module)
    argv = ["predict", "--onnx", "m.onnx", "a.png", "b.png", "--out", "x", "--alpha", "0.3"]
    assert main(argv) == 0
    model, inputs, out, options = calls["onnx"]
    assert (model, inputs, out) == (Path("m.onnx"), ["a.png", "b.png"], Path("x"))
    assert options["alpha"] == 0.3 and options["legend"] and options["score_threshold"] == 0.5

    instance_module = types.ModuleType("segworks.inference.instance_predict")
    instance_module.run_predict = lambda args: calls.setdefault("instance", args) and 0
    monkeypatch.setitem(sys.modules, "segworks.inference.instance_predict", instance_module)
    checkpoint = write_checkpoint(tmp_path / "m.pt", num_classes=2)
    state = torch.load(checkpoint, weights_only=True)
    state["meta"]["task"] = "instance"
    torch.save(state, checkpoint)
    code = main(["predict", str(checkpoint), "img.jpg", "--coco-json", "d.json", "--contour"])
    assert code == 0
    args = calls["instance"]
    assert args.inputs == ["img.jpg"] and args.coco_json == "d.json" and args.contour
    assert args.score_threshold == 0.5


def test_long_side_defaults_to_the_training_run_and_a_flag_overrides_it():
    import argparse

    from segworks.commands import predict as predict_command

    parser = argparse.ArgumentParser()
    predict_command.add_arguments(parser)
    trained = {"config": {"long_side": 128}}

    def options(*flags, checkpoint=trained):
        args = parser.parse_args(["in.png", *flags])
        return predict_command.inference_options(args, checkpoint, tta=False)

    assert options().long_side == 128
    assert options("--long-side", "64").long_side == 64
    assert options("--long-side", "0").long_side is None
    assert options(checkpoint={"config": {}}).long_side is None
