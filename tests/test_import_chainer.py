"""Chainer snapshots of the RefineNet seed load into segworks with the original outputs.

The parity test installs Chainer (numpy < 2) in a throw-away virtual environment kept in the
pytest cache, builds there a Chainer network with the seed's link structure and names (written
here from the seed's description), saves it with `save_npz` and its logits on a photo, imports
the npz with `segworks import-weights` and compares the logits segworks' predictor gives on the
same photo (BGR, Caffe means). It skips, with the pip output, when Chainer cannot be installed.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from segworks.checkpoint import load_checkpoint
from segworks.cli import main
from segworks.errors import DataError
from segworks.inference import Predictor
from segworks.models import model_from_checkpoint
from segworks.models.foreign import detect_foreign_format, import_foreign
from segworks.models.foreign.chainer import seed_refinenet_key

CHAINER_MODEL = textwrap.dedent(
    """
    import sys
    import numpy as np
    import chainer
    import chainer.functions as F
    import chainer.links as L

    def conv(i, o, k, s=1, p=0, nobias=False):
        return L.Convolution2D(i, o, k, s, p, nobias=nobias)

    class BottleNeckA(chainer.Chain):  # chainer-ResNet v2: stride in conv1, projection conv4
        def __init__(self, i, ch, o, stride=2):
            super().__init__()
            with self.init_scope():
                self.conv1, self.bn1 = conv(i, ch, 1, stride, 0, True), L.BatchNormalization(ch)
                self.conv2, self.bn2 = conv(ch, ch, 3, 1, 1, True), L.BatchNormalization(ch)
                self.conv3, self.bn3 = conv(ch, o, 1, 1, 0, True), L.BatchNormalization(o)
                self.conv4, self.bn4 = conv(i, o, 1, stride, 0, True), L.BatchNormalization(o)
        def __call__(self, x):
            h = F.relu(self.bn1(self.conv1(x)))
            h = F.relu(self.bn2(self.conv2(h)))
            return F.relu(self.bn3(self.conv3(h)) + self.bn4(self.conv4(x)))

    class BottleNeckB(chainer.Chain):
        def __init__(self, i, ch):
            super().__init__()
            with self.init_scope():
                self.conv1, self.bn1 = conv(i, ch, 1, 1, 0, True), L.BatchNormalization(ch)
                self.conv2, self.bn2 = conv(ch, ch, 3, 1, 1, True), L.BatchNormalization(ch)
                self.conv3, self.bn3 = conv(ch, i, 1, 1, 0, True), L.BatchNormalization(i)
        def __call__(self, x):
            h = F.relu(self.bn1(self.conv1(x)))
            h = F.relu(self.bn2(self.conv2(h)))
            return F.relu(self.bn3(self.conv3(h)) + x)

    class Block(chainer.Chain):
        def __init__(self, n, i, ch, o, stride=2):
            super().__init__()
            self.add_link("a", BottleNeckA(i, ch, o, stride))
            for k in range(1, n):
                self.add_link("b%d" % k, BottleNeckB(o, ch))
            self.n = n
        def __call__(self, x):
            h = self.a(x)
            for k in range(1, self.n):
                h = self["b%d" % k](h)
            return h

    class RCU(chainer.Chain):
        def __init__(self, f):
            super().__init__()
            with self.init_scope():
                self.conv1, self.conv2 = conv(f, f, 3, 1, 1), conv(f, f, 3, 1, 1)
        def __call__(self, x):
            return x + self.conv2(F.relu(self.conv1(F.relu(x))))

    class MRF(chainer.Chain):
        def __init__(self, f):
            super().__init__()
            with self.init_scope():
                self.conv1, self.conv2 = conv(f, f, 3, 1, 1), conv(f, f, 3, 1, 1)
                self.upsample = L.Deconvolution2D(f, f, ksize=4, stride=2, pad=1)
        def __call__(self, x, y=None):
            h = self.conv1(x)
            return h if y is None else h + self.upsample(self.conv2(y))

    class CRP(chainer.Chain):
        def __init__(self, f):
            super().__init__()
            with self.init_scope():
                self.conv1, self.conv2 = conv(f, f, 3, 1, 1), conv(f, f, 3, 1, 1)
        def __call__(self, x):
            h = F.relu(x)
            c = self.conv1(F.max_pooling_2d(h, 5, stride=1, pad=2))
            h = h + c
            c = self.conv2(F.max_pooling_2d(c, 5, stride=1, pad=2))
            return h + c

    class RefineNet(chainer.Chain):
        def __init__(self, f):
            super().__init__()
            with self.init_scope():
                self.rcu1_1, self.rcu1_2, self.rcu2_1, self.rcu2_2 = RCU(f), RCU(f), RCU(f), RCU(f)
                self.mrf, self.crp, self.rcu3 = MRF(f), CRP(f), RCU(f)
        def __call__(self, x, y=None):
            x = self.rcu1_2(self.rcu1_1(x))
            h = self.mrf(x) if y is None else self.mrf(x, self.rcu2_2(self.rcu2_1(y)))
            return self.rcu3(self.crp(h))

    class RefineResNet(chainer.Chain):
        def __init__(self, n_class, f):
            super().__init__()
            with self.init_scope():
                self.conv1, self.bn1 = conv(3, 64, 7, 2, 3, True), L.BatchNormalization(64)
                self.res2 = Block(3, 64, 64, 256, 1)
                self.res3 = Block(4, 256, 128, 512)
                self.res4 = Block(6, 512, 256, 1024)
                self.res5 = Block(3, 1024, 512, 2048)
                self.pool2, self.pool3 = conv(256, f, 1), conv(512, f, 1)
                self.pool4, self.pool5 = conv(1024, f, 1), conv(2048, 2 * f, 1)
                self.upsample = L.Deconvolution2D(f, f, ksize=8, stride=4, pad=2)
                self.rfn2, self.rfn3 = RefineNet(f), RefineNet(f)
                self.rfn4, self.rfn5 = RefineNet(f), RefineNet(2 * f)
                self.pool6 = conv(2 * f, f, 1)
                self.rcu1, self.rcu2 = RCU(f), RCU(f)
                self.final = conv(f, n_class, 1)
        def __call__(self, x):
            h = F.max_pooling_2d(F.relu(self.bn1(self.conv1(x))), 3, stride=2)
            h2 = self.res2(h)
            h3 = self.res3(h2)
            h4 = self.res4(h3)
            h5 = self.res5(h4)
            r5 = self.pool6(self.rfn5(self.pool5(h5)))
            r4 = self.rfn4(self.pool4(h4), r5)
            r3 = self.rfn3(self.pool3(h3), r4)
            r2 = self.rfn2(self.pool2(h2), r3)
            o = self.rcu1(self.rcu1(r2))  # the seed calls rcu1 twice, never rcu2
            return self.final(self.upsample(o))

    def randomise(model, rng):
        for link in model.links():
            if isinstance(link, L.BatchNormalization):
                link.gamma.array[...] = rng.uniform(0.2, 0.5, link.gamma.shape)
                link.beta.array[...] = rng.normal(0, 0.1, link.beta.shape)
                link.avg_mean[...] = rng.normal(0, 0.1, link.avg_mean.shape)
                link.avg_var[...] = rng.uniform(0.5, 1.5, link.avg_var.shape)
            elif isinstance(link, (L.Convolution2D, L.Deconvolution2D)):
                fan_in = link.W.array[0].size
                link.W.array[...] = rng.normal(0, 0.5 / np.sqrt(fan_in), link.W.shape)
                if link.b is not None:
                    link.b.array[...] = rng.normal(0, 0.05, link.b.shape)

    out = sys.argv[1]
    rng = np.random.RandomState(0)
    model = RefineResNet(n_class=5, f=16)
    randomise(model, rng)
    model.final.W.array *= 30  # logits of a few units, so 1e-4 is a strict tolerance
    photo = np.load(out + "/photo.npy")  # uint8 RGB (H, W, 3)
    mean = np.array([103.939, 116.779, 123.68], dtype=np.float32)  # BGR
    x = (photo[:, :, ::-1].astype(np.float32) - mean).transpose(2, 0, 1)[None].copy()
    with chainer.using_config("train", False), chainer.no_backprop_mode():
        logits = model(x).array
    np.save(out + "/logits.npy", logits)
    chainer.serializers.save_npz(out + "/snapshot.npz", model)
    """
)


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        pytest.skip(
            f"{what} failed, Chainer parity not checked:\n{done.stdout[-1500:]}"
            f"\n{done.stderr[-1500:]}"
        )


@pytest.fixture(scope="module")
def chainer_python(request, tmp_path_factory) -> Path:
    """Python of a virtual environment with Chainer and numpy < 2 (kept in the pytest cache;
    in a temporary folder when the cache is off, `-p no:cacheprovider`)."""
    cache = getattr(request.config, "cache", None)
    root = Path(cache.mkdir("chainer-venv")) if cache else tmp_path_factory.mktemp("chainer-venv")
    python = root / "bin" / "python"
    check = [str(python), "-c", "import chainer, numpy; assert numpy.__version__ < '2'"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    _run([sys.executable, "-m", "venv", "--clear", str(root)], "creating a virtual environment")
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    # chainer's setup.py imports pkg_resources, gone from new setuptools: build without isolation
    _run(pip + ["setuptools<70", "wheel", "numpy<2"], "pip install setuptools<70 numpy<2")
    _run(pip + ["--no-build-isolation", "chainer"], "pip install chainer")
    _run(check, "importing chainer")
    return python


@pytest.mark.slow
def test_seed_snapshot_gives_the_chainer_logits(chainer_python, tmp_path, capsys):
    # 1. the Chainer side: random seed-structured RefineNet, its npz and its logits on a photo
    rng = np.random.default_rng(3)
    photo = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    np.save(tmp_path / "photo.npy", photo)
    script = tmp_path / "seed_refinenet.py"
    script.write_text(CHAINER_MODEL)
    done = subprocess.run(
        [str(chainer_python), str(script), str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    expected = np.load(tmp_path / "logits.npy")[0]

    # 2. the import, through the command line
    snapshot = tmp_path / "snapshot.npz"
    assert detect_foreign_format(snapshot) == "chainer-npz"
    out = tmp_path / "seed.pt"
    code = main(
        ["import-weights", str(snapshot), "--model", "refinenet_resnet50", "--out", str(out)]
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert "rcu2/conv1/W: defined by the seed but never called" in printed
    assert "rfn5/rcu2_1/conv1/W: the 1/32 RefineNet block has one path" in printed

    # 3. segworks' predictor on the same photo: BGR, Caffe means, no std
    checkpoint = load_checkpoint(out)
    assert checkpoint["model_name"] == "refinenet_seed_resnet50"
    assert checkpoint["meta"]["channel_order"] == "bgr"
    meta = checkpoint["meta"]
    predictor = Predictor(
        model_from_checkpoint(checkpoint),
        mean=meta["mean"],
        std=meta["std"],
        channel_order=meta["channel_order"],
    )
    logits = predictor.logits(photo).numpy()
    assert logits.shape == expected.shape == (5, 64, 96)
    assert np.abs(expected).max() > 0.5  # the comparison is not between two near-zero maps
    assert np.abs(logits - expected).max() < 1e-4
    assert (logits.argmax(0) == expected.argmax(0)).all()

    # 4. the control: RGB instead of BGR gives other logits
    rgb = Predictor(model_from_checkpoint(checkpoint), mean=meta["mean"], std=meta["std"])
    assert np.abs(rgb.logits(photo).numpy() - expected).max() > 1e-2


def _npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez(path, **arrays)
    return path


def test_seed_link_names_map_to_segworks_modules():
    table = {
        "conv1/W": "backbone.conv1.weight",
        "bn1/avg_var": "backbone.bn1.running_var",
        "res2/a/conv4/W": "backbone.layer1.0.downsample.0.weight",
        "res3/a/bn4/gamma": "backbone.layer2.0.downsample.1.weight",
        "res4/b22/conv2/W": "backbone.layer3.22.conv2.weight",
        "res5/b2/bn3/beta": "backbone.layer4.2.bn3.bias",
        "pool5/b": "adapt.3.bias",
        "pool6/W": "reduce4.weight",
        "rfn5/rcu1_2/conv1/W": "refine4.rcus_x.1.conv1.weight",
        "rfn2/rcu2_1/conv2/b": "refine1.rcus_y.0.conv2.bias",
        "rfn4/mrf/upsample/W": "refine3.fusion.up.weight",
        "rfn3/crp/conv2/W": "refine2.crp.blocks.1.1.weight",
        "rfn3/rcu3/conv1/W": "refine2.output_conv.conv1.weight",
        "rcu1/conv2/W": "head.conv2.weight",
        "upsample/W": "upsample.weight",
        "final/b": "classifier.bias",
    }
    for key, target in table.items():
        assert seed_refinenet_key(key) == target, key
    for key in ("bn1/N", "fc/W", "res6/a/conv1/W", "rfn2/mrf/conv3/W"):
        assert seed_refinenet_key(key) is None, key


def test_a_snapshot_missing_weights_is_refused(tmp_path, capsys):
    arrays = {"res2/a/conv1/W": np.zeros((64, 64, 1, 1), np.float32)}
    arrays |= {f"res4/b{i}/conv1/W": np.zeros((256, 1024, 1, 1), np.float32) for i in range(1, 6)}
    path = _npz(tmp_path / "partial.npz", arrays)
    with pytest.raises(DataError, match="left at random"):
        import_foreign(path, model="refinenet_resnet50")
    code = main(
        [
            "import-weights",
            str(path),
            "--model",
            "refinenet_resnet50",
            "--out",
            str(tmp_path / "x.pt"),
        ]
    )
    assert code == 2
    assert "left at random" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_wrong_depth_and_foreign_files_are_refused(tmp_path):
    arrays = {"res2/a/conv1/W": np.zeros((64, 64, 1, 1), np.float32)}
    arrays |= {f"res4/b{i}/conv1/W": np.zeros((256, 1024, 1, 1), np.float32) for i in range(1, 6)}
    path = _npz(tmp_path / "r50.npz", arrays)
    with pytest.raises(DataError, match="resnet50.*cannot take it"):
        import_foreign(path, model="refinenet_resnet101")
    not_seed = _npz(tmp_path / "other.npz", {"fc/W": np.zeros((2, 2), np.float32)})
    with pytest.raises(DataError, match="not a RefineNet seed snapshot"):
        import_foreign(not_seed, model="refinenet_resnet101")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert detect_foreign_format(text) is None
    torch.save({"a": torch.zeros(1)}, tmp_path / "torch.pt")
    assert detect_foreign_format(tmp_path / "torch.pt") is None
    with pytest.raises(DataError, match="not a weight file segworks can import"):
        import_foreign(text, model="refinenet_resnet101")


def test_predictor_channel_order_flips_the_input():
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return {"out": x[:, :2]}

    image = np.zeros((4, 4, 3), np.uint8)
    image[..., 0], image[..., 2] = 200, 10  # red
    Predictor(Probe(), mean=(0, 0, 0), std=(1 / 255,) * 3, channel_order="bgr").logits(image)
    Predictor(Probe(), mean=(0, 0, 0), std=(1 / 255,) * 3).logits(image)
    bgr, rgb = seen
    assert torch.allclose(bgr[0, 0], torch.full((4, 4), 10.0))
    assert torch.allclose(rgb[0, 0], torch.full((4, 4), 200.0))
    with pytest.raises(ValueError, match="channel_order"):
        Predictor(Probe(), channel_order="rbg")
