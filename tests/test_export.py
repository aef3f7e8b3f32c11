"""Export to ONNX / TorchScript: parity with PyTorch for every registered semantic model, the
parity check's own failure modes, metadata, the CLI, Mask R-CNN, and torch-free ONNX predict.

Models are built with the tiny widths of tests/test_models_contract.py's SMALL_KWARGS (plus
EXPORT_KWARGS below for builders that only take **kwargs) and exported at 32x48.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from helpers import ALIASES, SMALL_KWARGS
from PIL import Image
from torch import nn

from segworks.checkpoint import save_checkpoint
from segworks.cli import main
from segworks.engine.instance import instance_meta
from segworks.errors import SegworksError
from segworks.export import ParityError, export_instance_model, export_model, sample_image
from segworks.inference.onnx import read_metadata
from segworks.models import MODELS, SEMANTIC_MODELS, build_model

SIZE = (32, 48)
# Fixed-backbone aliases (refinenet_resnet101, ...) export the same classes as their generic
# entry, which runs here with a ResNet-18 encoder; one deep alias is kept as a size check.
SEMANTIC = sorted(
    name for name in SEMANTIC_MODELS if name not in ALIASES or name == "deeplabv3_resnet50"
)
# Width knobs used when a builder names them and SMALL_KWARGS has no entry for it.
GENERIC_SMALL = {
    "width": 8,
    "base_width": 8,
    "features": 16,
    "aspp_channels": 16,
    "fc_channels": 32,
    "num_convs": 2,
    "backbone": "resnet18",
}
# Builders whose small options the signature does not show (fixed backbone, **kwargs): the
# smallest configuration each allows. The ResNet-50/101/152 ones stay big (> BIG_MODEL).
SMALL_DECODER = (32, 16, 16, 8, 8)
EXPORT_KWARGS: dict[str, dict] = {
    "unet_resnet": {"encoder": "resnet18", "decoder_channels": SMALL_DECODER},
    "unet_resnet34": {"decoder_channels": SMALL_DECODER},
    "fcn_resnet50": {"aux_loss": False},
    "fcn_resnet101": {"aux_loss": False},
    "deeplabv3": {"aux_loss": False},
    "deeplabv3_resnet50": {"aspp_channels": 16, "aux_loss": False},
    "deeplabv3_resnet101": {"aspp_channels": 16, "aux_loss": False},
    "refinenet_resnet50": {"features": 16},
    "refinenet_resnet101": {"features": 16},
    "refinenet_resnet152": {"features": 16},
}
BIG_MODEL = 20_000_000  # parameters: ResNet-50 and deeper backbones
META = {
    "task": "semantic",
    "class_names": ["background", "road", "car"],
    "palette": [[0, 0, 0], [128, 64, 128], [0, 0, 142]],
}


def small_kwargs(name: str) -> dict:
    parameters = inspect.signature(MODELS[name]).parameters
    kwargs = {k: v for k, v in GENERIC_SMALL.items() if k in parameters}
    return kwargs | EXPORT_KWARGS.get(name, {}) | SMALL_KWARGS.get(name, {})


def small_model(name: str, num_classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(name, num_classes=num_classes, **small_kwargs(name))
    if _size(model) <= BIG_MODEL:  # big ones keep identity statistics, to save time
        _calibrate_batchnorm(model)
    return model.eval()


def _size(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _calibrate_batchnorm(model: nn.Module) -> None:
    """A few train-mode passes so BatchNorm statistics are not the identity (realistic logits)."""
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(0)))
    model.eval()


def _ort(path: Path, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def _photo(height: int, width: int, seed: int = 5) -> np.ndarray:
    return sample_image((height, width), seed=seed)[:, ::-1].copy()  # differs from the default


# ---------------------------------------------------------------------------------------------
# parity for every registered semantic model


@pytest.mark.parametrize("name", SEMANTIC)
def test_onnx_parity_every_semantic_model(name, tmp_path):
    model = small_model(name)
    path = tmp_path / f"{name}.onnx"
    if _size(model) > BIG_MODEL:
        # ResNet-50/101/152 variants of builders tested below with ResNet-18 and every wrapper
        # option: the bare model, one parity check (export's own), to keep the file fast
        report = export_model(model, path, size=SIZE, metadata=META)
        scale = report["checks"][0]["max_abs_logit"]  # identity BN statistics: large logits
        assert report["passed"] and report["max_abs_logit_diff"] < 1e-3 * scale
        return
    report = export_model(
        model,
        path,
        format="onnx",
        size=SIZE,
        include_normalize=True,
        include_resize=True,
        include_argmax=True,
        metadata=META,
    )
    assert report["passed"] and len(report["checks"]) == 2  # trace size and another size
    assert report["max_abs_logit_diff"] < 1e-3
    # independent of the report: an image of a third size, compared here
    photo = _photo(40, 72)
    x = torch.from_numpy(photo).permute(2, 0, 1)[None].contiguous()
    labels, logits = _ort(path, x.numpy())
    wrapper_out = _eager_wrapper(model, x)
    assert logits.shape == (1, 3, 40, 72) and labels.shape == (1, 40, 72)
    np.testing.assert_allclose(logits, wrapper_out.numpy(), atol=1e-3 * max(1, logits.max()))
    assert _flips_beyond_ties(wrapper_out.numpy(), labels) == 0


def _eager_wrapper(model: nn.Module, x_uint8: torch.Tensor) -> torch.Tensor:
    """What the exported graph must compute, written out independently of ExportWrapper."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (x_uint8.float() / 255 - mean) / std
    x = F.interpolate(x, size=SIZE, mode="bilinear", align_corners=False)
    with torch.no_grad():
        logits = model(x)["out"]
    return F.interpolate(logits, size=x_uint8.shape[-2:], mode="bilinear", align_corners=False)


def _flips_beyond_ties(reference: np.ndarray, labels: np.ndarray) -> int:
    top2 = np.sort(reference, axis=1)[:, -2:]
    decided = (top2[:, 1] - top2[:, 0]) > 1e-4
    return int(((reference.argmax(1) != labels) & decided).sum())


@pytest.mark.parametrize("name", ["unet", "segnet_basic"])
def test_torchscript_parity_dynamic(name, tmp_path):
    model = small_model(name)
    path = tmp_path / f"{name}.pt"
    report = export_model(
        model,
        path,
        format="torchscript",
        size=SIZE,
        dynamic=True,
        include_argmax=True,
        metadata=META,
    )
    assert report["passed"] and report["max_abs_logit_diff"] < 1e-4
    loaded_meta = {"segworks.json": ""}
    loaded = torch.jit.load(str(path), _extra_files=loaded_meta)
    assert json.loads(loaded_meta["segworks.json"])["class_names"] == META["class_names"]
    x = torch.randn(2, 3, 64, 80)  # another batch and size than the trace
    with torch.no_grad():
        labels, logits = loaded(x)
        expected = model(x)["out"]
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    assert torch.equal(labels, expected.argmax(1))


# Models whose forward pads, crops or resizes by the input size: the U-Nets (pad to a multiple
# of the stride, crop back), RefineNet-seed (resizes between stages) and a tutorial net.
SIZE_DEPENDENT = ["unet", "unet_resnet", "tutorial_concat", "refinenet_seed"]


@pytest.mark.parametrize("name", SIZE_DEPENDENT)
def test_torchscript_runs_at_other_sizes(name, tmp_path):
    """Exported at 32x48 (a multiple of every stride: no pad), run at odd sizes."""
    model = small_model(name)
    path = tmp_path / f"{name}.pt"
    export_model(model, path, format="torchscript", size=SIZE, include_argmax=True)
    loaded = torch.jit.load(str(path))
    for height, width in [(37, 53), (61, 40)]:
        x = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(height))
        with torch.no_grad():
            labels, logits = loaded(x)
            expected = model(x)["out"]
        assert logits.shape == expected.shape == (1, 3, height, width)
        scale = max(1.0, float(expected.abs().max()))
        assert float((logits - expected).abs().max()) < 1e-4 * scale
        assert torch.equal(labels, expected.argmax(1))


def test_torchscript_refuses_the_fixed_size_unet(tmp_path):
    model = small_model("unet_original")
    path = tmp_path / "unet_original.pt"
    with pytest.raises(SegworksError, match="UNetOriginal cannot be exported for any input size"):
        export_model(model, path, format="torchscript", size=SIZE)
    assert not path.exists()
    report = export_model(model, path, format="torchscript", size=SIZE, include_resize=True)
    assert report["passed"] and len(report["checks"]) == 2  # with --resize it is size-agnostic


def test_onnx_dynamic_batch_and_size_without_resize(tmp_path):
    model = small_model("unet")
    path = tmp_path / "unet.onnx"
    export_model(model, path, size=SIZE, dynamic=True)
    x = torch.randn(3, 3, 40, 72)
    (logits,) = _ort(path, x.numpy())
    with torch.no_grad():
        expected = model(x)["out"].numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4)


def test_binary_model_argmax_is_threshold(tmp_path):
    model = small_model("unet", num_classes=1)
    path = tmp_path / "binary.onnx"
    report = export_model(model, path, size=SIZE, include_argmax=True, include_normalize=True)
    assert report["passed"]
    photo = torch.from_numpy(sample_image(SIZE)).permute(2, 0, 1)[None].contiguous()
    labels, logits = _ort(path, photo.numpy())
    assert logits.shape == (1, 1, *SIZE)
    np.testing.assert_array_equal(labels, (logits[:, 0] > 0).astype(np.int64))
    assert 0 < labels.mean() < 1 or np.abs(logits).min() > 0  # a real decision, not a constant


def test_nhwc_uint8_input(tmp_path):
    model = small_model("tutorial_convnet")
    path = tmp_path / "nhwc.onnx"
    export_model(model, path, size=SIZE, include_normalize=True, input_layout="nhwc")
    photo = sample_image(SIZE)
    (logits,) = _ort(path, photo[None])
    nchw = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model((nchw - mean) / std)["out"].numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# the parity check must be able to fail


class BakesItsInputSize(nn.Module):
    """Turns the input size into Python ints: a trace freezes it, so other sizes come out wrong."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        height, width = int(x.shape[2]), int(x.shape[3])
        y = F.avg_pool2d(self.conv(x), 2)
        return {"out": F.interpolate(y, size=(height, width), mode="bilinear")}


@pytest.mark.parametrize("format", ["onnx", "torchscript"])
def test_parity_failure_raises_and_writes_nothing(format, tmp_path):
    path = tmp_path / f"bad.{format}"
    with pytest.raises(ParityError) as caught:
        export_model(BakesItsInputSize(), path, format=format, size=SIZE, dynamic=True)
    report = caught.value.report
    assert not report["passed"]
    assert report["checks"][0]["passed"] and not report["checks"][1]["passed"]  # size 2 fails
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_parity_flags_flipped_labels():
    from segworks.export.checks import _check_one

    model = small_model("tutorial_convnet").eval()
    x = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        logits = model(x)["out"].numpy()

    def runner_flipping_one_pixel(_x):
        wrong = logits.copy()
        top = wrong[0, :, 5, 7].argmax()
        wrong[0, top, 5, 7] -= 100.0  # one clearly decided pixel now decides otherwise
        return [wrong]

    def exact_runner(_x):
        return [logits.copy()]

    wrapper = _wrapper(model)
    assert _check_one(wrapper, exact_runner, x, tolerance=1e-3, argmax=False)["passed"]
    check = _check_one(wrapper, runner_flipping_one_pixel, x, tolerance=1e9, argmax=False)
    assert check["argmax_mismatch_pixels"] == 1 and check["argmax_near_tie_pixels"] == 1
    # with a realistic tolerance the same flip is a failure
    check = _check_one(wrapper, runner_flipping_one_pixel, x, tolerance=1e-3, argmax=False)
    assert not check["passed"]


def _wrapper(model):
    from segworks.export import ExportWrapper

    return ExportWrapper(model, size=SIZE).eval()


# ---------------------------------------------------------------------------------------------
# metadata and the CLI


def test_metadata_round_trip(tmp_path):
    path = tmp_path / "m.onnx"
    export_model(
        small_model("tutorial_convnet"), path, size=SIZE, include_resize=True, metadata=META
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    info = read_metadata(session, path)
    assert info["class_names"] == META["class_names"] and info["palette"] == META["palette"]
    assert info["size"] == list(SIZE) and info["include_resize"] and info["dynamic"]
    assert info["output_names"] == ["logits"] and info["mean"] == pytest.approx(
        [0.485, 0.456, 0.406]
    )


def _checkpoint(tmp_path: Path, name: str = "unet", num_classes: int = 3) -> Path:
    model = small_model(name, num_classes=num_classes)
    kwargs = {"num_classes": num_classes, **small_kwargs(name)}
    checkpoint = {
        "model": model.state_dict(),
        "model_name": name,
        "model_kwargs": kwargs,
        "meta": {
            **META,
            "ignore_index": 255,
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
        },
        "config": {"crop_size": 32},
    }
    path = tmp_path / "model.pt"
    torch.save(checkpoint, path)
    return path


def test_cli_export_prints_parity_report(tmp_path, capsys):
    checkpoint = _checkpoint(tmp_path)
    out = tmp_path / "exported" / "model.onnx"
    code = main(
        ["export", str(checkpoint), "--format", "onnx", "--out", str(out), "--size", "32", "48"]
        + ["--normalize", "--resize", "--argmax"]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and report["size"] == [32, 48] and out.is_file()
    info = read_metadata(ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]), out)
    assert info["model_name"] == "unet" and info["class_names"] == META["class_names"]


def test_cli_export_bad_checkpoint_exits_2(tmp_path, capsys):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    out = tmp_path / "x.onnx"
    assert main(["export", str(garbage), "--out", str(out)]) == 2
    assert main(["export", str(tmp_path / "missing.pt"), "--out", str(out)]) == 2
    torch.save({"model": {}, "model_name": "unet"}, tmp_path / "partial.pt")
    assert main(["export", str(tmp_path / "partial.pt"), "--out", str(out)]) == 2
    errors = capsys.readouterr().err
    assert "garbage.pt" in errors and "missing.pt" in errors and "partial.pt" in errors
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# Mask R-CNN


def test_mask_rcnn_onnx_parity(tmp_path):
    torch.manual_seed(0)
    model = build_model("maskrcnn_tiny", num_classes=3).eval()
    model.roi_heads.score_thresh = 0.0  # random weights: keep every detection to compare
    report = export_instance_model(model, tmp_path / "mrcnn.onnx", size=(96, 128), opset=11)
    assert report["passed"]
    first = report["checks"][0]
    assert first["detections"] > 0 and first["same_labels"]
    assert first["max_abs_masks_diff"] < 1e-3


def test_predict_onnx_mask_rcnn_matches_the_checkpoint(tmp_path):
    """`predict --onnx` on an exported Mask R-CNN gives the detections, drawing and masks of
    `predict CKPT` on the same image (random weights: the class scores are near 1/3)."""
    torch.manual_seed(0)
    model = build_model("maskrcnn_tiny", num_classes=3, width=8)
    meta = instance_meta(["square", "disc"], [3, 7])
    checkpoint = tmp_path / "mrcnn.pt"
    kwargs = {"num_classes": 3, "width": 8}
    payload = {"model": model.state_dict(), "model_name": "maskrcnn_tiny", "model_kwargs": kwargs}
    save_checkpoint(checkpoint, payload | {"meta": meta})
    image = tmp_path / "photo.png"
    Image.fromarray(_photo(96, 128)).save(image)
    onnx_file = tmp_path / "mrcnn.onnx"
    assert main(["export", str(checkpoint), "--out", str(onnx_file), "--size", "96", "128"]) == 0
    common = [str(image), "--score-threshold", "0.3", "--device", "cpu"]
    assert main(["predict", str(checkpoint), *common, "--out", str(tmp_path / "torch")]) == 0
    assert main(["predict", "--onnx", str(onnx_file), *common, "--out", str(tmp_path / "ort")]) == 0

    expected = json.loads((tmp_path / "torch" / "results.json").read_text())
    got = json.loads((tmp_path / "ort" / "results.json").read_text())
    assert len(expected) > 0 and len(got) == len(expected)
    assert [r["category_id"] for r in got] == [r["category_id"] for r in expected]
    assert {r["category_id"] for r in got} <= {3, 7}
    np.testing.assert_allclose([r["bbox"] for r in got], [r["bbox"] for r in expected], atol=1e-2)
    np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in expected], atol=1e-4)
    torch_masks = sorted(p.name for p in (tmp_path / "torch" / "masks" / "photo").iterdir())
    ort_masks = sorted(p.name for p in (tmp_path / "ort" / "masks" / "photo").iterdir())
    assert ort_masks == torch_masks and len(ort_masks) == len(expected)
    for name in ort_masks:
        a = np.asarray(Image.open(tmp_path / "torch" / "masks" / "photo" / name), dtype=np.int64)
        b = np.asarray(Image.open(tmp_path / "ort" / "masks" / "photo" / name), dtype=np.int64)
        assert (a != b).mean() < 1e-3  # a pixel whose probability sits at 0.5 may flip
    drawings = [np.asarray(Image.open(tmp_path / d / "photo.png"), float) for d in ("torch", "ort")]
    assert drawings[0].shape == (96, 128, 3) and np.abs(drawings[0] - drawings[1]).mean() < 0.1
    _predict_without_torch(onnx_file, [image], tmp_path / "free", "--score-threshold", "0.3")
    assert json.loads((tmp_path / "free" / "results.json").read_text()) == got


# ---------------------------------------------------------------------------------------------
# torch-free prediction


TORCH_FREE_PREDICT = """
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
from segworks.cli import main
code = main(sys.argv[1:])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))
loaded = [m for m in loaded if sys.modules[m] is not None]
assert not loaded, loaded
sys.exit(code)
"""


class ColourClasses(nn.Module):
    """Class = the strongest (smoothed, normalised) colour channel: varied, known labels."""

    def __init__(self):
        super().__init__()
        self.smooth = nn.Conv2d(3, 3, 3, padding=1, groups=3, bias=False)
        nn.init.constant_(self.smooth.weight, 1 / 9)

    def forward(self, x):
        return {"out": self.smooth(x)}


def _predict_without_torch(model: Path, inputs: list[Path], out: Path, *flags: str) -> None:
    args = ["predict", "--onnx", str(model), *map(str, inputs), "--out", str(out), *flags]
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(TORCH_FREE_PREDICT), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-6000:]


def test_onnx_predict_runs_without_torch(tmp_path):
    model = ColourClasses().eval()
    plain = tmp_path / "plain.onnx"  # numpy does normalisation and argmax
    full = tmp_path / "full.onnx"  # the graph does normalise, resize, argmax
    export_model(model, plain, size=SIZE, metadata=META)
    export_model(
        model,
        full,
        size=SIZE,
        include_normalize=True,
        include_resize=True,
        include_argmax=True,
        metadata=META,
    )
    images = tmp_path / "images"
    images.mkdir()
    exact = _photo(*SIZE, seed=1)
    other = _photo(40, 56, seed=2)
    Image.fromarray(exact).save(images / "exact.png")
    Image.fromarray(other).save(images / "other.png")

    _predict_without_torch(plain, [images / "exact.png"], tmp_path / "out_plain")
    _predict_without_torch(full, [images], tmp_path / "out_full")

    got = np.asarray(Image.open(tmp_path / "out_plain" / "exact_index.png"))
    x = torch.from_numpy(exact).permute(2, 0, 1)[None].contiguous()
    expected = _eager_wrapper(model, x).numpy()  # exact size: the resizes are identities
    assert got.shape == SIZE and _flips_beyond_ties(expected, got[None]) == 0

    got = np.asarray(Image.open(tmp_path / "out_full" / "other_index.png"))
    x = torch.from_numpy(other).permute(2, 0, 1)[None].contiguous()
    expected = _eager_wrapper(model, x).numpy()
    assert got.shape == (40, 56) and _flips_beyond_ties(expected, got[None]) == 0
    assert len(np.unique(got)) > 1  # the check is not comparing constant maps
    for kind in ("color", "overlay"):
        assert (tmp_path / "out_full" / f"other_{kind}.png").is_file()


def test_torch_block_is_effective(tmp_path):
    """Control for the test above: the guard does stop a path that imports torch."""
    result = subprocess.run(
        [sys.executable, "-c", 'import sys; sys.modules["torch"] = None; import segworks.export'],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "torch" in result.stderr


def test_onnx_parity_with_the_class_presence_gate(tmp_path):
    """The gate is part of the exported graph: the exported logits are the gated ones."""
    torch.manual_seed(0)
    kwargs = EXPORT_KWARGS["unet_resnet"] | {"presence_head": True, "presence_gate": True}
    model = build_model("unet_resnet", num_classes=3, **kwargs)
    _calibrate_batchnorm(model)
    path = tmp_path / "gated.onnx"
    report = export_model(model, path, format="onnx", size=SIZE, metadata=META)
    assert report["passed"] and report["max_abs_logit_diff"] < 1e-3
    x = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        gated = model(x)["out"]
        model.presence_gate = False
        plain = model(x)["out"]
    exported = _ort(path, x.numpy())[0]
    np.testing.assert_allclose(exported, gated.numpy(), atol=1e-3)
    assert not np.allclose(exported, plain.numpy(), atol=1e-3)
