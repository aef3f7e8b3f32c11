"""Layout readers and auto-detection on datasets the tests write, plus the real sets in
../shared/datasets (counts, classes and label values as their README states)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from helpers import (
    make_binary_dirs,
    make_camvid,
    make_class_folders,
    make_labels,
    make_refinenet,
    write_image,
    write_mask,
)

from segworks.data import DatasetMeta, Sample, SegmentationDataset, open_source
from segworks.errors import DataError


# --------------------------------------------------------------------------- detection
def test_class_folders_detected_with_names_from_labels_txt(tmp_path):
    source = open_source(make_class_folders(tmp_path))
    assert source.layout == "class-folders" and source.mask_format == "palette"
    assert {k: len(v) for k, v in source.splits.items()} == {"train": 4, "test": 4}
    assert source.meta.class_names == ["background", "akahara", "madara"]
    assert source.meta.palette[1] == (128, 0, 0)
    image, labels = source.dataset("train").read(2)
    assert image.mode == "RGB" and labels.dtype == np.int64
    assert set(np.unique(labels)) == {0, 2}  # madara files come after akahara


def test_segnet_layout_maps_void_11_to_255(tmp_path):
    source = open_source(make_camvid(tmp_path))
    assert source.layout == "pair-list" and source.mask_format == "index"
    assert source.meta.ignore_index == 11 and source.meta.num_classes == 11
    assert source.meta.class_names[0] == "Sky" and source.meta.class_names[-1] == "Bicyclist"
    _, labels = source.dataset("val").read(0)
    assert set(np.unique(labels)) == {0, 3, 255}


def test_camvid_without_lists_is_paired_by_annot_folders(tmp_path):
    make_camvid(tmp_path)
    for name in ("train.txt", "val.txt"):
        (tmp_path / name).unlink()
    source = open_source(tmp_path)
    assert source.layout == "image-label-dirs"
    assert {k: len(v) for k, v in source.splits.items()} == {"train": 3, "val": 3}
    assert source.meta.ignore_index == 11


def test_zero_255_masks_are_binary(tmp_path):
    source = open_source(make_binary_dirs(tmp_path))
    assert source.mask_format == "binary" and source.meta.task == "binary"
    assert source.meta.class_names == ["background", "foreground"]
    image, target = source.dataset("train")[0]
    assert image.shape == (3, 12, 16) and image.dtype == torch.float32
    assert set(target.unique().tolist()) == {0, 1}


def test_zero_one_masks_with_two_names_are_binary(tmp_path):
    make_binary_dirs(tmp_path)
    for path in (tmp_path / "label").glob("*.png"):
        write_mask(path, make_labels(1), "index")
    source = open_source(tmp_path, class_names=["bg", "cell"])
    assert source.meta.task == "binary" and source.meta.class_names == ["bg", "cell"]


def test_task_binary_merges_newt_classes(tmp_path):
    source = open_source(make_class_folders(tmp_path), task="binary")
    assert source.meta.class_names == ["background", "foreground"]
    assert set(np.unique(source.dataset("train").read(3)[1])) == {0, 1}


def test_refinenet_list_file_trio(tmp_path):
    make_refinenet(tmp_path)
    source = open_source(
        list_file=tmp_path / "train.txt",
        image_dir=tmp_path / "images",
        label_dir=tmp_path / "annotations",
    )
    assert source.layout == "list-file" and len(source.splits["train"]) == 3
    assert source.splits["train"][1] == Sample(
        tmp_path / "images/bbb.jpg", tmp_path / "annotations/bbb.png"
    )
    assert source.meta.num_classes == 3  # inferred from values 0 and 2


def test_list_entry_without_file_is_reported_and_raises(tmp_path):
    make_refinenet(tmp_path)
    (tmp_path / "train.txt").write_text("aaa\nzzz\nbbb\n")
    source = open_source(
        list_file=tmp_path / "train.txt",
        image_dir=tmp_path / "images",
        label_dir=tmp_path / "annotations",
    )
    assert any("line 2" in str(e) and "zzz" in str(e) for e in source.list_problems)
    with pytest.raises(DataError, match="zzz.jpg: image file not found"):
        source.dataset("train")
    assert len(source.dataset("train", skip_bad=True)) == 2


def test_missing_mask_in_folder_layout(tmp_path, caplog):
    make_class_folders(tmp_path)
    (tmp_path / "train/seg_images/madara/madara_0.png").unlink()
    source = open_source(tmp_path)
    with pytest.raises(DataError, match="madara_0.png: mask file not found"):
        source.dataset("train")
    with caplog.at_level(logging.WARNING):
        dataset = source.dataset("train", skip_bad=True)
    assert len(dataset) == 3 and "madara_0.png" in caplog.text


def test_spec_file_with_rgb_colours(tmp_path):
    mapping = {(0, 0, 0): 0, (127, 0, 0): 1, (0, 127, 0): 2, (255, 255, 255): 255}
    for i in range(2):
        write_image(tmp_path / "imgs" / f"{i}.jpg")
        write_mask(tmp_path / "colours" / f"{i}.png", make_labels(i + 1), "rgb", colour_map=mapping)
    spec = {
        "mask_format": "rgb",
        "class_names": ["background", "akahara", "madara"],
        "palette": [[0, 0, 0], [127, 0, 0], [0, 127, 0]],
        "colour_map": {"255,255,255": 255},
        "splits": {"train": {"images": "imgs", "masks": "colours"}},
    }
    (tmp_path / "newts.json").write_text(json.dumps(spec))
    source = open_source(tmp_path / "newts.json")
    assert source.layout == "spec" and source.meta.palette[1] == (127, 0, 0)
    assert set(np.unique(source.dataset("train").read(1)[1])) == {0, 2}


def test_yaml_spec_in_folder_is_found(tmp_path):
    make_refinenet(tmp_path)
    (tmp_path / "segworks.yaml").write_text(
        "class_names: [bg, a, b]\nsplits:\n  val: {list: train.txt, images: images, masks: annotations}\n"
    )
    source = open_source(tmp_path)
    assert list(source.splits) == ["val"] and source.meta.class_names == ["bg", "a", "b"]


def test_rgb_masks_without_a_map_are_an_error(tmp_path):
    mapping = {(0, 0, 0): 0, (127, 0, 0): 1}
    write_image(tmp_path / "images" / "a.jpg")
    write_mask(tmp_path / "masks" / "a.png", make_labels(1), "rgb", colour_map=mapping)
    with pytest.raises(DataError, match=r"colours .*\(127, 0, 0\).* colour -> class map"):
        open_source(tmp_path)


def test_labelme_folder_uses_labels_txt(tmp_path):
    folder = tmp_path / "data_annotated"
    write_image(folder / "x.jpg")
    write_mask(folder / "x.json", make_labels(1), "labelme", class_names=["background", "cat"])
    (tmp_path / "labels.txt").write_text("__ignore__\n_background_\ncat\n")
    source = open_source(folder)
    assert source.layout == "labelme" and source.meta.class_names == ["background", "cat"]
    np.testing.assert_array_equal(source.dataset("train").read(0)[1], make_labels(1))


def test_undetectable_folder_says_what_to_do(tmp_path):
    (tmp_path / "notes").mkdir()
    with pytest.raises(DataError, match="spec file"):
        open_source(tmp_path)


# --------------------------------------------------------------------------- bad files
def test_size_mismatch_and_skip_bad_never_yield_a_wrong_label(tmp_path, caplog):
    make_class_folders(tmp_path)
    write_mask(tmp_path / "train/seg_images/akahara/akahara_1.png", make_labels(1, (10, 10)))
    dataset = open_source(tmp_path).dataset("train")
    with pytest.raises(DataError, match=r"akahara_1.png: mask size 10x10 differs"):
        dataset.read(1)
    skipping = open_source(tmp_path).dataset("train", skip_bad=True)
    with caplog.at_level(logging.WARNING):
        _, target = skipping[1]
    assert "akahara_1.png" in caplog.text
    np.testing.assert_array_equal(target.numpy(), make_labels(2))  # the next good pair
    errors = skipping.validate()
    assert len(errors) == 1 and len(skipping) == 3


def test_corrupt_jpeg_names_the_file(tmp_path):
    make_class_folders(tmp_path)
    path = tmp_path / "train/images/madara/madara_1.jpg"
    path.write_bytes(path.read_bytes()[:200])
    dataset = open_source(tmp_path).dataset("train")
    with pytest.raises(DataError, match=r"madara_1.jpg: cannot decode image"):
        dataset.read(3)
    skipping = open_source(tmp_path).dataset("train", skip_bad=True)
    errors = skipping.validate()
    assert len(errors) == 1 and len(skipping) == 3


def test_unreadable_everywhere_raises_even_with_skip_bad(tmp_path):
    write_image(tmp_path / "images" / "a.jpg")
    write_mask(tmp_path / "masks" / "a.png", make_labels(1))
    (tmp_path / "images" / "a.jpg").write_bytes(b"not a jpeg")
    dataset = SegmentationDataset(
        [Sample(tmp_path / "images/a.jpg", tmp_path / "masks/a.png")],
        DatasetMeta(["bg", "fg"]),
        open_source(tmp_path).decoder(),
        skip_bad=True,
    )
    with pytest.raises(DataError, match="no readable pair"):
        dataset[0]


def test_unlabelled_split_reads_all_ignore(tmp_path):
    write_image(tmp_path / "images" / "a.jpg")
    source = open_source(tmp_path, class_names=["bg", "x", "y"], allow_unlabelled=True)
    _, labels = source.dataset("train").read(0)
    assert (labels == 255).all()


# --------------------------------------------------------------------------- real datasets
def test_real_newts(shared_datasets):
    source = open_source(shared_datasets / "newts")
    assert {k: len(v) for k, v in source.splits.items()} == {"train": 16, "test": 6}
    assert source.meta.class_names == ["background", "akahara", "madara"]
    assert source.mask_format == "palette"
    assert source.meta.palette[1:3] == [(128, 0, 0), (0, 128, 0)]
    dataset = source.dataset("test")
    values = {}
    for index, sample in enumerate(dataset.samples):
        image, labels = dataset.read(index)
        assert (image.height, image.width) in ((455, 256), (144, 256))
        values[sample.image.parent.name] = set(np.unique(labels))
    assert values["akahara"] <= {0, 1} and values["madara"] <= {0, 2}


def test_real_newt_npy_matches_png(shared_datasets):
    npy = open_source(shared_datasets / "newts/train/Madara_seg")
    png = open_source(shared_datasets / "newts")
    assert npy.mask_format == "npy"
    pngs = {s.image.stem: i for i, s in enumerate(png.splits["train"])}
    _, from_npy = npy.dataset("train").read(0)
    _, from_png = png.dataset("train").read(pngs[npy.splits["train"][0].image.stem])
    np.testing.assert_array_equal(from_npy, from_png)


def test_real_camvid(shared_datasets):
    source = open_source(shared_datasets / "camvid")
    assert {k: len(v) for k, v in source.splits.items()} == {"train": 367, "val": 101}
    assert source.meta.class_names == [
        "Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
        "Pedestrian", "Bicyclist",
    ]  # fmt: skip
    assert source.meta.ignore_index == 11
    image, labels = source.dataset("val").read(0)
    assert image.size == (480, 360)
    assert labels.max() == 255 and set(np.unique(labels)) - {255} <= set(range(11))


def test_real_isbi_membrane(shared_datasets):
    source = open_source(shared_datasets / "isbi_membrane")
    assert source.meta.task == "binary" and len(source.splits["train"]) == 30
    image, target = source.dataset("train")[0]
    assert image.shape == (3, 512, 512) and set(target.unique().tolist()) == {0, 1}


def test_real_labelme_json_matches_voc_png(shared_datasets):
    root = shared_datasets / "labelme_voc/semantic_segmentation"
    labelme = open_source(root / "data_annotated")
    voc = open_source(root / "data_dataset_voc")
    assert labelme.mask_format == "labelme" and voc.mask_format == "palette"
    assert labelme.meta.num_classes == voc.meta.num_classes == 21
    assert labelme.meta.class_names[15] == "person"
    for index in range(3):
        _, from_json = labelme.dataset("train").read(index)
        _, from_png = voc.dataset("train").read(index)
        assert labelme.splits["train"][index].image.stem == voc.splits["train"][index].image.stem
        assert (from_json == from_png).mean() > 0.999
    npy = open_source(root / "data_dataset_voc", mask_format="npy")
    npy.splits["train"] = [
        Sample(s.image, s.label.parent.parent / "SegmentationClassNpy" / f"{s.label.stem}.npy")
        for s in npy.splits["train"]
    ]
    np.testing.assert_array_equal(npy.dataset("train").read(0)[1], voc.dataset("train").read(0)[1])
