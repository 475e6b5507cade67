"""The benchmark plan: variants, models, shards and paths of a run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import HarnessError
from harness.experiment.plan import build_plan
from harness.experiment.summary import print_summary
from harness.recipe import load_recipe

RECIPE = """
name: plan-test
model: zoo:digits
concept: {target: seven, kind: digit}
unlearn: {method: conceptprune}
attack: {top_k: 0.4, magnitude: nms}
variants:
  - {name: nms}
  - {name: avg, magnitude: average, top_k: 0.8}
  - {name: q4, strategy: quant4}
generation: {shard_size: 30}
suites: [digits-all-7, digits-seven-5]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_plan_lists_models_variants_and_shards(tmp_path: Path) -> None:
    plan = build_plan(load_recipe(write(tmp_path, RECIPE)), tmp_path / "run")
    assert plan.models == ["pretrained", "unlearned", "revived-nms", "revived-avg", "revived-q4"]
    assert plan.variants["avg"].magnitude == "average" and plan.variants["avg"].top_k == 0.8
    assert plan.variants["nms"].top_k == 0.4 and plan.variants["q4"].strategy == "quant4"
    assert plan.variants["nms"].original == "zoo:digits"
    assert plan.variants["nms"].unlearned == str(tmp_path / "run" / "unlearn" / "unlearned.safetensors")
    assert plan.variants["avg"].out == str(tmp_path / "run" / "revive" / "avg")
    assert plan.suite_sizes == {"digits-all-7": 70, "digits-seven-5": 5}
    assert plan.shard_count("digits-all-7") == 3 and plan.shard_count("digits-seven-5") == 1
    assert plan.model_tensors("pretrained") == []
    assert plan.model_tensors("revived-q4") == [tmp_path / "run" / "revive" / "q4" / "revived.safetensors"]
    with pytest.raises(HarnessError, match="unknown model 'revived-x'"):
        plan.model_tensors("revived-x")


def test_repeated_variant_names_and_bad_values_are_errors(tmp_path: Path) -> None:
    repeated = RECIPE.replace("{name: q4, strategy: quant4}", "{name: nms, strategy: quant4}")
    with pytest.raises(HarnessError, match="name 'nms' is repeated"):
        build_plan(load_recipe(write(tmp_path, repeated)), tmp_path / "run")
    bad = RECIPE.replace("top_k: 0.8", "top_k: 2.0")
    with pytest.raises(HarnessError, match="variants: avg: top_k must lie in"):
        build_plan(load_recipe(write(tmp_path, bad)), tmp_path / "run")
    typo = RECIPE.replace("{name: nms}", "{name: nms, magnitud: max}")
    with pytest.raises(HarnessError, match="variants\\[0\\]: unknown key 'magnitud'"):
        load_recipe(write(tmp_path, typo))


def test_the_embedded_default_is_found_from_any_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["benchmark", "--list-jobs", "--run-dir", str(tmp_path / "run")]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["models"][:2] == ["pretrained", "unlearned"] and "revived-nms" in plan["models"]
    assert not (tmp_path / "run").exists()


def test_the_summary_table_stays_aligned_and_marks_missing_values(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    text = RECIPE.replace("{name: q4, strategy: quant4}", "{name: ideal-magnitude-random-sign, strategy: quant4}")
    plan = build_plan(load_recipe(write(tmp_path, text)), tmp_path / "run")
    print_summary(plan)
    lines = capsys.readouterr().out.strip().splitlines()[1:]
    assert len(lines) == 1 + len(plan.models)
    assert len({len(line) for line in lines}) == 1
    assert all(line.split()[1:] == ["missing"] * 4 for line in lines[1:])
