"""Issue 13, the formats detection used to get wrong: YOLO segmentation labels, Oxford-IIIT Pet
trimaps and region-of-interest (field-of-view) masks. Tiny synthetic trees in tmp dirs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from segworks.cli import main
from segworks.data.instances import InstanceDataset, read_instances
from segworks.data.layouts import open_source
from segworks.errors import DataError

SIZE = (24, 32)  # H, W
# Image stem -> YOLO lines (class, normalised polygon); the second line of a0 overlaps the first.
YOLO_LINES = {
    "a0": [
        (0, [0.125, 0.125, 0.625, 0.125, 0.625, 0.75, 0.125, 0.75]),
        (2, [0.5, 0.5, 0.9, 0.5, 0.7, 0.95]),
    ],
    "b1": [(1, [0.25, 0.2, 0.8, 0.3, 0.4, 0.9])],
}
NAMES = ["cat", "dog", "bird"]


def write_image(path, size=SIZE, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)


def write_yolo(root, *, names="list", lines=YOLO_LINES):
    for index, (stem, polygons) in enumerate(lines.items()):
        split = "train" if index == 0 else "val"
        write_image(root / "images" / split / f"{stem}.png", seed=index)
        text = "\n".join(f"{c} " + " ".join(f"{v:g}" for v in coords) for c, coords in polygons)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split / f"{stem}.txt").write_text(text + "\n")
    shown = NAMES if names == "list" else dict(enumerate(NAMES))
    yaml_text = f"path: .\ntrain: images/train\nval: images/val\nnames: {shown}\n"
    (root / "data.yaml").write_text(yaml_text)
    return root


def drawn(polygons, size=SIZE):
    """The expected semantic mask: PIL's own polygon fill, class k -> k + 1, in line order."""
    height, width = size
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for class_id, coords in polygons:
        points = [(x * width, y * height) for x, y in zip(coords[0::2], coords[1::2])]
        draw.polygon(points, fill=class_id + 1)
    return np.asarray(canvas).astype(np.int64)


@pytest.mark.parametrize("names", ["list", "dict"])
def test_yolo_semantic_masks_match_pil_polygons(tmp_path, names):
    source = open_source(write_yolo(tmp_path, names=names))
    assert source.layout == "YOLO" and source.mask_format == "yolo"
    assert source.meta.class_names == ["background", *NAMES]
    assert source.meta.task == "semantic"
    for split, stem in (("train", "a0"), ("val", "b1")):
        dataset = source.dataset(split)
        _, labels = dataset.read(0)
        expected = drawn(YOLO_LINES[stem])
        assert labels.shape == SIZE
        np.testing.assert_array_equal(labels, expected)
    assert (drawn(YOLO_LINES["a0"]) == 3).any() and (drawn(YOLO_LINES["a0"]) == 1).any()


def test_yolo_data_yaml_is_not_a_segworks_spec(tmp_path):
    root = write_yolo(tmp_path)
    (root / "data.yaml").rename(root / "dataset.yaml")  # also a segworks spec name
    assert open_source(root / "dataset.yaml").layout == "YOLO"
    assert open_source(root).meta.class_names[1:] == NAMES


def test_yolo_without_yaml_infers_class_names(tmp_path):
    root = write_yolo(tmp_path)
    (root / "data.yaml").unlink()
    source = open_source(root)
    assert source.meta.class_names == ["background", "class_0", "class_1", "class_2"]
    assert set(source.splits) == {"train", "val"}


def test_yolo_instances_one_per_line(tmp_path):
    instance_set = read_instances(write_yolo(tmp_path))
    assert instance_set.class_names == NAMES
    by_name = {r.image.stem: r for r in instance_set.records}
    assert [i.label for i in by_name["a0"].instances] == [1, 3]
    assert [i.label for i in by_name["b1"].instances] == [2]
    dataset = InstanceDataset(instance_set, min_size=None)
    index = dataset.records.index(by_name["a0"])
    _, target = dataset[index]
    height, width = SIZE
    assert target["labels"].tolist() == [1, 3]
    # the rectangle 0.125..0.625 x 0.125..0.75 of a 32 x 24 image: x 4..20, y 3..18
    box = target["boxes"][0].tolist()
    assert box == pytest.approx([4, 3, 20, 18], abs=1)
    assert target["masks"].shape == (2, height, width)


def test_check_data_names_yolo(tmp_path, capsys):
    root = write_yolo(tmp_path)
    assert main(["check-data", str(root)]) == 0
    assert "YOLO" in capsys.readouterr().out
    assert main(["check-data", str(root), "--task", "instance"]) == 0
    out = capsys.readouterr().out
    assert "YOLO" in out and "instances: 3" in out


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("0 0.1 0.1 0.5 0.1 0.5", "line 2: 5 coordinates"),
        ("7 0.1 0.1 0.5 0.1 0.5 0.5", "line 2: class 7 outside the 3 classes"),
        ("0 0.5 0.5 0.2 0.2", "detection box"),
        ("0 12 30 40 30 40 50", "outside 0..1"),
    ],
)
def test_malformed_yolo_line_names_file_and_line(tmp_path, capsys, line, expected):
    root = write_yolo(tmp_path)
    label = root / "labels" / "val" / "b1.txt"
    label.write_text(label.read_text() + line + "\n")
    with pytest.raises(DataError, match=expected) as error:
        read_instances(root)
    assert "b1.txt" in str(error.value)
    source = open_source(root)
    with pytest.raises(DataError, match=expected):
        source.dataset("val").read(0)
    assert main(["check-data", str(root)]) == 2
    out = capsys.readouterr().out
    assert "b1.txt" in out and expected in out


# --------------------------------------------------------------------------- trimaps
def write_pets(root, count=3, values=(1, 2, 3)):
    for index in range(count):
        stem = f"Abyssinian_{index + 1}"
        write_image(root / "images" / f"{stem}.jpg", seed=index)
        trimap = np.full(SIZE, values[1], dtype=np.uint8)  # background
        trimap[6:18, 8:24] = values[2]  # border
        trimap[8:16, 10:22] = values[0]  # foreground
        (root / "annotations" / "trimaps").mkdir(parents=True, exist_ok=True)
        Image.fromarray(trimap).save(root / "annotations" / "trimaps" / f"{stem}.png")
        Image.fromarray(trimap).save(root / "annotations" / "trimaps" / f"._{stem}.png")
    (root / "annotations" / "xmls").mkdir(exist_ok=True)
    (root / "annotations" / "xmls" / "Abyssinian_1.xml").write_text("<annotation/>")
    (root / "annotations" / "list.txt").write_text("Abyssinian_1 1 1 1\n")
    return root


def test_trimaps_read_as_binary_with_void_border(tmp_path):
    source = open_source(write_pets(tmp_path))
    assert source.mask_format == "trimap" and source.meta.task == "binary"
    assert len(source.splits["train"]) == 3
    _, labels = source.dataset("train").read(0)
    assert labels[12, 16] == 1 and labels[0, 0] == 0 and labels[7, 9] == 255
    assert set(np.unique(labels).tolist()) == {0, 1, 255}


def test_check_data_on_pets_is_one_short_report(tmp_path, capsys):
    assert main(["check-data", str(write_pets(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "trimap" in out and "not found" not in out


def test_trimaps_with_other_values_are_not_trimaps(tmp_path):
    source = open_source(write_pets(tmp_path, values=(1, 0, 4)))
    assert source.mask_format != "trimap"


def test_unpaired_mask_folder_is_one_error_not_many_pairs(tmp_path):
    for index in range(30):
        write_image(tmp_path / "images" / f"img{index}.png", seed=index)
        Image.new("L", SIZE[::-1]).save(tmp_path / "masks" / f"other{index}.png") if (
            tmp_path / "masks"
        ).is_dir() else (tmp_path / "masks").mkdir()
    with pytest.raises(DataError, match="none of its .* files has the name"):
        open_source(tmp_path)


# --------------------------------------------------------------------------- ROI masks
def write_drive(root):
    """DRIVE's naming: images/21_training.tif, 1st_manual/21_manual1.gif, mask/21_training_mask.gif."""
    vessels = np.zeros(SIZE, dtype=np.uint8)
    vessels[:, 15:17] = 255
    fov = np.zeros(SIZE, dtype=np.uint8)
    fov[2:22, 2:30] = 255
    for number in (21, 22, 23):
        folder = root / "training"
        write_image(folder / "images" / f"{number}_training.tif", seed=number)
        (folder / "1st_manual").mkdir(exist_ok=True)
        (folder / "mask").mkdir(exist_ok=True)
        Image.fromarray(vessels).save(folder / "1st_manual" / f"{number}_manual1.gif")
        Image.fromarray(fov).save(folder / "mask" / f"{number}_training_mask.gif")
    return root


def test_drive_labels_are_the_manual_folder_not_the_fov(tmp_path, caplog):
    source = open_source(write_drive(tmp_path))
    samples = source.splits["train"]
    assert len(samples) == 3
    assert all(s.label.parent.name == "1st_manual" for s in samples)
    assert samples[0].label.name == "21_manual1.gif" and samples[0].image.name == "21_training.tif"
    assert "roi_masks" in caplog.text
    _, labels = source.dataset("train").read(0)
    assert labels[10, 15] == 1 and labels[0, 0] == 0


def test_spec_roi_masks_void_the_outside(tmp_path):
    root = write_drive(tmp_path)
    spec = (
        "splits:\n  train: {images: training/images, masks: training/1st_manual, "
        "roi_masks: training/mask}\n"
    )
    (root / "segworks.yaml").write_text(spec)
    source = open_source(root)
    assert source.splits["train"][0].roi.name == "21_training_mask.gif"
    _, labels = source.dataset("train").read(0)
    assert labels[0, 0] == 255 and labels[0, 15] == 255  # outside the field of view
    assert labels[10, 15] == 1 and labels[10, 5] == 0  # inside


def test_top_level_roi_masks_and_a_missing_roi_folder(tmp_path):
    root = write_drive(tmp_path)
    spec = "roi_masks: training/mask\nsplits:\n  train: {images: training/images, masks: training/1st_manual}\n"
    (root / "segworks.yaml").write_text(spec)
    _, labels = open_source(root).dataset("train").read(1)
    assert labels[23, 31] == 255
    (root / "segworks.yaml").write_text(spec.replace("training/mask", "training/fov"))
    with pytest.raises(DataError, match="roi_masks: folder not found"):
        open_source(root)
