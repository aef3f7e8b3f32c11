"""Sliding-window inference, TTA and the Predictor (segworks.inference)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from segworks.inference import (
    InferenceOptions,
    Predictor,
    gaussian_weights,
    iter_blocks,
    iter_strips,
    predict_logits,
    resolve_stride,
    window_starts,
)
from segworks.inference.sliding_window import _shift_left
from segworks.inference.tta import model_forward, tta_logits

RF_RADIUS = 3  # three 3x3 convolutions


class ConvNet(nn.Module):
    """Fully convolutional, zero padding, receptive-field radius 3; returns {"out": logits}."""

    def __init__(self, out_channels: int = 3, width: int = 8):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, out_channels, 3, padding=1),
        )

    def forward(self, x):
        return {"out": self.body(x)}


def make_model(out_channels: int = 3, seed: int = 0) -> ConvNet:
    torch.manual_seed(seed)
    return ConvNet(out_channels).eval()


def random_image(height: int, width: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, 3, height, width, generator=generator)


# --------------------------------------------------------------------------- building blocks
def test_gaussian_weights_peak_in_centre_symmetric_and_positive():
    weights = gaussian_weights((32, 48))
    assert weights.shape == (32, 48)
    assert weights.max() == pytest.approx(1.0)
    assert weights.min() > 0
    assert weights[16, 24] > weights[2, 24] > weights[0, 24]
    torch.testing.assert_close(weights, weights.flip(0))
    torch.testing.assert_close(weights, weights.flip(1))
    # sigma is 1/8 of the side; the two central pixels (offset 0.5) hold the maximum
    row = gaussian_weights((1, 64))[0]
    expected = np.exp(-0.5 * (16.5 / 8) ** 2) / np.exp(-0.5 * (0.5 / 8) ** 2)
    assert row[48].item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    ("length", "tile", "stride", "expected"),
    [
        (100, 40, 20, [0, 20, 40, 60]),
        (100, 40, 30, [0, 30, 60]),
        (30, 40, 20, [0]),
        (40, 40, 5, [0]),
    ],
)
def test_window_starts_cover_and_end_at_the_edge(length, tile, stride, expected):
    starts = window_starts(length, tile, stride)
    assert starts == expected
    covered = np.zeros(length, bool)
    for start in starts:
        covered[start : start + tile] = True
    assert covered.all()


def test_resolve_stride_from_overlap_and_bad_values():
    assert resolve_stride((64, 32), overlap=0.5) == (32, 16)
    assert resolve_stride((64, 32), overlap=0.0) == (64, 32)
    assert resolve_stride((64, 32), stride=8) == (8, 8)
    with pytest.raises(ValueError, match="overlap"):
        resolve_stride((64, 64), overlap=1.0)
    with pytest.raises(ValueError, match="stride"):
        resolve_stride((64, 64), stride=(65, 10))


# --------------------------------------------------------------------------- tiled == whole
@pytest.mark.parametrize("gaussian", [False, True])
def test_tiled_equals_whole_when_margin_covers_receptive_field(gaussian):
    model, image = make_model(), random_image(70, 97)
    whole = predict_logits(model, image)
    tiled = predict_logits(
        model,
        image,
        mode="slide",
        tile=(32, 40),
        stride=(20, 26),
        margin=RF_RADIUS,
        gaussian=gaussian,
        batch_size=3,
    )
    assert tiled.shape == whole.shape == (1, 3, 70, 97)
    torch.testing.assert_close(tiled, whole, rtol=1e-4, atol=1e-5)
    assert torch.equal(tiled.argmax(1), whole.argmax(1))


def test_tiled_without_margin_differs_at_seams_control():
    """Control: without a margin, uniform blending mixes in border-affected tile logits."""
    model, image = make_model(), random_image(70, 97)
    whole = predict_logits(model, image)
    tiled = predict_logits(
        model, image, mode="slide", tile=(32, 40), stride=(20, 26), gaussian=False
    )
    assert not torch.allclose(tiled, whole, rtol=1e-4, atol=1e-5)


def test_gaussian_blending_without_margin_keeps_argmax_nearly_everywhere():
    model, image = make_model(), random_image(96, 96)
    whole = predict_logits(model, image).argmax(1)
    uniform = predict_logits(model, image, mode="slide", tile=(32, 32), gaussian=False)
    gauss = predict_logits(model, image, mode="slide", tile=(32, 32), gaussian=True)
    agree_gauss = (gauss.argmax(1) == whole).float().mean().item()
    agree_uniform = (uniform.argmax(1) == whole).float().mean().item()
    assert agree_gauss > 0.99
    assert agree_gauss >= agree_uniform  # down-weighting tile borders reduces seam errors


def test_tile_batch_size_does_not_change_the_result():
    model, image = make_model(), random_image(50, 61)
    kwargs = {"mode": "slide", "tile": (24, 24), "overlap": 0.5}
    one = predict_logits(model, image, batch_size=1, **kwargs)
    many = predict_logits(model, image, batch_size=7, **kwargs)
    torch.testing.assert_close(one, many, rtol=1e-5, atol=1e-6)


def test_tile_larger_than_image_is_whole_image_inference():
    model, image = make_model(), random_image(20, 30)
    tiled = predict_logits(model, image, mode="slide", tile=(64, 64))
    torch.testing.assert_close(tiled, predict_logits(model, image), rtol=1e-5, atol=1e-6)


def test_strips_are_consecutive_and_cover_every_row():
    model, image = make_model(), random_image(75, 40)
    bands = [
        (y0, y1, logits.shape)
        for y0, y1, logits in iter_strips(
            model_forward(model), image, tile=(32, 32), stride=(16, 16)
        )
    ]
    assert bands[0][0] == 0 and bands[-1][1] == 75
    for (_, end, _), (start, _, _) in zip(bands, bands[1:]):
        assert end == start
    assert all(shape == (3, y1 - y0, 40) for y0, y1, shape in bands)


@pytest.mark.parametrize("size", [(75, 40), (40, 75)])
def test_blocks_tile_the_image_once_and_equal_slide_logits(size):
    model, image = make_model(), random_image(*size)
    kwargs = {"tile": (24, 16), "stride": (10, 12), "batch_size": 2}
    full = predict_logits(model, image, mode="slide", **kwargs)[0]
    seen = torch.zeros(size, dtype=torch.int64)
    for y0, y1, x0, x1, logits in iter_blocks(model_forward(model), image, **kwargs):
        assert logits.shape == (3, y1 - y0, x1 - x0)
        assert y1 - y0 <= 24 and x1 - x0 <= 16  # a block never exceeds one tile
        seen[y0:y1, x0:x1] += 1
        torch.testing.assert_close(logits, full[:, y0:y1, x0:x1], rtol=1e-5, atol=1e-6)
    assert (seen == 1).all()


@pytest.mark.parametrize("size", [(40, 300), (300, 40)])
def test_blocks_stream_out_along_the_short_side_first(size):
    """The first block is final after the first tile batch, and blocks run across the short
    side of the image before moving along the long one: what waits for the next row of tiles
    spans the short side, whichever it is, not the long one."""
    model, image = make_model(), random_image(*size)
    calls = []
    forward = model_forward(model)

    def counting(tiles):
        calls.append(len(tiles))
        return forward(tiles)

    blocks = iter_blocks(counting, image, tile=(16, 16), stride=(12, 12), batch_size=2)
    first = next(blocks)
    assert calls == [2]
    starts = [first[:4:2]] + [block[:4:2] for block in blocks]  # (y0, x0) of each block
    assert len(starts) == sum(calls) == 3 * 25  # 3 tiles across, 25 along
    long_axis = 0 if size[0] > size[1] else 1
    assert [start[long_axis] for start in starts[:3]] == [0, 0, 0]
    assert sorted(start[1 - long_axis] for start in starts[:3]) == [0, 12, 24]


def test_blocks_run_without_autograd():
    model, image = make_model(), random_image(30, 30)
    for *_, logits in iter_blocks(model_forward(model), image, tile=(16, 16), stride=(8, 8)):
        assert not logits.requires_grad


@pytest.mark.parametrize("shift", [0, 1, 3, 4, 7, 10, 12])
def test_shift_left_moves_columns_and_zeroes_the_rest(shift):
    buffer = torch.arange(2 * 3 * 10, dtype=torch.float32).view(2, 3, 10)
    expected = torch.zeros_like(buffer)
    if shift < 10:
        expected[..., : 10 - shift] = buffer[..., shift:]
    _shift_left(buffer, shift)
    assert torch.equal(buffer, expected if shift else torch.arange(60.0).view(2, 3, 10))


def test_margin_larger_than_overlap_allows_is_an_error():
    model, image = make_model(), random_image(64, 64)
    with pytest.raises(ValueError, match="margin of 10"):
        predict_logits(model, image, mode="slide", tile=(32, 32), stride=(16, 16), margin=10)
    with pytest.raises(ValueError, match="tile size"):
        predict_logits(model, image, mode="slide")
    with pytest.raises(ValueError, match="mode"):
        predict_logits(model, image, mode="tiles")


# --------------------------------------------------------------------------- TTA
def symmetric_image(height: int, width: int) -> torch.Tensor:
    image = random_image(height, width)
    return (image + image.flip(-1)) / 2


def test_flip_tta_is_mirror_equivariant_for_any_model():
    model, image = make_model(), random_image(24, 33)
    forward = model_forward(model)
    direct = tta_logits(forward, image.flip(-1), flip=True)
    mirrored = tta_logits(forward, image, flip=True).flip(-1)
    torch.testing.assert_close(direct, mirrored, rtol=1e-5, atol=1e-6)


def test_flip_tta_on_a_symmetric_input():
    """On a mirror-symmetric image the flip-TTA output is mirror symmetric; the plain output of
    a model with asymmetric kernels is not (control). For a mirror-equivariant model (kernels
    symmetric left-right) the TTA output equals the plain one."""
    image = symmetric_image(24, 32)
    model = make_model()
    plain = predict_logits(model, image)
    tta = predict_logits(model, image, tta_flip=True)
    torch.testing.assert_close(tta, tta.flip(-1), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(plain, plain.flip(-1), atol=1e-4)

    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, nn.Conv2d):
                layer.weight.copy_((layer.weight + layer.weight.flip(-1)) / 2)
    plain = predict_logits(model, image)
    tta = predict_logits(model, image, tta_flip=True)
    torch.testing.assert_close(tta, plain, rtol=1e-5, atol=1e-6)


def test_multiscale_tta_returns_input_size_and_averages_views():
    model, image = make_model(), random_image(31, 45)
    scales = (0.75, 1.0, 1.25)
    tta = predict_logits(model, image, tta_scales=scales, tta_flip=True)
    assert tta.shape == (1, 3, 31, 45)
    single = predict_logits(model, image, tta_scales=(1.0,))
    assert not torch.allclose(tta, single)
    # the slide path applies the same TTA per tile
    tiled = predict_logits(model, image, mode="slide", tile=(16, 16), tta_scales=scales)
    assert tiled.shape == (1, 3, 31, 45)
    with pytest.raises(ValueError, match="scales"):
        predict_logits(model, image, tta_scales=(0.0,))


# --------------------------------------------------------------------------- Predictor
def uint8_image(height: int, width: int, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def normalised(array: np.ndarray) -> torch.Tensor:
    tensor = torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (tensor - mean) / std


def test_predictor_streaming_slide_matches_argmax_of_full_logits():
    model, array = make_model(), uint8_image(83, 57)
    options = InferenceOptions(mode="slide", tile=(32, 32), overlap=0.5, margin=RF_RADIUS)
    prediction = Predictor(model, options=options).predict(array)
    expected = predict_logits(model, normalised(array))[0].argmax(0).numpy()
    assert prediction.labels.shape == (83, 57) and prediction.labels.dtype == np.uint8
    assert prediction.prob is None
    np.testing.assert_array_equal(prediction.labels, expected)


def test_predictor_binary_threshold_and_probabilities():
    model, array = make_model(out_channels=1), uint8_image(40, 30)
    logits = predict_logits(model, normalised(array))[0, 0]
    for mode, tile in (("whole", None), ("slide", (16, 16))):
        options = InferenceOptions(mode=mode, tile=tile, margin=RF_RADIUS, threshold=0.3)
        prediction = Predictor(model, task="binary", options=options).predict(array)
        np.testing.assert_allclose(prediction.prob, torch.sigmoid(logits).numpy(), atol=1e-5)
        np.testing.assert_array_equal(
            prediction.labels, (torch.sigmoid(logits) > 0.3).numpy().astype(np.uint8)
        )


def test_predictor_resize_returns_original_size_and_batches_mixed_sizes():
    model = make_model()
    arrays = [uint8_image(40, 30, seed=1), uint8_image(25, 50, seed=2), uint8_image(40, 30, 3)]
    predictor = Predictor(model, options=InferenceOptions(size=(32, 32)))
    predictions = predictor.predict_batch(arrays)
    assert [p.labels.shape for p in predictions] == [(40, 30), (25, 50), (40, 30)]
    plain = Predictor(model)
    batched = plain.predict_batch([arrays[0], arrays[2]])
    for array, prediction in zip([arrays[0], arrays[2]], batched):
        np.testing.assert_array_equal(prediction.labels, plain.predict(array).labels)


def test_predictor_long_side_runs_the_model_at_that_side_and_returns_original_size():
    model = make_model()
    arrays = [uint8_image(40, 30, seed=1), uint8_image(25, 50, seed=2)]
    seen = []
    model.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape[-2:]))
    for mode, tile in (("whole", None), ("slide", (16, 16))):
        seen.clear()
        options = InferenceOptions(mode=mode, tile=tile, long_side=20)
        predictions = Predictor(model, options=options).predict_batch(arrays)
        assert [p.labels.shape for p in predictions] == [(40, 30), (25, 50)]
        if mode == "whole":
            assert [tuple(s) for s in seen] == [(20, 15), (10, 20)]
    sized = Predictor(model, options=InferenceOptions(size=(32, 32), long_side=20))
    seen.clear()
    sized.predict(arrays[0])
    assert [tuple(s) for s in seen] == [(32, 32)]  # an explicit size wins


def test_predictor_rejects_bad_options_and_images():
    with pytest.raises(ValueError, match="long_side"):
        InferenceOptions(long_side=0)
    with pytest.raises(ValueError, match="tile"):
        InferenceOptions(mode="slide")
    with pytest.raises(ValueError, match="threshold"):
        InferenceOptions(threshold=1.5)
    with pytest.raises(ValueError, match="uint8"):
        Predictor(make_model()).predict(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="1 channel"):
        Predictor(make_model(3), task="binary").predict(uint8_image(8, 8))
