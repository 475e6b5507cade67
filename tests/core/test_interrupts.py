"""Ctrl-C in every stage ends the same way: one line ("interrupted; complete outputs are kept, a
rerun resumes"), exit status 130, nothing that looks complete; and the rerun finishes. Each test
starts a real `harness` process, waits until its work is under way (a training checkpoint or a
first image shard on disk), sends SIGINT, and reruns."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.layout import AttackFiles, UnlearnFiles

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

RECIPE = """\
name: interrupted
model: zoo:digits
concept: {target: seven, kind: digit, anchor: "a photo of a digit"}
methods:
  - method: ac
    layers: ["*attn2.to_k.*", "*attn2.to_v.*"]
    params: {steps: STEPS, batch_size: 2, checkpoint_every: 5}
attacks:
  - {attack: dimra, params: {steps: 400, batch_size: 2, checkpoint_every: 5, curve_every: 400}}
suites: [digits-seven-2]
"""
INTERRUPTED = "interrupted; complete outputs are kept, a rerun resumes"


def harness(repo: Path, cache: Path, *argv: str) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo), "HARNESS_CACHE": str(cache)}
    return subprocess.Popen([sys.executable, "-m", "harness.cli", *argv], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_by_default)


def ctrl_c_by_default() -> None:
    """The child starts with SIGINT at its default, as under a terminal. Started in the background
    of a shell without job control (`pytest &`), the tests inherit SIGINT as ignored, Python then
    installs no handler for it, and the run would ignore the test's Ctrl-C and finish (exit 0)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt_when(process: subprocess.Popen[str], started: Callable[[], bool]) -> str:
    """Send SIGINT once `started()` holds; the process's stderr once it has ended."""
    deadline = time.monotonic() + 240
    while not started() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be interrupted"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    return err


def assert_interrupted(process: subprocess.Popen[str], err: str) -> None:
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert process.returncode == 130, err[-2000:]
    assert lines and lines[-1].endswith(INTERRUPTED), lines[-3:]
    assert "Traceback" not in err and "unexpected error" not in err


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from harness.worlds.digits.store import ensure_world

    root = tmp_path_factory.mktemp("cache")
    ensure_world(root)
    return root


def recipe(tmp_path: Path, steps: int) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.replace("STEPS", str(steps)))
    return path


def test_ctrl_c_during_training_unlearning_exits_130_and_the_rerun_finishes(tmp_path: Path, repo: Path, cache: Path) -> None:
    files = UnlearnFiles(tmp_path / "ac")
    argv = ("unlearn", "--recipe", str(recipe(tmp_path, 200)), "--out", str(files.folder), "--device", "cpu")
    process = harness(repo, cache, *argv)
    assert_interrupted(process, interrupt_when(process, (files.checkpoints / "last.ckpt").is_file))
    assert not files.record.exists() and not files.tensors.exists()
    assert (files.checkpoints / "last.ckpt").is_file()  # the work so far is kept for the rerun
    rerun = harness(repo, cache, *argv)
    assert rerun.wait(timeout=240) == 0, rerun.communicate()[1][-2000:]
    assert files.record.is_file() and files.tensors.is_file()


def test_ctrl_c_during_relearning_exits_130_and_nothing_looks_complete(tmp_path: Path, repo: Path, cache: Path) -> None:
    path = recipe(tmp_path, 2)
    unlearned = UnlearnFiles(tmp_path / "ac")
    done = harness(repo, cache, "unlearn", "--recipe", str(path), "--out", str(unlearned.folder), "--device", "cpu")
    assert done.wait(timeout=240) == 0, done.communicate()[1][-2000:]
    attacked = AttackFiles(tmp_path / "dimra")
    process = harness(repo, cache, "attack", "--recipe", str(path), "--unlearned", str(unlearned.folder),
                      "--out", str(attacked.folder), "--attack", "dimra", "--device", "cpu")
    assert_interrupted(process, interrupt_when(process, lambda: any(tmp_path.rglob("last.ckpt"))))
    assert not attacked.record.exists() and not attacked.tensors.exists()


def test_ctrl_c_during_generation_exits_130_and_the_rerun_completes_every_shard(tmp_path: Path, repo: Path, cache: Path) -> None:
    from harness.worlds.digits.store import PIPELINE_DIR, ensure_world

    out = tmp_path / "images"
    argv = ("generate", "--model", str(ensure_world(cache) / PIPELINE_DIR), "--suite", "digits-all-5", "--out", str(out),
            "--steps", "4", "--shard-size", "5", "--batch-size", "1", "--accelerator", "cpu", "--tag", "pretrained")
    process = harness(repo, cache, *argv)
    assert_interrupted(process, interrupt_when(process, lambda: any(out.glob("shard-*.tar"))))
    kept = sorted(p.name for p in out.glob("shard-*.tar"))
    assert 1 <= len(kept) < 10
    rerun = harness(repo, cache, *argv)
    assert rerun.wait(timeout=240) == 0, rerun.communicate()[1][-2000:]
    assert len(list(out.glob("shard-*.tar"))) == 10
