"""Losses: parity with torch, ignore-index exclusion, class weights, median frequency."""

import pytest
import torch
import torch.nn.functional as F

from segworks.losses import (
    binary_cross_entropy,
    class_pixel_counts,
    class_presence,
    criterion,
    cross_entropy,
    dice_loss,
    lovasz_softmax,
    median_frequency_weights,
    presence_loss,
    segmentation_loss,
)


def make_batch(seed: int, k: int = 4, shape=(2, 9, 11), ignore_fraction: float = 0.3):
    generator = torch.Generator().manual_seed(seed)
    n, h, w = shape
    logits = torch.randn(n, k, h, w, generator=generator)
    labels = max(k, 2)
    target = torch.randint(0, labels, shape, generator=generator)
    ignored = torch.rand(shape, generator=generator) < ignore_fraction
    target[ignored] = 255
    return logits, target, ignored


def loss_and_grad(fn, logits, target):
    logits = logits.clone().requires_grad_(True)
    loss = fn(logits, target)
    loss.backward()
    return loss.detach(), logits.grad


LOSS_FUNCTIONS = {
    "ce": (4, lambda x, t: cross_entropy(x, t)),
    "ce_weighted": (4, lambda x, t: cross_entropy(x, t, class_weights=torch.tensor([1, 2, 3, 4]))),
    "bce": (1, lambda x, t: binary_cross_entropy(x, t, pos_weight=2.0)),
    "dice": (4, lambda x, t: dice_loss(x, t)),
    "dice_binary": (1, lambda x, t: dice_loss(x, t)),
    "ce+dice": (4, lambda x, t: segmentation_loss(x, t, loss="ce+dice")),
    "lovasz": (4, lambda x, t: lovasz_softmax(x, t)),
    "lovasz_binary": (1, lambda x, t: lovasz_softmax(x, t)),
    "ce+lovasz": (4, lambda x, t: segmentation_loss(x, t, loss="ce+lovasz")),
}


@pytest.mark.parametrize("name", sorted(LOSS_FUNCTIONS))
def test_ignored_pixels_change_neither_loss_nor_gradient(name):
    k, fn = LOSS_FUNCTIONS[name]
    logits, target, ignored = make_batch(0, k=k)
    loss, grad = loss_and_grad(fn, logits, target)
    changed = logits.clone()
    changed.permute(0, 2, 3, 1)[ignored] = 50 * torch.randn(int(ignored.sum()), k)
    loss2, grad2 = loss_and_grad(fn, changed, target)
    assert torch.allclose(loss, loss2, atol=1e-6)
    assert torch.allclose(grad, grad2, atol=1e-7)
    assert grad.permute(0, 2, 3, 1)[ignored].abs().max() == 0
    # Control: changing a counted pixel does change the loss.
    changed.permute(0, 2, 3, 1)[~ignored] += 3 * torch.randn(int((~ignored).sum()), k)
    assert not torch.allclose(loss, loss_and_grad(fn, changed, target)[0], atol=1e-4)


def test_cross_entropy_equals_torch():
    logits, target, _ = make_batch(1)
    weights = torch.tensor([0.5, 1.0, 2.0, 0.0])
    assert torch.allclose(
        cross_entropy(logits, target), F.cross_entropy(logits, target, ignore_index=255)
    )
    assert torch.allclose(
        cross_entropy(logits, target, class_weights=weights),
        F.cross_entropy(logits, target, weight=weights, ignore_index=255),
    )


def test_binary_cross_entropy_equals_torch_on_the_counted_subset():
    logits, target, ignored = make_batch(2, k=1)
    counted_logits = logits[:, 0][~ignored]
    counted_target = target[~ignored].float()
    for pos_weight in (None, 3.0):
        reference = F.binary_cross_entropy_with_logits(
            counted_logits,
            counted_target,
            pos_weight=None if pos_weight is None else torch.tensor(pos_weight),
        )
        ours = binary_cross_entropy(logits, target, pos_weight=pos_weight)
        assert torch.allclose(ours, reference, atol=1e-6)


def test_one_channel_logits_use_bce_and_binary_class_weights_become_pos_weight():
    logits, target, _ = make_batch(3, k=1)
    assert torch.allclose(segmentation_loss(logits, target), binary_cross_entropy(logits, target))
    weighted = segmentation_loss(logits, target, class_weights=torch.tensor([2.0, 6.0]))
    assert torch.allclose(weighted, binary_cross_entropy(logits, target, pos_weight=3.0))


def test_dice_is_near_zero_for_a_perfect_prediction_and_high_for_a_wrong_one():
    _, target, _ = make_batch(4)
    onehot = F.one_hot(target.clamp(max=3), 4).permute(0, 3, 1, 2).float()
    assert dice_loss(40 * onehot, target) < 1e-3
    assert dice_loss(-40 * onehot, target) > 0.9
    binary_target = (target == 1).long()
    binary_logits = 40 * (2 * binary_target.unsqueeze(1).float() - 1)
    assert dice_loss(binary_logits, binary_target) < 1e-3
    assert dice_loss(-binary_logits, binary_target) > 0.99


def test_dice_equals_direct_formula():
    logits, target, ignored = make_batch(5)
    prob = logits.softmax(1).permute(0, 2, 3, 1)[~ignored]  # (P, K)
    truth = F.one_hot(target[~ignored], 4).float()
    dice = (2 * (prob * truth).sum(0) + 1) / (prob.sum(0) + truth.sum(0) + 1)
    assert torch.allclose(dice_loss(logits, target), 1 - dice.mean(), atol=1e-6)


def test_lovasz_on_a_hard_prediction_is_one_minus_the_mean_iou_of_the_present_classes():
    _, target, _ = make_batch(3, k=3)
    generator = torch.Generator().manual_seed(4)
    counted = target != 255

    def hard_loss_and_iou(pred):
        logits = 80.0 * F.one_hot(pred, 3).permute(0, 3, 1, 2).double()  # softmax = one-hot
        p, t = pred[counted], target[counted]
        ious = [((p == c) & (t == c)).sum() / ((p == c) | (t == c)).sum() for c in t.unique()]
        return lovasz_softmax(logits, target).item(), 1 - torch.stack(ious).mean().item()

    noisy = torch.where(torch.rand(target.shape, generator=generator) < 0.5, 0, target.clamp(max=2))
    closer = torch.where(
        torch.rand(target.shape, generator=generator) < 0.1, 0, target.clamp(max=2)
    )
    loss, expected = hard_loss_and_iou(noisy)
    assert loss == pytest.approx(expected, abs=1e-6)  # IoUs counted in float32
    better, expected_better = hard_loss_and_iou(closer)
    assert better == pytest.approx(expected_better, abs=1e-6)
    assert better < loss - 0.1  # control: the closer prediction has the smaller loss


def test_lovasz_equals_smp_lovasz_loss_and_its_gradient():
    smp_losses = pytest.importorskip("segmentation_models_pytorch.losses")
    logits, target, _ = make_batch(5, k=4)
    reference = smp_losses.LovaszLoss("multiclass", per_image=False, ignore_index=255)
    loss, grad = loss_and_grad(lovasz_softmax, logits, target)
    expected, expected_grad = loss_and_grad(reference, logits, target)
    assert torch.allclose(loss, expected, atol=1e-6)
    assert torch.allclose(grad, expected_grad, atol=1e-7)


def test_one_channel_lovasz_is_the_two_class_loss_of_background_zero_and_the_logit():
    logits, target, _ = make_batch(6, k=1)
    two_class = torch.cat([torch.zeros_like(logits), logits], dim=1)  # softmax = (1 - p, p)
    assert torch.allclose(lovasz_softmax(logits, target), lovasz_softmax(two_class, target))


def test_class_weights_shift_the_loss_towards_the_weighted_class():
    logits, target, _ = make_batch(6)
    only_class_2 = cross_entropy(logits, target, class_weights=torch.tensor([0.0, 0.0, 1.0, 0.0]))
    mask = target == 2
    per_pixel = F.cross_entropy(logits, target, ignore_index=255, reduction="none")
    assert torch.allclose(only_class_2, per_pixel[mask].mean())
    assert not torch.allclose(only_class_2, cross_entropy(logits, target))
    with pytest.raises(ValueError, match="one entry per class"):
        cross_entropy(logits, target, class_weights=torch.ones(3))


def test_all_ignore_target_gives_zero_loss_and_zero_gradient():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    target = torch.full((1, 4, 4), 255)
    for loss_name in ("ce", "dice", "ce+dice", "lovasz", "ce+lovasz"):
        loss = segmentation_loss(logits, target, loss=loss_name)
        assert torch.isfinite(loss)
        if loss_name == "ce":
            assert loss == 0
        loss.backward()
        assert torch.isfinite(logits.grad).all() and logits.grad.abs().max() == 0
        logits.grad = None


def test_criterion_adds_weighted_aux_loss():
    logits, target, _ = make_batch(7)
    aux = torch.randn_like(logits)
    main = segmentation_loss(logits, target)
    both = criterion({"out": logits, "aux": aux}, target, aux_weight=0.4)
    assert torch.allclose(both, main + 0.4 * segmentation_loss(aux, target))
    assert torch.allclose(criterion({"out": logits}, target), main)
    with pytest.raises(ValueError, match="'out'"):
        criterion({"logits": logits}, target)


def test_class_presence_counts_only_labelled_pixels():
    target = torch.full((3, 4, 5), 255)
    target[0, 0, 0], target[0, 1, 1] = 0, 2
    target[1, 2, 3] = 1
    expected = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(class_presence(target, 3), expected)


def test_presence_loss_is_bce_on_the_classes_present_and_criterion_weights_it():
    logits, target, _ = make_batch(9)
    presence = torch.randn(target.shape[0], logits.shape[1])
    truth = torch.stack([torch.bincount(t[t != 255], minlength=4) > 0 for t in target]).float()
    expected = F.binary_cross_entropy_with_logits(presence, truth)
    torch.testing.assert_close(presence_loss(presence, target), expected)
    outputs = {"out": logits, "presence": presence}
    main = segmentation_loss(logits, target)
    torch.testing.assert_close(
        criterion(outputs, target, presence_weight=0.5), main + 0.5 * expected
    )
    torch.testing.assert_close(criterion(outputs, target, presence_weight=0.0), main)


def test_bad_targets_and_loss_names_raise_value_error():
    logits, target, _ = make_batch(8)
    bad = target.clone()
    bad[0, 0, 0] = 9
    with pytest.raises(ValueError, match=r"\[9\]"):
        cross_entropy(logits, bad)
    with pytest.raises(ValueError, match="does not match"):
        cross_entropy(logits, target[:, :5])
    with pytest.raises(ValueError, match="loss must be one of"):
        segmentation_loss(logits, target, loss="focal")
    binary_logits = logits[:, :1]
    with pytest.raises(ValueError, match=r"\[2\]|\[2, 3\]"):
        binary_cross_entropy(binary_logits, target.clamp(max=3).where(target != 255, 255))


def test_median_frequency_on_a_hand_worked_example():
    # Three 100-pixel images: A has classes 0 (90 px) and 1 (10 px); B has 0 (50) and 2 (50);
    # C has 0 (100). Class 3 never occurs.
    # freq_0 = 240 / 300 = 0.8; freq_1 = 10 / 100 = 0.1; freq_2 = 50 / 100 = 0.5
    # median(0.8, 0.1, 0.5) = 0.5 -> w = [0.625, 5.0, 1.0, 0.0]
    a = torch.tensor([0] * 90 + [1] * 10)
    b = torch.tensor([0] * 50 + [2] * 50)
    c = torch.tensor([0] * 100)
    pixels, images = class_pixel_counts([a, b, c], 4)
    assert pixels.tolist() == [240, 10, 50, 0]
    assert images.tolist() == [300, 100, 100, 0]
    weights = median_frequency_weights(pixels, images)
    assert torch.allclose(weights, torch.tensor([0.625, 5.0, 1.0, 0.0]))


def test_median_frequency_even_count_uses_mean_of_middle_values_and_skips_ignore():
    a = torch.tensor([0] * 30 + [1] * 10 + [255] * 60)  # 40 counted pixels
    b = torch.tensor([2] * 20 + [3] * 20)
    pixels, images = class_pixel_counts([a, b], 4)
    assert images.tolist() == [40, 40, 40, 40]
    # freq = [0.75, 0.25, 0.5, 0.5]; median = 0.5
    weights = median_frequency_weights(pixels, images)
    assert torch.allclose(weights, torch.tensor([2 / 3, 2.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="no class"):
        median_frequency_weights([0, 0], [0, 0])
