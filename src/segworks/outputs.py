"""Check output locations before any work starts, so a bad `--out` costs no inference time.

Each check raises SegworksError naming the flag and the path: a file where a folder is wanted
(or the reverse), a parent that is a file, or a location that cannot be written (permissions,
a read-only file system). A run folder that already holds a run is refused unless the user
resumes or overwrites it, so no checkpoint is replaced without a word.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from segworks.errors import SegworksError

RUN_FILES = ("config.json", "last.pt", "best.pt", "metrics.csv", "interrupt.pt")


def check_output_dir(path: str | Path, flag: str) -> Path:
    """`path` is a folder segworks may create and write into."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SegworksError(f"{flag} {path}: is a file; expected a folder (or a new name)")
    _check_writable(path if path.is_dir() else _existing_parent(path, flag), path, flag)
    return path


def check_output_file(path: str | Path, flag: str) -> Path:
    """`path` is a file segworks may create or replace (never a folder)."""
    path = Path(path)
    if path.is_dir():
        raise SegworksError(f"{flag} {path}: is a folder; expected a file name")
    _check_writable(_existing_parent(path, flag), path, flag)
    return path


def run_files(path: str | Path) -> list[str]:
    """The names of RUN_FILES present in `path` (none when it is not a folder)."""
    path = Path(path)
    return [name for name in RUN_FILES if (path / name).is_file()] if path.is_dir() else []


def check_run_dir(path: str | Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse a run folder that holds a run, unless resuming or overwriting it."""
    path = Path(path)
    found = run_files(path)
    if found and not (resume or overwrite):
        raise SegworksError(
            f"--out {path}: holds a run already ({', '.join(found)}); continue it with "
            f"--resume {path}, replace it with --overwrite, or choose another --out"
        )


def _existing_parent(path: Path, flag: str) -> Path:
    """The nearest folder above `path` that exists; a file on the way is an error."""
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise SegworksError(f"{flag} {path}: {parent} is a file, not a folder")
            return parent
    raise SegworksError(f"{flag} {path}: no existing folder above it")


def _check_writable(folder: Path, path: Path, flag: str) -> None:
    """Create (and at once delete) a temporary file in `folder`: the only test that also
    catches read-only file systems and ACLs."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        reason = error.strerror or str(error)
        raise SegworksError(f"{flag} {path}: cannot write in {folder} ({reason})") from None


def clear_run(path: str | Path) -> list[Path]:
    """Delete the checkpoints and logs of an earlier run in `path` (a new run replaces it, so no
    stale best.pt or epoch snapshot can pass for one of its own); returns what was deleted."""
    path = Path(path)
    stale = [path / name for name in run_files(path)] + sorted(path.glob("epoch_*.pt"))
    for file in stale:
        file.unlink()
    return stale
