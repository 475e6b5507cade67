"""Image shards: fixed id ranges, atomic commit, reading back, WebDataset compatibility."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
import torch
import webdataset as wds

from harness.errors import HarnessError
from harness.generate import shards
from harness.layout import GenerationFiles


def _image(value: int, channels: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(value)
    return torch.randint(0, 256, (channels, 8, 6), generator=generator, dtype=torch.uint8)


def test_shard_ranges_cover_every_id_once():
    assert shards.shard_count(10, 4) == 3 and shards.shard_count(8, 4) == 2
    ranges = [shards.shard_ids(i, 10, 4) for i in range(3)]
    assert [list(r) for r in ranges] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_writer_commits_only_a_complete_shard_and_reads_back(tmp_path):
    writer = shards.ShardWriter(tmp_path, 1, shards.shard_ids(1, 10, 4))
    for i in (4, 5, 6):
        writer.write(i, shards.encode_png(_image(i)), {"id": i, "prompt": f"p{i}"})
    assert not writer.done and shards.complete_shards(tmp_path, 10, 4) == []
    assert writer.partial.is_file() and writer.partial.name.startswith(".shard-000001.tar.")
    with pytest.raises(HarnessError, match="3 of 4 samples written"):
        writer.commit()
    with pytest.raises(HarnessError, match="id 9 is outside its range"):
        writer.write(9, b"", {})
    with pytest.raises(HarnessError, match="id 4 is outside its range or written twice"):
        writer.write(4, b"", {})
    writer.write(7, shards.encode_png(_image(7)), {"id": 7, "prompt": "p7"})
    path = writer.commit()
    assert path == tmp_path / "shard-000001.tar" and not writer.partial.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".shard-000001.tar.sha256", "shard-000001.tar"]  # no partial, no lock
    assert shards.complete_shards(tmp_path, 10, 4) == [1]
    samples = list(shards.read_shard(path))
    assert [s.id for s in samples] == [4, 5, 6, 7]
    assert all(torch.equal(s.image, _image(s.id)) for s in samples)
    assert samples[3].record == {"id": 7, "prompt": "p7"}


def test_grey_images_keep_one_channel_and_bytes_are_reproducible(tmp_path):
    for folder in ("a", "b"):
        writer = shards.ShardWriter(tmp_path / folder, 0, range(2))
        for i in range(2):
            writer.write(i, shards.encode_png(_image(i, channels=1)), {"id": i})
        writer.commit()
    first, second = (
        (tmp_path / "a" / "shard-000000.tar").read_bytes(),
        (tmp_path / "b" / "shard-000000.tar").read_bytes(),
    )
    assert first == second
    sample = next(shards.read_shard(tmp_path / "a" / "shard-000000.tar"))
    assert sample.image.shape == (1, 8, 6) and torch.equal(sample.image, _image(0, channels=1))


def test_abort_removes_the_partial_file(tmp_path):
    writer = shards.ShardWriter(tmp_path, 0, range(2))
    writer.write(0, shards.encode_png(_image(0)), {"id": 0})
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_webdataset_reads_the_shards(tmp_path):
    writer = shards.ShardWriter(tmp_path, 0, range(3))
    for i in range(3):
        writer.write(i, shards.encode_png(_image(i)), {"id": i, "prompt": f"p{i}"})
    writer.commit()
    dataset = wds.WebDataset(str(tmp_path / "shard-000000.tar"), shardshuffle=False).decode("torchrgb8")
    samples = list(dataset)
    assert [s["__key__"] for s in samples] == ["00000000", "00000001", "00000002"]
    assert torch.equal(samples[2]["png"], _image(2))
    assert samples[1]["json"] == {"id": 1, "prompt": "p1"}


def test_damaged_shard_is_an_error_naming_it(tmp_path):
    writer = shards.ShardWriter(tmp_path, 0, range(2))
    for i in range(2):
        writer.write(i, shards.encode_png(_image(i)), {"id": i})
    path = writer.commit()
    path.write_bytes(path.read_bytes()[:1500])
    with pytest.raises(HarnessError, match="shard-000000.tar"):
        list(shards.read_shard(path))


def test_a_second_writer_of_the_same_shard_is_told_another_run_holds_it(tmp_path):
    first = shards.ShardWriter(tmp_path, 0, shards.shard_ids(0, 10, 4))
    with pytest.raises(HarnessError, match="another run is writing this shard"):
        shards.ShardWriter(tmp_path, 0, shards.shard_ids(0, 10, 4))
    other = shards.ShardWriter(tmp_path, 1, shards.shard_ids(1, 10, 4))  # another shard is free
    first.abort()
    other.abort()
    shards.ShardWriter(tmp_path, 0, shards.shard_ids(0, 10, 4)).abort()  # free again once released


def test_stale_partials_of_killed_runs_are_cleared_but_live_ones_kept(tmp_path):
    from harness.layout import GenerationFiles

    stale = GenerationFiles(tmp_path).partial(2, "host-123")
    stale.write_bytes(b"left by a killed run")
    live = shards.ShardWriter(tmp_path, 1, shards.shard_ids(1, 10, 4))
    assert shards.clear_stale_partials(tmp_path) == 1
    assert not stale.exists() and live.partial.exists()
    live.abort()


def _written_shard(folder: Path) -> Path:
    writer = shards.ShardWriter(folder, 0, shards.shard_ids(0, 2, 2))
    for i in (0, 1):
        writer.write(i, shards.encode_png(_image(i)), {"id": i})
    return writer.commit()


@pytest.mark.parametrize("damage", ["truncate", "flip", "digest-lost"])
def test_a_shard_changed_on_disk_is_no_longer_complete(tmp_path: Path, damage: str) -> None:
    path = _written_shard(tmp_path)
    assert shards.complete_shards(tmp_path, 2, 2) == [0] and shards.changed(tmp_path, 0) is None
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    else:
        GenerationFiles(tmp_path).digest(0).unlink()
    assert shards.complete_shards(tmp_path, 2, 2) == []
    expected = {"truncate": "bytes where", "flip": "sha256 differs", "digest-lost": "no size and digest"}[damage]
    assert expected in shards.changed(tmp_path, 0)


def test_a_tar_cut_at_a_member_boundary_is_refused_by_name(tmp_path: Path) -> None:
    path = _written_shard(tmp_path)
    data = path.read_bytes()
    members = [m.offset for m in tarfile.open(path)]
    path.write_bytes(data[: members[2]])  # the first sample whole, nothing after it: tarfile alone accepts this
    with pytest.raises(HarnessError, match="shard-000000.tar: truncated tar archive"):
        list(shards.read_shard(path))
