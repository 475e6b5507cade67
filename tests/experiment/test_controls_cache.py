"""A control row's unlearned model is trained once per world and kept in the harness cache: a later
run in another run directory copies it instead of training, and an incomplete cached folder is
never taken as done."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from harness.experiment.run import run
from harness.layout import RunLayout, UnlearnFiles
from harness.records import UnlearnRecord, read_record
from harness.unlearn import run as unlearn_stage
from harness.unlearn.cached import cached_folder

RECIPE = """\
name: cached
model: zoo:digits
concept: {target: seven, kind: digit}
methods:
  - {method: conceptprune, params: {tau: 2}}
attacks:
  - {attack: unlearndiff, params: {budget: quick}}
generation: {steps: 3, guidance: 3.0, scheduler: null, dtype: float32, batch_size: 20, shard_size: 10}
suites: [digits-seven-3]
"""

PRESET = """\
esd:
  layers: ["*attn2.*"]
  params: {trainable: esd-x, ddim_steps: 4, lr: 1.0e-4, steps: 2}
"""


@pytest.mark.timeout(300)
def test_the_control_is_trained_once_then_taken_from_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    from harness.worlds.digits.store import ensure_world

    caplog.set_level(logging.INFO, logger="harness")
    cache = tmp_path / "cache"
    ensure_world(cache)
    monkeypatch.setenv("HARNESS_CACHE", str(cache))
    preset = tmp_path / "preset.yaml"
    preset.write_text(PRESET)
    monkeypatch.setattr("harness.controls.preset_path", lambda model: preset)
    trained = []
    apply_method = unlearn_stage.apply_method
    monkeypatch.setattr(unlearn_stage, "apply_method", lambda *args: trained.append(1) or apply_method(*args))
    recipe = tmp_path / "cached.yaml"
    recipe.write_text(RECIPE)

    def unlearn(run_dir: Path) -> UnlearnRecord:
        run(recipe, run_dir, stage="unlearn", method="esd-control")
        return read_record(UnlearnRecord, UnlearnFiles(RunLayout(run_dir).unlearn("esd-control").folder).record)

    first = unlearn(tmp_path / "one")
    stored = cached_folder(first.key)
    assert len(trained) == 1 and read_record(UnlearnRecord, UnlearnFiles(stored).record).key == first.key
    second = unlearn(tmp_path / "two")
    assert len(trained) == 1 and second.key == first.key and second.provenance == first.provenance
    assert "unlearn esd-control: reused from the harness cache" in caplog.text
    assert (UnlearnFiles(RunLayout(tmp_path / "two").unlearn("esd-control").folder).tensors.read_bytes()
            == UnlearnFiles(stored).tensors.read_bytes())

    UnlearnFiles(stored).mask.unlink()  # half a folder (as a crash would leave it) is not done
    unlearn(tmp_path / "three")
    assert len(trained) == 2 and UnlearnFiles(stored).mask.is_file()
