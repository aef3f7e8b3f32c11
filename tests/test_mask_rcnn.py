"""Mask R-CNN models: torchvision parity, weight loading, C4's shared res5, loss options, learning."""

from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import resnet50
from torchvision.models.detection import maskrcnn_resnet50_fpn
from torchvision.ops import FrozenBatchNorm2d

from segworks.coco_eval import CocoEvaluator
from segworks.data.instances import synthetic_shapes
from segworks.errors import DataError
from segworks.models import MODELS, build_model
from segworks.models.mask_rcnn import maskrcnn_r50_c4, maskrcnn_r50_fpn, maskrcnn_tiny

# Small inputs and few proposals keep the ResNet-50 tests cheap; parity does not need more.
SMALL = {
    "min_size": 64,
    "max_size": 96,
    "box_score_thresh": 0.0,
    "rpn_pre_nms_top_n_test": 200,
    "rpn_post_nms_top_n_test": 20,
    "box_detections_per_img": 5,
}


def _target(height=96, width=112):
    masks = torch.zeros(1, height, width, dtype=torch.uint8)
    masks[0, 20:60, 30:80] = 1
    return {
        "boxes": torch.tensor([[30.0, 20.0, 80.0, 60.0]]),
        "labels": torch.tensor([1]),
        "masks": masks,
    }


def test_fpn_matches_torchvision_given_its_state_dict():
    torch.manual_seed(0)
    reference = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3, **SMALL)
    images = [torch.rand(3, 64, 80)]
    with torch.no_grad():
        expected = reference.eval()(images)[0]
    assert len(expected["boxes"]) > 0
    for freeze_bn, tolerance in ((None, 0.0), (True, 1e-4)):  # default: BatchNorm2d, exact
        model = maskrcnn_r50_fpn(num_classes=3, freeze_bn=freeze_bn, **SMALL)
        model.load_state_dict(reference.state_dict())
        with torch.no_grad():
            got = model.eval()(images)[0]
        for key in ("boxes", "labels", "scores", "masks"):
            torch.testing.assert_close(got[key], expected[key], rtol=tolerance, atol=tolerance)


def test_weights_file_loads_and_mismatch_names_keys(tmp_path):
    torch.manual_seed(0)
    reference = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3)
    torch.save(reference.state_dict(), tmp_path / "tv.pth")
    model = maskrcnn_r50_fpn(num_classes=3, weights=tmp_path / "tv.pth")
    torch.testing.assert_close(
        model.roi_heads.mask_predictor.mask_fcn_logits.weight,
        reference.roi_heads.mask_predictor.mask_fcn_logits.weight,
    )
    with pytest.raises(
        DataError, match="fit SegMaskRCNN: [0-9]+ missing keys: .*; [0-9]+ unexpected keys: "
    ):
        maskrcnn_r50_c4(num_classes=3, weights=tmp_path / "tv.pth")
    with pytest.raises(
        DataError,
        match=r"6 shape mismatches: roi_heads.box_predictor.cls_score.weight \(3, 1024\) in file vs \(5, 1024\) in model",
    ):
        maskrcnn_r50_fpn(num_classes=5, weights=tmp_path / "tv.pth")


def test_backbone_weights_load_and_freeze_bottom_stages(tmp_path):
    torch.manual_seed(0)
    imagenet = resnet50()
    torch.save(imagenet.state_dict(), tmp_path / "r50.pth")
    model = maskrcnn_r50_c4(num_classes=2, backbone_weights=tmp_path / "r50.pth")
    torch.testing.assert_close(
        model.backbone.layer3[0].conv1.weight, imagenet.layer3[0].conv1.weight
    )
    torch.testing.assert_close(
        model.roi_heads.box_head.res5[0].conv1.weight, imagenet.layer4[0].conv1.weight
    )
    assert isinstance(model.backbone.bn1, FrozenBatchNorm2d)  # pretrained -> frozen statistics
    assert not model.backbone.layer1[0].conv1.weight.requires_grad
    assert model.backbone.layer2[0].conv1.weight.requires_grad
    with pytest.raises(DataError, match="not found"):
        maskrcnn_r50_c4(num_classes=2, backbone_weights=tmp_path / "missing.pth")


def test_c4_shares_res5_between_box_and_mask_heads():
    torch.manual_seed(0)
    cheap = {"rpn_post_nms_top_n_train": 64, "box_batch_size_per_image": 16}
    cheap |= {"rpn_post_nms_top_n_test": 10, "box_detections_per_img": 5}
    model = maskrcnn_r50_c4(num_classes=3, freeze_bn=False, roi_size=14, **(SMALL | cheap))
    heads = model.roi_heads
    assert heads.mask_head._shared_res5 is heads.box_head.res5
    assert not any(k.startswith("roi_heads.mask_head") for k in model.state_dict())
    model.train()
    losses = model([torch.rand(3, 96, 112)], [_target()])
    losses["loss_mask"].backward()
    assert heads.box_head.res5[0].conv1.weight.grad.abs().sum() > 0
    assert model.backbone.layer3[0].conv1.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        output = model([torch.rand(3, 96, 112)])[0]
    assert output["masks"].shape[1:] == (1, 96, 112) and len(output["boxes"]) > 0


def test_gamma_scales_only_the_mask_loss():
    images, targets = [torch.rand(3, 96, 112)], [_target()]
    losses = {}
    for gamma in (1.0, 3.0):
        torch.manual_seed(0)
        model = maskrcnn_tiny(num_classes=2, gamma=gamma).train()
        torch.manual_seed(1)
        losses[gamma] = model(images, targets)
    torch.testing.assert_close(losses[3.0]["loss_mask"], 3 * losses[1.0]["loss_mask"])
    torch.testing.assert_close(losses[3.0]["loss_classifier"], losses[1.0]["loss_classifier"])


def test_compute_losses_keeps_batchnorm_statistics():
    torch.manual_seed(0)
    model = maskrcnn_tiny(num_classes=2).eval()
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    before = bn.running_mean.clone()
    losses = model.compute_losses([torch.rand(3, 96, 112)], [_target()])
    assert set(losses) >= {"loss_mask", "loss_classifier", "loss_objectness"}
    torch.testing.assert_close(bn.running_mean, before)
    assert not model.training and not bn.training
    model.train()(  # the control: a training-mode call does update the statistics
        [torch.rand(3, 96, 112)], [_target()]
    )
    assert not torch.allclose(bn.running_mean, before)


def test_image_without_instances_trains():
    torch.manual_seed(0)
    model = maskrcnn_tiny(num_classes=3).train()
    empty = {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "masks": torch.zeros(0, 96, 112, dtype=torch.uint8),
    }
    losses = model([torch.rand(3, 96, 112)] * 2, [empty, _target()])
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()


def test_registry_and_resnet101_option():
    for name in ("maskrcnn_r50_c4", "maskrcnn_r50_fpn", "maskrcnn_r101_fpn", "maskrcnn_tiny"):
        assert name in MODELS
    model = build_model("maskrcnn_r101_fpn", num_classes=2)
    assert len(model.backbone.body.layer3) == 23
    with pytest.raises(ValueError, match="backbone"):
        from segworks.models.mask_rcnn import maskrcnn_fpn

        maskrcnn_fpn(num_classes=2, backbone="resnet7")


def _mask_ap50(model, samples) -> float:
    evaluator = CocoEvaluator(_ShapesGT(samples))
    model.eval()
    with torch.no_grad():
        for image, target in samples:
            evaluator.update({target["image_id"]: model([image])[0]})
    return evaluator.compute()["segm"]["AP50"]


class _ShapesGT:
    """The minimal dataset interface coco_from_dataset reads."""

    class_names = ["disc", "square"]

    def __init__(self, samples):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def target(self, index):
        return self.samples[index][1]


@pytest.mark.slow
def test_tiny_mask_rcnn_learns_shapes():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: one thread wastes least CPU on a busy machine
    try:
        _learn_shapes()
    finally:
        torch.set_num_threads(threads)


def _learn_shapes():
    train = synthetic_shapes(96, seed=0)
    held_out = synthetic_shapes(20, seed=1)
    torch.manual_seed(0)
    model = maskrcnn_tiny(num_classes=3)
    control = _mask_ap50(model, held_out)  # untrained: the test can fail
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = 250
    model.train()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = 3e-3 * min(1.0, (step + 1) / 20) * (0.1 if step > 0.8 * steps else 1.0)
        batch = torch.randint(0, len(train), (4,)).tolist()
        losses = model([train[i][0] for i in batch], [train[i][1] for i in batch])
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    learned = _mask_ap50(model, held_out)
    assert control < 0.2
    assert learned >= 0.8, f"mask AP50 {learned:.3f}"


def test_unknown_backbone_weights_file_is_a_data_error(tmp_path):
    Path(tmp_path / "junk.pth").write_text("not torch")
    with pytest.raises(DataError, match="not a weights file"):
        maskrcnn_r50_fpn(num_classes=2, weights=tmp_path / "junk.pth")


def test_eval_mode_runs_at_the_test_size_and_training_at_the_train_size():
    """`min_size_test` (Detectron's MIN_SIZE_TEST): the backbone sees the image at that shorter
    side in eval mode, at `min_size` in training; the longer side's cap scales alike."""
    from segworks.errors import SegworksError

    torch.manual_seed(0)
    model = maskrcnn_tiny(num_classes=2, min_size=64, max_size=128, min_size_test=96)
    seen = []
    model.backbone.register_forward_hook(lambda module, args, out: seen.append(args[0].shape))
    image = torch.rand(3, 50, 100)
    target = {"boxes": torch.tensor([[10.0, 10.0, 40.0, 40.0]]), "labels": torch.tensor([1]),
              "masks": torch.zeros(1, 50, 100, dtype=torch.uint8)}  # fmt: skip
    target["masks"][0, 10:40, 10:40] = 1
    model.eval()
    with torch.no_grad():
        model([image])
    assert model.transform.min_size == (96,) and model.transform.max_size == 192
    assert seen[-1][-2:] == (96, 192)  # 50x100 -> shorter side 96
    model.train()
    model([image], [target])
    assert seen[-1][-2:] == (64, 128)
    plain = maskrcnn_tiny(num_classes=2, min_size=64, max_size=128).eval()
    assert plain.transform.min_size == (64,) and plain.transform.max_size == 128
    for bad in (0, -5, 1.5, "448"):
        with pytest.raises(SegworksError, match="min_size_test must be a positive number"):
            maskrcnn_tiny(num_classes=2, min_size_test=bad)
