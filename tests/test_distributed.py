"""DistributedDataParallel on the CPU: 2 processes over gloo, as torchrun would start them.

Checks that validation gathers every rank's confusion matrix (metrics equal a single-process
evaluation of the same weights) and that a resumed 2-process run continues bit-identically.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from segworks.checkpoint import load_checkpoint
from segworks.config import TrainConfig
from segworks.data import open_source
from segworks.data.synthetic import write_shapes_dataset
from segworks.data.transforms import eval_transforms
from segworks.engine.train import predict_labels, split_samples
from segworks.metrics import ConfusionMatrix
from segworks.models import model_from_checkpoint

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
WORLD = 2


def _worker(rank: int, port: int, job: dict | list) -> None:
    """One rank: torchrun's environment, then the training engine or the CLI."""
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    torch.set_num_threads(1)
    if isinstance(job, list):
        from segworks.cli import main

        assert main(job) == 0
    else:
        from segworks.engine.train import train

        train(TrainConfig.from_dict(job))


def launch(job: TrainConfig | list[str]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    payload = job.to_dict() if isinstance(job, TrainConfig) else job
    mp.spawn(_worker, args=(port, payload), nprocs=WORLD, join=True)


def ddp_config(data: Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(
        data=str(data), model="unet", model_kwargs={"base_width": 4, "depth": 2}, epochs=2,
        batch_size=2, lr=3e-3, schedule="step", crop_size=28, jitter=0.2, workers=0,
        device="cpu", out=str(out), tensorboard=False, progress=False,
    )  # fmt: skip
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    # 5 val images: an odd count, so an evenly padded sampler would count one twice
    return write_shapes_dataset(tmp_path_factory.mktemp("shapes"), num_train=12, num_val=5, size=32)


@pytest.fixture(scope="module")
def full_run(shapes, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "full"
    launch(ddp_config(shapes, out))
    return out


def single_process_metrics(checkpoint: dict) -> dict:
    """The val metrics of the checkpoint's weights, evaluated by one process."""
    cfg = TrainConfig.from_dict(checkpoint["config"])
    model = model_from_checkpoint(checkpoint)
    source = open_source(cfg.data)
    _, val_samples = split_samples(cfg, source.splits)
    dataset = source.dataset(val_samples, transform=eval_transforms())
    matrix = ConfusionMatrix(3)
    with torch.no_grad():
        for index in range(len(dataset)):
            image, target = dataset[index]
            matrix.update(predict_labels(model(image[None])["out"])[0], target)
    return matrix.compute()


def test_ddp_validation_metrics_equal_a_single_process(shapes, full_run):
    checkpoint = load_checkpoint(full_run / "last.pt")
    assert checkpoint["world_size"] == WORLD
    assert checkpoint["step"] == 2 * 3  # 12 images / 2 ranks / batch 2 = 3 steps per epoch
    single = single_process_metrics(checkpoint)
    gathered = checkpoint["metrics"]
    assert gathered["num_pixels"] == single["num_pixels"] == 5 * 32 * 32
    for key in ("pixel_accuracy", "miou", "mean_dice", "fwiou"):
        assert gathered[key] == single[key], key


def test_resumed_ddp_run_continues_bit_identically(shapes, full_run, tmp_path):
    cut = tmp_path / "cut"
    launch(ddp_config(shapes, cut, epochs=1))
    launch(["train", "--resume", str(cut), "-e", "2"])
    a = load_checkpoint(full_run / "last.pt")
    b = load_checkpoint(cut / "last.pt")
    assert (b["epoch"], b["step"]) == (a["epoch"], a["step"]) == (2, 6)
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    assert len(b["rng"]["ranks"]) == WORLD


def test_ddp_run_with_the_weight_average_validates_the_saved_average(shapes, tmp_path):
    """Every rank's average starts from the weights DDP synchronised, so the gathered metrics
    are those of the one average rank 0 saves."""
    out = tmp_path / "ema"
    launch(ddp_config(shapes, out, ema_decay=0.9))
    checkpoint = load_checkpoint(out / "last.pt")
    assert any(
        not torch.equal(v, checkpoint["train_model"][k]) for k, v in checkpoint["model"].items()
    )
    assert checkpoint["metrics"]["miou"] == single_process_metrics(checkpoint)["miou"]


@pytest.mark.parametrize("presence_weight", [1.0, 0.0])
def test_ddp_trains_the_presence_head_and_lets_it_idle_at_weight_zero(
    shapes, tmp_path, presence_weight
):
    """A presence head whose loss weight is 0 gets no gradient: DDP is told so instead of
    failing on the second step; with weight 1 the head's weights move."""
    out = tmp_path / "presence"
    kwargs = {"encoder": "resnet18", "decoder_channels": [8, 8, 8, 8, 8], "presence_head": True}
    cfg = ddp_config(shapes, out, model="unet_resnet", model_kwargs=kwargs, epochs=1,
                     presence_weight=presence_weight)  # fmt: skip
    launch(cfg)
    trained = load_checkpoint(out / "last.pt")["model"]["presence_head.weight"]
    torch.manual_seed(cfg.seed)
    from segworks.models import build_model

    start = build_model("unet_resnet", num_classes=3, **kwargs).state_dict()
    assert torch.equal(trained, start["presence_head.weight"]) == (presence_weight == 0)
