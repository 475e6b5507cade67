"""Reading tar archives (WebDataset shards) whole or not at all: the members grouped by sample
key, and an error naming the file when the archive is unreadable or cut short. Python's tarfile
takes an archive cut at a member boundary for a shorter, complete one; a complete archive ends
with two zero blocks, so their absence is a truncation."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path

from harness.errors import HarnessError

END_OF_ARCHIVE = 2 * tarfile.BLOCKSIZE


def tar_samples(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample in file order, a sample yielded once its key changes;
    a truncated or unreadable archive is a HarnessError naming `path`."""
    key, parts = None, {}
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                handle = tar.extractfile(member)
                if handle is None:
                    continue
                name, _, ext = member.name.partition(".")
                if key is not None and name != key:
                    yield key, parts
                    parts = {}
                key = name
                parts[ext.lower()] = handle.read()
            end = tar.offset
        _check_end(path, end)
    except (tarfile.TarError, OSError) as error:
        raise HarnessError(f"{path}: not a readable tar archive ({error})", key="") from None
    if key is not None:
        yield key, parts


def _check_end(path: Path, offset: int) -> None:
    """Raise unless the archive holds its end-of-archive zero blocks at `offset`."""
    with open(path, "rb") as handle:
        handle.seek(offset)
        tail = handle.read(END_OF_ARCHIVE)
    if len(tail) < END_OF_ARCHIVE or tail.strip(b"\0"):
        raise HarnessError(f"{path}: truncated tar archive (it ends after {offset} bytes without the end-of-archive "
                           "blocks); write or copy it again", key="")
