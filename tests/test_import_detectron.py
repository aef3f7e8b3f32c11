"""Detectron pickles load into segworks' ResNet encoders and Mask R-CNN.

Round trips: a torchvision model with random weights and BatchNorm statistics is written as a
Detectron pickle through the inverse of the name map (BN folded into `_bn_s`/`_bn_b`, conv1 in
BGR order), imported back, and must compute the same function as the original.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torchvision.models import resnet50

from segworks.cli import main
from segworks.errors import DataError
from segworks.models import build_model
from segworks.models.backbones import stride_in_1x1
from segworks.models.foreign import detect_foreign_format, import_foreign
from segworks.models.foreign.detectron import detectron_key, to_detectron


def randomise_batch_norm(model: torch.nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if hasattr(module, "running_var") and module.running_var is not None:
            size = module.running_var.shape
            module.running_mean.copy_(torch.randn(size, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(size, generator=generator) * 0.5 + 0.5)
            module.bias.data.copy_(torch.randn(size, generator=generator) * 0.1)


def write_pkl(path, blobs: dict, wrap: bool = False) -> None:
    data = {"blobs": blobs, "cfg": "a yaml string"} if wrap else blobs
    with open(path, "wb") as handle:
        pickle.dump(data, handle)


def test_caffe2_names_follow_the_seed_parser():
    table = {
        "conv1_w": "conv1.weight",
        "res_conv1_bn_s": "bn1.weight",
        "res2_0_branch1_w": "layer1.0.downsample.0.weight",
        "res2_0_branch1_bn_b": "layer1.0.downsample.1.bias",
        "res3_3_branch2a_w": "layer2.3.conv1.weight",
        "res4_22_branch2b_bn_s": "layer3.22.bn2.weight",
        "res5_2_branch2c_bn_b": "layer4.2.bn3.bias",
    }
    for name, key in table.items():
        assert detectron_key(name, "resnet101") == key, name
    assert detectron_key("res5_0_branch2a_w", "maskrcnn_r50_c4") == (
        "roi_heads.box_head.res5.0.conv1.weight"
    )
    assert detectron_key("res4_0_branch2a_w", "maskrcnn_r50_c4") == "backbone.layer3.0.conv1.weight"
    assert detectron_key("res4_0_branch2a_w", "maskrcnn_r50_fpn") == (
        "backbone.body.layer3.0.conv1.weight"
    )
    assert detectron_key("fpn_inner_res4_5_sum_lateral_w", "maskrcnn_r50_fpn") == (
        "backbone.fpn.inner_blocks.2.0.weight"
    )
    assert detectron_key("fpn_res2_2_sum_b", "maskrcnn_r50_fpn") == (
        "backbone.fpn.layer_blocks.0.0.bias"
    )
    assert detectron_key("_[mask]_fcn3_w", "maskrcnn_r50_fpn") == "roi_heads.mask_head.2.0.weight"
    assert detectron_key("conv_rpn_fpn2_b", "maskrcnn_r50_fpn") == "rpn.head.conv.0.0.bias"
    assert detectron_key("cls_score_w", "resnet50") is None
    assert detectron_key("res2_0_branch2a_w_momentum", "resnet50") is None


@torch.no_grad()
def test_imagenet_resnet_round_trip_gives_identical_features(tmp_path, capsys):
    torch.manual_seed(0)
    reference = resnet50()
    randomise_batch_norm(reference)
    stride_in_1x1(reference)  # Detectron's MSRA ResNet
    reference.eval()
    blobs = to_detectron(reference.state_dict(), "resnet50")
    blobs["fc1000_w"] = reference.fc.weight.numpy()
    blobs["res2_0_branch2a_w_momentum"] = np.zeros_like(blobs["res2_0_branch2a_w"])
    path = tmp_path / "R-50.pkl"
    write_pkl(path, blobs)
    assert detect_foreign_format(path) == "detectron-pkl"

    out = tmp_path / "r50.pt"
    assert main(["import-weights", str(path), "--model", "resnet50", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "res2_0_branch2a_w_momentum: SGD momentum buffer" in printed
    assert "fc1000_w: the ImageNet classifier" in printed

    imported = resnet50()
    stride_in_1x1(imported)
    imported.fc = torch.nn.Identity()
    imported.load_state_dict(torch.load(out, weights_only=True)["model"])
    imported.eval()
    reference.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(1))
    expected = reference(x)
    # the import reverses conv1's channels (Detectron is BGR): RGB input gives the same features
    torch.testing.assert_close(imported(x), expected, rtol=1e-4, atol=1e-5)
    assert (imported(x.flip(1)) - expected).abs().max() > 1e-2  # control: channel order matters


@torch.no_grad()
def test_mask_rcnn_fpn_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    reference = build_model("maskrcnn_r50_fpn", num_classes=4, freeze_bn=True).eval()
    randomise_batch_norm(reference)
    path = tmp_path / "model_final.pkl"
    write_pkl(path, to_detectron(reference.state_dict(), "maskrcnn_r50_fpn"), wrap=True)
    checkpoint = import_foreign(path, model="maskrcnn_r50_fpn", caffe_stride=False)
    assert checkpoint["model_kwargs"]["num_classes"] == 4
    imported = build_model("maskrcnn_r50_fpn", **checkpoint["model_kwargs"]).eval()
    imported.load_state_dict(checkpoint["model"])
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    for level, features in reference.backbone(x).items():
        torch.testing.assert_close(imported.backbone(x)[level], features, rtol=1e-4, atol=1e-5)
    pooled = torch.randn(3, 256, 7, 7, generator=torch.Generator().manual_seed(3))
    box = reference.roi_heads.box_predictor(reference.roi_heads.box_head(pooled))
    torch.testing.assert_close(
        imported.roi_heads.box_predictor(imported.roi_heads.box_head(pooled)), box
    )
    masks = torch.randn(3, 256, 14, 14, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(
        imported.roi_heads.mask_predictor(imported.roi_heads.mask_head(masks)),
        reference.roi_heads.mask_predictor(reference.roi_heads.mask_head(masks)),
    )
    rpn = imported.rpn.head([x.new_ones(1, 256, 8, 8)])
    torch.testing.assert_close(rpn, reference.rpn.head([x.new_ones(1, 256, 8, 8)]))
    # Detectron's own normalisation is recorded: BGR means in RGB order on the 0..1 scale
    assert checkpoint["model_kwargs"]["image_mean"] == pytest.approx(
        [122.7717 / 255, 115.9465 / 255, 102.9801 / 255]
    )


@torch.no_grad()
def test_mask_rcnn_c4_round_trip_fills_every_weight(tmp_path):
    torch.manual_seed(0)
    reference = build_model("maskrcnn_r50_c4", num_classes=3, freeze_bn=True, caffe_stride=True)
    randomise_batch_norm(reference)
    reference.eval()
    path = tmp_path / "c4.pkl"
    write_pkl(path, to_detectron(reference.state_dict(), "maskrcnn_r50_c4"), wrap=True)
    checkpoint = import_foreign(path, model="maskrcnn_r50_c4")
    assert checkpoint["model_kwargs"]["caffe_stride"] is True
    imported = build_model("maskrcnn_r50_c4", **checkpoint["model_kwargs"]).eval()
    imported.load_state_dict(checkpoint["model"])
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(imported.backbone(x), reference.backbone(x), rtol=1e-4, atol=1e-5)
    roi = torch.randn(2, 1024, 14, 14, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(
        imported.roi_heads.box_head(roi), reference.roi_heads.box_head(roi), rtol=1e-4, atol=1e-5
    )


def test_missing_heads_and_unsafe_pickles_are_refused(tmp_path, capsys):
    reference = resnet50()
    blobs = to_detectron(reference.state_dict(), "resnet50")
    path = tmp_path / "R-50.pkl"
    write_pkl(path, blobs)
    with pytest.raises(DataError, match="left at random.*rpn.head"):
        import_foreign(path, model="maskrcnn_r50_c4")
    out = tmp_path / "x.pt"
    code = main(["import-weights", str(path), "--model", "maskrcnn_r50_c4", "--out", str(out)])
    assert code == 2 and not out.exists()
    assert "left at random" in capsys.readouterr().err
    del blobs["res3_1_branch2b_w"]
    write_pkl(path, blobs)
    with pytest.raises(DataError, match="layer2.1.conv2.weight"):
        import_foreign(path, model="resnet50")
    with pytest.raises(DataError, match="not 'unet'"):
        import_foreign(path, model="unet")
    evil = tmp_path / "evil.pkl"
    with open(evil, "wb") as handle:
        pickle.dump({"conv1_w": print}, handle)
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        import_foreign(evil, model="resnet50")


def test_pretrained_flag_takes_a_detectron_file_as_encoder_weights(tmp_path, monkeypatch):
    """`--pretrained R-50.pkl` with a ResNet-50 model: imported once into the hub cache as the
    encoder's weights (the Mask R-CNN seed's ImageNet start), then loaded by the builder."""
    from segworks.models.starting import choose

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    torch.manual_seed(0)
    reference = resnet50()
    path = tmp_path / "R-50.pkl"
    write_pkl(path, to_detectron(reference.state_dict(), "resnet50"))
    choice = choose(str(path), model="unet_resnet", model_kwargs={"encoder": "resnet50"})
    assert choice.kind == "encoder" and choice.path.parent.name == "segworks-imports"
    state = torch.load(choice.path, weights_only=True)["model"]
    assert torch.equal(state["layer1.0.conv1.weight"], reference.layer1[0].conv1.weight)
    again = choose(str(path), model="unet_resnet", model_kwargs={"encoder": "resnet50"})
    assert again.path == choice.path  # imported once


def test_weights_flag_takes_a_detectron_mask_rcnn_file(tmp_path, monkeypatch):
    """`segworks train --task instance --weights model_final.pkl`: imported for the model."""
    from segworks.models.starting import whole_model_file

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    torch.manual_seed(0)
    reference = build_model("maskrcnn_r50_fpn", num_classes=3, freeze_bn=True)
    path = tmp_path / "model_final.pkl"
    write_pkl(path, to_detectron(reference.state_dict(), "maskrcnn_r50_fpn"), wrap=True)
    converted = whole_model_file(path, "maskrcnn_r50_fpn", {"num_classes": 3})
    state = torch.load(converted, weights_only=True)["model"]
    key = "roi_heads.box_predictor.cls_score.weight"
    assert torch.equal(state[key], reference.state_dict()[key])
    assert whole_model_file(tmp_path / "x.pt", "maskrcnn_r50_fpn") == tmp_path / "x.pt"
