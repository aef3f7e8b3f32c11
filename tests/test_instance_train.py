"""Instance runs go through the one training loop: checkpoints, an exact resume, and the flags
(--max-minutes, --patience, --clip-grad, --recipe, --loss, --optimizer) act or are refused."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from segworks.checkpoint import load_checkpoint
from segworks.cli import main
from segworks.coco_eval import encode_mask
from segworks.config import TrainConfig
from segworks.data.instances import synthetic_shapes
from segworks.engine import instance as instance_engine
from segworks.engine.instance import InstanceTask, run_eval
from segworks.engine.train import build_optimizer, train
from segworks.errors import DataError
from segworks.inference.instance_predict import run_predict
from segworks.recipes import recipe_settings


def _write_coco(folder, samples):
    """Synthetic shapes as PNG files and a COCO JSON (RLE masks); the last image is empty."""
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index, (image, target) in enumerate(samples):
        pixels = (image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        empty = index == len(samples) - 1
        if empty:
            pixels[:] = 40
        Image.fromarray(pixels).save(folder / f"{index}.png")
        images.append({"id": index, "file_name": f"{index}.png", "height": 64, "width": 64})
        for mask, label in zip(target["masks"], target["labels"].tolist()):
            if not empty:
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": index,
                        "category_id": label,
                        "segmentation": encode_mask(mask.numpy()),
                        "iscrowd": 0,
                    }
                )
    categories = [{"id": 1, "name": "disc"}, {"id": 2, "name": "square"}]
    data = {"images": images, "annotations": annotations, "categories": categories}
    (folder / "ann.json").write_text(json.dumps(data))
    return folder / "ann.json"


def _config(ann, out, **extra) -> TrainConfig:
    """The instance recipe on 6 train / 2 val images of 64 px: 3 steps per epoch."""
    given = dict(
        task="instance", data=str(ann), model="maskrcnn_tiny", out=str(out), epochs=1,
        batch_size=2, lr=2e-3, optimizer="adamw", val_split=0.25, seed=0, device="cpu",
        min_size=64, max_size=64, workers=0, tensorboard=False, progress=False,
    )  # fmt: skip
    return TrainConfig(**recipe_settings("instance", given | extra))


def _count_calls(monkeypatch, name: str, *, stop_at: int | None = None) -> dict:
    """Count calls of InstanceTask.`name`; raise KeyboardInterrupt (Ctrl-C) at call `stop_at`."""
    real = getattr(InstanceTask, name)
    calls = {"n": 0}

    def counted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == stop_at:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(InstanceTask, name, counted)
    return calls


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("instance")
    return root, _write_coco(root / "data", synthetic_shapes(8, size=64, seed=3))


@pytest.fixture(scope="module")
def trained(data):
    """Two uninterrupted epochs (6 steps)."""
    root, ann = data
    train(_config(ann, root / "run", epochs=2))
    return root, ann


def test_train_writes_instance_checkpoints(trained):
    root, _ = trained
    best = load_checkpoint(root / "run" / "best.pt")
    last = load_checkpoint(root / "run" / "last.pt")
    assert best["model_name"] == "maskrcnn_tiny" and "optimizer" not in best
    assert best["meta"]["task"] == "instance"
    assert best["meta"]["class_names"] == ["background", "disc", "square"]
    assert best["model_kwargs"]["num_classes"] == 3 and last["epoch"] == 2 and last["step"] == 6
    assert set(last["metrics"]["segm"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl", "per_class"}
    assert np.isfinite(last["metrics"]["loss"])
    config = TrainConfig.from_dict(last["config"])  # the config layout of every task
    assert config.task == "instance" and config.schedule == "multistep" and config.gamma == 1.0
    assert last["best"]["metric"] == "segm_AP"


def test_resume_after_interrupt_matches_the_uninterrupted_run(trained, tmp_path, monkeypatch):
    root, ann = trained
    with monkeypatch.context() as patch:
        _count_calls(patch, "loss", stop_at=5)  # Ctrl-C in the second step of epoch 2
        with pytest.raises(KeyboardInterrupt):
            train(_config(ann, tmp_path / "cut", epochs=2))
    calls = _count_calls(monkeypatch, "loss")
    assert main(["train", "--resume", str(tmp_path / "cut"), "--no-progress"]) == 0
    assert calls["n"] == 2  # steps 5 and 6 only: the first four were not trained again
    resumed = load_checkpoint(tmp_path / "cut" / "last.pt")
    uninterrupted = load_checkpoint(root / "run" / "last.pt")
    assert resumed["step"] == 6 and resumed["epoch"] == 2
    for key, value in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][key], value), key


def test_an_instance_run_validates_and_saves_the_weight_average(data, tmp_path):
    _, ann = data
    train(_config(ann, tmp_path / "ema", epochs=2, ema_decay=0.9))
    last = load_checkpoint(tmp_path / "ema" / "last.pt")
    assert any(not torch.equal(v, last["train_model"][k]) for k, v in last["model"].items())
    assert "train_model" not in load_checkpoint(tmp_path / "ema" / "best.pt")
    assert np.isfinite(last["metrics"]["loss"]) and 0 <= last["metrics"]["segm"]["AP"] <= 1


def test_max_minutes_stops_training_and_validation(data, tmp_path, monkeypatch):
    _, ann = data
    predictions = _count_calls(monkeypatch, "predict")
    train(_config(ann, tmp_path / "run", epochs=5, max_minutes=1e-9))
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert last["epoch"] == 1 and last["step"] == 1  # one step, then out of time
    assert predictions["n"] == 1  # validation stopped at the limit too (2 val images)


def test_patience_stops_an_instance_run(data, tmp_path, monkeypatch):
    _, ann = data
    monkeypatch.setattr(InstanceTask, "score", lambda self, metrics: 0.0)  # never improves
    train(_config(ann, tmp_path / "run", epochs=5, patience=1))
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 2


def test_clip_grad_bounds_an_instance_step(data, tmp_path):
    _, ann = data
    plain = dict(optimizer="sgd", momentum=0.0, weight_decay=0.0, warmup=0, val_split=0.0)
    start = _weights_after(ann, tmp_path / "a", max_minutes=1e-9, lr=1e-12, **plain)
    clipped = _weights_after(ann, tmp_path / "b", max_minutes=1e-9, clip_grad=1e-6, **plain)
    free = _weights_after(ann, tmp_path / "c", max_minutes=1e-9, **plain)
    clipped_step = max(float((clipped[k] - start[k]).abs().max()) for k in start)
    free_step = max(float((free[k] - start[k]).abs().max()) for k in start)
    assert clipped_step <= 2e-3 * 1e-6 * 1.01  # lr * max norm
    assert free_step > 100 * clipped_step  # the control: unclipped, the step is far larger


def _weights_after(ann, out, **settings) -> dict:
    torch.manual_seed(0)
    train(_config(ann, out, epochs=2, **settings))
    state = load_checkpoint(out / "last.pt")["model"]
    return {k: v.float() for k, v in state.items() if v.is_floating_point()}


def test_the_instance_recipe_is_the_default_and_flags_mean_the_same(data, tmp_path, capsys):
    from segworks.cli import build_parser
    from segworks.commands.train import config_from_args

    _, ann = data
    argv = ["train", "--task", "instance", "--data", str(ann), "-g", "-1"]
    args = build_parser(argv).parse_args(argv)
    cfg = config_from_args(args)
    assert (cfg.optimizer, cfg.lr, cfg.schedule, cfg.milestones) == ("sgd", 0.01, "multistep",
                                                                     (0.75, 0.9))  # fmt: skip
    assert (cfg.min_size, cfg.max_size, cfg.device) == (800, 1333, "cpu")
    model = torch.nn.Linear(2, 2)
    assert type(build_optimizer(TrainConfig(**{**cfg.__dict__, "optimizer": "adam"}), model)) is (
        torch.optim.Adam
    )  # --optimizer adam is Adam, not AdamW
    base = ["train", "--task", "instance", "--data", str(ann), "--out", str(tmp_path / "x")]
    for extra, words in (
        (["--loss", "dice"], "--loss"),
        (["--crop-size", "64"], "--crop-size"),
        (["--recipe", "small"], "--recipe small"),
        (["--mean", "0", "0", "0"], "--mean"),
    ):
        capsys.readouterr()
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert words in err and "instance" in err
    capsys.readouterr()
    assert main(["train", "--data", str(ann), "--gamma", "2", "--out", str(tmp_path / "y")]) == 2
    assert "--gamma" in capsys.readouterr().err


def test_only_empty_images_train(tmp_path):
    ann = _write_coco(tmp_path / "data", synthetic_shapes(1, size=64, seed=0))  # one empty image
    train(_config(ann, tmp_path / "run", val_split=0.0))
    assert (tmp_path / "run" / "last.pt").is_file()
    assert not (tmp_path / "run" / "best.pt").exists()  # no validation: no best, as semantic


def test_eval_and_predict(trained, tmp_path, capsys):
    root, ann = trained
    checkpoint = str(root / "run" / "best.pt")
    capsys.readouterr()
    argv = ["eval", checkpoint, "--data", str(ann), "--json", str(tmp_path / "m.json")]
    assert main([*argv, "--device", "cpu"]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert set(metrics) >= {"bbox", "segm", "loss"} and "disc" in metrics["segm"]["per_class"]
    assert metrics["num_images"] == 8
    assert "AP50" in capsys.readouterr().out
    out = tmp_path / "pred"
    inputs = [str(ann.parent / "0.png"), str(ann.parent / "7.png")]  # 7.png has no objects
    args = _Args(checkpoint=checkpoint, inputs=inputs, out=str(out), score_threshold=0.0)
    assert run_predict(_Args(**args.__dict__, contour=True)) == 0
    assert (out / "0.png").is_file() and (out / "7.png").is_file()
    results = json.loads((out / "results.json").read_text())
    assert all(
        {"image_id", "category_id", "bbox", "score", "segmentation"} <= set(r) for r in results
    )
    assert len(sorted((out / "masks").rglob("*.png"))) == len(results)


def test_eval_honours_max_images_and_no_progress(trained, tmp_path, capsys):
    root, ann = trained
    argv = ["eval", str(root / "run" / "best.pt"), "--data", str(ann), "--device", "cpu"]
    capsys.readouterr()
    assert main([*argv, "--max-images", "3", "--no-progress", "--json", str(tmp_path / "a")]) == 0
    assert "eval" not in capsys.readouterr().err  # no progress bar
    assert json.loads((tmp_path / "a").read_text())["num_images"] == 3


def test_eval_rejects_other_classes(trained):
    root, ann = trained
    data = json.loads(ann.read_text())
    data["categories"][1]["name"] = "triangle"
    (ann.parent / "other.json").write_text(json.dumps(data))
    args = _Args(checkpoint=str(root / "run" / "best.pt"), data=str(ann.parent / "other.json"))
    with pytest.raises(DataError, match="differ from the checkpoint"):
        run_eval(args)


def test_engine_instance_holds_no_loop_of_its_own():
    assert not hasattr(instance_engine, "run_train")


class _Args:
    def __init__(self, **values):
        self.__dict__.update(values)
