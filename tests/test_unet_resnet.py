"""U-Net on a ResNet encoder: parity with segmentation_models.pytorch's Unet, and it learns."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import PerPixel
from torch import nn

from segworks.models import MODELS
from segworks.models.unet_resnet import unet_resnet, unet_resnet34

smp = pytest.importorskip("segmentation_models_pytorch")


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("classes", [1, 7])
def test_parameter_count_equals_smp_unet_resnet34(classes):
    reference = smp.Unet("resnet34", encoder_weights=None, classes=classes)
    assert count(unet_resnet34(num_classes=classes)) == count(reference)


def test_smp_state_dict_loads_and_gives_identical_outputs():
    torch.manual_seed(0)
    channels = (64, 32, 16, 16, 8)
    reference = smp.Unet(
        "resnet18", encoder_weights=None, classes=3, decoder_channels=channels
    ).eval()
    ours = unet_resnet(num_classes=3, encoder="resnet18", decoder_channels=channels).eval()
    ours.load_state_dict(reference.state_dict())  # strict: same keys and shapes
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(ours(x)["out"], reference(x), rtol=0, atol=0)


def test_any_input_size_gives_logits_at_input_resolution():
    model = unet_resnet(num_classes=2, encoder="resnet18", decoder_channels=(16, 8, 8, 8, 8))
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 37, 53))["out"].shape == (1, 2, 37, 53)


def test_registered_and_bad_arguments_are_named():
    assert MODELS["unet_resnet34"] is unet_resnet34
    assert MODELS["unet_resnet"] is unet_resnet
    with pytest.raises(ValueError, match="encoder 'resnet35'"):
        unet_resnet(num_classes=2, encoder="resnet35")
    with pytest.raises(ValueError, match="5 widths"):
        unet_resnet(num_classes=2, decoder_channels=(16, 8))
    with pytest.raises(ValueError, match="num_classes"):
        unet_resnet(num_classes=0)


# --------------------------------------------------------------------------- learning
STEPS = 120


def squares(batch: int, generator: torch.Generator, size: int = 32) -> tuple:
    """A small (4 px, class 1) and a big (10 px, class 2) square of the same colour on noise.

    A pixel's value says only "square or not"; which class it is needs the square's extent.
    """
    images = 0.1 * torch.randn(batch, 3, size, size, generator=generator)
    labels = torch.zeros(batch, size, size, dtype=torch.long)
    half = size // 2
    for i in range(batch):
        big_left = bool(torch.rand((), generator=generator) < 0.5)
        for side, cls, left in ((10, 2, big_left), (4, 1, not big_left)):
            x0 = int(torch.randint(0, half - side, (), generator=generator)) + (0 if left else half)
            y0 = int(torch.randint(0, size - side, (), generator=generator))
            images[i, :, y0 : y0 + side, x0 : x0 + side] += 1.0
            labels[i, y0 : y0 + side, x0 : x0 + side] = cls
    return images, labels


def balanced_object_accuracy(model: nn.Module, generator: torch.Generator) -> float:
    images, labels = squares(16, generator)
    with torch.no_grad():
        pred = model.eval()(images)["out"].argmax(1)
    recalls = [(pred[labels == c] == c).float().mean().item() for c in (1, 2)]
    return sum(recalls) / 2


def train(model: nn.Module, steps: int) -> float:
    generator = torch.Generator().manual_seed(0)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    weights = torch.tensor([0.2, 1.0, 1.0])
    model.train()
    for _ in range(steps):
        images, labels = squares(8, generator)
        loss = F.cross_entropy(model(images)["out"], labels, weight=weights)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return balanced_object_accuracy(model, torch.Generator().manual_seed(99))


@pytest.fixture
def one_thread():
    """One intra-op thread: on a busy shared machine two threads spin-wait on each other and a
    step takes several times longer (measured: 4-5 s vs 0.9 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_learns_square_size_that_a_per_pixel_model_cannot(one_thread):
    torch.manual_seed(0)
    model = unet_resnet(num_classes=3, encoder="resnet18", decoder_channels=(32, 16, 16, 8, 8))
    assert train(model, STEPS) > 0.85
    torch.manual_seed(0)
    assert train(PerPixel(), STEPS) < 0.7


# --------------------------------------------------------------------------- class presence
def presence_pair() -> tuple[nn.Module, nn.Module]:
    """smp's Unet with its classification head (`aux_params`, dropout off) and ours, same weights."""
    torch.manual_seed(0)
    channels = (64, 32, 16, 16, 8)
    aux = {"classes": 3, "dropout": None}
    reference = smp.Unet("resnet18", encoder_weights=None, classes=3, decoder_channels=channels,
                         aux_params=aux).eval()  # fmt: skip
    ours = unet_resnet(num_classes=3, encoder="resnet18", decoder_channels=channels,
                       presence_head=True).eval()  # fmt: skip
    state = {key.replace("classification_head.3", "presence_head"): value
             for key, value in reference.state_dict().items()}  # fmt: skip
    ours.load_state_dict(state)  # strict: the head is smp's linear layer, nothing else
    return reference, ours


def test_presence_head_equals_smp_classification_head():
    reference, ours = presence_pair()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        mask, label = reference(x)
        outputs = ours(x)
    torch.testing.assert_close(outputs["out"], mask, rtol=0, atol=0)
    torch.testing.assert_close(outputs["presence"], label, rtol=1e-6, atol=1e-6)


def test_presence_gate_is_the_renormalised_product_and_only_at_inference():
    _, ours = presence_pair()
    x = torch.randn(2, 3, 64, 96)
    ours.presence_gate = True
    with torch.no_grad():
        gated = ours.eval()(x)
        ours.presence_gate = False
        plain = ours(x)
        ours.presence_gate = True
        training = ours.train()(x)
    product = plain["out"].softmax(1) * plain["presence"].sigmoid()[:, :, None, None]
    expected = product / product.sum(1, keepdim=True)
    torch.testing.assert_close(gated["out"].softmax(1), expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(gated["out"].softmax(1), plain["out"].softmax(1))
    assert training["out"].shape == plain["out"].shape  # train mode: the loss sees raw logits
    with torch.no_grad():
        ours.presence_gate = False
        ungated_training = ours(x)
    torch.testing.assert_close(training["out"], ungated_training["out"])


def test_presence_gate_hands_an_absent_class_pixels_to_the_next_class():
    from segworks.models.unet_resnet import gate_by_presence

    logits = torch.tensor([0.0, 2.0, 1.0])[None, :, None, None].expand(1, 3, 2, 2)
    presence = torch.tensor([[8.0, -8.0, 8.0]])  # class 1 absent from the image
    assert (logits.argmax(1) == 1).all()
    assert (gate_by_presence(logits, presence).argmax(1) == 2).all()


def test_presence_options_refused_where_they_cannot_work():
    with pytest.raises(ValueError, match="presence_gate=True needs presence_head=True"):
        unet_resnet(num_classes=3, encoder="resnet18", presence_gate=True)


def test_binary_model_presence_gate_is_the_two_class_rule_with_background_always_present():
    from segworks.losses import presence_loss
    from segworks.models.unet_resnet import gate_by_presence

    torch.manual_seed(0)
    model = unet_resnet(num_classes=1, encoder="resnet18", decoder_channels=(8, 8, 8, 8, 8),
                        presence_head=True, presence_gate=True).eval()  # fmt: skip
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, 32, 32))
    assert outputs["out"].shape == (2, 1, 32, 32) and outputs["presence"].shape == (2, 1)
    logits, presence = torch.randn(2, 1, 4, 5), torch.randn(2, 1)
    p, s = logits.sigmoid(), presence.sigmoid()[:, :, None, None]
    expected = p * s / (p * s + (1 - p))  # p(fg) * s, p(bg) * 1, renormalised
    torch.testing.assert_close(gate_by_presence(logits, presence).sigmoid(), expected)
    target = torch.zeros(2, 4, 5, dtype=torch.long)
    target[0, 1, 1] = 1  # foreground in image 0 only
    truth = torch.tensor([[1.0], [0.0]])
    expected_loss = F.binary_cross_entropy_with_logits(presence, truth)
    torch.testing.assert_close(presence_loss(presence, target), expected_loss)


def colour_squares(batch: int, generator: torch.Generator, size: int = 32) -> tuple:
    """One square per image, red (class 1) or blue (class 2), on noise: presence is global."""
    images = 0.1 * torch.randn(batch, 3, size, size, generator=generator)
    labels = torch.zeros(batch, size, size, dtype=torch.long)
    for i in range(batch):
        cls = 1 + int(torch.rand((), generator=generator) < 0.5)
        x0, y0 = (int(v) for v in torch.randint(0, size - 8, (2,), generator=generator))
        images[i, cls - 1, y0 : y0 + 8, x0 : x0 + 8] += 1.0
        labels[i, y0 : y0 + 8, x0 : x0 + 8] = cls
    return images, labels


def presence_accuracy(presence_weight: float) -> float:
    """Train through `segworks.losses.criterion`; accuracy of the head's 'which square' call."""
    from segworks.losses import criterion

    torch.manual_seed(0)
    model = unet_resnet(num_classes=3, encoder="resnet18", decoder_channels=(16, 8, 8, 8, 8),
                        presence_head=True)  # fmt: skip
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(80):
        images, labels = colour_squares(8, generator)
        loss = criterion(model(images), labels, presence_weight=presence_weight)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    images, labels = colour_squares(64, torch.Generator().manual_seed(99))
    with torch.no_grad():
        presence = model.eval()(images)["presence"]
    truth = labels.flatten(1).max(1).values  # the square's class
    return (presence[:, 1:].argmax(1) + 1 == truth).float().mean().item()


@pytest.mark.slow
def test_presence_head_learns_which_class_is_in_the_image_only_from_its_loss(one_thread):
    assert presence_accuracy(1.0) > 0.9
    assert presence_accuracy(0.0) < 0.75  # control: no presence loss, the head stays untrained


def test_training_loss_uses_the_configured_presence_weight():
    from types import SimpleNamespace

    from segworks.config import TrainConfig
    from segworks.engine.semantic import SemanticTask
    from segworks.losses import presence_loss

    torch.manual_seed(0)
    model = unet_resnet(num_classes=3, encoder="resnet18", decoder_channels=(8, 8, 8, 8, 8),
                        presence_head=True).eval()  # fmt: skip
    images, labels = colour_squares(2, torch.Generator().manual_seed(0))
    data = SimpleNamespace(class_weights=None)
    task = SemanticTask()
    with torch.no_grad():
        without = task.loss(model, images, labels, TrainConfig(data="x", presence_weight=0.0), data)
        weighted = task.loss(
            model, images, labels, TrainConfig(data="x", presence_weight=0.5), data
        )
        presence = presence_loss(model(images)["presence"], labels)
    torch.testing.assert_close(weighted, without + 0.5 * presence)
    with pytest.raises(ValueError, match="presence_weight must be >= 0"):
        TrainConfig(data="x", presence_weight=-1.0)
