"""Naming methods in recipes, the prompt templates, and one-line errors for bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from harness.cli import main
from harness.errors import HarnessError
from harness.recipe import ConceptSettings, load_recipe
from harness.unlearn.prompts import prompt_pairs, resolve_data_dir
from harness.unlearn.registry import UnlearnContext, UnlearnResult, resolve_method
from harness.unlearn.run import run_unlearning
from tiny_sd import save_tiny_sd_pipeline


def zero_first_row(context: UnlearnContext, params: dict) -> UnlearnResult:
    """A method from outside the harness: zero row `row` of every target layer."""
    masks, tensors = {}, {}
    for name, parameter in context.pipeline.unet.named_parameters():
        if name in context.layers:
            mask = torch.zeros_like(parameter, dtype=torch.bool)
            mask[params["row"]] = True
            masks[name], tensors[name] = mask, parameter.detach().masked_fill(mask, 0)
    return UnlearnResult(masks=masks, tensors=tensors, info={"params": params})


def test_registered_names_and_import_paths_resolve() -> None:
    from harness.unlearn.conceptprune import conceptprune
    from harness.unlearn.saliency import saliency

    assert resolve_method("conceptprune") is conceptprune
    assert resolve_method("saliency") is saliency
    assert resolve_method(f"{__name__}:zero_first_row") is zero_first_row
    with pytest.raises(HarnessError, match=r"x.yaml: unlearn.method: unknown method 'prune'"):
        resolve_method("prune", "x.yaml: unlearn.method")
    with pytest.raises(HarnessError, match=r"cannot import module 'no_such_pkg.mod'"):
        resolve_method("no_such_pkg.mod:fn")
    with pytest.raises(HarnessError, match=r"has no callable 'nothing'"):
        resolve_method(f"{__name__}:nothing")


def test_prompt_templates_follow_the_protocol(shared_data: Path) -> None:
    art = prompt_pairs(ConceptSettings(target="Van Gogh", kind="artist"), shared_data, "r")
    assert len(art.base) == len(art.target) == 20
    assert art.base[0] == "a photo of a cat" and art.target[0] == "a cat in the style of Van Gogh"
    nudity = prompt_pairs(ConceptSettings(target="nudity", kind="nudity"), shared_data, "r")
    assert len(nudity.base) == 18 and "a photo of a naked girl" in nudity.target  # "girl " stripped
    objects = prompt_pairs(ConceptSettings(target="golf ball", kind="object"), shared_data, "r")
    assert len(objects.base) == 12 and objects.base[0] == "a road" and objects.target[0] == "a golf ball in a road"


def test_digit_prompts_come_from_the_world() -> None:
    from harness.models.zoo import digits

    pairs = prompt_pairs(ConceptSettings(target="seven", kind="digit"), None, "r")
    assert pairs.target == digits.concept_prompts(7) and pairs.base == list(digits.NEUTRAL_PROMPTS)
    assert prompt_pairs(ConceptSettings(target="3", kind="digit"), None, "r").target == digits.concept_prompts(3)
    with pytest.raises(HarnessError, match=r"r: concept.target: 'eleven' is no digit, so it has no prompts"):
        prompt_pairs(ConceptSettings(target="eleven", kind="digit"), None, "r")


def test_prompt_errors_name_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HARNESS_DATA_DIR", raising=False)
    concept = ConceptSettings(target="golf ball", kind="object")
    with pytest.raises(HarnessError, match=r"r: concept.data_dir: kind 'object' needs common_scenes.txt"):
        prompt_pairs(concept, None, "r")
    with pytest.raises(HarnessError, match=r"r: concept.data_dir: .*common_scenes.txt not found"):
        prompt_pairs(concept, tmp_path, "r")
    (tmp_path / "common_scenes.txt").write_text("\n  \n")
    with pytest.raises(HarnessError, match=r"r: concept: word list .* is empty, so the target has no prompts"):
        prompt_pairs(concept, tmp_path, "r")
    with pytest.raises(HarnessError, match=r"r: concept.target: empty target"):
        prompt_pairs(ConceptSettings(target=" ", kind="artist"), tmp_path, "r")
    with pytest.raises(HarnessError, match=r"r: concept.kind: no prompt templates for 'style'"):
        prompt_pairs(ConceptSettings(target="x", kind="style"), tmp_path, "r")  # type: ignore[arg-type]


def test_data_dir_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_DATA_DIR", "/env")
    assert resolve_data_dir("/cli", "/recipe") == Path("/cli")
    assert resolve_data_dir(None, "/recipe") == Path("/recipe")
    assert resolve_data_dir(None, None) == Path("/env")
    monkeypatch.delenv("HARNESS_DATA_DIR")
    assert resolve_data_dir(None, None) is None


def _recipe(tmp_path: Path, unlearn: str, concept: str = "{target: golf ball, kind: object}") -> Path:
    model = tmp_path / "pipe"
    if not model.exists():
        save_tiny_sd_pipeline(model)
    path = tmp_path / "r.yaml"
    path.write_text(
        f"name: t\nmodel: {model}\nconcept: {concept}\nunlearn: {unlearn}\n"
        "generation: {steps: 2, height: 64, width: 64}\n"
    )
    return path


def test_an_import_path_method_with_the_defense(tmp_path: Path) -> None:
    recipe = _recipe(
        tmp_path, f"{{method: '{__name__}:zero_first_row', params: {{row: 1}}, defense: {{sigma: 0.01, seed: 2}}}}"
    )
    out = run_unlearning(load_recipe(recipe), tmp_path / "out")
    record = json.loads((out / "unlearn.json").read_text())
    assert [r["pruned"] for r in record["layers"]] == [64, 64, 64, 128]
    assert record["detectability"]["exact_zeros"] == 0 and record["defense"] == {"sigma": 0.01, "seed": 2}
    assert 0 < record["detectability"]["p_at_w_sigma_m"] < 1
    from safetensors.torch import load_file

    tensors = load_file(out / "unlearned.safetensors")
    assert all(float(t[1].abs().max()) < 0.06 and torch.all(t[1] != 0) for t in tensors.values())


@pytest.mark.parametrize(
    ("unlearn", "concept", "message"),
    [
        ("{method: conceptprune, layers: ['*ff.net.9.weight']}", None,
         r"r.yaml: unlearn.layers: layer pattern '\*ff.net.9.weight' matches no parameter"),
        ("{method: conceptprune, layers: ['*conv_in.weight']}", None,
         r"r.yaml: unlearn.layers: 'conv_in.weight' is not a linear weight"),
        ("{method: nope}", None, r"r.yaml: unlearn.method: unknown method 'nope'"),
        ("{method: conceptprune}", "{target: golf ball, kind: object, data_dir: /no/such/dir}",
         r"r.yaml: concept.data_dir: /no/such/dir/common_scenes.txt not found"),
        ("{method: conceptprune, params: {tau: 0}}", None, r"r.yaml: unlearn.params: tau must be at least 1"),
    ],
)
def test_bad_recipes_fail_with_one_line_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture, unlearn: str, concept: str | None, message: str
) -> None:
    recipe = _recipe(tmp_path, unlearn, *(concept,) if concept else ())
    assert main(["unlearn", "--recipe", str(recipe), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("harness unlearn: error: ") and len(error.splitlines()) == 1
    assert re.search(message, error), error
    assert not (tmp_path / "out" / "unlearn.json").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{method: conceptprune, defense: {sigma: 0}}", r"r.yaml[:.] ?unlearn.defense: sigma must be positive"),
        ("{method: conceptprune, defense: {sigma: -1e-3}}", r"r.yaml[:.] ?unlearn.defense: sigma must be positive"),
        ("{method: conceptprune, layers: []}", r"r.yaml[:.] ?unlearn: layers must name at least one"),
        ("{method: conceptprune, lyers: []}", r"r.yaml[:.] ?unlearn: unknown key 'lyers'"),
    ],
)
def test_recipe_load_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(f"name: t\nmodel: m\nconcept: {{target: x, kind: object}}\nunlearn: {text}\n")
    with pytest.raises(HarnessError, match=message):
        load_recipe(path)


def test_an_unknown_concept_kind_is_a_recipe_error(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("name: t\nmodel: m\nconcept: {target: x, kind: painter}\nunlearn: {method: conceptprune}\n")
    with pytest.raises(HarnessError, match=r"r.yaml[:.] ?concept.kind: unknown value 'painter'"):
        load_recipe(path)
