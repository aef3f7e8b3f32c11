"""Issue 13: nothing accepted silently, no traceback, nothing overwritten. One test (or a few)
per item, on tiny synthetic data in tmp dirs."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segworks.checkpoint import load_checkpoint
from segworks.cli import main
from segworks.config import TrainConfig
from segworks.data.layouts import open_source
from segworks.data.synthetic import write_shapes_dataset
from segworks.engine.train import build_data
from segworks.errors import DataError, SegworksError

TRAIN_FLAGS = [
    "--model-arg", "base_width=4", "--model-arg", "depth=2", "-e", "1", "-b", "2",
    "--crop-size", "16", "-g", "-1", "--workers", "0", "--no-tensorboard", "--no-progress",
]  # fmt: skip


def write_pair(root: Path, stem: str, mask: np.ndarray, *, mask_ext: str = ".png") -> None:
    height, width = mask.shape
    rng = np.random.default_rng(len(stem) + int(mask.sum()) % 7)
    image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "images" / f"{stem}.png")
    Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"{stem}{mask_ext}")


def disc(size: int = 24, value: int = 255, radius: int = 7) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return np.where((yy - size // 2) ** 2 + (xx - size // 2) ** 2 < radius**2, value, 0)


def binary_dataset(root: Path, count: int = 4, mask_ext: str = ".png") -> Path:
    for i in range(count):
        write_pair(root, f"b{i}", disc(radius=5 + i), mask_ext=mask_ext)
    return root


def three_class_dataset(root: Path, count: int = 4) -> Path:
    for i in range(count):
        mask = disc(value=1, radius=8)
        mask[:4, :4] = 2
        write_pair(root, f"m{i}", mask)
    return root


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.count("\n") == 0, err
    return err


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# --------------------------------------------------------------------------- 1. binary default
def test_binary_data_trains_the_sigmoid_model_by_default(tmp_path):
    data = binary_dataset(tmp_path / "bin")
    assert build_data(TrainConfig(data=str(data))).meta.task == "binary"
    # control: saying --task semantic still wins over what the data says
    assert build_data(TrainConfig(data=str(data), task="semantic")).meta.task == "semantic"


def test_binary_cli_run_writes_a_binary_checkpoint(tmp_path):
    data = binary_dataset(tmp_path / "bin")
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(out), *TRAIN_FLAGS]) == 0
    meta = load_checkpoint(out / "last.pt")["meta"]
    assert meta["task"] == "binary" and meta["class_names"] == ["background", "foreground"]


# --------------------------------------------------------------------------- 2. no masks
def test_images_without_masks_are_refused(tmp_path, capsys):
    data = binary_dataset(tmp_path / "d")
    (data / "masks").rename(data / "segmaps")  # a folder name detection does not know
    assert main(["check-data", str(data)]) == 2
    assert "no mask file found" in one_line_error(capsys)
    with pytest.raises(DataError, match="no mask file found"):
        build_data(TrainConfig(data=str(data)))


def test_spec_with_a_misspelt_key_names_it_and_the_nearest_key(tmp_path, capsys):
    data = binary_dataset(tmp_path / "d")
    (data / "segworks.yaml").write_text("splits:\n  train: {images: images, mask: masks}\n")
    assert main(["check-data", str(data)]) == 2
    err = one_line_error(capsys)
    assert "segworks.yaml" in err and "'mask'" in err and "did you mean 'masks'" in err


def test_spec_with_an_unknown_top_level_key(tmp_path):
    data = binary_dataset(tmp_path / "d")
    (data / "segworks.yaml").write_text("clas_names: [a, b]\nsplits: {train: {images: images}}\n")
    with pytest.raises(DataError, match="did you mean 'class_names'"):
        open_source(data)


# --------------------------------------------------------------------------- 3. JPEG masks
def test_jpeg_binary_masks_are_found_and_thresholded(tmp_path, capsys, caplog):
    data = binary_dataset(tmp_path / "jpg", mask_ext=".jpg")
    raw = np.asarray(Image.open(next((data / "masks").glob("*.jpg"))).convert("L"))
    assert len(np.unique(raw)) > 2  # the JPEG really holds values besides 0 and 255
    with caplog.at_level(logging.WARNING):
        source = open_source(data)
    assert source.mask_format == "binary" and source.meta.task == "binary"
    assert "thresholded at 128" in caplog.text
    image, labels = source.dataset("train").read(0)
    expected = disc(radius=5) > 0
    assert set(np.unique(labels)) <= {0, 1}
    assert (labels.astype(bool) == expected).mean() > 0.98
    assert main(["check-data", str(data)]) == 0
    assert "masks: binary" in capsys.readouterr().out


def test_clustered_png_values_count_as_lossy(tmp_path):
    data = tmp_path / "png"
    for i in range(3):
        mask = disc(radius=6).astype(np.int64)
        mask[mask == 255] = 250 + i  # 250..252 near 255, 0..2 near 0
        mask[0, :3] = [1, 2, 3]
        write_pair(data, f"c{i}", mask)
    source = open_source(data)
    assert source.mask_format == "binary" and source.mask_threshold == 128


def test_index_masks_with_void_are_not_lossy(tmp_path):
    data = tmp_path / "idx"
    for i in range(3):
        mask = disc(value=1, radius=6)
        mask[:2] = 255
        mask[-2:] = 2
        write_pair(data, f"v{i}", mask)
    assert open_source(data).mask_threshold is None


# --------------------------------------------------------------------------- 4. --task binary
def test_task_binary_on_multiclass_data_warns_naming_the_classes(tmp_path, caplog):
    data = three_class_dataset(tmp_path / "m")
    with caplog.at_level(logging.WARNING):
        open_source(data, task="binary")
    assert "classes 1, 2 are merged into one foreground class" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        open_source(data)  # control: no --task binary, no warning
    assert "merged" not in caplog.text


# --------------------------------------------------------------------------- 5. size mismatch
def mismatched_dataset(root: Path) -> Path:
    data = binary_dataset(root, count=5)
    Image.fromarray(disc(size=20).astype(np.uint8)).save(data / "masks" / "b3.png")
    return data


def test_train_refuses_a_size_mismatch_before_the_first_step(tmp_path, capsys):
    data = mismatched_dataset(tmp_path / "d")
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(out), *TRAIN_FLAGS]) == 2
    err = one_line_error(capsys)
    assert "b3.png" in err and "differs from image" in err
    assert not out.exists()  # nothing written


def test_skip_bad_drops_the_mismatched_pair_up_front(tmp_path, caplog):
    data = mismatched_dataset(tmp_path / "d")
    with caplog.at_level(logging.WARNING):
        built = build_data(TrainConfig(data=str(data), skip_bad=True, val_split=0.0))
    assert len(built.train_set) == 4 and "b3.png" in caplog.text


# --------------------------------------------------------------------------- 6. output paths
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("trained")
    data = write_shapes_dataset(root / "shapes", num_train=4, num_val=2, size=32)
    out = root / "run"
    assert main(["train", "--data", str(data), "--out", str(out), *TRAIN_FLAGS]) == 0
    return data, out / "last.pt"


def test_predict_out_existing_file(trained, tmp_path, capsys):
    data, checkpoint = trained
    target = tmp_path / "taken.txt"
    target.write_text("keep me")
    image = next((data / "val" / "images").iterdir())
    assert main(["predict", str(checkpoint), str(image), "-o", str(target), "-g", "-1"]) == 2
    assert "--out" in one_line_error(capsys) and target.read_text() == "keep me"


def test_train_out_existing_file(trained, tmp_path, capsys):
    data, _ = trained
    target = tmp_path / "taken.txt"
    target.write_text("keep me")
    assert main(["train", "--data", str(data), "--out", str(target), *TRAIN_FLAGS]) == 2
    assert "is a file" in one_line_error(capsys) and target.read_text() == "keep me"


def test_eval_json_into_a_directory(trained, tmp_path, capsys):
    data, checkpoint = trained
    argv = ["eval", str(checkpoint), "--data", str(data), "--json", str(tmp_path), "-g", "-1"]
    assert main(argv) == 2
    assert "--json" in one_line_error(capsys)


def test_read_only_output_is_refused_before_work(trained, tmp_path, capsys, monkeypatch):
    data, checkpoint = trained

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    image = next((data / "val" / "images").iterdir())
    argv = ["predict", str(checkpoint), str(image), "-o", str(tmp_path / "p"), "-g", "-1"]
    assert main(argv) == 2
    assert "Read-only file system" in one_line_error(capsys)
    argv = ["export", str(checkpoint), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]
    assert main(argv) == 2
    assert "Read-only file system" in one_line_error(capsys)
    assert not (tmp_path / "p").exists()


# --------------------------------------------------------------------------- 7. --model-arg
def test_unknown_model_arg_lists_the_valid_keywords(trained, tmp_path, capsys):
    data, _ = trained
    argv = ["train", "--data", str(data), "--out", str(tmp_path / "r"), *TRAIN_FLAGS]
    assert main([*argv, "--model-arg", "bogus=1"]) == 2
    err = one_line_error(capsys)
    assert "bogus" in err and "base_width" in err and "--model-arg" in err


# --------------------------------------------------------------------------- 8. error type
def test_only_segworks_errors_are_user_errors(monkeypatch, capsys):
    import segworks.commands.models as command

    def raise_(error):
        def run(args):
            raise error

        return run

    monkeypatch.setattr(command, "run", raise_(SegworksError("--x 3: expected 1..2")))
    assert main(["models"]) == 2
    assert one_line_error(capsys) == "segworks models: error: --x 3: expected 1..2"
    monkeypatch.setattr(command, "run", raise_(ValueError("a bug inside segworks")))
    assert main(["models"]) == 1
    err = one_line_error(capsys)
    assert "internal error" in err and "--verbose" in err and "ValueError" in err
    monkeypatch.setattr(command, "run", raise_(KeyError("k")))
    assert main(["models"]) == 1 and "internal error" in one_line_error(capsys)


# --------------------------------------------------------------------------- 9. bad checkpoint
def test_random_bytes_checkpoint_is_one_line(tmp_path, capsys):
    bogus = tmp_path / "model.pt"
    bogus.write_bytes(np.random.default_rng(0).bytes(2048).replace(b"PK", b"QK"))
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    assert main(["predict", str(bogus), str(image), "-o", str(tmp_path / "o")]) == 2
    err = one_line_error(capsys)
    assert "model.pt: not a checkpoint file" in err and "weights_only" not in err


# --------------------------------------------------------------------------- 10. nothing lost
def test_second_run_into_a_run_folder_is_refused(trained, tmp_path, capsys):
    data, checkpoint = trained
    run = checkpoint.parent
    before = digest(run)
    assert main(["train", "--data", str(data), "--out", str(run), *TRAIN_FLAGS]) == 2
    assert "--overwrite" in one_line_error(capsys)
    assert digest(run) == before


def test_overwrite_replaces_the_whole_run(tmp_path):
    data = binary_dataset(tmp_path / "bin")
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(b"old run")
    (run / "epoch_0010.pt").write_bytes(b"old run")
    argv = ["train", "--data", str(data), "--out", str(run), *TRAIN_FLAGS, "--val-split", "0"]
    assert main(argv) == 2  # refused without --overwrite
    assert main([*argv, "--overwrite"]) == 0
    assert not (run / "best.pt").exists() and not (run / "epoch_0010.pt").exists()
    assert (run / "last.pt").is_file()


def test_failing_data_leaves_the_run_folder_alone(trained, tmp_path, capsys):
    data, checkpoint = trained
    bad = mismatched_dataset(tmp_path / "bad")
    run = checkpoint.parent
    before = digest(run)
    argv = ["train", "--data", str(bad), "--out", str(run), "--overwrite", *TRAIN_FLAGS]
    assert main(argv) == 2
    assert digest(run) == before


# --------------------------------------------------------------------------- formats
def test_training_testing_validation_folders_are_splits(tmp_path):
    for folder in ("training", "validation", "testing"):
        binary_dataset(tmp_path / folder, count=2)
    source = open_source(tmp_path)
    assert sorted(source.splits) == ["test", "train", "val"]


def test_check_data_task_instance_keeps_the_via_file_detection_finds(tmp_path, capsys):
    folder = tmp_path / "kites" / "train"
    folder.mkdir(parents=True)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folder / "p.png")
    polygon = {"name": "polygon", "all_points_x": [1, 10, 10], "all_points_y": [1, 1, 10]}
    region = {"shape_attributes": polygon, "region_attributes": {}}
    data = {"p.png1": {"filename": "p.png", "regions": [region]}}
    (folder / "via_region_data.json").write_text(json.dumps(data))
    assert main(["check-data", str(tmp_path / "kites")]) == 0
    capsys.readouterr()
    assert main(["check-data", str(tmp_path / "kites"), "--task", "instance"]) == 0
    assert "cannot tell the instance format" not in capsys.readouterr().err


def test_large_images_need_slide_mode(trained, tmp_path, capsys, monkeypatch):
    _, checkpoint = trained
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200)  # 400 pixels read whole at most
    image = tmp_path / "big.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(image)
    argv = ["predict", str(checkpoint), str(image), "-g", "-1"]
    assert main([*argv, "-o", str(tmp_path / "whole")]) == 2
    err = one_line_error(capsys)
    assert "big.png" in err and "--mode slide" in err
    assert main([*argv, "-o", str(tmp_path / "slide"), "--mode", "slide", "--tile", "16"]) == 0
    assert Image.MAX_IMAGE_PIXELS == 200  # the raised limit does not outlive the command


def test_check_data_summarises_many_bad_pairs(tmp_path, capsys):
    data = binary_dataset(tmp_path / "d", count=26)
    for i in range(1, 26):
        Image.fromarray(disc(size=20).astype(np.uint8)).save(data / "masks" / f"b{i}.png")
    assert main(["check-data", str(data)]) == 2
    out = capsys.readouterr().out
    assert "problems (25):" in out and "... and 5 more (--json lists every one)" in out
    assert out.count("but image") == 20
