"""Rows that leave attacks out, and the automatic positive-control rows (PROTOCOL.md section 8):
the pairs a recipe runs, the rows `controls: auto` adds, and how the printed matrix reads them."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.experiment.run import plan_for
from harness.experiment.summary import matrix_lines
from harness.layout import ModelRef
from harness.recipe import load_recipe
from harness.records import ResultRow, Results
from harness.report.controls import control_verdicts
from harness.slurm.planner import SlurmOptions, write_plan
from harness.stats import wilson_interval

RECIPE = """\
name: pairs
model: zoo:digits
concept: {{target: seven, kind: digit}}
methods:
  - {{method: conceptprune, params: {{tau: 2}}{restricted}}}
  - {{method: p-esd, params: {{steps: 2}}}}
attacks:
  - {{attack: nms}}
  - {{attack: unlearndiff, params: {{budget: quick}}}}
generation: {{steps: 3, guidance: 3.0, scheduler: null, dtype: float32, batch_size: 20, shard_size: 10}}
suites: [digits-seven-3]
{extra}"""


def write(tmp_path: Path, restricted: str = "", extra: str = "") -> Path:
    path = tmp_path / "pairs.yaml"
    path.write_text(RECIPE.format(restricted=restricted, extra=extra))
    return path


def test_a_row_that_names_its_attacks_gets_exactly_those_pairs_in_the_models_the_plan_and_slurm(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, restricted=", attacks: [nms]", extra="controls: off\n"))
    assert recipe.pairs() == [("conceptprune", "nms"), ("p-esd", "nms"), ("p-esd", "unlearndiff")]
    assert [m.label for m in recipe.models()] == ["pretrained", "conceptprune", "p-esd", "conceptprune/nms",
                                                  "p-esd/nms", "p-esd/unlearndiff"]
    plan = plan_for(recipe, tmp_path / "run")
    assert ModelRef("conceptprune", "unlearndiff") not in plan.models
    assert plan.as_dict()["pairs"] == ["conceptprune/nms", "p-esd/nms", "p-esd/unlearndiff"]
    jobs = write_plan(plan, tmp_path / "pairs.yaml", SlurmOptions(workdir=tmp_path), tmp_path / "slurm")
    attack = next(job for job in jobs if job.stage == "attack")
    assert "cells=('conceptprune nms' 'p-esd nms' 'p-esd unlearndiff')" in attack.text
    assert "--array=0-2%3" in attack.text


def test_an_unknown_attack_label_in_a_row_is_a_one_line_error_naming_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, restricted=", attacks: [nms, revival]")
    with pytest.raises(HarnessError) as caught:
        load_recipe(path)
    message = str(caught.value)
    assert "\n" not in message and f"{path}: methods[0].attacks: no attack labelled 'revival'" in message


def test_a_recipe_without_an_attacks_control_gets_its_control_row_unless_controls_are_off(tmp_path: Path) -> None:
    auto = load_recipe(write(tmp_path))
    control = auto.methods[-1]
    assert [m.name for m in auto.methods] == ["conceptprune", "p-esd", "esd-control"]
    assert (control.method, control.attacks, control.cache, control.layers) == ("esd", ["unlearndiff"], True, ["*attn2.*"])
    assert control.params["trainable"] == "esd-x"  # the digits world's preset
    assert ("esd-control", "unlearndiff") in auto.pairs() and ("esd-control", "nms") not in auto.pairs()
    off = load_recipe(write(tmp_path, extra="controls: off\n"))
    assert [m.name for m in off.methods] == ["conceptprune", "p-esd"]


def test_a_model_without_a_control_preset_gets_no_row_and_its_line_says_so(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    monkeypatch.setattr("harness.controls.preset_path", lambda model: None)
    recipe = load_recipe(write(tmp_path))
    assert [m.name for m in recipe.methods] == ["conceptprune", "p-esd"]
    verdicts = control_verdicts(dataclasses.asdict(recipe), [], "digits-seven-3")
    assert verdicts["unlearndiff"]["missing"] == "no control preset for this model; add a row of esd"
    off = control_verdicts(dataclasses.asdict(load_recipe(write(tmp_path, extra="controls: off\n"))), [], "s")
    assert "missing" not in off["unlearndiff"]


def share(method: str, attack: str, correct: int) -> ResultRow:
    return ResultRow(method=method, attack=attack, suite="s", erased_accuracy=correct / 20, preserved_accuracy=None,
                     n_erased=20, n_preserved=0, erased_ci=list(wilson_interval(correct, 20)), preserved_ci=None, fid=None)


def test_the_report_marks_every_verdict_of_an_attack_that_did_not_break_its_control_row(tmp_path: Path) -> None:
    import dataclasses

    recipe = dataclasses.asdict(load_recipe(write(tmp_path)))
    rows = [share("conceptprune", "none", 1), share("conceptprune", "nms", 18), share("conceptprune", "unlearndiff", 2),
            share("p-esd", "none", 0), share("p-esd", "nms", 0), share("p-esd", "unlearndiff", 0),
            share("esd-control", "none", 0), share("esd-control", "unlearndiff", 1)]
    controls = control_verdicts(recipe, rows, "s")
    assert controls["unlearndiff"]["method"] == "esd-control" and controls["unlearndiff"]["broken"] is False
    lines = matrix_lines(Results(recipe=recipe, versions={}, seeds={}, rows=rows, provenance={}, controls=controls), "seven")
    assert lines[1].split() == ["method", "none", "nms", "unlearndiff*"]
    control_row = next(line.split() for line in lines if line.startswith("esd-control"))
    assert control_row[1] == "0.00" and control_row[5] == "-"  # nms is not run on it
    assert lines[-1] == ("  unlearndiff: did NOT break its control esd-control (0.00 -> 0.05); "
                         "its 'no' is weak evidence here")
