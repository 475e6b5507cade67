"""The fine-tuning engine: trainable presets, a real Lightning fit, and a run killed by SIGKILL
that resumes from its last checkpoint to the weights an uninterrupted run reaches."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from harness.errors import HarnessError, keyed
from harness.layout import UnlearnFiles
from harness.train.engine import FineTuneModule, Objective, OptimParams, Snapshots, fine_tune
from harness.train.trainable import trainable_names

RECIPE = """\
name: resume
model: zoo:digits
concept: {target: seven, kind: digit}
methods: [{method: esd, params: {steps: 24, ddim_steps: 5, lr: 1.0e-3, checkpoint_every: 4}}]
generation: {steps: 5, guidance: 3.0, scheduler: null, dtype: float32}
"""


def test_presets_choose_cross_attention_or_the_rest(tiny_sd_pipeline) -> None:
    names = [n for n, _ in tiny_sd_pipeline().unet.named_parameters()]
    cross = trainable_names(names, "esd-x")
    rest = trainable_names(names, "esd-u")
    assert cross and all(".attn2." in n for n in cross)
    assert rest and not any(".attn2." in n for n in rest) and set(cross) | set(rest) == set(names)
    assert trainable_names(names, "full") == names
    assert trainable_names(names, ["*attn2.to_k.*"]) == [n for n in names if "attn2.to_k." in n]
    with pytest.raises(HarnessError, match=r"k: pattern '\*nothing\*' matches no UNet parameter"), keyed("k"):
        trainable_names(names, ["*nothing*"])
    with pytest.raises(HarnessError, match="k: unknown preset 'esd-z'"), keyed("k"):
        trainable_names(names, "esd-z")


def _unlearn(repo: Path, recipe: Path, out: Path, cache: Path, **kwargs: object) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo), "HARNESS_CACHE": str(cache)}
    return subprocess.Popen([sys.executable, "-m", "harness.cli", "unlearn", "--recipe", str(recipe), "--out", str(out),
                             "--device", "cpu"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kwargs)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_run_killed_midway_resumes_to_the_same_weights(tmp_path: Path, repo: Path) -> None:
    from harness.worlds.digits.store import ensure_world

    cache = tmp_path / "cache"
    ensure_world(cache)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    whole = _unlearn(repo, recipe, tmp_path / "whole", cache)
    assert whole.wait(timeout=600) == 0, whole.stderr.read().decode()[-2000:]
    killed = UnlearnFiles(tmp_path / "killed")
    process = _unlearn(repo, recipe, killed.folder, cache)
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        last = killed.checkpoints / "last.ckpt"
        if last.is_file() and torch.load(last, weights_only=True)["global_step"] >= 8:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not killed.record.exists()  # nothing that looks complete
    step = torch.load(killed.checkpoints / "last.ckpt", weights_only=True)["global_step"]
    assert 8 <= step < 24
    resumed = _unlearn(repo, recipe, killed.folder, cache)
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read().decode()[-2000:]
    a, b = load_file(UnlearnFiles(tmp_path / "whole").tensors), load_file(killed.tensors)
    assert sorted(a) == sorted(b) and all(torch.equal(a[n], b[n]) for n in a)
    assert not killed.checkpoints.exists()  # the published folder holds the outputs only


class DrawRecorder(Objective):
    """A toy objective on one parameter of its own that records each micro-batch's first draw."""

    def __init__(self) -> None:
        self.draws: list[float] = []

    def attach(self, module: FineTuneModule) -> None:
        module.extra["w"] = torch.nn.Parameter(torch.zeros(3))

    def loss(self, module: FineTuneModule, generator: torch.Generator) -> torch.Tensor:
        self.draws.append(float(torch.rand(1, generator=generator)))
        return ((module.extra["w"] - 1.0) ** 2).sum()


def test_the_training_bar_counts_optimizer_steps_when_accumulating(tiny_sd_pipeline, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Lightning's bar counts micro-batches and has no total under accumulation ("12 of ?"); the
    harness's counts the run's steps."""
    caplog.set_level(logging.INFO, logger="harness.progress")
    params = OptimParams(steps=4, lr=0.1, accumulate=3, checkpoint_every=10)
    fine_tune(tiny_sd_pipeline(), DrawRecorder(), params, tmp_path / "ckpt", "k", "toy", torch.device("cpu"))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("train toy: ")]
    assert lines and lines[-1].startswith("train toy: 4 of 4 step (100%)"), lines


def test_accumulation_draws_fresh_samples_per_micro_batch_and_snapshots_optimizer_steps(
        tiny_sd_pipeline, tmp_path: Path) -> None:
    objective = DrawRecorder()
    params = OptimParams(steps=2, lr=0.1, accumulate=3, checkpoint_every=10)
    written = Snapshots(1, lambda step: tmp_path / f"w-{step}.safetensors", lambda module: module.trained_extra())
    outcome = fine_tune(tiny_sd_pipeline(), objective, params, tmp_path / "ckpt", "k", "toy", torch.device("cpu"),
                        snapshot=written)
    assert outcome.steps == 2 and len(objective.draws) == 6 and len(set(objective.draws)) == 6
    assert sorted(p.name for p in tmp_path.glob("w-*")) == ["w-1.safetensors", "w-2.safetensors"]  # never step 0
    first, last = load_file(tmp_path / "w-1.safetensors")["w"], outcome.extra["w"]
    # one AdamW update (about lr per entry) per optimizer step, not one per micro-batch
    assert torch.allclose(first, torch.full((3,), 0.1), atol=1e-3) and torch.allclose(last, torch.full((3,), 0.2), atol=2e-3)
