"""Atomic writes: a file or a stage's output folder appears complete under its name, or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def default_mode(directory: bool = False) -> int:
    """The permissions a plain `open(path, "w")` or `mkdir` would give: 0666 or 0777 less the umask."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary name beside `path` to write to; renamed into place on success, removed on error.

    The file gets the permissions a plain `open(path, "w")` would give (0666 less the umask), not
    the 0600 of a temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(default_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def publish_folder(folder: Path, fill: Callable[[Path], None], replace: bool = True,
                   is_complete: Callable[[Path], bool] | None = None) -> None:
    """Run `fill(tmp)` on a fresh folder beside `folder`, then move it into place, so `folder`
    holds either its old complete content or the new one, never a mix or a half.

    With `replace` False, a `folder` that `is_complete` already (another process finished first)
    is kept and the new content dropped."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        fill(tmp)
        tmp.chmod(default_mode(directory=True))  # mkdtemp makes it private; outputs are shared like any file
        if folder.exists():
            if not replace and is_complete is not None and is_complete(folder):
                return
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old)
        else:
            tmp.rename(folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def atomic_copy(source: str | Path, target: str | Path) -> Path:
    """Copy a file to `target` through a temporary name (readers never see half a file)."""
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    return Path(target)
