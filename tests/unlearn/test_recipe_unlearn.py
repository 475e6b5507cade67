"""The shipped unlearning recipes: they load, name real methods with valid params, carry the
paper's settings, and the SD-v1.5 ConceptPrune recipe runs on a tiny SD-shaped pipeline."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from harness.config import parse_dataclass
from harness.errors import in_file, keyed
from harness.layout import UnlearnFiles
from harness.recipe import check_entries, load_recipe
from harness.records import UnlearnRecord, read_record
from harness.registry import registered
from harness.runtime import RuntimeSettings
from harness.unlearn.conceptprune import ConceptPruneParams
from harness.unlearn.job import UnlearnJob
from harness.unlearn.method import resolve_method
from harness.unlearn.run import run as run_unlearning
from harness.unlearn.saliency import SaliencyParams

RECIPES = Path(__file__).resolve().parents[2] / "harness" / "resources" / "recipes"
"""The shipped recipes (the `recipes_dir` fixture's folder), here at collection, to parametrize over."""

PARAMS = {"conceptprune": ConceptPruneParams, "saliency": SaliencyParams}
UNLEARN_RECIPES = sorted(p for p in RECIPES.glob("*.yaml") if load_recipe(p).methods)


def test_every_method_has_recipes_for_sd15_and_the_world() -> None:
    entries = [(r, m) for r in map(load_recipe, UNLEARN_RECIPES) for m in r.methods]
    for method in PARAMS:
        models = {r.model for r, m in entries if m.method == method}
        assert {"stable-diffusion-v1-5/stable-diffusion-v1-5", "zoo:digits"} <= models, method
    defended = {r.model for r, m in entries if m.defense}
    assert {"stable-diffusion-v1-5/stable-diffusion-v1-5", "zoo:digits"} <= defended


@pytest.mark.parametrize("path", UNLEARN_RECIPES, ids=lambda p: p.name)
def test_recipe_names_a_method_and_valid_params(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.methods and recipe.concept is not None
    for index, method in enumerate(recipe.methods):
        plugin = resolve_method(method.method)
        if method.method in PARAMS:
            assert plugin.params is PARAMS[method.method]
            with in_file(path), keyed(f"methods[{index}].params"):
                parse_dataclass(PARAMS[method.method], method.params)


@pytest.mark.parametrize(
    ("name", "skill_ratio", "tau"),
    [("sd15-conceptprune-golf-ball", 0.02, 10), ("sd15-conceptprune-van-gogh", 0.01, 10),
     ("sd15-conceptprune-nudity", 0.01, 9)],
)
def test_sd15_recipes_carry_the_paper_settings(name: str, skill_ratio: float, tau: int) -> None:
    recipe = load_recipe(RECIPES / f"{name}.yaml")
    [method] = recipe.methods
    assert method.params["skill_ratio"] == skill_ratio and method.params["tau"] == tau
    g = recipe.generation
    assert (g.steps, g.guidance, g.height, g.width, g.scheduler, g.fixed_seed) == (50, 7.5, 512, 512, "PNDMScheduler", 0)


def test_the_sd15_recipe_runs_on_a_tiny_sd_pipeline(tmp_path: Path, shared_data: Path, save_tiny_sd_pipeline,
                                                     tiny_ffn_layers) -> None:
    """Only the model and the image size change; tau 10 needs 10 PNDM UNet calls, so 9 steps."""
    recipe = load_recipe(RECIPES / "sd15-conceptprune-golf-ball.yaml")
    recipe = dataclasses.replace(
        recipe,
        model=str(save_tiny_sd_pipeline(tmp_path / "pipe")),
        generation=dataclasses.replace(recipe.generation, steps=9, height=64, width=64, batch_size=12),
    )
    record = run_unlearning(UnlearnJob.from_recipe(recipe, None, tmp_path / "out", RuntimeSettings(data_dir=str(shared_data))))
    assert record == read_record(UnlearnRecord, UnlearnFiles(tmp_path / "out").record)
    assert record.selected_layers == tiny_ffn_layers
    assert record.params == {"skill_ratio": 0.02, "tau": 10, "seed": 0, "images_per_prompt": 1}
    assert record.info["prompts"]["target"][0] == "a golf ball in a road"
    assert record.info["k"][tiny_ffn_layers[0]] == 1  # int(0.02 * 64)
    assert all(r.changed <= 10 * r.shape[0] for r in record.layers)  # k per row per call, tau calls
    assert record.changed > 0 and record.sigma_u is not None and record.sigma_u > 0


@pytest.mark.parametrize("path", UNLEARN_RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_plans_with_params_its_methods_and_attacks_accept(path: Path) -> None:
    """Every entry resolves and its params parse (check_entries), before any work."""
    check_entries(load_recipe(path))


def test_the_matrix_recipes_cover_every_family() -> None:
    """The full matrix has every registered method and the issue's attacks; the default subset
    keeps one method per family, a defended one, and the attacks none, nms (with exact zeros and
    through a detector), dimra and unlearndiff, the optimisation attacks at named budgets."""
    full, quick = load_recipe(RECIPES / "digits-matrix.yaml"), load_recipe(RECIPES / "digits-matrix-quick.yaml")
    assert {m.method for m in full.methods} == set(registered("method")) - {"checkpoint"}
    assert {"conceptprune", "saliency", "p-esd", "p-ac", "esd", "ac", "dimum", "uce"} <= set(registered("method"))
    assert sorted(m.defense.sigma for m in full.methods if m.defense) == [0.001, 0.01]
    assert {"nms", "average", "sample", "quant4", "dimra", "concept-inversion", "unlearndiff", "p4d",
            "adversarial-prefix"} <= {a.attack for a in full.attacks}
    assert not any((a.params or {}).get("budget") for a in full.attacks)  # every attack at its published budget
    assert {m.method for m in quick.methods} >= {"conceptprune", "p-esd"} and any(m.defense for m in quick.methods)
    assert {m.method for m in quick.methods} & {"esd", "ac", "dimum"}
    assert {a.attack for a in quick.attacks} == {"nms", "dimra", "unlearndiff"}
    assert any((a.params or {}).get("mask") for a in quick.attacks)  # the defended row is attacked too
    assert all((a.params or {}).get("budget") == "quick" for a in quick.attacks if a.attack in ("dimra", "unlearndiff"))
    finetune = load_recipe(RECIPES / "digits-finetune.yaml")
    assert [m.method for m in finetune.methods] == ["esd", "ac", "dimum", "conceptprune", "erasediff"]  # DiMRA's control
    assert {a.attack for a in finetune.attacks} == {"dimra", "nms"} and finetune.suites[0] == "digits-seven-50"
