"""Files and folders a user names as inputs, checked before any work: present, readable, and for
tensor files whole (a safetensors header that covers the file, a zip archive's directory), so a
missing or truncated file is a one-line error naming it, not a failure after minutes of work.

A field of a params or settings dataclass is an input path when its metadata says so:
`field(default=None, metadata=INPUT_FILE)` (or INPUT_FOLDER, INPUT_PATH for either)."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Literal

from harness.errors import HarnessError

InputKind = Literal["file", "folder", "path"]
INPUT_FILE = {"input": "file"}
INPUT_FOLDER = {"input": "folder"}
INPUT_PATH = {"input": "path"}


def check_input(path: str | Path, kind: InputKind = "path") -> Path:
    """`path` if it exists as `kind`, is readable and (a tensor file) is whole; else a keyed
    HarnessError (key "") naming it."""
    path = Path(path).expanduser()
    if not path.exists():
        raise HarnessError(f"{path}: no such {'file or folder' if kind == 'path' else kind}", key="")
    if kind == "file" and not path.is_file():
        raise HarnessError(f"{path}: is not a file", key="")
    if kind == "folder" and not path.is_dir():
        raise HarnessError(f"{path}: is not a folder", key="")
    try:
        if path.is_dir():
            os.listdir(path)
        else:
            with open(path, "rb") as handle:
                handle.read(1)
            _check_whole(path)
    except OSError as error:
        raise HarnessError(f"{path}: cannot read it ({error.strerror or error})", key="") from None
    return path


def _check_whole(path: Path) -> None:
    """Raise unless a tensor file's structure covers the file (cheap: headers only)."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), "pt"):
                pass
        except SafetensorError as error:
            raise HarnessError(f"{path}: not a whole safetensors file ({error})", key="") from None
    elif suffix in (".pt", ".pth", ".ckpt", ".bin") and zipfile.is_zipfile(path) is False and _looks_zipped(path):
        raise HarnessError(f"{path}: truncated (its zip directory is missing); copy it again", key="")


def _looks_zipped(path: Path) -> bool:
    """Whether the file starts like a zip archive (torch.save's format), whole or not."""
    with open(path, "rb") as handle:
        return handle.read(4) == b"PK\x03\x04"
