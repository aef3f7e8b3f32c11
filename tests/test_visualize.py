"""Visual helpers by behaviour (pixel colours, legend, palette round trip) and atomic file writes."""

import json

import numpy as np
import pytest
from PIL import Image

from segworks.fileio import atomic_path, save_image, save_json, save_text
from segworks.visualize import (
    colorize,
    confusion_matrix_image,
    error_map,
    index_image,
    overlay,
    panel,
    probability_image,
)

PALETTE = [(0, 0, 0), (200, 0, 0), (0, 200, 0), (0, 0, 200)]
NAMES = ["background", "road", "tree", "sky"]


def scene():
    """A 40x60 label map: class 1 block, class 2 block, an ignored band; class 3 absent."""
    label = np.zeros((40, 60), dtype=np.int64)
    label[5:20, 5:25] = 1
    label[22:38, 30:55] = 2
    label[:, 58:] = 255
    photo = np.full((40, 60, 3), 100, dtype=np.uint8)
    photo[:, :, 2] = 60
    return label, Image.fromarray(photo)


def test_colorize_paints_palette_colours_and_ignore_colour():
    label, _ = scene()
    rgb = np.asarray(colorize(label, PALETTE, ignore_color=(9, 9, 9)))
    assert rgb.shape == (40, 60, 3)
    assert tuple(rgb[10, 10]) == (200, 0, 0)
    assert tuple(rgb[30, 40]) == (0, 200, 0)
    assert tuple(rgb[0, 0]) == (0, 0, 0)
    assert tuple(rgb[0, 59]) == (9, 9, 9)
    with pytest.raises(ValueError, match="label value 7 has no colour"):
        colorize(np.full((2, 2), 7), PALETTE)


def test_index_image_round_trips_through_png(tmp_path):
    label, _ = scene()
    image = index_image(label, PALETTE)
    assert image.mode == "P"
    save_image(image, tmp_path / "label.png")
    read = Image.open(tmp_path / "label.png")
    assert read.mode == "P"
    np.testing.assert_array_equal(np.asarray(read), label)
    colours = np.asarray(read.convert("RGB"))
    assert tuple(colours[10, 10]) == (200, 0, 0)
    assert tuple(colours[0, 59]) == (224, 224, 192)  # palette entry 255 = void
    with pytest.raises(ValueError, match="0..255"):
        index_image(np.full((2, 2), 300), PALETTE)


def test_overlay_blends_over_a_grey_photo_and_keeps_ignored_pixels():
    label, photo = scene()
    out = np.asarray(overlay(photo, label, PALETTE, alpha=0.25, legend=False)).astype(int)
    assert out.shape == (40, 60, 3)
    grey = 0.299 * 100 + 0.587 * 100 + 0.114 * 60
    expected = [0.75 * grey + 0.25 * c for c in PALETTE[1]]
    assert np.abs(out[10, 10] - expected).max() <= 1  # inside the class-1 block
    assert tuple(out[0, 59]) == (100, 100, 60)  # ignored: the photo itself
    assert np.array_equal(np.asarray(overlay(photo, label, PALETTE, alpha=0.0, legend=False)),
                          np.asarray(photo))  # fmt: skip


def test_overlay_draws_class_boundaries_in_the_legend_colour():
    label, photo = scene()
    out = np.asarray(overlay(photo, label, PALETTE, alpha=0.5, legend=False))
    assert tuple(out[5, 10]) == PALETTE[1] and tuple(out[19, 24]) == PALETTE[1]  # block edges
    assert tuple(out[22, 40]) == PALETTE[2]
    assert tuple(out[10, 10]) != PALETTE[1]  # the inside is blended


def test_overlay_keeps_the_hue_of_the_legend_colour():
    """Red over cyan: a plain alpha blend gives grey (127, 127, 127); the overlay stays red."""
    label = np.ones((12, 12), dtype=np.int64)
    cyan = Image.fromarray(np.full((12, 12, 3), (0, 255, 255), dtype=np.uint8))
    red = [(0, 0, 0), (255, 0, 0)]
    r, g, b = np.asarray(overlay(cyan, label, red, alpha=0.5, legend=False))[6, 6].astype(int)
    plain = 0.5 * np.array([0, 255, 255]) + 0.5 * np.array([255, 0, 0])
    assert np.ptp(plain) < 1  # control: the old blend is grey
    assert r - max(g, b) > 100


def test_overlay_legend_lists_exactly_the_present_classes():
    label, photo = scene()
    plain = overlay(photo, label, PALETTE, class_names=NAMES, legend=False)
    with_legend = overlay(photo, label, PALETTE, class_names=NAMES, legend=True)
    assert with_legend.width > plain.width and with_legend.height >= plain.height
    crop = np.asarray(with_legend)[:, :60]
    np.testing.assert_array_equal(crop[:40], np.asarray(plain))  # the photo area is untouched
    legend = np.asarray(with_legend)[:, 60:].reshape(-1, 3)
    colours = {tuple(c) for c in legend}
    assert {(0, 0, 0), (200, 0, 0), (0, 200, 0)} <= colours  # swatches of classes 0, 1, 2
    assert (0, 0, 200) not in colours  # class 3 (sky) is absent from the label
    # With only class 1 present the legend is shorter (fewer rows) than with three classes.
    only_road = np.where(label == 1, 1, 255)
    small = overlay(photo, only_road, PALETTE, class_names=NAMES)
    small_colours = {tuple(c) for c in np.asarray(small)[:, 60:].reshape(-1, 3)}
    assert (200, 0, 0) in small_colours and (0, 200, 0) not in small_colours
    # Nothing labelled: no legend panel.
    assert overlay(photo, np.full((40, 60), 255), PALETTE).size == photo.size


def test_overlay_rejects_a_label_of_the_wrong_size():
    label, photo = scene()
    with pytest.raises(ValueError, match="does not match the image size"):
        overlay(photo, label[:, :50], PALETTE)


def test_error_map_colours():
    label, photo = scene()
    pred = label.copy()
    pred[5:10, 5:10] = 2  # wrong
    pred[:, 58:] = 3  # under ignore: not an error
    out = np.asarray(error_map(photo, label, pred))
    assert tuple(out[6, 6]) == (255, 0, 0)
    assert tuple(out[15, 15]) == (40, 40, 24)  # right: photo dimmed to 40 %
    assert tuple(out[0, 59]) == (128, 128, 128)
    assert (np.all(out == (255, 0, 0), axis=-1)).sum() == 25


@pytest.mark.parametrize("k", [3, 40])
def test_confusion_matrix_image_shows_the_diagonal(k):
    matrix = np.eye(k, dtype=np.int64) * 50
    matrix[0, 1] = 50  # row 0: half right, half wrong
    matrix[k - 1] = 0  # row without pixels: grey
    image = confusion_matrix_image(matrix, [f"class {i}" for i in range(k)])
    pixels = np.asarray(image)
    assert 100 < image.width < 1400 and 100 < image.height < 1400
    # The grid sits in the bottom-right corner, 8 px of margin; cells are square.
    cell = int(np.clip(640 // k, 16, 56))
    right, bottom = image.width - 8, image.height - 8
    left, top = right - k * cell, bottom - k * cell

    def cell_colour(row, col):
        return pixels[top + row * cell + 2, left + col * cell + 2].astype(int)

    assert cell_colour(1, 1).sum() < cell_colour(1, 0).sum()  # diagonal darker than off-diagonal
    assert tuple(cell_colour(1, 0)) == (255, 255, 255)  # 0 % is white
    assert tuple(cell_colour(k - 1, 0)) == (128, 128, 128)  # empty row
    full, half = cell_colour(1, 1).sum(), cell_colour(0, 0).sum()
    assert full < half < 3 * 255
    # Class names are drawn: the label margin on the left holds dark text pixels.
    assert (pixels[top:bottom, : left - 2] < 100).any()


def test_probability_image():
    prob = np.array([[0.0, 0.5], [1.0, 0.25]])
    image = probability_image(prob)
    assert image.mode == "L"
    assert np.asarray(image).tolist() == [[0, 128], [255, 64]]
    with pytest.raises(ValueError, match="sigmoid"):
        probability_image(np.array([[-3.0, 4.0]]))


def test_panel_places_images_side_by_side():
    red = Image.new("RGB", (10, 8), (255, 0, 0))
    blue = Image.new("RGB", (12, 5), (0, 0, 255))
    out = panel([red, blue], ["a", "b"])
    assert out.size == (10 + 6 + 12, 20 + 8)
    assert out.getpixel((5, 24)) == (255, 0, 0) and out.getpixel((20, 22)) == (0, 0, 255)


def test_atomic_path_replaces_on_success_and_keeps_the_old_file_on_error(tmp_path):
    target = tmp_path / "sub" / "result.json"
    save_json({"miou": 0.5}, target)
    assert json.loads(target.read_text()) == {"miou": 0.5}
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half written")
        raise RuntimeError("crash")
    assert json.loads(target.read_text()) == {"miou": 0.5}
    assert sorted(p.name for p in target.parent.iterdir()) == ["result.json"]  # no temp left
    save_text("hello\n", tmp_path / "note.txt")
    assert (tmp_path / "note.txt").read_text() == "hello\n"


def test_save_image_takes_the_format_from_the_suffix(tmp_path):
    image = Image.new("RGB", (4, 3), (10, 20, 30))
    save_image(image, tmp_path / "a.jpg")
    save_image(image, tmp_path / "a.png")
    assert Image.open(tmp_path / "a.jpg").format == "JPEG"
    assert Image.open(tmp_path / "a.png").getpixel((0, 0)) == (10, 20, 30)
    with pytest.raises(ValueError, match="suffix"):
        save_image(image, tmp_path / "a.unknown")
