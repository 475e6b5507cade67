"""Where a command writes, checked before any work: one function for every output option (a run
directory, an output folder or file, the cache, the SLURM folder, the world cache), so each
mistake (a file where a folder goes, a folder under a file, a place that cannot be written)
ends with the same one-line error naming the option and the path."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from harness.errors import HarnessError


def anything(_: Path) -> bool:
    """An `owned` rule for folders the harness may share with others (a cache, a data folder)."""
    return True


def check_output(path: str | Path, option: str, owned: Callable[[Path], bool] | None = anything, *,
                 file: bool = False) -> Path:
    """`path` as the output `option` names: a folder (or, with `file`, a file to write) that is
    not a file (folder), not under a file, writable, and, for a folder, either absent, empty or
    one that `owned` recognises (None: it must be absent or empty). The folder (for a file: its
    folder) is made when absent; nothing else is written."""
    path = Path(path).expanduser()
    if file:
        if path.is_dir():
            raise HarnessError(f"{option} {path}: exists and is not a file")
        _make_writable_folder(path.parent, option, path)
        return path
    if path.exists() and not path.is_dir():
        raise HarnessError(f"{option} {path}: exists and is not a folder")
    if path.is_dir() and not _readable_empty_or(path, owned, option):
        raise HarnessError(f"{option} {path}: the folder holds other files; give a new or empty folder")
    _make_writable_folder(path, option, path)
    return path


def _readable_empty_or(path: Path, owned: Callable[[Path], bool] | None, option: str) -> bool:
    try:
        return not any(path.iterdir()) or (owned is not None and owned(path))
    except OSError as error:
        raise HarnessError(f"{option} {path}: cannot read the folder ({error.strerror or error})") from None


def _make_writable_folder(folder: Path, option: str, named: Path) -> None:
    """Make `folder` and write-test it; errors name the option and the path the user gave."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise HarnessError(f"{option} {named}: {probe} is a file, so no folder can be made under it")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=folder, prefix=".write-test.")
        os.close(fd)
        os.unlink(name)
    except OSError as error:
        raise HarnessError(f"{option} {named}: cannot write there ({error.strerror or error})") from None
