"""The `segworks` command line. Each subcommand lives in `segworks.commands.<name>` and exposes
`add_arguments(parser)` and `run(args) -> int`; only the chosen one is imported."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from segworks.errors import SegworksError

COMMANDS: dict[str, tuple[str, str]] = {
    "check-data": ("segworks.commands.check_data", "inspect a dataset and report every problem"),
    "train": ("segworks.commands.train", "train a model"),
    "eval": ("segworks.commands.evaluate", "evaluate a checkpoint on a dataset"),
    "predict": ("segworks.commands.predict", "predict images, folders or globs"),
    "models": ("segworks.commands.models", "list the registered models"),
    "weights": ("segworks.commands.weights", "list and fetch pretrained weights"),
    "demo": ("segworks.commands.demo", "train, evaluate and predict on a built-in dataset"),
    "export": ("segworks.commands.export", "export a checkpoint to ONNX or TorchScript"),
    "bench": ("segworks.commands.bench", "benchmark segworks against its peers"),
    "import-weights": ("segworks.commands.import_weights", "import Chainer / Detectron weights"),
}

log = logging.getLogger("segworks")


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segworks", description=__doc__.split(".")[0])
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging, tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = next((a for a in argv if a in COMMANDS), None)
    for name, (module, text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=text, description=text)
        if name == chosen:
            importlib.import_module(module).add_arguments(command_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except SegworksError as error:
        return _fail(args, f"error: {error}", 2)
    except OSError as error:
        if error.filename is None:
            return _fail(args, _internal(error), 1)
        return _fail(args, f"error: {error.filename}: {error.strerror or error}", 2)
    except KeyboardInterrupt:
        print(f"segworks {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        return _fail(args, _internal(error), 1)


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    """Print one line on stderr (the traceback too with --verbose) and return the exit code."""
    if args.verbose:
        log.exception("failed")
    one_line = " ".join(line.strip() for line in message.splitlines() if line.strip())
    print(f"segworks {args.command}: {one_line}", file=sys.stderr)
    return code


def _internal(error: BaseException) -> str:
    """A bug in segworks, not the user's input: the type and the first line, and the hint."""
    text = str(error).strip().splitlines()
    detail = f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
    return f"internal error: {detail} (run with --verbose for the traceback)"
