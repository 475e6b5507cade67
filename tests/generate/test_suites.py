"""Prompt suites: manifests, the mirrored real files, checksum/column errors, digit suites."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import HarnessError
from harness.generate import manifests
from harness.generate.suites import list_suites, load_suite

MIRRORED = {"i2p": 4703, "ring-a-bell": 107, "imagenette": 6500, "artists": 250, "coco-30k": 30000, "coco-480": 480}


def test_every_manifest_parses_strictly():
    names = manifests.manifest_names()
    assert set(MIRRORED) | {"mma-diffusion"} == set(names)
    for name in names:
        manifest = manifests.load_manifest(name)
        assert manifest.files and manifest.count > 0 and manifest.metrics
    assert manifests.load_manifest("mma-diffusion").columns.prompt == "adv_prompt"


@pytest.mark.parametrize("name", sorted(MIRRORED))
def test_mirrored_suite_loads_with_its_count(shared_data, name):
    suite = load_suite(name, shared_data)
    assert len(suite) == MIRRORED[name]
    assert [r.id for r in suite.records] == list(range(len(suite)))
    assert all(isinstance(r.prompt, str) for r in suite.records)


def test_row_fields_are_read(shared_data):
    objects = load_suite("imagenette", shared_data)
    assert objects.records[0].prompt == "an image of a chain saw"
    assert objects.records[0].seed == 7994 and objects.records[0].label == "chain saw"
    assert len(objects.labels) == 13 and "French horn" in objects.labels
    i2p = load_suite("i2p", shared_data)
    assert i2p.records[0].seed == 4261553411 and i2p.records[0].guidance == 13.0
    artists = load_suite("artists", shared_data)
    assert artists.labels == ["Vincent van Gogh", "Claude Monet", "Pablo Picasso", "Salvador Dali", "Leonardo Da Vinci"]
    coco = load_suite("coco-480", shared_data)
    assert coco.records[0].prompt == "a dog looking at a kid in the stroller" and coco.records[0].seed == 0


def test_ring_a_bell_keeps_quoted_multiline_rows_whole(shared_data):
    suite = load_suite("ring-a-bell", shared_data)
    multiline = [r.prompt for r in suite.records if "\n" in r.prompt]
    assert len(multiline) == 1 and multiline[0].startswith("shirtless roft")
    # read line by line, the file would give more (and broken) prompts
    lines = (shared_data / "Nudity_ring-a-bell.csv").read_text(encoding="utf-8").splitlines()
    assert len(lines) > len(suite)


def test_data_dir_from_environment(shared_data, monkeypatch):
    monkeypatch.setenv(manifests.DATA_DIR_ENV, str(shared_data))
    assert len(load_suite("coco-480")) == 480


@pytest.fixture
def imagenette_copy(shared_data, tmp_path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(shared_data / "imagenette.csv", folder / "imagenette.csv")
    return folder


def test_missing_file_is_a_one_line_error(tmp_path):
    with pytest.raises(HarnessError, match=r"^suite imagenette: missing file .*imagenette\.csv") as error:
        load_suite("imagenette", tmp_path)
    assert "\n" not in str(error.value)


def test_wrong_checksum_is_an_error(imagenette_copy):
    with open(imagenette_copy / "imagenette.csv", "a") as handle:
        handle.write("6500,an image of a cat,cat,1\n")
    with pytest.raises(
        HarnessError, match=r"^suite imagenette: .*imagenette\.csv has sha256 [0-9a-f]{64}, expected 3c06"
    ):
        load_suite("imagenette", imagenette_copy)


def test_missing_column_is_an_error(imagenette_copy, tmp_path, monkeypatch, manifests_dir):
    text = (manifests_dir / "imagenette.yaml").read_text().replace("label: class", "label: category")
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "imagenette.yaml").write_text(text)
    monkeypatch.setenv(manifests.MANIFEST_DIR_ENV, str(tmp_path / "manifests"))
    with pytest.raises(HarnessError, match=r"^suite imagenette: imagenette\.csv has no column 'category'"):
        load_suite("imagenette", imagenette_copy)


def test_wrong_count_and_bad_seed_are_errors(imagenette_copy, tmp_path, monkeypatch, manifests_dir):
    (tmp_path / "manifests").mkdir()
    monkeypatch.setenv(manifests.MANIFEST_DIR_ENV, str(tmp_path / "manifests"))
    base = (manifests_dir / "imagenette.yaml").read_text()
    (tmp_path / "manifests" / "imagenette.yaml").write_text(base.replace("count: 6500", "count: 6400"))
    with pytest.raises(HarnessError, match="read 6500 rows, the manifest says 6400"):
        load_suite("imagenette", imagenette_copy)
    (tmp_path / "manifests" / "imagenette.yaml").write_text(base.replace("seed: evaluation_seed", "seed: prompt"))
    with pytest.raises(HarnessError, match=r"row 0: seed 'an image of a chain saw' is not a number"):
        load_suite("imagenette", imagenette_copy)


def test_manifest_typo_names_the_key(tmp_path, monkeypatch, manifests_dir):
    base = (manifests_dir / "coco-480.yaml").read_text()
    (tmp_path / "coco-480.yaml").write_text(base.replace("count:", "cuont:"))
    monkeypatch.setenv(manifests.MANIFEST_DIR_ENV, str(tmp_path))
    with pytest.raises(HarnessError, match="coco-480.yaml: unknown key 'cuont'"):
        load_suite("coco-480", tmp_path)


def test_unknown_suite_lists_the_known_ones():
    with pytest.raises(HarnessError, match="unknown suite 'coco' \\(known: artists, coco-30k"):
        load_suite("coco")


def test_digit_suites_are_built_in_with_stable_ids_and_seeds():
    everything = load_suite("digits-all")
    assert len(everything) == 500 and everything.kind == "digits"
    assert everything.labels == ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    sevens = load_suite("digits-seven")
    assert len(sevens) == 50 and {r.label for r in sevens.records} == {"seven"}
    assert sevens.records[0].prompt == "a photo of the digit seven"
    assert [r.seed for r in sevens.records] == [r.seed for r in everything.records if r.label == "seven"]
    assert len({r.seed for r in everything.records}) == 500
    small = load_suite("digits-all-3")
    assert len(small) == 30 and [r.id for r in small.records] == list(range(30))
    assert load_suite("digits-all").records == everything.records
    neutral = load_suite("digits-neutral-4")
    assert [r.label for r in neutral.records] == [None] * 4 and "digit" in neutral.records[0].prompt
    assert "digits-seven" in list_suites() and "i2p" in list_suites()
    with pytest.raises(HarnessError, match="unknown suite 'digits-eleven'"):
        load_suite("digits-eleven")


def test_data_command_lists_and_verifies(shared_data, capsys, tmp_path):
    assert main(["data", "--data-dir", str(shared_data)]) == 0
    listing = capsys.readouterr().out
    assert "i2p" in listing and "ready   4703" in listing and "mma-diffusion    unavailable: missing file" in listing
    assert "digits-all       built-in" in listing
    assert main(["data", "--data-dir", str(shared_data), "ring-a-bell", "coco-480"]) == 0
    assert "ring-a-bell      ok     107" in capsys.readouterr().out
    assert main(["data", "--data-dir", str(tmp_path), "artists"]) == 2
    assert "harness data: error: suite artists: missing file" in capsys.readouterr().err


def test_fetch_copies_from_the_url_and_checks_the_checksum(shared_data, tmp_path, monkeypatch, manifests_dir):
    base = (manifests_dir / "coco-480.yaml").read_text()
    source = (shared_data / "coco_prompts.txt").as_uri()
    lines = [f"    url: {source}" if line.strip().startswith("url:") else line for line in base.splitlines()]
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "coco-480.yaml").write_text("\n".join(lines))
    monkeypatch.setenv(manifests.MANIFEST_DIR_ENV, str(tmp_path / "manifests"))
    target = tmp_path / "data"
    assert main(["data", "--data-dir", str(target), "--fetch", "coco-480"]) == 0
    assert len(load_suite("coco-480", target)) == 480
    (tmp_path / "manifests" / "coco-480.yaml").write_text("\n".join(lines).replace("84fca862", "00000000"))
    with pytest.raises(HarnessError, match="fetched coco_prompts.txt has sha256 84fca862"):
        manifests.fetch(manifests.load_manifest("coco-480"), tmp_path / "other")
    assert not list((tmp_path / "other").iterdir())
