"""load_weights and backbone_weights: what loads, what is reset, and how a bad file is named."""

from __future__ import annotations

import pytest
import torch
import torchvision

from segworks.checkpoint import save_checkpoint
from segworks.errors import DataError
from segworks.models.backbones import resnet_encoder
from segworks.models.deeplabv3 import deeplabv3
from segworks.models.weights import load_weights

SMALL = {"backbone": "resnet18", "output_stride": 16, "aspp_channels": 16}


def small_deeplab(num_classes: int = 3, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return deeplabv3(num_classes=num_classes, **SMALL, **kwargs).eval()


def outputs(model, seed: int = 1):
    x = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("wrap", ["segworks", "raw", "ddp"])
def test_checkpoint_raw_and_ddp_state_dicts_load(tmp_path, wrap):
    source = small_deeplab(seed=0)
    state = source.state_dict()
    path = tmp_path / "weights.pt"
    if wrap == "segworks":
        save_checkpoint(path, {"model": state, "model_name": "deeplabv3", "model_kwargs": {}})
    else:
        prefix = "module." if wrap == "ddp" else ""
        torch.save({prefix + k: v for k, v in state.items()}, path)
    target = small_deeplab(seed=1)
    assert not torch.equal(outputs(target)["out"], outputs(source)["out"])
    load_weights(target, path)
    assert torch.equal(outputs(target)["out"], outputs(source)["out"])


def test_builder_weights_argument_loads_the_file(tmp_path):
    source = small_deeplab(seed=0)
    torch.save(source.state_dict(), tmp_path / "w.pth")
    built = deeplabv3(num_classes=3, **SMALL, weights=tmp_path / "w.pth").eval()
    assert torch.equal(outputs(built)["aux"], outputs(source)["aux"])


def test_reset_classifier_moves_a_21_class_checkpoint_to_another_label_set(tmp_path):
    """The DeepLabV3 seed: COCO/VOC-trained weights, new final 1x1 convs (Xavier, bias 0.01)."""
    source = small_deeplab(num_classes=21, seed=0)
    torch.save(source.state_dict(), tmp_path / "coco.pth")
    target = small_deeplab(num_classes=5, seed=1)
    load_weights(target, tmp_path / "coco.pth", reset_classifier=True)
    assert torch.equal(
        target.backbone.layer4[1].conv2.weight, source.backbone.layer4[1].conv2.weight
    )
    assert torch.equal(target.classifier[1].weight, source.classifier[1].weight)
    for head in (target.classifier, target.aux_classifier):
        assert head[4].weight.shape == (5, head[4].in_channels, 1, 1)
        assert torch.all(head[4].bias == 0.01)
    assert outputs(target)["out"].shape[1] == 5
    with pytest.raises(DataError, match="shape mismatches: classifier.4.weight"):
        load_weights(small_deeplab(num_classes=5), tmp_path / "coco.pth")


def test_an_aux_head_in_the_file_is_dropped_when_the_model_has_none(tmp_path):
    torch.save(small_deeplab(seed=0).state_dict(), tmp_path / "w.pth")
    model = small_deeplab(seed=1, aux_loss=False)
    load_weights(model, tmp_path / "w.pth")
    assert set(outputs(model)) == {"out"}


def test_a_wrong_file_lists_missing_unexpected_and_mismatched_keys_with_counts(tmp_path):
    state = small_deeplab().state_dict()
    for key in [k for k in state if k.startswith("backbone.layer1.")]:
        del state[key]
    state["extra.weight"] = torch.zeros(1)
    state["classifier.1.weight"] = torch.zeros(3, 3, 3, 3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(DataError) as error:
        load_weights(small_deeplab(), tmp_path / "bad.pth")
    message = str(error.value)
    assert "bad.pth" in message
    assert "missing keys: backbone.layer1.0.conv1.weight" in message and "more)" in message
    assert "1 unexpected keys: extra.weight" in message
    assert (
        "1 shape mismatches: classifier.1.weight (3, 3, 3, 3) in file vs (16, 16, 3, 3)" in message
    )


def test_unreadable_missing_and_non_state_dict_files_are_data_errors(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pth")
    for name, problem in [
        ("junk.pth", "readable"),
        ("absent.pth", "not found"),
        ("meta.pth", "not tensors"),
    ]:
        with pytest.raises(DataError, match=problem):
            load_weights(small_deeplab(), tmp_path / name)


@torch.no_grad()
def test_resnet_backbone_weights_load_torchvision_imagenet_files(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18().eval()
    torch.save(reference.state_dict(), tmp_path / "resnet18-f37072fd.pth")
    encoder = resnet_encoder(name="resnet18", weights=tmp_path / "resnet18-f37072fd.pth").eval()
    x = torch.randn(1, 3, 64, 64)
    expected = reference.layer4(
        reference.layer3(
            reference.layer2(
                reference.layer1(
                    reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
                )
            )
        )
    )
    assert torch.equal(encoder(x)["layer4"], expected)
    gray = resnet_encoder(
        name="resnet18", in_channels=1, weights=tmp_path / "resnet18-f37072fd.pth"
    )
    assert torch.allclose(gray.conv1.weight[:, 0], reference.conv1.weight.mean(1))
    with pytest.raises(DataError, match="80 missing keys: layer1.2.conv1.weight"):
        resnet_encoder(name="resnet34", weights=tmp_path / "resnet18-f37072fd.pth")


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy-pickle"])
def test_whole_model_or_encoder_file_is_told_by_its_keys_in_either_format(tmp_path, zip_format):
    """The probe memory-maps a zip file's tensors; the legacy pickle format is read whole."""
    from segworks.models.weights import looks_like_whole_model, read_state_dict

    model = small_deeplab()
    whole, encoder = tmp_path / "whole.pt", tmp_path / "encoder.pt"
    backbone = torchvision.models.resnet18().state_dict()  # an ImageNet file's keys
    torch.save(model.state_dict(), whole, _use_new_zipfile_serialization=zip_format)
    torch.save(backbone, encoder, _use_new_zipfile_serialization=zip_format)
    assert looks_like_whole_model(model, whole)
    assert not looks_like_whole_model(model, encoder)
    mapped = read_state_dict(whole, mmap=True)
    for key, value in model.state_dict().items():
        assert torch.equal(mapped[key], value), key
