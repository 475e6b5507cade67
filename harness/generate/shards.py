"""WebDataset tar shards of generated images, one per fixed range of prompt ids.

Shard i of a suite holds ids [i * shard_size, (i + 1) * shard_size), so it is the same work on
any machine. Each sample is `<id:08d>.png` (the image) and `<id:08d>.json` (its record). A
shard is written to a partial file of its writer's own and renamed to its final name only once
every id of its range is in it: a final shard is always complete, and a run killed midway leaves
only a partial file. A writer holds a lock on its shard while it writes, so a second run into the
same folder stops with a clear error instead of racing it. Tar members carry a fixed mtime, so
the same images give byte-identical shards.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from harness.atomic import atomic_path
from harness.errors import HarnessError
from harness.layout import GenerationFiles
from harness.tars import tar_samples

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
    return GenerationFiles(Path(folder)).shard(index)


def complete_shards(folder: Path, count: int, shard_size: int) -> list[int]:
    """Indices of the shards of a `count`-prompt suite that exist complete in `folder`: each
    still of the size and sha256 recorded when it was written."""
    return [i for i in range(shard_count(count, shard_size)) if changed(folder, i) is None]


def changed(folder: Path, index: int) -> str | None:
    """None when shard `index` is on disk as it was written; else what differs (or is missing)."""
    files = GenerationFiles(Path(folder))
    path, digest = files.shard(index), files.digest(index)
    if not path.is_file():
        return "not written"
    try:
        recorded = json.loads(digest.read_text())
        size, sha256 = int(recorded["size"]), str(recorded["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return "no size and digest recorded"
    if path.stat().st_size != size:
        return f"{path.stat().st_size} bytes where {size} were written"
    if file_sha256(path) != sha256:
        return "its sha256 differs from the one recorded"
    return None


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def writer_name() -> str:
    """A name unique to this process (host and pid), for its partial files."""
    return f"{socket.gethostname()}-{os.getpid()}"


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
        files = GenerationFiles(Path(folder))
        self.final = files.shard(index)
        self.partial = files.partial(index, writer_name())
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(files.folder / f".{self.final.name}.lock", "a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise HarnessError(f"{self.final}: another run is writing this shard into {files.folder} right now; "
                               "wait for it to finish or give another --out") from None
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
        record = {"size": self.partial.stat().st_size, "sha256": file_sha256(self.partial)}
        with atomic_path(GenerationFiles(self.final.parent).digest(self.index)) as tmp:
            tmp.write_text(json.dumps(record))
        os.replace(self.partial, self.final)
        self._release()
        return self.final

    def abort(self) -> None:
        """Drop the partial file."""
        self._tar.close()
        self._file.close()
        self.partial.unlink(missing_ok=True)
        self._release()

    def _release(self) -> None:
        Path(self._lock.name).unlink(missing_ok=True)
        self._lock.close()


def clear_stale_partials(folder: Path) -> int:
    """Remove partial shard files no live writer holds (left by killed runs); returns how many."""
    removed = 0
    for partial in Path(folder).glob(".shard-*.partial"):
        final_name = partial.name[1:].split(".tar.", 1)[0] + ".tar"
        lock_path = partial.parent / f".{final_name}.lock"
        with open(lock_path, "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            partial.unlink(missing_ok=True)
            lock_path.unlink(missing_ok=True)
            removed += 1
    return removed


def read_shard(path: Path) -> Iterator[Sample]:
    """The samples of one shard in file order; a damaged shard is a HarnessError naming it."""
    for key, parts in tar_samples(path):
        if not {"png", "json"} <= parts.keys():
            raise HarnessError(f"{path}: sample {key} lacks an image or a record")
        try:
            yield Sample(int(key), decode_png(parts["png"]), json.loads(parts["json"]), parts["png"])
        except (OSError, ValueError) as error:
            raise HarnessError(f"{path}: sample {key} is not readable ({error})") from None
