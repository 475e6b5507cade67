"""WebDataset tar shards of generated images, one per fixed range of prompt ids.

Shard i of a suite holds ids [i * shard_size, (i + 1) * shard_size), so it is the same work on
any machine. Each sample is `<id:08d>.png` (the image) and `<id:08d>.json` (its record). A
shard is written to `.shard-<i>.tar.partial` and renamed to `shard-<i>.tar` only once every id
of its range is in it: a `shard-*.tar` file is always complete, and a run killed midway leaves
only a partial file, which the next run overwrites. Tar members carry a fixed mtime, so the same
images give byte-identical shards.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from harness.errors import HarnessError

SHARD_NAME = "shard-{:06d}.tar"
KEY_FORMAT = "{:08d}"


@dataclass(frozen=True)
class Sample:
    """One image read back from a shard: its id, pixels (C, H, W) uint8 and its JSON record."""

    id: int
    image: torch.Tensor
    record: dict[str, Any]
    png: bytes


def shard_count(count: int, shard_size: int) -> int:
    """How many shards `count` prompts fill."""
    return (count + shard_size - 1) // shard_size


def shard_ids(index: int, count: int, shard_size: int) -> range:
    """The prompt ids of shard `index`."""
    return range(index * shard_size, min((index + 1) * shard_size, count))


def shard_path(folder: Path, index: int) -> Path:
    """The complete shard's file name."""
    return Path(folder) / SHARD_NAME.format(index)


def partial_path(folder: Path, index: int) -> Path:
    """The name a shard has while it is being written."""
    return Path(folder) / f".{SHARD_NAME.format(index)}.partial"


def complete_shards(folder: Path, count: int, shard_size: int) -> list[int]:
    """Indices of the shards of a `count`-prompt suite that exist complete in `folder`."""
    return [i for i in range(shard_count(count, shard_size)) if shard_path(folder, i).is_file()]


def encode_png(image: torch.Tensor) -> bytes:
    """PNG bytes of a (C, H, W) uint8 image with 1 (grey) or 3 (RGB) channels."""
    array = image.permute(1, 2, 0).numpy()
    pil = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def decode_png(data: bytes) -> torch.Tensor:
    """(C, H, W) uint8 pixels of PNG bytes; grey images keep one channel."""
    with Image.open(io.BytesIO(data)) as pil:
        array = np.asarray(pil.convert("L" if pil.mode in ("L", "I", "I;16") else "RGB"))
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


class ShardWriter:
    """Writes the samples of one shard to its partial file; `commit` renames it into place.

    The shard is committed only when exactly the ids of its range were written.
    """

    def __init__(self, folder: Path, index: int, ids: range) -> None:
        self.index = index
        self.expected = ids
        self.written: set[int] = set()
        self.final = shard_path(folder, index)
        self.partial = partial_path(folder, index)
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.partial, "wb")
        self._tar = wds.TarWriter(self._file, encoder=False, mtime=0.0)

    @property
    def done(self) -> bool:
        """Whether every id of the shard's range has been written."""
        return len(self.written) == len(self.expected)

    def write(self, sample_id: int, png: bytes, record: dict[str, Any]) -> None:
        """Add one image and its record."""
        if sample_id not in self.expected or sample_id in self.written:
            raise HarnessError(f"{self.final.name}: id {sample_id} is outside its range or written twice")
        key = KEY_FORMAT.format(sample_id)
        self._tar.write({"__key__": key, "png": png, "json": json.dumps(record, sort_keys=True).encode()})
        self.written.add(sample_id)

    def commit(self) -> Path:
        """Flush, sync and rename the finished shard to its final name."""
        if not self.done:
            raise HarnessError(f"{self.final.name}: {len(self.written)} of {len(self.expected)} samples written")
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.partial, self.final)
        return self.final

    def abort(self) -> None:
        """Drop the partial file."""
        self._tar.close()
        self._file.close()
        self.partial.unlink(missing_ok=True)


def read_shard(path: Path) -> Iterator[Sample]:
    """The samples of one shard in file order; a damaged shard is a HarnessError naming it."""
    pending: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(path, "r") as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                handle = tar.extractfile(member)
                if handle is None:
                    continue
                pending.setdefault(key, {})[ext] = handle.read()
                if {"png", "json"} <= pending[key].keys():
                    parts = pending.pop(key)
                    yield Sample(int(key), decode_png(parts["png"]), json.loads(parts["json"]), parts["png"])
    except (tarfile.TarError, OSError, ValueError) as error:
        raise HarnessError(f"{path}: not a readable image shard ({error})") from None
    if pending:
        raise HarnessError(f"{path}: samples {', '.join(sorted(pending))} lack an image or a record")
