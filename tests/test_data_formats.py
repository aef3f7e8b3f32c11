"""Mask encodings: every format round-trips random label arrays, and bad files raise DataError
naming the file and the problem."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from segworks.data.encoding import encode_mask
from segworks.data.formats import (
    MaskDecoder,
    rasterize_labelme,
    read_palette,
)
from segworks.data.meta import voc_palette
from segworks.errors import DataError

NAMES = [f"c{i}" for i in range(6)]
COLOURS = {
    (0, 0, 0): 0,
    (127, 0, 0): 1,
    (0, 127, 0): 2,
    (10, 20, 30): 3,
    (9, 9, 9): 4,
    (250, 1, 2): 5,
}


def label_arrays(max_class: int, ignore: bool = True):
    values = st.sampled_from([*range(max_class + 1), *([255] if ignore else [])])
    shape = st.tuples(st.integers(1, 9), st.integers(1, 9))
    return shape.flatmap(lambda s: arrays(np.int64, s, elements=values))


SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def round_trip(tmp_path, labels, fmt, suffix=".png", **options):
    path = tmp_path / f"mask{suffix}"
    encode_mask(labels, path, mask_format=fmt, **options.pop("encode", {}))
    return MaskDecoder(mask_format=fmt, **options)(path)


@SETTINGS
@given(labels=label_arrays(5))
def test_palette_round_trip(tmp_path, labels):
    decoded = round_trip(
        tmp_path, labels, "palette", encode={"palette": voc_palette(6)}, num_classes=6
    )
    np.testing.assert_array_equal(decoded, labels)


@SETTINGS
@given(labels=label_arrays(5))
def test_index_round_trip(tmp_path, labels):
    np.testing.assert_array_equal(round_trip(tmp_path, labels, "index", num_classes=6), labels)


@SETTINGS
@given(labels=label_arrays(5))
def test_index_reduce_zero_label_round_trip(tmp_path, labels):
    decoded = round_trip(
        tmp_path,
        labels,
        "index",
        encode={"reduce_zero_label": True},
        num_classes=6,
        reduce_zero_label=True,
    )
    np.testing.assert_array_equal(decoded, labels)


@SETTINGS
@given(labels=label_arrays(5))
def test_index_with_own_void_value_round_trip(tmp_path, labels):
    decoded = round_trip(
        tmp_path, labels, "index", encode={"void_value": 11}, num_classes=6, void_value=11
    )
    np.testing.assert_array_equal(decoded, labels)


@SETTINGS
@given(labels=label_arrays(1, ignore=False))
def test_binary_0_255_round_trip(tmp_path, labels):
    np.testing.assert_array_equal(round_trip(tmp_path, labels, "binary"), labels)


@SETTINGS
@given(labels=label_arrays(1))
def test_binary_with_ignore_round_trip(tmp_path, labels):
    # With ignore pixels the encoder writes a 0/1/255 mask, else a 0/255 one; the dataset
    # settles which value is the foreground once for all its masks.
    foreground = 1 if (labels == 255).any() else 255
    decoded = round_trip(tmp_path, labels, "binary", foreground=foreground)
    np.testing.assert_array_equal(decoded, labels)


@SETTINGS
@given(labels=label_arrays(5))
def test_rgb_round_trip(tmp_path, labels):
    colour_map = {**COLOURS, (255, 255, 255): 255}
    decoded = round_trip(
        tmp_path,
        labels,
        "rgb",
        encode={"colour_map": colour_map},
        colour_map=colour_map,
        num_classes=6,
    )
    np.testing.assert_array_equal(decoded, labels)


@SETTINGS
@given(labels=label_arrays(5))
def test_npy_round_trip(tmp_path, labels):
    np.testing.assert_array_equal(
        round_trip(tmp_path, labels, "npy", ".npy", num_classes=6), labels
    )


@SETTINGS
@given(labels=label_arrays(5))
def test_labelme_round_trip(tmp_path, labels):
    ids = {name: i for i, name in enumerate(NAMES)} | {"__ignore__": 255}
    decoded = round_trip(
        tmp_path,
        labels,
        "labelme",
        ".json",
        encode={"class_names": NAMES},
        class_ids=ids,
        num_classes=6,
    )
    np.testing.assert_array_equal(decoded, labels)


def test_palette_png_keeps_its_palette_and_index_is_label(tmp_path):
    labels = np.array([[0, 1], [2, 255]])
    path = encode_mask(labels, tmp_path / "m.png", mask_format="palette", palette=voc_palette(3))
    assert Image.open(path).mode == "P"
    assert read_palette(path)[:3] == [(0, 0, 0), (128, 0, 0), (0, 128, 0)]
    np.testing.assert_array_equal(MaskDecoder(mask_format="palette", num_classes=3)(path), labels)


def test_zero_255_mask_is_never_256_classes(tmp_path):
    path = tmp_path / "m.png"
    Image.fromarray(np.array([[0, 255], [255, 0]], dtype=np.uint8)).save(path)
    decoded = MaskDecoder(mask_format="binary")(path)
    assert set(np.unique(decoded)) == {0, 1}


def test_binary_mask_with_grey_values_is_reported_not_thresholded(tmp_path):
    path = tmp_path / "soft.png"
    Image.fromarray(np.array([[0, 128], [255, 0]], dtype=np.uint8)).save(path)
    with pytest.raises(DataError, match="128"):
        MaskDecoder(mask_format="binary")(path)


def test_binary_task_merges_classes_into_foreground(tmp_path):
    path = encode_mask(np.array([[0, 1, 2, 255]]), tmp_path / "m.png", mask_format="index")
    decoded = MaskDecoder(mask_format="index", num_classes=3, binary=True)(path)
    np.testing.assert_array_equal(decoded, [[0, 1, 1, 255]])


def test_reduce_zero_label_maps_zero_to_ignore(tmp_path):
    path = tmp_path / "ade.png"
    Image.fromarray(np.array([[0, 1, 150]], dtype=np.uint8)).save(path)
    decoded = MaskDecoder(mask_format="index", num_classes=150, reduce_zero_label=True)(path)
    np.testing.assert_array_equal(decoded, [[255, 0, 149]])


def test_tutorial_newt_colours_decode_with_a_colour_map(tmp_path):
    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    rgb[0, 1] = (127, 0, 0)
    rgb[1, 2] = (0, 127, 0)
    Image.fromarray(rgb).save(tmp_path / "newt.png")
    mapping = {(0, 0, 0): 0, (127, 0, 0): 1, (0, 127, 0): 2}
    decoded = MaskDecoder(mask_format="rgb", colour_map=mapping, num_classes=3)(
        tmp_path / "newt.png"
    )
    np.testing.assert_array_equal(decoded, [[0, 1, 0], [0, 0, 2]])


def test_unknown_rgb_colour_names_file_and_colour(tmp_path):
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[0, 0] = (128, 0, 0)  # the VOC colour, not the map's (127, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "odd.png")
    decoder = MaskDecoder(mask_format="rgb", colour_map={(0, 0, 0): 0, (127, 0, 0): 1})
    with pytest.raises(DataError, match=r"odd\.png.*\(128, 0, 0\)"):
        decoder(tmp_path / "odd.png")


def test_npy_minus_one_is_ignore(tmp_path):
    np.save(tmp_path / "m.npy", np.array([[-1, 0], [2, 1]], dtype=np.int32))
    decoded = MaskDecoder(mask_format="npy", num_classes=3)(tmp_path / "m.npy")
    np.testing.assert_array_equal(decoded, [[255, 0], [2, 1]])


def test_labelme_polygon_is_filled_and_later_shapes_cover_earlier(tmp_path):
    doc = {
        "shapes": [
            {"label": "cat", "points": [[0, 0], [7, 0], [7, 7], [0, 7]], "shape_type": "polygon"},
            {"label": "__ignore__", "points": [[2, 2], [3, 3]], "shape_type": "rectangle"},
        ],
        "imageHeight": 10,
        "imageWidth": 12,
    }
    (tmp_path / "a.json").write_text(json.dumps(doc))
    labels = rasterize_labelme(tmp_path / "a.json", {"background": 0, "cat": 1, "__ignore__": 255})
    assert labels.shape == (10, 12)
    assert labels[5, 5] == 1 and labels[2, 3] == 255 and labels[9, 11] == 0
    assert (labels == 1).sum() == 64 - 4


def test_labelme_unknown_label_is_an_error(tmp_path):
    doc = {
        "shapes": [{"label": "dog", "points": [[0, 0], [3, 0], [3, 3]]}],
        "imageHeight": 4,
        "imageWidth": 4,
    }
    (tmp_path / "a.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match="'dog'"):
        rasterize_labelme(tmp_path / "a.json", {"background": 0, "cat": 1})


def test_out_of_range_values_raise(tmp_path):
    path = encode_mask(np.array([[0, 7]]), tmp_path / "m.png", mask_format="index")
    with pytest.raises(DataError, match=r"m\.png.*values 7 outside the 3 classes"):
        MaskDecoder(mask_format="index", num_classes=3)(path)


def test_truncated_png_names_the_file(tmp_path):
    path = encode_mask(
        np.random.default_rng(0).integers(0, 3, (64, 64)), tmp_path / "m.png", mask_format="index"
    )
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError, match=r"m\.png: cannot decode"):
        MaskDecoder(mask_format="index", num_classes=3)(path)


def test_palette_format_rejects_a_colour_image(tmp_path):
    Image.fromarray(np.full((2, 2, 3), (10, 200, 3), dtype=np.uint8)).save(tmp_path / "c.png")
    with pytest.raises(DataError, match=r"c\.png: expected a palette"):
        MaskDecoder(mask_format="palette", num_classes=3)(tmp_path / "c.png")


def test_unknown_format_is_a_value_error():
    with pytest.raises(ValueError, match="mask format"):
        MaskDecoder(mask_format="jpeg")
