"""The semantic model contract, checked for every entry of segworks.models.MODELS.

A builder is keyword-only with `num_classes` (and usually `in_channels`); the model returns
{"out": (N, K, H, W) logits at input resolution} for any input size. Instance models
(INSTANCE_MODELS) follow torchvision's detection contract and are tested elsewhere.

To keep this file fast, models are built with tiny widths from helpers.SMALL_KWARGS (add your model
there) and fed small odd-sized inputs; a model needing a larger input can set INPUT_SIZE.
"""

from __future__ import annotations

import inspect
import io
import json

import pytest
import torch
import torchvision
from helpers import ALIASES, SMALL_KWARGS

from segworks.cli import main
from segworks.errors import DataError, SegworksError
from segworks.models import INSTANCE_MODELS, MODELS, SEMANTIC_MODELS, TASKS, build_model, model_task
from segworks.models.unet import (
    mirror_pad,
    unet_original,
    unet_original_input_size,
    unet_original_output_size,
)

INPUT_SIZE: dict[str, tuple[int, int]] = {}  # (H, W), odd by default
DEFAULT_SIZE = (37, 53)
SEMANTIC = sorted(n for n in SEMANTIC_MODELS if n not in ALIASES)


def build(name: str, num_classes: int = 3, seed: int = 0, **extra) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(name, num_classes=num_classes, **SMALL_KWARGS.get(name, {}), **extra)


def image(name: str, batch: int, channels: int = 3, seed: int = 1) -> torch.Tensor:
    h, w = INPUT_SIZE.get(name, DEFAULT_SIZE)
    return torch.randn(batch, channels, h, w, generator=torch.Generator().manual_seed(seed))


def warm_up(model: torch.nn.Module, x: torch.Tensor) -> None:
    """One train-mode forward so BatchNorm running statistics are not the identity."""
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_builder_is_keyword_only_and_documented(name):
    builder = MODELS[name]
    parameters = inspect.signature(builder).parameters
    assert "num_classes" in parameters
    keyword = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.VAR_KEYWORD)
    positional = [p.name for p in parameters.values() if p.kind not in keyword]
    assert positional == [], f"{name}: parameters must be keyword-only: {positional}"
    assert (builder.__doc__ or "").strip(), f"{name}: `segworks models` shows its docstring"


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_alias_builds_the_generic_architecture(alias):
    generic = ALIASES[alias]
    with torch.device("meta"):
        model = MODELS[alias](num_classes=3)
    assert type(model) is type(build(generic))
    assert sum(p.numel() for p in model.parameters()) > 20_000_000


@pytest.mark.parametrize("name", SEMANTIC)
def test_output_shape_at_odd_sizes(name):
    model = build(name).eval()
    h, w = INPUT_SIZE.get(name, DEFAULT_SIZE)
    with torch.no_grad():
        for size in [(h, w), (h + 4, w - 6)]:
            out = model(torch.randn(2, 3, *size))
            assert out["out"].shape == (2, 3, *size)
            assert torch.isfinite(out["out"]).all()
            if "aux" in out:
                assert out["aux"].shape == (2, 3, *size)


@pytest.mark.parametrize("name", SEMANTIC)
def test_binary_and_single_channel_input(name):
    kwargs = (
        {"in_channels": 1} if "in_channels" in inspect.signature(MODELS[name]).parameters else {}
    )
    model = build(name, num_classes=1, **kwargs).eval()
    x = image(name, 1, channels=kwargs.get("in_channels", 3))
    with torch.no_grad():
        assert model(x)["out"].shape == (1, 1, *x.shape[-2:])


@pytest.mark.parametrize("name", SEMANTIC)
def test_every_parameter_gets_a_finite_gradient(name):
    model = build(name).train()
    out = model(image(name, 2))
    weights = torch.randn(out["out"].shape, generator=torch.Generator().manual_seed(2))
    loss = (out["out"] * weights).mean() + sum(v.mean() for k, v in out.items() if k != "out")
    loss.backward()
    for param_name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None, f"{name}: {param_name} gets no gradient"
            assert torch.isfinite(param.grad).all(), f"{name}: {param_name} gradient not finite"


@pytest.mark.parametrize("name", SEMANTIC)
def test_eval_output_is_independent_of_the_batch(name):
    model = build(name)
    batch = image(name, 3)
    warm_up(model, batch)
    with torch.no_grad():
        alone = model(batch[1:2])["out"]
        together = model(batch)["out"][1:2]
    torch.testing.assert_close(alone, together, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", SEMANTIC)
def test_state_dict_round_trip_gives_identical_outputs(name):
    model = build(name, seed=0)
    x = image(name, 2)
    warm_up(model, x)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    restored = build(name, seed=123)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    restored.eval()
    with torch.no_grad():
        assert not torch.equal(build(name, seed=123).eval()(x)["out"], model(x)["out"])
        assert torch.equal(restored(x)["out"], model(x)["out"])


@pytest.mark.parametrize("name", SEMANTIC)
def test_batch_of_one_trains_with_batch_norm(name):
    model = build(name).train()
    out = model(image(name, 1))["out"]
    out.mean().backward()
    assert torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------
# Geometry of the valid-convolution U-Net and alignment of padded models
# ---------------------------------------------------------------------------------------------


def test_unet_original_tile_geometry():
    assert unet_original_output_size(572) == 388
    assert unet_original_input_size(388) == 572
    assert unet_original_input_size(389) == 588  # the next valid tile
    with pytest.raises(ValueError, match="570"):
        unet_original_output_size(570)
    model = unet_original(num_classes=2, base_width=2).eval()
    with torch.no_grad():
        assert model.forward_valid(torch.zeros(1, 3, 572, 572)).shape == (1, 2, 388, 388)


def test_unet_original_pads_by_reflection_around_the_input():
    model = unet_original(num_classes=2, base_width=4, depth=2).eval()
    x = torch.randn(1, 3, 24, 24)  # 24 + 2 * 20 = 64 is a valid depth-2 tile with output 24
    assert unet_original_output_size(64, depth=2) == 24
    with torch.no_grad():
        expected = model.forward_valid(torch.nn.functional.pad(x, (20,) * 4, mode="reflect"))
        torch.testing.assert_close(model(x)["out"], expected)


def test_mirror_pad_reflects_repeatedly_when_the_pad_exceeds_the_side():
    x = torch.arange(3.0).view(1, 1, 1, 3).expand(1, 1, 2, 3)
    padded = mirror_pad(x, 5, 0, 0, 0)
    assert padded[0, 0, 0].tolist() == [1.0, 0.0, 1.0, 2.0, 1.0, 0.0, 1.0, 2.0]


@pytest.mark.parametrize(
    "name, kwargs, stride, context",
    [
        ("unet_original", {"base_width": 4, "depth": 2}, 4, 24),
        ("unet", {"base_width": 4, "depth": 2}, 4, 24),
        ("tutorial_concat", {"width": 4}, 2, 12),
        ("segnet_basic", {"width": 4, "kernel_size": 3}, 16, 47),
    ],
)
def test_logits_are_aligned_with_the_input(name, kwargs, stride, context):
    """A crop of the image gives the same interior logits as the whole image at that place."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=2, **kwargs)
    big = torch.randn(1, 3, 128, 128)
    warm_up(model, big)
    top = left = 2 * stride
    side = 128 - 2 * top
    with torch.no_grad():
        whole = model(big)["out"][..., top : top + side, left : left + side]
        crop = model(big[..., top : top + side, left : left + side])["out"]
    inner = slice(context, side - context)
    torch.testing.assert_close(crop[..., inner, inner], whole[..., inner, inner])


# ---------------------------------------------------------------------------------------------
# SegNet: torchvision vgg16_bn weights in the encoder
# ---------------------------------------------------------------------------------------------


def vgg16_bn_features() -> torch.nn.Sequential:
    """torchvision's vgg16_bn.features, built without the costly 4096x25088 classifier."""
    return torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"], batch_norm=True)


def vgg16_bn_state_dict() -> dict[str, torch.Tensor]:
    """A torchvision vgg16_bn state dict with random features and a stand-in classifier entry
    (the loader ignores the classifier)."""
    torch.manual_seed(7)
    features = vgg16_bn_features()
    for module in features:
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    state = {f"features.{key}": value for key, value in features.state_dict().items()}
    return state | {"classifier.6.weight": torch.zeros(1000, 4096)}


def test_segnet_encoder_loads_vgg16_bn_features_and_matches_torchvision(tmp_path):
    path = tmp_path / "vgg16_bn.pth"
    state = vgg16_bn_state_dict()
    torch.save(state, path)
    model = build_model("segnet", num_classes=3, backbone_weights=path).eval()
    reference = vgg16_bn_features().eval()
    reference.load_state_dict(
        {k.removeprefix("features."): v for k, v in state.items() if "features" in k}
    )
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours = x
        for stage in model.encoder:
            ours = torch.nn.functional.max_pool2d(stage(ours), 2)
        torch.testing.assert_close(ours, reference(x))


def test_segnet_backbone_weights_errors_name_every_bad_key(tmp_path):
    state = vgg16_bn_state_dict()
    del state["features.0.weight"]
    state["features.3.weight"] = torch.zeros(64, 64, 5, 5)
    state["features.99.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(DataError) as error:
        build_model("segnet", num_classes=3, backbone_weights=path)
    message = str(error.value)
    assert "bad.pth" in message
    assert "weights do not fit the SegNet encoder" in message
    assert "1 missing keys: 0.weight" in message
    assert "1 unexpected keys: 99.weight" in message
    assert (
        "1 shape mismatches: 3.weight (64, 64, 5, 5) in file vs (64, 64, 3, 3) in model" in message
    )


def test_segnet_backbone_weights_need_the_vgg_shape(tmp_path):
    path = tmp_path / "vgg16_bn.pth"
    torch.save(vgg16_bn_state_dict(), path)
    with pytest.raises(DataError, match="shape mismatches"):
        build_model("segnet", num_classes=3, in_channels=1, backbone_weights=path)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="not a weights file"):
        build_model("segnet", num_classes=3, backbone_weights=tmp_path / "junk.pth")
    with pytest.raises(DataError, match="weights file not found"):
        build_model("segnet", num_classes=3, backbone_weights=tmp_path / "absent.pth")


# ---------------------------------------------------------------------------------------------
# `segworks models`
# ---------------------------------------------------------------------------------------------


def test_models_command_lists_every_model_with_its_task_and_description(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + len(MODELS)
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == set(MODELS)
    assert "semantic" in rows["unet"] and "Ronneberger" in rows["unet_original"]
    assert all(rows[name].split()[1] == "instance" for name in INSTANCE_MODELS)
    assert all(rows[name].split()[1] == "semantic" for name in SEMANTIC_MODELS)


def test_every_entry_has_exactly_one_task():
    assert set(SEMANTIC_MODELS).isdisjoint(INSTANCE_MODELS)
    assert {name: model_task(name) for name in MODELS} == TASKS
    assert set(TASKS.values()) == {"semantic", "instance"}
    with pytest.raises(SegworksError, match="unknown model 'unet2'"):
        model_task("unet2")


def test_models_command_json_and_unknown_names(capsys):
    assert main(["models", "--json", "segnet", "unet"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in rows] == ["segnet", "unet"]
    assert rows[0]["task"] == "semantic" and rows[0]["description"].startswith("SegNet")
    assert main(["models", "no_such_net"]) == 2
    assert "no_such_net" in capsys.readouterr().err


def test_models_command_detail_counts_parameters_and_macs(capsys):
    pytest.importorskip("segworks.models.complexity")
    args = ["models", "--detail", "--json", "--size", "64x32", "--num-classes", "2"]
    assert main([*args, "tutorial_convnet", "segnet_basic"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    convnet = build_model("tutorial_convnet", num_classes=2)
    assert rows["tutorial_convnet"]["params"] == sum(p.numel() for p in convnet.parameters())
    # six 3x3 convs and a 1x1 classifier at every one of the 64 * 32 pixels
    per_pixel = 3 * 32 * 9 + 5 * 32 * 32 * 9 + 32 * 2
    assert rows["tutorial_convnet"]["macs"] == per_pixel * 64 * 32
    assert rows["segnet_basic"]["size"] == [64, 32]
    assert main(["models", "--detail", "unet"]) == 0
    assert "GMACs @512x512" in capsys.readouterr().out
