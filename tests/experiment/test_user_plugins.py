"""A researcher's own method and attack: one decorated function each in their own module, named
by import path in a recipe, run through `harness benchmark`, `harness.run` and `harness attack`
(CONTRIBUTING.md shows the same two functions)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import harness
from harness.attack.interface import AttackContext, AttackResult
from harness.cli import main
from harness.layout import ModelRef, RunLayout
from harness.records import AttackRecord, UnlearnRecord, read_record
from harness.registry import attack, method
from harness.unlearn.method import UnlearnContext, UnlearnResult

pytestmark = pytest.mark.slow


@dataclass
class ZeroRowParams:
    row: int = 0
    """the output row zeroed in every target layer"""


@method("zero-row", params=ZeroRowParams, prunes=True)
def zero_row(context: UnlearnContext, params: ZeroRowParams) -> UnlearnResult:
    """Zero one row of every target layer."""
    weights = dict(context.pipeline.unet.named_parameters())
    masks = {name: torch.zeros_like(weights[name], dtype=torch.bool) for name in context.layers}
    for mask in masks.values():
        mask[params.row] = True
    tensors = {name: weights[name].detach().cpu().masked_fill(mask, 0) for name, mask in masks.items()}
    return UnlearnResult(masks=masks, tensors=tensors, info={"row": params.row})


@dataclass
class FillParams:
    value: float = 0.01


@attack("fill-zeros", params=FillParams)
def fill_zeros(context: AttackContext, params: FillParams) -> AttackResult:
    """Put `value` wherever the method's layers hold an exact zero."""
    state = context.unlearned_state()
    tensors = {name: state[name].masked_fill(state[name] == 0, params.value) for name in context.layers}
    return AttackResult(tensors=tensors, info={"filled": sum(int((t == params.value).sum()) for t in tensors.values())})


RECIPE = f"""\
name: mine
model: zoo:digits
concept: {{target: seven, kind: digit}}
methods:
  - {{method: "{__name__}:zero_row", params: {{row: 2}}}}
attacks:
  - {{attack: "{__name__}:fill_zeros", params: {{value: 0.5}}}}
generation: {{steps: 2, guidance: 3.0, scheduler: null, dtype: float32, batch_size: 20}}
score: {{classifier: digits}}
suites: [digits-seven-2]
"""


@pytest.fixture
def world_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from harness.worlds.digits.store import ensure_world

    root = tmp_path / "cache"
    ensure_world(root)
    monkeypatch.setenv("HARNESS_CACHE", str(root))
    return root


def test_a_user_method_and_attack_run_through_the_benchmark(world_cache: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(RECIPE)
    run = tmp_path / "run"
    assert main(["benchmark", str(recipe), "--run-dir", str(run), "--device", "cpu", "--accelerator", "cpu"]) == 0
    layout = RunLayout(run)
    unlearned = read_record(UnlearnRecord, layout.unlearn("zero-row").record)
    assert unlearned.info == {"row": 2} and unlearned.changed == sum(r.shape[1] for r in unlearned.layers)
    attacked = read_record(AttackRecord, layout.attack("zero-row", "fill-zeros").record)
    assert attacked.applicable and attacked.params == {"value": 0.5}
    tensors = load_file(layout.attack("zero-row", "fill-zeros").tensors)
    assert set(tensors) == set(unlearned.selected_layers)
    assert all(torch.all(t[2] == 0.5) for t in tensors.values())
    results = harness.run(recipe, run, stage="report")  # the same run from Python: every stage already done
    assert results is not None
    assert {(r.method, r.attack) for r in results.rows} == {("pretrained", "none"), ("zero-row", "none"),
                                                           ("zero-row", "fill-zeros")}
    assert all(r.status == "done" and r.n_erased == 2 for r in results.rows)
    assert layout.images(ModelRef("zero-row", "fill-zeros"), "digits-seven-2").shards()


def test_harness_attack_runs_one_attack_on_an_unlearned_folder(world_cache: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(RECIPE)
    unlearned, out = tmp_path / "unlearned", tmp_path / "attacked"
    assert main(["unlearn", "--recipe", str(recipe), "--out", str(unlearned), "--device", "cpu"]) == 0
    assert main(["attack", "--recipe", str(recipe), "--unlearned", str(unlearned), "--out", str(out),
                 "--device", "cpu"]) == 0
    assert "fill-zeros on zero-row" in capsys.readouterr().out
    record = read_record(AttackRecord, out / "attack.json")
    assert record.method == "zero-row" and record.info["filled"] > 0
    assert main(["attack", "--recipe", str(recipe), "--unlearned", str(tmp_path / "nothing"), "--out", str(out)]) == 2
    assert "no unlearn.json; run the unlearn stage into it first" in capsys.readouterr().err
