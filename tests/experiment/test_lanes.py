"""A whole run over worker processes (`harness benchmark --workers N`): how the work is split,
what `--workers` accepts, and that a parallel run writes the results a serial one does."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import harness
from harness.errors import HarnessError
from harness.experiment.lanes import method_lanes, resolve_workers
from harness.layout import RunLayout
from harness.recipe import load_recipe
from harness.records import Results, UnlearnRecord, read_record
from harness.runtime import RuntimeSettings

RECIPE = """\
name: lanes
model: zoo:digits
concept: {target: seven, kind: digit}
controls: off
methods:
  - {method: conceptprune, params: {skill_ratio: 0.05, tau: 2, seed: 0}}
  - {method: conceptprune, name: conceptprune-sigma-0.01, params: {skill_ratio: 0.05, tau: 2, seed: 0},
     defense: {sigma: 0.01, seed: 0}}
  - {method: conceptprune, name: conceptprune-tau-3, params: {skill_ratio: 0.05, tau: 3, seed: 0}}
attacks:
  - {attack: nms}
  - {attack: dimra, params: {steps: 4, curve_every: 2, batch_size: 2}}
generation: {steps: 3, guidance: 3.0, scheduler: null, dtype: float32, batch_size: 20}
suites: [digits-seven-2, digits-one-1]
"""


def test_a_defended_method_runs_in_its_undefended_twins_task_and_every_other_method_alone(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE)
    assert method_lanes(load_recipe(path).methods) == [["conceptprune", "conceptprune-sigma-0.01"],
                                                       ["conceptprune-tau-3"]]


def test_workers_auto_is_the_cpu_count_up_to_4_and_a_bad_count_is_refused() -> None:
    assert resolve_workers("auto", "cpu") == max(1, min(4, os.cpu_count() or 1))
    assert resolve_workers("3", "cpu") == 3
    for bad in ("0", "two", "-1"):
        with pytest.raises(HarnessError, match=f"--workers: expected a positive count or 'auto', got '{bad}'"):
            resolve_workers(bad, "cpu")


@pytest.mark.slow
def test_a_run_over_two_workers_writes_the_results_of_a_serial_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.worlds.digits.store import ensure_world

    ensure_world(tmp_path / "cache")
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))  # the spawned workers inherit it
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    runtime = RuntimeSettings(device="cpu", accelerator="cpu")
    parallel = harness.run(recipe, tmp_path / "parallel", runtime=runtime, workers=2)
    serial = harness.run(recipe, tmp_path / "serial", runtime=runtime, workers=1)
    assert parallel is not None and serial is not None

    def cells(results: Results) -> dict:
        return {(r.method, r.attack, r.suite, r.step): (r.erased_accuracy, r.n_erased, r.fid) for r in results.rows}

    assert cells(parallel) == cells(serial)
    assert ("conceptprune", "dimra", "digits-seven-2", 2) in cells(parallel)  # the curve's snapshot was scored
    defended = read_record(UnlearnRecord, RunLayout(tmp_path / "parallel").unlearn("conceptprune-sigma-0.01").record)
    assert defended.info["reused_from"].endswith("conceptprune")  # it ran after its twin, in the twin's task
    assert json.loads((tmp_path / "parallel" / "results.json").read_text())["rows"]
