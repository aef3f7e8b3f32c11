"""FCN-ResNet: torchvision's fcn_resnet50/101 state dicts load unchanged and agree exactly."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import segmentation

from segworks.errors import DataError
from segworks.models import MODELS, build_model
from segworks.models.fcn_resnet import fcn_resnet50, fcn_resnet101


def reference(builder, **kwargs):
    return builder(weights=None, weights_backbone=None, **kwargs)


@pytest.mark.parametrize("aux_loss", [True, False])
def test_torchvision_fcn_resnet50_state_dict_loads_and_outputs_agree(aux_loss):
    torch.manual_seed(0)
    theirs = reference(segmentation.fcn_resnet50, num_classes=5, aux_loss=aux_loss)
    ours = fcn_resnet50(num_classes=5, aux_loss=aux_loss)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, 45, 61)
    theirs.train()  # one train-mode pass so BatchNorm statistics differ from the defaults
    with torch.no_grad():
        theirs(x)
    ours.load_state_dict(theirs.state_dict())
    with torch.no_grad():
        expected, got = theirs.eval()(x), ours.eval()(x)
    assert sorted(got) == sorted(expected)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)
        assert got[key].shape == (2, 5, 45, 61)


def test_fcn_resnet101_has_torchvision_keys_and_shapes():
    theirs = reference(segmentation.fcn_resnet101, num_classes=3, aux_loss=True).state_dict()
    ours = fcn_resnet101(num_classes=3).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


def test_weights_file_loads_and_a_wrong_one_is_named(tmp_path):
    theirs = reference(segmentation.fcn_resnet50, num_classes=4, aux_loss=True)
    good = tmp_path / "fcn_resnet50.pth"
    torch.save(theirs.state_dict(), good)
    ours = build_model("fcn_resnet50", num_classes=4, weights=good)
    assert torch.equal(ours.classifier[4].weight, theirs.classifier[4].weight)
    with pytest.raises(DataError, match="shape mismatches"):
        build_model("fcn_resnet50", num_classes=7, weights=good)


def test_registered_with_aux_head_by_default():
    assert MODELS["fcn_resnet50"] is fcn_resnet50
    assert MODELS["fcn_resnet101"] is fcn_resnet101
    assert fcn_resnet50(num_classes=2).aux_classifier is not None
    with pytest.raises(ValueError, match="num_classes"):
        fcn_resnet50(num_classes=0)
