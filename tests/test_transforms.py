"""Paired transforms: labels stay exact (nearest only, padding with 255), image and label move
together, and a torch seed reproduces every random draw."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from segworks.data.transforms import (
    ColorJitter,
    RandomDihedral,
    RandomHorizontalFlip,
    RandomScaleCrop,
    Resize,
    ResizeLongSide,
    ToTensorNormalize,
    eval_transforms,
    long_side_size,
    resize_label,
    train_transforms,
)


def pair(height=20, width=30):
    """An image whose red channel encodes the column (x 4) and a label equal to column // 3."""
    columns = np.tile(np.arange(width), (height, 1))
    rgb = np.stack([columns * 4 % 256, np.zeros_like(columns), np.full_like(columns, 50)], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8)), (columns // 3).astype(np.int64)


def test_resize_label_is_nearest_and_creates_no_new_values():
    labels = np.random.default_rng(0).choice([0, 3, 7, 255], size=(17, 23))
    for size in [(5, 9), (40, 61), (17, 23)]:
        out = resize_label(labels, size)
        assert out.shape == size and set(np.unique(out)) <= set(np.unique(labels))
    np.testing.assert_array_equal(resize_label(labels, (34, 46))[::2, ::2], labels)


def test_resize_gives_fixed_size():
    image, labels = Resize((8, 12))(*pair())
    assert image.size == (12, 8) and labels.shape == (8, 12)


def test_random_scale_crop_pads_label_with_ignore():
    image, labels = pair(10, 10)
    torch.manual_seed(0)
    out_image, out_labels = RandomScaleCrop(32, scale_range=(1.0, 1.0))(image, labels)
    assert out_image.size == (32, 32) and out_labels.shape == (32, 32)
    assert (out_labels == 255).sum() == 32 * 32 - 100
    np.testing.assert_array_equal(out_labels[:10, :10], labels)


def test_scale_crop_keeps_image_and_label_aligned():
    image, labels = pair(40, 60)
    for seed in range(5):
        torch.manual_seed(seed)
        out_image, out_labels = RandomScaleCrop((16, 24), scale_range=(0.8, 1.6))(image, labels)
        red = np.asarray(out_image)[..., 0].astype(int)
        valid = out_labels != 255
        # The label's column index and the image's encoded column agree to within a pixel.
        assert np.abs(red[valid] // 4 // 3 - out_labels[valid]).max() <= 1


def test_flip_moves_image_and_label_together():
    image, labels = pair()
    out_image, out_labels = RandomHorizontalFlip(p=1.0)(image, labels)
    np.testing.assert_array_equal(out_labels, labels[:, ::-1])
    assert np.asarray(out_image)[0, 0, 0] == np.asarray(image)[0, -1, 0] != 0
    assert RandomHorizontalFlip(p=0.0)(image, labels)[1] is labels


def test_jitter_changes_the_image_only():
    image, labels = pair()
    torch.manual_seed(1)
    out_image, out_labels = ColorJitter(0.5, 0.5, 0.5, 0.1)(image, labels)
    assert out_labels is labels
    assert not np.array_equal(np.asarray(out_image), np.asarray(image))


def test_to_tensor_normalize():
    image, labels = pair()
    tensor, target = ToTensorNormalize(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))(image, labels)
    assert tensor.shape == (3, 20, 30) and tensor.dtype == torch.float32
    assert target.dtype == torch.int64 and target.shape == (20, 30)
    assert tensor[2, 0, 0].item() == pytest.approx(50 / 255 * 2 - 1, abs=1e-6)


def test_train_transforms_are_reproducible_under_a_seed():
    image, labels = pair(50, 70)
    transform = train_transforms(crop_size=(24, 32), jitter=0.3)
    torch.manual_seed(123)
    first = transform(image, labels)
    torch.manual_seed(123)
    second = transform(image, labels)
    third = transform(image, labels)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], third[0])  # a control: the draws do change
    assert first[0].shape == (3, 24, 32) and first[1].shape == (24, 32)


def test_eval_transforms_default_keeps_size():
    image, labels = pair()
    tensor, target = eval_transforms()(image, labels)
    assert tensor.shape == (3, 20, 30) and torch.equal(target, torch.from_numpy(labels))
    assert eval_transforms(size=16)(image, labels)[0].shape == (3, 16, 16)


def test_bad_sizes_are_value_errors():
    with pytest.raises(ValueError, match="size"):
        Resize((0, 4))
    with pytest.raises(ValueError, match="scale_range"):
        RandomScaleCrop(8, scale_range=(2.0, 1.0))


def grid_pair(size=6):
    """A square image whose pixels are all different, and a label equal to the pixel's id."""
    ids = np.arange(size * size).reshape(size, size)
    rgb = np.stack([ids, ids * 3 % 256, np.zeros_like(ids)], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb), ids.astype(np.int64)


def test_dihedral_moves_image_and_label_together_and_reaches_all_eight():
    image, labels = grid_pair()
    seen = set()
    for seed in range(64):
        torch.manual_seed(seed)
        out_image, out_labels = RandomDihedral()(image, labels)
        np.testing.assert_array_equal(np.asarray(out_image)[..., 0], out_labels)
        assert out_labels.flags["C_CONTIGUOUS"]
        torch.manual_seed(seed)
        flipped_image, flipped = RandomDihedral()(*RandomHorizontalFlip(p=1.0)(image, labels))
        seen.add(out_labels.tobytes())
        seen.add(flipped.tobytes())
    assert len(seen) == 8  # 4 from the vertical flip x transpose, 4 more with the h-flip


def test_long_side_keeps_the_aspect_ratio():
    assert long_side_size(144, 256, 128) == (72, 128)
    assert long_side_size(455, 256, 128) == (128, 72)
    assert long_side_size(3, 1000, 10) == (1, 10)
    image, labels = ResizeLongSide(15)(*pair(20, 30))
    assert image.size == (15, 10) and labels.shape == (10, 15)


def test_scale_crop_with_long_side_scales_relative_to_it():
    image, labels = pair(40, 60)
    torch.manual_seed(0)
    crop = RandomScaleCrop(64, scale_range=(1.0, 1.0), long_side=30)
    out_image, out_labels = crop(image, labels)
    assert ((out_labels != 255).sum(0) > 0).sum() == 30  # 60 wide -> 30 valid columns
    assert ((out_labels != 255).sum(1) > 0).sum() == 20
    control = RandomScaleCrop(64, scale_range=(1.0, 1.0))(image, labels)[1]
    assert ((control != 255).sum(0) > 0).sum() == 60


def test_pipelines_take_long_side_and_dihedral():
    image, labels = pair(40, 60)
    assert eval_transforms(long_side=30)(image, labels)[1].shape == (20, 30)
    assert eval_transforms(size=8, long_side=30)(image, labels)[1].shape == (8, 8)  # size wins
    steps = repr(train_transforms(crop_size=16, dihedral=True, long_side=30))
    assert "RandomDihedral" in steps and "long_side=30" in steps
    assert "RandomDihedral" not in repr(train_transforms(crop_size=16))
