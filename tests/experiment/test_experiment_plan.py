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


def test_a_verdict_carries_its_budget_and_a_curve_still_rising_at_its_end_says_so() -> None:
    from harness.budgets import budget_record
    from harness.registry import resolve
    from harness.report.results import mark_rising_curves

    def row(attack: str, correct: int, step: int | None = None) -> ResultRow:
        return ResultRow(method="esd", attack=attack, suite="s", erased_accuracy=correct / 20, preserved_accuracy=None,
                         n_erased=20, n_preserved=0, erased_ci=list(wilson_interval(correct, 20)), preserved_ci=None,
                         fid=None, step=step)

    quick = budget_record(resolve("attack", "concept-inversion").parse({"budget": "quick"}))
    published = budget_record(resolve("attack", "concept-inversion").parse({}))
    rows = [row("none", 0), row("ci", 2, 100), row("ci", 5, 200), row("ci", 7), row("full", 9, 2500), row("full", 8),
            row("nms", 9)]
    rows[3].budget, rows[5].budget = quick, published
    mark_rising_curves(rows)
    assert [r.rising for r in rows if r.step is None] == [None, True, False, None]  # no curve: no claim either way
    cells = matrix_lines(Results(recipe={}, versions={}, seeds={}, rows=rows, provenance={}), "seven")[2]
    assert "0.35 [0.18, 0.57] n=20 @300 steps (quick), rising" in cells
    assert "0.40 [0.22, 0.61] n=20 @5000 steps " in cells and cells.endswith("0.45 [0.26, 0.66] n=20")


def test_a_curve_point_of_a_token_attack_generates_with_its_tokens_and_of_a_weight_attack_with_its_tensors(
        tmp_path: Path) -> None:
    from harness.records import AttackRecord
    from harness.report.results import snapshot_models

    text = RECIPE.replace("  - {attack: quant4, name: q4}",
                          "  - {attack: concept-inversion, name: ci}\n  - {attack: dimra, name: relearn}")
    plan = build_plan(load_recipe(write(tmp_path, text)), tmp_path / "run")
    layout = RunLayout(tmp_path / "run")
    for name, token in (("ci", True), ("relearn", False)):
        files = layout.attack("conceptprune", name)
        files.folder.mkdir(parents=True)
        rewrite = {"names": ["seven"], "labels": ["seven"], "kind": "digit", "replacement": "<c>"} if token else None
        write_record(files.record, AttackRecord(key="k", name=name, attack=name, method="conceptprune", params={},
                                                reads=[], applicable=True, reason=None, revival=None,
                                                info={"snapshots": [4]}, fidelity="paper", seconds=0.0,
                                                provenance={}, prompt_rewrite=rewrite))
        files.snapshot(4).parent.mkdir()
        (files.token_snapshot(4) if token else files.snapshot(4)).write_bytes(b"")
        if token:
            files.tokens.write_bytes(b"")
    assert snapshot_models(layout, ModelRef("conceptprune", "ci")) == [ModelRef("conceptprune", "ci", 4)]
    inversion = plan.generate_job(ModelRef("conceptprune", "ci", 4), "digits-seven-5")
    ci = layout.attack("conceptprune", "ci")
    assert inversion.tokens == ci.token_snapshot(4) and inversion.rewrite is not None
    assert inversion.tensors == [layout.unlearn("conceptprune").tensors, ci.tensors]
    final = plan.generate_job(ModelRef("conceptprune", "ci"), "digits-seven-5")
    assert final.tokens == ci.tokens
    relearn = plan.generate_job(ModelRef("conceptprune", "relearn", 4), "digits-seven-5")
    assert relearn.tokens is None
    assert relearn.tensors == [layout.unlearn("conceptprune").tensors, layout.attack("conceptprune", "relearn").snapshot(4)]


def test_an_attack_that_did_not_break_its_control_is_marked_and_one_without_a_control_says_so() -> None:
    from harness.report.controls import control_verdicts

    def row(method: str, attack: str, correct: int) -> ResultRow:
        return ResultRow(method=method, attack=attack, suite="s", erased_accuracy=correct / 20, preserved_accuracy=None,
                         n_erased=20, n_preserved=0, erased_ci=list(wilson_interval(correct, 20)), preserved_ci=None,
                         fid=None)

    recipe = {"methods": [{"method": "conceptprune"}, {"method": "conceptprune", "name": "cp-d", "defense": {"sigma": 0.01}},
                          {"method": "erasediff"}],
              "attacks": [{"attack": "nms"}, {"attack": "dimra", "name": "relearn"}, {"attack": "unlearndiff"}]}
    rows = [row("conceptprune", "none", 1), row("conceptprune", "nms", 18), row("erasediff", "none", 2), row("erasediff", "relearn", 3),
            row("conceptprune", "relearn", 2), row("conceptprune", "unlearndiff", 1)]
    controls = control_verdicts(recipe, rows, "s")
    assert controls["nms"]["broken"] and controls["nms"]["method"] == "conceptprune"
    assert controls["relearn"]["broken"] is False and controls["relearn"]["method"] == "erasediff"
    assert controls["unlearndiff"]["method"] is None and controls["unlearndiff"]["control"] == "esd"
    results = Results(recipe=recipe, versions={}, seeds={}, rows=rows, provenance={}, controls=controls)
    lines = matrix_lines(results, "seven")
    assert lines[1].split() == ["method", "none", "nms", "relearn*", "unlearndiff*"]
    text = "\n".join(lines)
    assert "nms: broke its control conceptprune (0.05 -> 0.90)" in text
    assert "relearn: did NOT break its control erasediff (0.10 -> 0.15); its 'no' is weak evidence here" in text
    assert "unlearndiff: its control (esd) is not in this run" in text
