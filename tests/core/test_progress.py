"""Progress for log files: whole lines, never carriage-return frames, when the output is not a
terminal (harness/progress.py); tqdm's bars on a terminal."""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from tqdm.auto import tqdm as auto_tqdm

from harness import progress


def test_a_terminal_keeps_tqdm_and_a_file_gets_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(progress.PROGRESS_ENV, "bars")
    assert progress.tqdm_class() is auto_tqdm and progress.tqdm_class(Tqdm) is Tqdm
    monkeypatch.setenv(progress.PROGRESS_ENV, "lines")
    assert progress.tqdm_class() is progress.LineBar
    lightning = progress.tqdm_class(Tqdm)
    assert issubclass(lightning, Tqdm) and issubclass(lightning, progress.LineBarMixin)
    monkeypatch.delenv(progress.PROGRESS_ENV)
    monkeypatch.setattr(sys, "stderr", open(os.devnull, "w"))  # a file, not a terminal
    assert not progress.interactive()


def test_a_line_bar_logs_each_tenth_and_its_end(monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(progress.PROGRESS_ENV, "lines")
    caplog.set_level(logging.INFO, logger="harness.progress")
    bar = progress.bar(total=200, desc="generate m s", unit="image", mininterval=0)
    for _ in range(200):
        bar.update(1)
    bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 10 and lines[0].startswith("generate m s: 20 of 200 image (10%)")
    assert lines[-1].startswith("generate m s: 200 of 200 image (100%)")
    caplog.clear()
    for _ in progress.bar(range(3), desc="three", unit="batch", leave=False):
        pass
    assert [r.getMessage().split(" [")[0] for r in caplog.records] == ["three: 3 of 3 batch (100%)"]
    caplog.clear()
    stopped = progress.bar(total=100, desc="stopped", mininterval=0)
    stopped.update(35)
    stopped.close()  # an interrupted bar says where it stopped
    assert [r.getMessage().split(" [")[0] for r in caplog.records] == ["stopped: 35 of 100 it (35%)"]
    caplog.clear()
    for _ in progress.bar(iter(range(4)), desc="open-ended"):  # no total: a line at the end
        pass
    assert [r.getMessage().split(" [")[0] for r in caplog.records] == ["open-ended: 4 it"]
    caplog.clear()
    for _ in progress.bar(range(3), desc="rank 1", disable=True):
        pass
    assert not caplog.records


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_stage_logged_to_a_file_has_lines_not_frames(tmp_path: Path, repo: Path) -> None:
    """`harness unlearn` of a few AC steps with its output in a file: the anchor samples' tqdm
    bar and Lightning's training bar write whole lines, and no carriage return."""
    from harness.worlds.digits.store import ensure_world

    cache = tmp_path / "cache"
    ensure_world(cache)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: lines\nmodel: zoo:digits\nconcept: {target: seven, kind: digit, anchor: a photo of a digit}\n"
        "methods: [{method: ac, layers: ['*attn2.to_k.*'], params: {steps: 20, batch_size: 2}}]\n"
        "generation: {steps: 3, guidance: 3.0, scheduler: null, dtype: float32}\n")
    env = {k: v for k, v in os.environ.items() if k != progress.PROGRESS_ENV}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(repo), HARNESS_CACHE=str(cache))
    log = tmp_path / "log"
    with log.open("w") as out:
        done = subprocess.run([sys.executable, "-m", "harness.cli", "unlearn", "--recipe", str(recipe), "--out",
                               str(tmp_path / "out"), "--device", "cpu"], env=env, stdout=out, stderr=subprocess.STDOUT,
                              timeout=280)
    text = log.read_text()
    assert done.returncode == 0, text[-2000:]
    assert "\r" not in text
    lines = text.splitlines()
    train = [line for line in lines if line.startswith("train ac: ")]
    assert len(train) == 10 and train[-1].startswith("train ac: 20 of 20 step (100%)") and "loss=" in train[-1]
    assert any(line.startswith("anchor samples: ") and "(100%)" in line for line in lines)


def test_a_bar_collected_unclosed_says_nothing(monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """Lightning leaves its bar open when training stops on an exception; the bar is closed when
    collected, after the stage's last line (`interrupted`), and must not print after it."""
    monkeypatch.setenv(progress.PROGRESS_ENV, "lines")
    caplog.set_level(logging.INFO, logger="harness.progress")
    bar = progress.bar(total=100, desc="open", mininterval=0)
    bar.update(5)
    caplog.clear()
    del bar
    gc.collect()
    assert not caplog.records
