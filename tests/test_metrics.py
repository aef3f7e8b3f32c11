"""ConfusionMatrix and segmentation_metrics: parity with numpy counts and torchmetrics."""

import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassJaccardIndex,
)

from segworks.metrics import ConfusionMatrix, metrics_table, segmentation_metrics

K = 7


def random_batch(seed: int, shape=(3, 33, 47), k: int = K, ignore_fraction: float = 0.2):
    generator = torch.Generator().manual_seed(seed)
    target = torch.randint(0, k, shape, generator=generator)
    # Predictions agree with the target 60 % of the time, so IoUs are far from 0 and 1.
    noise = torch.randint(0, k, shape, generator=generator)
    agree = torch.rand(shape, generator=generator) < 0.6
    pred = torch.where(agree, target, noise)
    target[torch.rand(shape, generator=generator) < ignore_fraction] = 255
    return pred, target


def numpy_confusion(pred: np.ndarray, target: np.ndarray, k: int) -> np.ndarray:
    matrix = np.zeros((k, k), dtype=np.int64)
    for gt_label, pred_label in zip(target.ravel(), pred.ravel()):
        if gt_label != 255:
            matrix[gt_label, pred_label] += 1
    return matrix


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matrix_equals_bruteforce_numpy_count(seed):
    cm = ConfusionMatrix(K)
    expected = np.zeros((K, K), dtype=np.int64)
    for step in range(3):
        pred, target = random_batch(seed * 10 + step)
        cm.update(pred, target)
        expected += numpy_confusion(pred.numpy(), target.numpy(), K)
    np.testing.assert_array_equal(cm.matrix.numpy(), expected)
    assert cm.matrix.dtype == torch.long


def test_matrix_equals_torchmetrics_confusion_matrix():
    pred, target = random_batch(5, shape=(2, 4, 50, 60))  # extra leading dim
    reference = MulticlassConfusionMatrix(K, ignore_index=255)
    reference.update(pred, target)
    cm = ConfusionMatrix(K)
    cm.update(pred, target)
    assert torch.equal(cm.matrix, reference.compute())


@pytest.mark.parametrize("seed", [0, 1])
def test_miou_and_pixel_accuracy_equal_torchmetrics(seed):
    pred, target = random_batch(seed, shape=(4, 64, 80))
    cm = ConfusionMatrix(K)
    cm.update(pred, target)
    result = cm.compute()
    miou = MulticlassJaccardIndex(K, ignore_index=255, average="macro")(pred, target)
    per_class = MulticlassJaccardIndex(K, ignore_index=255, average="none")(pred, target)
    accuracy = MulticlassAccuracy(K, ignore_index=255, average="micro")(pred, target)
    mean_accuracy = MulticlassAccuracy(K, ignore_index=255, average="macro")(pred, target)
    assert result["miou"] == pytest.approx(float(miou), abs=1e-6)
    np.testing.assert_allclose(result["iou"], per_class.numpy(), atol=1e-6)
    assert result["pixel_accuracy"] == pytest.approx(float(accuracy), abs=1e-6)
    assert result["mean_accuracy"] == pytest.approx(float(mean_accuracy), abs=1e-6)
    assert 0.3 < result["miou"] < 0.9  # the comparison is not between trivial values


def test_absent_class_policy_against_torchmetrics():
    """Class 3 is in neither gt nor pred; class 4 is predicted but never in gt.

    Policy difference, stated: for class 3, torchmetrics average="none" reports 0.0
    (zero_division) while segworks reports NaN; both leave it out of the macro mean. Class 4
    (false positives only) is 0 in both and counts in both means.
    """
    pred, target = random_batch(11, shape=(2, 40, 40), k=3)
    pred[0, :5, :5] = 4
    cm = ConfusionMatrix(5)
    cm.update(pred, target)
    result = cm.compute()
    per_class = MulticlassJaccardIndex(5, ignore_index=255, average="none")(pred, target)
    miou = MulticlassJaccardIndex(5, ignore_index=255, average="macro")(pred, target)
    assert math.isnan(result["iou"][3]) and float(per_class[3]) == 0.0
    assert result["iou"][4] == 0.0 == float(per_class[4])
    np.testing.assert_allclose(result["iou"][:3], per_class[:3].numpy(), atol=1e-6)
    assert result["miou"] == pytest.approx(float(miou), abs=1e-6)
    assert result["miou"] == pytest.approx(np.mean(result["iou"][:3] + [0.0]))
    assert math.isnan(result["dice"][3]) and result["dice"][4] == 0.0
    assert math.isnan(result["accuracy"][3]) and math.isnan(result["accuracy"][4])


def test_dice_fwiou_and_accuracy_equal_direct_formulas():
    pred, target = random_batch(3, shape=(2, 50, 50))
    cm = ConfusionMatrix(K)
    cm.update(pred, target)
    result = cm.compute()
    valid = target != 255
    gt_total = valid.sum().item()
    dice, fw = [], 0.0
    for c in range(K):
        gt_c = (target == c) & valid
        pred_c = (pred == c) & valid
        inter = (gt_c & pred_c).sum().item()
        dice.append(2 * inter / (gt_c.sum().item() + pred_c.sum().item()))
        fw += gt_c.sum().item() / gt_total * inter / (gt_c | pred_c).sum().item()
    np.testing.assert_allclose(result["dice"], dice, atol=1e-12)
    assert result["mean_dice"] == pytest.approx(np.mean(dice))
    assert result["fwiou"] == pytest.approx(fw)
    assert result["num_pixels"] == gt_total
    assert result["pixel_accuracy"] == pytest.approx(
        ((pred == target) & valid).sum().item() / gt_total
    )


def test_all_ignore_target_counts_nothing():
    cm = ConfusionMatrix(4)
    cm.update(torch.zeros(2, 8, 8, dtype=torch.long), torch.full((2, 8, 8), 255))
    result = cm.compute()
    assert cm.matrix.sum() == 0 and result["num_pixels"] == 0
    for key in ("pixel_accuracy", "mean_accuracy", "miou", "fwiou", "mean_dice"):
        assert math.isnan(result[key]), key
    assert all(math.isnan(v) for v in result["iou"])


def test_single_class():
    cm = ConfusionMatrix(1)
    target = torch.zeros(1, 5, 5, dtype=torch.long)
    target[0, 0] = 255
    cm.update(torch.zeros(1, 5, 5, dtype=torch.long), target)
    result = cm.compute()
    assert cm.matrix.tolist() == [[20]]
    assert result["miou"] == result["pixel_accuracy"] == result["mean_dice"] == 1.0


def test_perfect_prediction_scores_one_and_class_names_label_the_table():
    _, target = random_batch(4)
    cm = ConfusionMatrix(K, class_names=[f"c{i}" for i in range(K)])
    cm.update(target.clamp(max=K - 1), target)
    result = cm.compute()
    assert result["miou"] == pytest.approx(1.0) and result["fwiou"] == pytest.approx(1.0)
    assert [row["class"] for row in result["per_class"]] == [f"c{i}" for i in range(K)]
    table = metrics_table(result)
    assert "c6" in table and "mIoU" in table and "100.00" in table


def test_reset_and_merge():
    pred, target = random_batch(6)
    first, second = ConfusionMatrix(K), ConfusionMatrix(K)
    first.update(pred, target)
    second.update(pred, target)
    first.merge(second)
    assert torch.equal(first.matrix, 2 * second.matrix)
    first.reset()
    assert first.matrix.sum() == 0


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.int64])
def test_small_integer_dtypes_do_not_overflow(dtype):
    pred, target = random_batch(8, k=19)
    cm = ConfusionMatrix(19)
    cm.update(pred.to(dtype), target.to(dtype))
    expected = numpy_confusion(pred.numpy(), target.numpy(), 19)
    np.testing.assert_array_equal(cm.matrix.numpy(), expected)


@pytest.mark.parametrize("ignore_index", [0, -1, 3000])
def test_other_ignore_index_values(ignore_index):
    pred, target = random_batch(9, k=5)
    target = torch.where(target == 255, torch.tensor(ignore_index), target)
    cm = ConfusionMatrix(5, ignore_index=ignore_index)
    cm.update(pred, target)
    valid = (target != ignore_index).numpy()
    expected = np.zeros((5, 5), dtype=np.int64)
    np.add.at(expected, (target.numpy()[valid], pred.numpy()[valid]), 1)
    np.testing.assert_array_equal(cm.matrix.numpy(), expected)


def test_bad_input_raises_value_error():
    cm = ConfusionMatrix(4)
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    bad_gt = labels.clone()
    bad_gt[0, 0, 0] = 7
    with pytest.raises(ValueError, match=r"\[7\]"):
        cm.update(labels, bad_gt)
    with pytest.raises(ValueError, match="pred labels"):
        cm.update(labels + 4, labels)
    with pytest.raises(ValueError, match="same shape"):
        cm.update(torch.zeros(1, 4, 4, 4), labels)
    with pytest.raises(ValueError, match="integer"):
        cm.update(labels.float(), labels)
    with pytest.raises(ValueError, match="square"):
        segmentation_metrics(torch.zeros(2, 3))
    assert cm.matrix.sum() == 0  # nothing half-counted


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    pred, target = random_batch(7, shape=(2, 64, 64))
    cpu, gpu = ConfusionMatrix(K), ConfusionMatrix(K)
    cpu.update(pred, target)
    gpu.update(pred.cuda(), target.cuda())
    assert gpu.matrix.device.type == "cuda"
    assert torch.equal(cpu.matrix, gpu.matrix.cpu())
