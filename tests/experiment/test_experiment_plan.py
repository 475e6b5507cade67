"""The matrix plan: methods x attacks, models, shards, the jobs of every stage, the printed table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import HarnessError
from harness.experiment.plan import build_plan
from harness.experiment.summary import matrix_lines, summary_lines
from harness.layout import ModelRef, RunLayout
from harness.recipe import load_recipe
from harness.records import ResultRow, Results, UnlearnRecord, write_record
from harness.report.results import collect_results
from harness.stats import wilson_interval

RECIPE = """
name: plan-test
model: zoo:digits
concept: {target: seven, kind: digit}
methods:
  - {method: conceptprune}
  - {method: conceptprune, defense: {sigma: 0.01}}
attacks:
  - {attack: nms, params: {top_k: 0.4}}
  - {attack: average, name: avg, params: {top_k: 0.8}}
  - {attack: quant4, name: q4}
generation: {shard_size: 30}
suites: [digits-all-7, digits-seven-5]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_plan_lists_the_matrix_models_jobs_and_shards(tmp_path: Path) -> None:
    plan = build_plan(load_recipe(write(tmp_path, RECIPE)), tmp_path / "run")
    assert [m.label for m in plan.models] == [
        "pretrained", "conceptprune", "conceptprune-sigma0.01",
        "conceptprune/nms", "conceptprune/avg", "conceptprune/q4",
        "conceptprune-sigma0.01/nms", "conceptprune-sigma0.01/avg", "conceptprune-sigma0.01/q4"]
    layout = RunLayout(tmp_path / "run")
    with pytest.raises(HarnessError, match="conceptprune: no unlearn.json; run the unlearn stage into it first"):
        plan.attack_job("conceptprune", "avg")
    write_record(layout.unlearn("conceptprune").record, _unlearn_record(["down.ff.net.2.weight"]))
    job = plan.attack_job("conceptprune", "avg")
    assert job.attack == "average" and job.params.top_k == 0.8 and job.params.magnitude == "average"
    assert job.layers == ["down.ff.net.2.weight"]  # from the unlearn record, not the method's declaration
    assert job.original == "zoo:digits" and job.entry == "attacks[1]"
    assert job.unlearned_files == [layout.unlearn("conceptprune").tensors]
    assert job.out == layout.attack("conceptprune", "avg").folder
    unlearn = plan.unlearn_job("conceptprune-sigma0.01")
    assert unlearn.method.defense.sigma == 0.01 and unlearn.entry == "methods[1]"
    assert plan.suite_sizes == {"digits-all-7": 70, "digits-seven-5": 5}
    assert plan.shard_count("digits-all-7") == 3 and plan.shard_count("digits-seven-5") == 1
    assert layout.model_tensors(ModelRef("pretrained")) == []
    assert layout.model_tensors(ModelRef("conceptprune", "q4")) == [layout.unlearn("conceptprune").tensors,
                                                                   layout.attack("conceptprune", "q4").tensors]
    with pytest.raises(HarnessError, match="--model 'conceptprune/x' is not in this plan"):
        plan.pick_models("conceptprune/x")


def _unlearn_record(layers: list[str]) -> UnlearnRecord:
    return UnlearnRecord(key="k", name="conceptprune", method="conceptprune", model="zoo:digits", params={},
                         concept={}, layers=[], selected_layers=layers, changed=0, fraction_of_layers=0.0,
                         fraction_of_unet=0.0, sigma_u=None, defense=None, detectability=None, info={},
                         generation={}, seeds={}, fidelity="paper", seconds=0.0, provenance={})


def test_repeated_names_and_bad_values_are_errors(tmp_path: Path) -> None:
    repeated = RECIPE.replace("{attack: quant4, name: q4}", "{attack: quant4, name: nms}")
    with pytest.raises(HarnessError, match="attacks: name 'nms' is used twice"):
        load_recipe(write(tmp_path, repeated))
    reserved = RECIPE.replace("name: q4", "name: none")
    with pytest.raises(HarnessError, match="attacks\\[2\\]: name 'none' is reserved"):
        load_recipe(write(tmp_path, reserved))
    typo = RECIPE.replace("{attack: nms, params: {top_k: 0.4}}", "{attack: nms, parms: {top_k: 0.4}}")
    with pytest.raises(HarnessError, match="attacks\\[0\\]: unknown key 'parms'"):
        load_recipe(write(tmp_path, typo))
    empty = RECIPE.replace("suites: [digits-all-7, digits-seven-5]", "suites: []")
    with pytest.raises(HarnessError, match="suites: list at least one prompt suite"):
        load_recipe(write(tmp_path, empty))
    unknown = RECIPE.replace("digits-seven-5", "digits-eleven")
    with pytest.raises(HarnessError, match="recipe.yaml: suites: unknown suite 'digits-eleven'"):
        build_plan(load_recipe(write(tmp_path, unknown)), tmp_path / "run")


def test_the_embedded_default_is_found_from_any_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["benchmark", "--list-jobs", "--run-dir", str(tmp_path / "run")]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["models"][:2] == ["pretrained", "conceptprune"] and "conceptprune/nms" in plan["models"]
    assert not (tmp_path / "run").exists()


def test_the_summary_table_stays_aligned_and_says_why_a_cell_is_empty(tmp_path: Path) -> None:
    text = RECIPE.replace("name: q4", "name: ideal-magnitude-random-sign")
    recipe = load_recipe(write(tmp_path, text))
    results = collect_results(RunLayout(tmp_path / "run"), recipe)
    lines = summary_lines(results, "seven")[2:]
    assert len(lines) == len(recipe.models())
    assert all(line.split()[2].startswith("missing:") for line in lines)
    assert len({line.index("missing:") for line in lines}) == 1  # the status column lines up


def test_the_printed_matrix_has_a_row_per_method_and_a_column_per_attack() -> None:
    def row(method: str, attack: str, suite: str, erased: tuple[int, int] | None, status: str = "done") -> ResultRow:
        correct, n = erased or (0, 0)
        share, _, interval = (correct / n, n, list(wilson_interval(correct, n))) if n else (None, 0, None)
        return ResultRow(method=method, attack=attack, suite=suite, erased_accuracy=share, preserved_accuracy=0.9,
                         n_erased=n, n_preserved=40, erased_ci=interval, preserved_ci=[0.8, 0.95], fid=3.0, status=status)

    rows = [row("pretrained", "none", "seven", (20, 20)), row("cp", "none", "seven", (1, 20)),
            row("cp", "nms", "seven", (17, 20)), row("cp-sigma", "none", "seven", (0, 20)),
            row("cp-sigma", "nms", "seven", None, "not applicable: no exact zeros")]
    results = Results(recipe={"name": "m"}, versions={}, seeds={}, rows=rows, provenance={})
    title, header, *body = matrix_lines(results, "seven")
    assert "'seven' accuracy" in title and header.split() == ["method", "none", "nms"]
    assert [line.split()[0] for line in body] == ["pretrained", "cp", "cp-sigma"]
    assert body[1].split()[1] == "0.05" and "n=20" in body[1] and body[1].split()[5] == "0.85"
    assert body[2].split()[-1] == "n/a" and body[0].split()[-1] == "-"  # not applicable; not in the matrix
