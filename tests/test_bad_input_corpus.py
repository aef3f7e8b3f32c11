"""A corpus of bad inputs across every command, as a new user would make them. For each case:
exit code 2, no traceback, one line on stderr that names the file or flag at fault, and no file
in the workspace created or changed (hashes before and after)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segworks.cli import main
from segworks.data.synthetic import write_shapes_dataset

TINY = [
    "--model-arg", "base_width=4", "--model-arg", "depth=2", "-e", "1", "-b", "2",
    "--crop-size", "16", "-g", "-1", "--workers", "0", "--no-tensorboard", "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """data/ (3 classes), bin/ (0/255), run/last.pt, and a few bad files."""
    root = tmp_path_factory.mktemp("corpus")
    write_shapes_dataset(root / "data", num_train=4, num_val=2, size=32)
    assert main(["train", "--data", str(root / "data"), "--out", str(root / "run"), *TINY]) == 0
    (root / "bogus.pt").write_bytes(np.random.default_rng(1).bytes(4096).replace(b"PK", b"QK"))
    (root / "notes.txt").write_text("just a file\n")
    (root / "empty").mkdir()
    (root / "empty.pt").write_bytes(b"")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(root / "img.png")
    (root / "badspec.yaml").write_text("splits: {train: {images: data/train/images, mask: x}}\n")
    (root / "syntax.yaml").write_text("splits: [unclosed\n")
    (root / "nosplits.yaml").write_text("root: .\n")
    nomask = root / "nomask" / "images"
    nomask.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(nomask / "a.png")
    (root / "list.txt").write_text("data/train/images/0000.png data/train/masks/nope.png\n")
    return root


CKPT = "{ws}/run/last.pt"
IMG = "{ws}/img.png"
DATA = "{ws}/data"
# (id, argv, a text the error line must contain)
CASES = [
    # check-data
    ("cd-missing-dir", ["check-data", "{ws}/nope"], "nope"),
    ("cd-a-text-file", ["check-data", "{ws}/notes.txt"], "notes.txt"),
    ("cd-empty-dir", ["check-data", "{ws}/empty"], "empty"),
    ("cd-no-masks", ["check-data", "{ws}/nomask"], "no mask file found"),
    ("cd-spec-typo", ["check-data", "{ws}/badspec.yaml"], "did you mean 'masks'"),
    ("cd-spec-syntax", ["check-data", "{ws}/syntax.yaml"], "syntax.yaml"),
    ("cd-spec-no-splits", ["check-data", "{ws}/nosplits.yaml"], "nosplits.yaml"),
    ("cd-list-missing", ["check-data", "-tt", "{ws}/nolist.txt", "-tr", DATA], "nolist.txt"),
    ("cd-list-no-images", ["check-data", "-tt", "{ws}/list.txt"], "-tr"),
    ("cd-fix-list-dir", ["check-data", DATA, "--fix-list", "{ws}/empty"], "--fix-list"),
    ("cd-classes-empty", ["check-data", DATA, "--classes", ","], "--classes"),
    # train
    ("tr-no-data", ["train", "--out", "{ws}/r", *TINY], "--data"),
    ("tr-missing-data", ["train", "--data", "{ws}/nope", "--out", "{ws}/r", *TINY], "nope"),
    ("tr-no-masks", ["train", "--data", "{ws}/nomask", "--out", "{ws}/r", *TINY], "no mask"),
    ("tr-spec-typo", ["train", "--data", "{ws}/badspec.yaml", "--out", "{ws}/r", *TINY], "mask"),
    ("tr-out-file", ["train", "--data", DATA, "--out", "{ws}/notes.txt", *TINY], "--out"),
    ("tr-out-under-file", ["train", "--data", DATA, "--out", "{ws}/notes.txt/r", *TINY], "--out"),
    ("tr-out-holds-run", ["train", "--data", DATA, "--out", "{ws}/run", *TINY], "--resume"),
    (
        "tr-model-arg-bogus",
        ["train", "--data", DATA, "--out", "{ws}/r", *TINY, "--model-arg", "bogus=1"],
        "--model-arg",
    ),  # fmt: skip
    (
        "tr-model-arg-form",
        ["train", "--data", DATA, "--out", "{ws}/r", *TINY, "--model-arg", "nokey"],
        "--model-arg",
    ),  # fmt: skip
    (
        "tr-model-unknown",
        ["train", "--data", DATA, "--out", "{ws}/r", *TINY, "--model", "unet9"],
        "unet9",
    ),  # fmt: skip
    (
        "tr-num-classes",
        [
            "train",
            "--data",
            DATA,
            "--out",
            "{ws}/r",
            *TINY,
            "-n",
            "2",
        ],  # below the 3 classes the data holds,
        "--num-classes",
    ),  # fmt: skip
    ("tr-lr-zero", ["train", "--data", DATA, "--out", "{ws}/r", *TINY, "-l", "0"], "lr"),
    (
        "tr-val-split",
        ["train", "--data", DATA, "--out", "{ws}/r", *TINY, "--val-split", "1.5"],
        "val_split",
    ),  # fmt: skip
    (
        "tr-split-missing",
        ["train", "--data", DATA, "--out", "{ws}/r", *TINY, "--train-split", "nosuch"],
        "nosuch",
    ),  # fmt: skip
    ("tr-resume-missing", ["train", "--resume", "{ws}/nope", *TINY], "nope"),
    ("tr-resume-bogus", ["train", "--resume", "{ws}/bogus.pt", *TINY], "bogus.pt"),
    ("tr-device", ["train", "--data", DATA, "--out", "{ws}/r", "--device", "tpu9"], "--device"),
    # eval
    ("ev-ckpt-missing", ["eval", "{ws}/nope.pt", "--data", DATA], "nope.pt"),
    ("ev-ckpt-bogus", ["eval", "{ws}/bogus.pt", "--data", DATA], "not a checkpoint file"),
    ("ev-ckpt-empty", ["eval", "{ws}/empty.pt", "--data", DATA], "empty.pt"),
    ("ev-ckpt-text", ["eval", "{ws}/notes.txt", "--data", DATA], "notes.txt"),
    ("ev-no-data", ["eval", CKPT], "--data"),
    ("ev-data-missing", ["eval", CKPT, "--data", "{ws}/nope"], "nope"),
    ("ev-split-missing", ["eval", CKPT, "--data", DATA, "--split", "nosuch"], "nosuch"),
    ("ev-json-dir", ["eval", CKPT, "--data", DATA, "--json", "{ws}/empty"], "--json"),
    (
        "ev-csv-under-file",
        ["eval", CKPT, "--data", DATA, "--csv", "{ws}/notes.txt/x.csv"],
        "--csv",
    ),  # fmt: skip
    ("ev-no-masks", ["eval", CKPT, "--data", "{ws}/nomask"], "no mask"),
    # predict
    ("pr-ckpt-missing", ["predict", "{ws}/nope.pt", IMG, "-o", "{ws}/p"], "nope.pt"),
    ("pr-ckpt-bogus", ["predict", "{ws}/bogus.pt", IMG, "-o", "{ws}/p"], "not a checkpoint"),
    ("pr-no-input", ["predict", CKPT, "-o", "{ws}/p"], "input"),
    ("pr-input-missing", ["predict", CKPT, "{ws}/nope.png", "-o", "{ws}/p"], "nope.png"),
    ("pr-input-broken", ["predict", CKPT, "{ws}/broken.png", "-o", "{ws}/p"], "broken.png"),
    ("pr-out-file", ["predict", CKPT, IMG, "-o", "{ws}/notes.txt"], "--out"),
    ("pr-alpha", ["predict", CKPT, IMG, "-o", "{ws}/p", "--alpha", "2"], "--alpha"),
    ("pr-batch", ["predict", CKPT, IMG, "-o", "{ws}/p", "-b", "0"], "--batch-size"),
    (
        "pr-overlap",
        ["predict", CKPT, IMG, "-o", "{ws}/p", "--tile", "16", "--overlap", "1.5"],
        "overlap",
    ),  # fmt: skip
    ("pr-device", ["predict", CKPT, IMG, "-o", "{ws}/p", "--device", "gpu:x"], "--device"),
    # export
    ("ex-ckpt-missing", ["export", "{ws}/nope.pt", "--out", "{ws}/m.onnx"], "nope.pt"),
    ("ex-ckpt-bogus", ["export", "{ws}/bogus.pt", "--out", "{ws}/m.onnx"], "bogus.pt"),
    ("ex-out-dir", ["export", CKPT, "--out", "{ws}/empty"], "--out"),
    ("ex-out-under-file", ["export", CKPT, "--out", "{ws}/notes.txt/m.onnx"], "--out"),
    ("ex-size", ["export", CKPT, "--out", "{ws}/m.onnx", "--size", "4", "4"], "size"),
    (
        "ex-sample-missing",
        ["export", CKPT, "--out", "{ws}/m.onnx", "--sample", "{ws}/no.png"],
        "no.png",
    ),  # fmt: skip
    # models, demo, bench
    ("mo-unknown", ["models", "unet9"], "unet9"),
    ("de-minutes", ["demo", "--minutes", "0", "--out", "{ws}/demo"], "--minutes"),
    ("de-out-file", ["demo", "--out", "{ws}/notes.txt"], "--out"),
    ("be-only", ["bench", "--only", "nosuch", "--no-write"], "--only"),
]


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_the_corpus_is_large_and_covers_every_command():
    assert len(CASES) >= 40
    commands = {argv[0] for _, argv, _ in CASES}
    assert commands >= {"check-data", "train", "eval", "predict", "export", "models", "demo"}
    assert len({case_id for case_id, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize("argv, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(ws, capsys, argv, expected):
    argv = [part.replace("{ws}", str(ws)) for part in argv]
    before = digest(ws)
    code = main(argv)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, f"exit {code}; stderr: {err}"
    assert "Traceback" not in err + captured.out
    assert err.startswith(f"segworks {argv[0]}: error: ") and "\n" not in err, err
    assert expected in err, err
    assert digest(ws) == before, "a file in the workspace was created or changed"
