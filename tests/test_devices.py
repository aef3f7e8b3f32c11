"""One rule for --device and -g/--gpu in every command: --device wins unless it is "auto"."""

import argparse

import pytest
import torch

from segworks.cli import build_parser
from segworks.devices import device_from_args, device_name


@pytest.mark.parametrize(
    ("device", "gpu", "expected"),
    [
        (None, None, "auto"),
        ("auto", None, "auto"),
        ("auto", -1, "cpu"),
        (None, 1, "cuda:1"),
        ("cpu", 0, "cpu"),  # --device wins over -g
        ("cuda:1", -1, "cuda:1"),
    ],
)
def test_device_name(device, gpu, expected):
    assert device_name(device, gpu) == expected


@pytest.mark.parametrize("command", ["train", "eval", "predict"])
def test_every_command_follows_the_rule(command):
    """`-g -1` picks the CPU; `--device cpu -g 0` stays on the CPU, in each command."""
    extra = {"train": ["--data", "d"], "eval": ["ckpt.pt"], "predict": ["ckpt.pt", "x.png"]}
    for flags in (["-g", "-1"], ["--device", "cpu", "-g", "0"]):
        argv = [command, *extra[command], *flags]
        args = build_parser(argv).parse_args(argv)
        assert device_for(command, args) == torch.device("cpu")


def device_for(command: str, args: argparse.Namespace) -> torch.device:
    if command == "train":
        from segworks.commands.train import config_from_args
        from segworks.devices import resolve_device

        return resolve_device(config_from_args(args).device)
    from segworks.commands.predict import resolve_device

    return resolve_device(args)


def test_instance_commands_use_the_same_rule():
    args = argparse.Namespace(device="cpu", gpu=0)  # as the instance eval/predict read them
    assert device_from_args(args) == torch.device("cpu")
    assert device_from_args(argparse.Namespace(gpu=-1)) == torch.device("cpu")
