"""`segworks check-data`: counts and classes on good data, exit 2 with one line per problem on
broken data, a cleaned list that leaves the data alone, and the real newts and CamVid sets."""

from __future__ import annotations

import json

import numpy as np
from helpers import (
    make_binary_dirs,
    make_class_folders,
    make_labels,
    make_refinenet,
    write_mask,
)
from PIL import Image

from segworks.cli import main


def check(capsys, *argv):
    code = main(["check-data", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_good_class_folders(tmp_path, capsys):
    code, out, _ = check(capsys, make_class_folders(tmp_path))
    assert code == 0
    assert "layout:  class-folders   masks: palette" in out
    assert "pairs:   train 4, test 4" in out
    assert "classes: 3 from" in out and "background, akahara, madara" in out
    assert "problems: none" in out


def test_json_report_counts_pixels_and_masks(tmp_path, capsys):
    code, out, _ = check(capsys, make_class_folders(tmp_path), "--json")
    report = json.loads(out)
    assert code == 0 and report["usable"] and report["pairs"] == {"train": 4, "test": 4}
    classes = {row["name"]: row for row in report["classes"]}
    assert classes["akahara"]["pixels"] == 4 * 30 and classes["akahara"]["images"] == 4
    assert classes["background"]["images"] == 8
    assert report["image_sizes"]["most_common"] == [12, 16]


def test_broken_folder_gives_exit_2_and_one_line_per_problem(tmp_path, capsys):
    make_class_folders(tmp_path)
    jpeg = tmp_path / "train/images/akahara/akahara_0.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[:150])  # corrupt JPEG
    png = tmp_path / "train/seg_images/madara/madara_0.png"
    png.write_bytes(png.read_bytes()[:-30])  # truncated PNG
    write_mask(tmp_path / "test/seg_images/akahara/akahara_1.png", make_labels(1, (9, 9)))  # size
    (tmp_path / "test/seg_images/madara/madara_1.png").unlink()  # missing pair
    write_mask(tmp_path / "train/seg_images/akahara/akahara_1.png", make_labels(5))  # undeclared
    code, out, err = check(capsys, tmp_path)
    assert code == 2
    problems = out.split("problems (")[1].splitlines()[1:]
    assert len(problems) == 5, out
    text = "\n".join(problems)
    assert "akahara_0.jpg: cannot decode image" in text
    assert "madara_0.png: cannot decode" in text
    assert "akahara_1.png: mask is 9x9 but image akahara_1.jpg is 16x12" in text
    assert "madara_1.png: mask not found" in text
    assert "undeclared class value 5" in text
    assert "not usable" in err


def test_fix_list_keeps_good_pairs_and_never_touches_data(tmp_path, capsys):
    make_refinenet(tmp_path, stems=("aaa", "bbb", "ccc", "ddd"))
    (tmp_path / "images/bbb.jpg").write_bytes(b"garbage")
    (tmp_path / "train.txt").write_text("aaa\nbbb\nzzz\nccc\nddd\n")
    before = sorted((p, p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file())
    flags = [
        "-tt",
        tmp_path / "train.txt",
        "-tr",
        tmp_path / "images",
        "-ta",
        tmp_path / "annotations",
    ]
    code, out, _ = check(capsys, *flags, "--fix-list", tmp_path / "clean.txt")
    assert code == 2
    assert "train.txt: line 3: the image" in out and "zzz.jpg does not exist" in out
    assert (tmp_path / "clean.txt").read_text() == "aaa\nccc\nddd\n"
    after = sorted(
        (p, p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file() and p.name != "clean.txt"
    )
    assert after == before
    flags[1] = tmp_path / "clean.txt"
    assert check(capsys, *flags)[0] == 0


def test_skip_bad_accepts_a_set_with_some_bad_pairs(tmp_path, capsys):
    make_class_folders(tmp_path)
    (tmp_path / "test/seg_images/madara/madara_1.png").unlink()
    assert check(capsys, tmp_path)[0] == 2
    code, _, err = check(capsys, tmp_path, "--skip-bad")
    assert code == 0 and "1 bad pairs would be skipped" in err


def test_binary_masks_declared_as_many_classes_are_flagged(tmp_path, capsys):
    make_binary_dirs(tmp_path)
    code, out, _ = check(capsys, tmp_path)
    assert code == 0 and "task: binary" in out
    code, out, _ = check(capsys, tmp_path, "--classes", "a,b,c,d")
    assert code == 2 and "masks hold only 0 and 255 (a binary mask) but 4 classes" in out
    code, out, _ = check(capsys, tmp_path, "--mask-format", "index")
    assert code == 2 and "masks hold only 0 and 255, read as index labels" in out


def test_grey_values_in_a_binary_set_are_out_of_range(tmp_path, capsys):
    make_binary_dirs(tmp_path)
    soft = np.zeros((12, 16), dtype=np.uint8)
    soft[2:5, 2:5] = 255
    soft[6, 6] = 128
    Image.fromarray(soft).save(tmp_path / "label/1.png")
    code, out, _ = check(capsys, tmp_path)
    assert code == 2 and "out-of-range label value 128" in out


def test_unknown_rgb_colour_is_reported(tmp_path, capsys):
    spec = {
        "mask_format": "rgb",
        "palette": [[0, 0, 0], [127, 0, 0]],
        "splits": {"train": {"images": "i", "masks": "m"}},
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "i").mkdir()
    (tmp_path / "m").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "i/a.png")
    mask = np.zeros((4, 4, 3), dtype=np.uint8)
    mask[0, 0] = (128, 0, 0)
    Image.fromarray(mask).save(tmp_path / "m/a.png")
    code, out, _ = check(capsys, tmp_path / "spec.json")
    assert code == 2 and "a.png: unknown mask colour (128, 0, 0)" in out


def test_bad_flags_are_one_line_errors(tmp_path, capsys):
    code, _, err = check(capsys, tmp_path / "nowhere")
    assert code == 2 and err.strip().count("\n") == 0 and "no such file" in err


def test_real_newts(shared_datasets, capsys):
    code, out, _ = check(capsys, shared_datasets / "newts", "--json")
    report = json.loads(out)
    assert code == 0 and report["pairs"] == {"train": 16, "test": 6}
    assert report["class_names"] == ["background", "akahara", "madara"]
    images = {row["name"]: row["images"] for row in report["classes"]}
    assert images == {"background": 22, "akahara": 11, "madara": 11, "(ignore)": 0}


def test_real_camvid(shared_datasets, capsys):
    code, out, _ = check(capsys, shared_datasets / "camvid")
    assert code == 0
    assert "pairs:   train 367, val 101 (468 total" in out
    assert (
        "Sky, Building, Pole, Road, Pavement, Tree, SignSymbol, Fence, Car, Pedestrian, Bicyclist"
        in out
    )
    assert "void on disk 11 -> 255" in out and "most common 360x480 (468 images)" in out


def test_instance_dataset_is_delegated(shared_datasets, capsys):
    code, out, _ = check(capsys, shared_datasets / "fruits_nuts")
    assert code == 0 and "instances: 165" in out
