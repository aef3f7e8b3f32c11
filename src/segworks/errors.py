"""User-facing errors. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations

from pathlib import Path


class SegworksError(ValueError):
    """A problem with the user's input (data, flags, files), not a bug in segworks."""


class DataError(SegworksError):
    """A problem with one file: the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem
