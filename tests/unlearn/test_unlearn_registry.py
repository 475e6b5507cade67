"""Naming methods in recipes, the prompt templates, and one-line errors for bad input."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from harness.cli import main
from harness.errors import HarnessError, in_file, keyed
from harness.layout import UnlearnFiles
from harness.recipe import load_recipe
from harness.registry import method
from harness.settings.unlearn import ConceptSettings
from harness.unlearn.job import UnlearnJob
from harness.unlearn.method import UnlearnContext, UnlearnResult, resolve_method
from harness.unlearn.prompts import prompt_pairs, resolve_data_dir
from harness.unlearn.run import run as run_unlearning


@dataclass
class RowParams:
    row: int = 0


@method("zero-first-row", params=RowParams)
def zero_first_row(context: UnlearnContext, params: RowParams) -> UnlearnResult:
    """A method from outside the harness: zero row `row` of every target layer."""
    masks, tensors = {}, {}
    for name, parameter in context.pipeline.unet.named_parameters():
        if name in context.layers:
            mask = torch.zeros_like(parameter, dtype=torch.bool)
            mask[params.row] = True
            masks[name], tensors[name] = mask, parameter.detach().masked_fill(mask, 0)
    return UnlearnResult(masks=masks, tensors=tensors, info={"params": {"row": params.row}})


def test_registered_names_and_import_paths_resolve() -> None:
    from harness.unlearn.conceptprune import conceptprune
    from harness.unlearn.saliency import saliency

    assert resolve_method("conceptprune").target is conceptprune
    assert resolve_method("saliency").target is saliency
    assert resolve_method(f"{__name__}:zero_first_row").target is zero_first_row
    with pytest.raises(HarnessError, match=r"x.yaml: methods\[0\].method: unknown method 'prune'"):
        with in_file("x.yaml"), keyed("methods[0].method"):
            resolve_method("prune")
    with pytest.raises(HarnessError, match=r"cannot import module 'no_such_pkg.mod'"):
        resolve_method("no_such_pkg.mod:fn")
    with pytest.raises(HarnessError, match=r"has no attribute 'nothing'"):
        resolve_method(f"{__name__}:nothing")


def test_prompt_templates_follow_the_protocol(shared_data: Path) -> None:
    art = prompt_pairs(ConceptSettings(target="Van Gogh", kind="artist"), shared_data)
    assert len(art.base) == len(art.target) == 20
    assert art.base[0] == "a photo of a cat" and art.target[0] == "a cat in the style of Van Gogh"
    nudity = prompt_pairs(ConceptSettings(target="nudity", kind="nudity"), shared_data)
    assert len(nudity.base) == 18 and "a photo of a naked girl" in nudity.target  # "girl " stripped
    objects = prompt_pairs(ConceptSettings(target="golf ball", kind="object"), shared_data)
    assert len(objects.base) == 12 and objects.base[0] == "a road" and objects.target[0] == "a golf ball in a road"


def test_digit_prompts_come_from_the_world() -> None:
    from harness.worlds.digits import data as digits

    pairs = prompt_pairs(ConceptSettings(target="seven", kind="digit"), None)
    assert pairs.target == digits.concept_prompts(7) and pairs.base == list(digits.NEUTRAL_PROMPTS)
    assert prompt_pairs(ConceptSettings(target="3", kind="digit"), None).target == digits.concept_prompts(3)
    with pytest.raises(HarnessError, match=r"r: concept.target: 'eleven' is no digit, so it has no prompts"), in_file("r"):
        prompt_pairs(ConceptSettings(target="eleven", kind="digit"), None)


def test_prompt_errors_name_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HARNESS_DATA_DIR", raising=False)
    concept = ConceptSettings(target="golf ball", kind="object")
    with pytest.raises(HarnessError, match=r"r: concept.data_dir: kind 'object' needs common_scenes.txt"), in_file("r"):
        prompt_pairs(concept, None)
    with pytest.raises(HarnessError, match=r"r: concept.data_dir: .*common_scenes.txt not found"), in_file("r"):
        prompt_pairs(concept, tmp_path)
    (tmp_path / "common_scenes.txt").write_text("\n  \n")
    with pytest.raises(HarnessError, match=r"r: concept: word list .* is empty, so the target has no prompts"), in_file("r"):
        prompt_pairs(concept, tmp_path)
    with pytest.raises(ValueError, match=r"target: empty"):
        ConceptSettings(target=" ", kind="artist")
    with pytest.raises(HarnessError, match=r"r: concept.kind: no prompt templates for 'style'"), in_file("r"):
        prompt_pairs(ConceptSettings(target="x", kind="style"), tmp_path)  # type: ignore[arg-type]


def test_data_dir_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_DATA_DIR", "/env")
    assert resolve_data_dir("/cli", "/recipe") == Path("/cli")
    assert resolve_data_dir(None, "/recipe") == Path("/recipe")
    assert resolve_data_dir(None, None) == Path("/env")
    monkeypatch.delenv("HARNESS_DATA_DIR")
    assert resolve_data_dir(None, None) is None


def _recipe(tmp_path: Path, unlearn: str, concept: str = "{target: golf ball, kind: object}") -> Path:
    """`tmp_path/r.yaml` on the tiny pipeline in `tmp_path/pipe` (the `tiny_pipe` fixture's)."""
    model = tmp_path / "pipe"
    path = tmp_path / "r.yaml"
    path.write_text(
        f"name: t\nmodel: {model}\nconcept: {concept}\nmethods: [{unlearn}]\n"
        "generation: {steps: 2, height: 64, width: 64}\n"
    )
    return path


@pytest.fixture
def tiny_pipe(tmp_path: Path, save_tiny_sd_pipeline) -> Path:
    """A tiny SD pipeline saved in `tmp_path/pipe`, where `_recipe` points."""
    return save_tiny_sd_pipeline(tmp_path / "pipe")


def test_an_import_path_method_with_the_defense(tmp_path: Path, tiny_pipe: Path) -> None:
    recipe = _recipe(
        tmp_path, f"{{method: '{__name__}:zero_first_row', params: {{row: 1}}, defense: {{sigma: 0.01, seed: 2}}}}"
    )
    record = run_unlearning(UnlearnJob.from_recipe(load_recipe(recipe), None, tmp_path / "out"))
    assert record.name == "zero-first-row-sigma0.01"
    assert [r.changed for r in record.layers] == [64, 64, 64, 128]
    assert record.detectability["exact_zeros"] == 0 and record.defense == {"sigma": 0.01, "seed": 2}
    assert 0 < record.detectability["p_at_w_sigma_m"] < 1
    from safetensors.torch import load_file

    tensors = load_file(UnlearnFiles(tmp_path / "out").tensors)
    assert all(float(t[1].abs().max()) < 0.06 and torch.all(t[1] != 0) for t in tensors.values())


@pytest.mark.parametrize(
    ("unlearn", "concept", "message"),
    [
        ("{method: conceptprune, params: {tau: 2}, layers: ['*ff.net.9.weight']}", None,
         r"r.yaml: methods\[0\].layers: layer pattern '\*ff.net.9.weight' matches no parameter"),
        ("{method: conceptprune, params: {tau: 2}, layers: ['*conv_in.weight']}", None,
         r"r.yaml: methods\[0\].layers: 'conv_in.weight' is not a linear weight"),
        ("{method: nope}", None, r"r.yaml: methods\[0\].method: unknown method 'nope'"),
        ("{method: conceptprune, params: {tau: 2}}", "{target: golf ball, kind: object, data_dir: /no/such/dir}",
         r"r.yaml: concept.data_dir: /no/such/dir/common_scenes.txt not found"),
        ("{method: conceptprune, params: {tau: 0}}", None, r"r.yaml: methods\[0\].params: tau must be at least 1"),
    ],
)
def test_bad_recipes_fail_with_one_line_naming_the_key(
    tmp_path: Path, tiny_pipe: Path, capsys: pytest.CaptureFixture, unlearn: str, concept: str | None, message: str
) -> None:
    recipe = _recipe(tmp_path, unlearn, *(concept,) if concept else ())
    assert main(["unlearn", "--recipe", str(recipe), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("harness unlearn: error: ") and len(error.splitlines()) == 1
    assert re.search(message, error), error
    assert not UnlearnFiles(tmp_path / "out").record.exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{method: conceptprune, defense: {sigma: 0}}", r"r.yaml: methods\[0\].defense: sigma must be positive"),
        ("{method: conceptprune, defense: {sigma: -1e-3}}", r"r.yaml: methods\[0\].defense: sigma must be positive"),
        ("{method: conceptprune, defense: {sigma: .inf}}", r"r.yaml: methods\[0\].defense.sigma: expected a finite number"),
        ("{method: conceptprune, defense: {sigma: .nan}}", r"r.yaml: methods\[0\].defense.sigma: expected a finite number"),
        ("{method: conceptprune, layers: []}", r"r.yaml: methods\[0\]: layers must name at least one"),
        ("{method: conceptprune, lyers: []}", r"r.yaml: methods\[0\]: unknown key 'lyers'"),
    ],
)
def test_recipe_load_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(f"name: t\nmodel: m\nconcept: {{target: x, kind: object}}\nmethods: [{text}]\n")
    with pytest.raises(HarnessError, match=message):
        load_recipe(path)


def test_an_unknown_concept_kind_is_a_recipe_error(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("name: t\nmodel: m\nconcept: {target: x, kind: painter}\nmethods: [{method: conceptprune}]\n")
    with pytest.raises(HarnessError, match=r"r.yaml: concept.kind: unknown kind 'painter'"):
        load_recipe(path)


def test_the_recipe_form_before_the_matrix_is_refused_with_where_it_went(tmp_path: Path) -> None:
    path = tmp_path / "old.yaml"
    path.write_text("name: t\nmodel: m\nconcept: {target: x, kind: object}\nunlearn: {method: conceptprune}\n")
    with pytest.raises(HarnessError, match=r"old.yaml: 'unlearn' is the recipe form before the matrix: .*'methods'"):
        load_recipe(path)


def test_a_model_unlearned_elsewhere_enters_the_matrix_as_the_checkpoint_method(
        tmp_path: Path, tiny_pipe: Path, tiny_sd_pipeline, tiny_ffn_layers) -> None:
    state = {k: v.clone() for k, v in tiny_sd_pipeline().unet.state_dict().items()}
    for name in tiny_ffn_layers:
        state[name][:, :3] = 0.0  # what pruning left: 3 zeros per row
    torch.save({k: v.half() for k, v in state.items()}, tmp_path / "pruned.pt")
    recipe = _recipe(tmp_path, f"{{method: checkpoint, params: {{path: '{tmp_path / 'pruned.pt'}'}}}}")
    record = run_unlearning(UnlearnJob.from_recipe(load_recipe(recipe), None, tmp_path / "out"))
    assert record.name == "checkpoint" and [r.changed for r in record.layers] == [3 * r.shape[0] for r in record.layers]
    from safetensors.torch import load_file

    tensors = load_file(UnlearnFiles(tmp_path / "out").tensors)
    assert len(tensors) == len(state) and tensors[tiny_ffn_layers[0]].dtype == torch.float16
    with pytest.raises(HarnessError, match=r"methods\[0\].params.path: .* holds no tensor of the base model's UNet"):
        torch.save({"other": torch.zeros(2)}, tmp_path / "foreign.pt")
        run_unlearning(UnlearnJob.from_recipe(load_recipe(_recipe(
            tmp_path, f"{{method: checkpoint, params: {{path: '{tmp_path / 'foreign.pt'}'}}}}")), None, tmp_path / "o2"))
