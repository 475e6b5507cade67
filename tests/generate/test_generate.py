"""Generation: a Lightning predict loop over a suite into WebDataset shards.

Runs the real loop on tiny randomly initialised pipelines (the miniature world's DigitsPipeline
and an SD-shaped StableDiffusionPipeline): shards, records, reruns, single shards, settings,
tensors, batch sizes, DDP over two CPU processes, and a SIGKILL midway.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from harness.errors import HarnessError
from harness.generate import run as generate_stage
from harness.generate import shards
from harness.generate.run import GenerateJob
from harness.generate.suites import load_suite
from harness.layout import GenerationFiles
from harness.records import GenerationRecord, read_record
from harness.settings.generate import GenerationSettings

FAST = GenerationSettings(steps=2, guidance=3.0, batch_size=3, shard_size=4, scheduler=None)


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory) -> str:
    """An untrained miniature-world pipeline saved as a diffusers folder."""
    from harness.worlds.digits.pipeline import build_untrained_pipeline

    folder = tmp_path_factory.mktemp("digits") / "pipeline"
    build_untrained_pipeline(seed=0).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def suite():
    return load_suite("digits-all-1")  # ten prompts: three shards of 4, 4 and 2


def _samples(folder: Path) -> dict[int, shards.Sample]:
    return {s.id: s for path in sorted(folder.glob("shard-*.tar")) for s in shards.read_shard(path)}


def test_generates_every_prompt_into_fixed_shards(digits_model, suite, tmp_path):
    generate_stage.run(GenerateJob(digits_model, [], suite, FAST, tmp_path, "pretrained"))
    paths = GenerationFiles(tmp_path).shards()
    assert [p.name for p in paths] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    samples = _samples(tmp_path)
    assert sorted(samples) == list(range(10))
    assert [s.id for s in shards.read_shard(paths[1])] == [4, 5, 6, 7]
    seven = samples[7]
    assert seven.image.shape == (1, 16, 16) and seven.image.dtype == torch.uint8
    assert seven.record["prompt"] == suite.records[7].prompt and seven.record["label"] == "seven"
    assert seven.record["seed"] == suite.records[7].seed and seven.record["guidance"] == 3.0
    assert seven.record["model"] == "pretrained" and seven.record["suite"] == "digits-all-1"
    assert seven.record["settings"]["steps"] == 2 and seven.record["settings"]["dtype"] == "float32"
    assert len({s.png for s in samples.values()}) == 10
    run = read_record(GenerationRecord, GenerationFiles(tmp_path).record)
    assert run.model == "pretrained" and run.count == 10 and run.settings["seed_policy"] == "row"
    assert "versions" in run.provenance
    assert not list(tmp_path.glob(".*.partial")) and not list(tmp_path.glob(".*.lock"))


def test_rerun_skips_complete_shards_and_redoes_the_rest(digits_model, suite, tmp_path):
    generate_stage.run(GenerateJob(digits_model, [], suite, FAST, tmp_path, "pretrained"))
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.glob("shard-*.tar")}
    (tmp_path / "shard-000001.tar").unlink()
    GenerationFiles(tmp_path).partial(1, "killed-run").write_bytes(b"left by a killed run")
    generate_stage.run(GenerateJob(digits_model, [], suite, FAST, tmp_path, "pretrained"))
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.glob("shard-*.tar")}
    assert after["shard-000000.tar"][0] == before["shard-000000.tar"][0]
    assert after["shard-000002.tar"][0] == before["shard-000002.tar"][0]
    assert after["shard-000001.tar"][1] == before["shard-000001.tar"][1]
    assert not GenerationFiles(tmp_path).partial(1, "killed-run").exists()


def test_a_shard_truncated_after_the_run_is_made_again_on_rerun(digits_model, suite, tmp_path):
    generate_stage.run(GenerateJob(digits_model, [], suite, FAST, tmp_path, "pretrained"))
    shard = tmp_path / "shard-000001.tar"
    whole = shard.read_bytes()
    untouched = (tmp_path / "shard-000000.tar").stat().st_mtime_ns
    shard.write_bytes(whole[: len(whole) // 2])
    assert shards.complete_shards(tmp_path, len(suite), FAST.shard_size) == [0, 2]
    generate_stage.run(GenerateJob(digits_model, [], suite, FAST, tmp_path, "pretrained"))
    assert shard.read_bytes() == whole
    assert (tmp_path / "shard-000000.tar").stat().st_mtime_ns == untouched


def test_one_shard_alone(digits_model, suite, tmp_path):
    generate_stage.run(GenerateJob(digits_model, [], suite, FAST, tmp_path, "pretrained", shard=2))
    assert GenerationFiles(tmp_path).shards() == [tmp_path / "shard-000002.tar"]
    assert sorted(p.name for p in tmp_path.glob("shard-*")) == ["shard-000002.tar"]
    assert sorted(_samples(tmp_path)) == [8, 9]
    with pytest.raises(HarnessError, match="--shard 3: suite digits-all-1 has shards 0..2"):
        generate_stage.run(GenerateJob(digits_model, [], suite, FAST, tmp_path, "pretrained", shard=3))


def test_a_folder_made_with_other_settings_is_generated_anew(digits_model, suite, tmp_path):
    generate_stage.run(GenerateJob(digits_model, [], suite, FAST, tmp_path, "pretrained", shard=2))
    first = read_record(GenerationRecord, GenerationFiles(tmp_path).record)
    before = (tmp_path / "shard-000002.tar").read_bytes()
    generate_stage.run(GenerateJob(digits_model, [], suite, dataclasses.replace(FAST, steps=3), tmp_path, "pretrained", shard=1))
    second = read_record(GenerationRecord, GenerationFiles(tmp_path).record)
    assert second.key != first.key and second.settings["steps"] == 3
    assert [p.name for p in GenerationFiles(tmp_path).shards()] == ["shard-000001.tar"]  # the old shard 2 is gone
    generate_stage.run(GenerateJob(digits_model, [], suite, dataclasses.replace(FAST, steps=3), tmp_path, "unlearned", shard=2))
    assert read_record(GenerationRecord, GenerationFiles(tmp_path).record).model == "unlearned"
    assert (tmp_path / "shard-000002.tar").read_bytes() != before
    with pytest.raises(ValueError, match="steps must be at least 1"):
        dataclasses.replace(FAST, steps=0)
    with pytest.raises(HarnessError, match="generation.scheduler: 'Nope' is not a diffusers scheduler"):
        generate_stage.run(GenerateJob(digits_model, [], suite, dataclasses.replace(FAST, scheduler="Nope"), tmp_path, "pretrained"))


def test_a_copied_folder_is_resumed_not_regenerated(digits_model, suite, tmp_path):
    import shutil

    from harness.models.checkpoints import save_tensors
    from harness.models.pipelines import load_pipeline

    name = "mid_block.attentions.0.transformer_blocks.0.ff.net.2.weight"
    unet = load_pipeline(digits_model).unet
    save_tensors({name: torch.zeros_like(dict(unet.named_parameters())[name])}, tmp_path / "a" / "t.safetensors")
    generate_stage.run(GenerateJob(digits_model, [tmp_path / "a" / "t.safetensors"], suite, FAST, tmp_path / "a" / "images", "m", shard=0))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    before = (tmp_path / "b" / "images" / "shard-000000.tar").stat().st_mtime_ns
    generate_stage.run(GenerateJob(digits_model, [tmp_path / "b" / "t.safetensors"], suite, FAST, tmp_path / "b" / "images", "m", shard=0))
    assert (tmp_path / "b" / "images" / "shard-000000.tar").stat().st_mtime_ns == before  # same content, other path


def test_seed_policies(digits_model, suite, tmp_path):
    fixed = dataclasses.replace(FAST, seed_policy="fixed", fixed_seed=suite.records[5].seed)
    generate_stage.run(GenerateJob(digits_model, [], suite, fixed, tmp_path / "fixed", "pretrained", shard=1))
    generate_stage.run(GenerateJob(digits_model, [], suite, FAST, tmp_path / "row", "pretrained", shard=1))
    fixed_samples, row_samples = _samples(tmp_path / "fixed"), _samples(tmp_path / "row")
    assert {s.record["seed"] for s in fixed_samples.values()} == {suite.records[5].seed}
    assert fixed_samples[5].png == row_samples[5].png
    assert fixed_samples[4].png != row_samples[4].png


def test_batch_size_changes_no_seed_and_at_most_rounding(digits_model, suite, tmp_path):
    for batch in (1, 4):
        settings = dataclasses.replace(FAST, batch_size=batch)
        generate_stage.run(GenerateJob(digits_model, [], suite, settings, tmp_path / str(batch), "pretrained"))
    one, four = _samples(tmp_path / "1"), _samples(tmp_path / "4")
    pixels = differing = 0
    for i in range(10):
        assert one[i].record["seed"] == four[i].record["seed"]
        delta = (one[i].image.int() - four[i].image.int()).abs()
        assert delta.max() <= 1  # CPU kernels may round differently by batch shape, never more
        pixels, differing = pixels + delta.numel(), differing + int((delta > 0).sum())
    assert differing / pixels < 0.01
    assert sum(one[i].png == four[i].png for i in range(10)) >= 8


def test_changed_tensors_are_applied_and_recorded(digits_model, suite, tmp_path):
    from harness.models.checkpoints import save_tensors
    from harness.models.pipelines import load_pipeline

    unet = load_pipeline(digits_model).unet
    name = "mid_block.attentions.0.transformer_blocks.0.ff.net.2.weight"
    path = save_tensors(
        {name: torch.zeros_like(dict(unet.named_parameters())[name])}, tmp_path / "unlearned.safetensors"
    )
    generate_stage.run(GenerateJob(digits_model, [], suite, FAST, tmp_path / "base", "pretrained", shard=0))
    generate_stage.run(GenerateJob(digits_model, [path], suite, FAST, tmp_path / "edit", "unlearned", shard=0))
    base, edit = _samples(tmp_path / "base"), _samples(tmp_path / "edit")
    assert any(base[i].png != edit[i].png for i in range(4))
    run = read_record(GenerationRecord, GenerationFiles(tmp_path / "edit").record)
    assert run.tensors[0].path == str(path) and len(run.tensors[0].sha256) == 64


def test_stable_diffusion_pipeline_with_protocol_scheduler(tmp_path, save_tiny_sd_pipeline):
    model = save_tiny_sd_pipeline(tmp_path / "sd")
    suite = load_suite("digits-seven-2")
    settings = GenerationSettings(steps=2, height=32, width=32, batch_size=2, shard_size=2)
    assert settings.scheduler == "PNDMScheduler" and settings.guidance == 7.5
    generate_stage.run(GenerateJob(str(model), [], suite, settings, tmp_path / "out", "pretrained"))
    [path] = GenerationFiles(tmp_path / "out").shards()
    samples = list(shards.read_shard(path))
    assert [s.image.shape for s in samples] == [(3, 32, 32), (3, 32, 32)]
    assert samples[0].record["settings"]["scheduler"] == "PNDMScheduler"


def _cli(model: str, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "harness.cli",
        "-v",
        "generate",
        "--model",
        model,
        "--suite",
        "digits-all-2",
        "--out",
        str(out),
        "--steps",
        "2",
        "--guidance",
        "3",
        "--shard-size",
        "4",
        "--batch-size",
        "2",
        "--scheduler",
        "none",
        "--accelerator",
        "cpu",
        "--tag",
        "pretrained",
        *extra,
    ]


def _env(repo: Path) -> dict[str, str]:
    # the same thread count in every process, so CPU kernels round alike in one and two processes
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_ddp_over_two_processes_gives_the_same_bytes(digits_model, tmp_path, repo):
    settings = GenerationSettings(steps=2, guidance=3.0, batch_size=2, shard_size=4, scheduler=None)
    generate_stage.run(GenerateJob(
        digits_model, [], load_suite("digits-all-2"), settings, tmp_path / "one", "pretrained"
    ))
    double = subprocess.run(
        _cli(digits_model, tmp_path / "two", "--devices", "2", "--strategy", "ddp"),
        check=False,
        env=_env(repo),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert double.returncode == 0, double.stderr[-2000:]
    assert "process 1 of 2: 2 shards" in double.stderr and "process 0 of 2: 3 shards" in double.stderr
    names = sorted(p.name for p in (tmp_path / "one").glob("shard-*.tar"))
    assert len(names) == 5 and names == sorted(p.name for p in (tmp_path / "two").glob("shard-*.tar"))
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_sigkill_midway_then_rerun_loses_and_duplicates_nothing(digits_model, tmp_path, repo):
    out = tmp_path / "out"
    process = subprocess.Popen(
        _cli(digits_model, out, "--batch-size", "1"), env=_env(repo), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not (out / "shard-000000.tar").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    complete = sorted(p.name for p in out.glob("shard-*.tar"))
    assert 1 <= len(complete) < 5
    settings = GenerationSettings(steps=2, guidance=3.0, batch_size=1, shard_size=4, scheduler=None)
    generate_stage.run(GenerateJob(digits_model, [], load_suite("digits-all-2"), settings, out, "pretrained"))
    seen: list[int] = []
    for path in sorted(out.glob("shard-*.tar")):
        index = int(path.stem.split("-")[1])
        ids = [s.id for s in shards.read_shard(path)]
        assert ids == list(shards.shard_ids(index, 20, 4))
        seen.extend(ids)
    assert sorted(seen) == list(range(20))
    assert not list(out.glob(".*.partial"))
