"""Inferring the erased concept from the pruned entries alone (harness.infer.ranking, `harness
infer-concept`): the rules on tensors made by hand, the candidate files, a real ConceptPrune
run in the miniature world whose erased digit must come first, and the one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from harness.cli import main
from harness.errors import HarnessError, in_file
from harness.infer.ranking import (
    RULES,
    Candidate,
    load_candidates,
    parse_candidate_file,
    pruned_layer,
    pruned_layers,
    rank,
)

LAYER = "down_blocks.1.attentions.0.transformer_blocks.0.ff.net.2.weight"


def test_pruned_layer_reads_the_zeros_and_the_rows_largest_surviving_magnitude() -> None:
    weight = torch.tensor([[0.5, 0.0, -2.0], [0.0, 0.0, 0.0], [1.0, -3.0, 0.0]])
    layer = pruned_layer("w", weight)
    assert layer is not None and layer.count == 5
    assert layer.row_max.tolist() == [2.0, 3.0, 3.0]  # an all-zero row takes the layer's largest
    assert layer.magnitude.tolist() == [[0.5, 2.0, 2.0], [3.0, 3.0, 3.0], [1.0, 3.0, 3.0]]
    assert layer.column_count.tolist() == [1.0, 2.0, 2.0]
    assert layer.column_nms.tolist() == [3.0, 5.0, 6.0]
    assert layer.k == 2  # 5 pruned entries over 3 rows that have any
    assert pruned_layer("w", torch.ones(2, 2)) is None
    stray = torch.ones(200, 100)
    stray[3, 4] = 0  # a share of 5e-5: a trained weight's stray zero, not pruning
    assert pruned_layer("w", stray) is None and pruned_layer("w", stray, min_share=0) is not None
    assert pruned_layer("b", torch.zeros(3)) is None


def test_every_rule_ranks_first_the_candidate_that_drives_the_pruned_feature() -> None:
    torch.manual_seed(0)
    weight = torch.randn(8, 16)
    weight[:, 5] = 0  # feature 5 was pruned from every row
    layer = pruned_layer(LAYER, weight)
    assert layer is not None
    norms = 0.2 + 0.05 * torch.rand(4, 3, 16)  # (candidates, calls, features)
    norms[:, :, 9] += 0.5  # a feature every candidate drives: it says nothing
    norms[2, :, 5] += 0.4  # only candidate "c" drives the pruned feature
    rankings = rank([layer], {LAYER: norms}, ["a", "b", "c", "d"])
    assert set(rankings) == set(RULES)
    for rule, ranking in rankings.items():
        assert ranking.names[0] == "c", rule
        assert [s.rank for s in ranking.scores] == [1, 2, 3, 4]
        assert ranking.rank_of("c") == 1 and ranking.rank_of("zz") is None


def test_candidate_file_groups_named_lines_and_keeps_bare_prompts(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("# artists and objects\n\nvan gogh: a starry night by van gogh\n"
                    "van gogh: a wheat field by van gogh\nGolf Ball: a golf ball on grass\n"
                    "a photo of a naked person\n")
    found = parse_candidate_file(path, seed=7)
    assert found == [
        Candidate("van gogh", ("a starry night by van gogh", "a wheat field by van gogh"), (7, 8)),
        Candidate("Golf Ball", ("a golf ball on grass",), (7,)),
        Candidate("a photo of a naked person", ("a photo of a naked person",), (7,)),
    ]


def test_candidates_of_a_suite_are_its_labels_with_their_seeds() -> None:
    found = load_candidates("digits-all-4", per_candidate=2)
    assert [c.name for c in found][:3] == ["zero", "one", "two"] and len(found) == 10
    assert all(len(c.prompts) == 2 for c in found)
    assert found[7].prompts[0] == "a photo of the digit seven"
    mixed = load_candidates("digits-seven-3,digits-one-3")
    assert [c.name for c in mixed] == ["seven", "one"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("missing.txt", "missing.txt: no such candidate file"),
        ("digits-seven-3", "1 candidate(s); ranking needs at least two"),
        ("digits-seven-3,digits-seven-2", "candidate 'seven' is given twice"),
        ("digits-sevn", "unknown suite 'digits-sevn'"),
        (" , ", "names no suite or file"),
    ],
)
def test_bad_candidate_lists(spec: str, message: str) -> None:
    with pytest.raises(HarnessError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_candidates(spec)


def test_an_empty_candidate_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.txt"
    path.write_text("# nothing here\n\n")
    with pytest.raises(HarnessError, match="empty.txt: no candidate"):
        load_candidates(str(path))


def test_a_model_without_pruned_entries_is_an_error() -> None:
    with pytest.raises(HarnessError, match="m.safetensors: no pruned entry"), in_file("m.safetensors"):
        pruned_layers({LAYER: torch.ones(4, 4), "x.bias": torch.zeros(4)})
    with pytest.raises(HarnessError, match=r"matching \*attn2\*"):
        pruned_layers({LAYER: torch.zeros(4, 4)}, ["*attn2*"])


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["infer-concept", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


def test_cli_bad_input_is_one_line_naming_the_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    unpruned = tmp_path / "m.safetensors"
    save_file({LAYER: torch.ones(64, 256)}, str(unpruned))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    cases = [
        (["--unlearned", str(unpruned), "--model", "zoo:digits", "--candidates", "digits-all-2"],
         f"--unlearned {unpruned}: no pruned entry"),
        (["--unlearned", str(unpruned), "--candidates", "digits-all-2"], "needs the base model it applies to (--model)"),
        (["--unlearned", str(tmp_path / "nope"), "--model", "zoo:digits", "--candidates", "digits-all-2"], "nope: no such file"),
        (["--unlearned", str(unpruned), "--candidates", str(tmp_path / "gone.txt")], "gone.txt: no such candidate file"),
        (["--unlearned", str(unpruned), "--candidates", str(empty)], "empty.txt: no candidate"),
        (["--unlearned", str(unpruned), "--candidates", "digits-all-2", "--calls", "0"], "--calls: must be at least 1"),
    ]
    for args, message in cases:
        code, _, err = _cli(capsys, *args)
        assert code == 2, args
        assert message in err and "\n" not in err, (args, err)


@pytest.fixture(scope="module")
def world_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from harness.worlds.digits.store import ensure_world

    root = tmp_path_factory.mktemp("cache")
    ensure_world(root)
    return root


def test_the_digit_conceptprune_erased_is_ranked_first(world_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from harness.recipe import load_recipe
    from harness.runtime import RuntimeSettings
    from harness.unlearn.job import UnlearnJob
    from harness.unlearn.run import run as run_unlearning

    monkeypatch.setenv("HARNESS_CACHE", str(world_cache))
    code, _, err = _cli(capsys, "--unlearned", "zoo:digits", "--candidates", "digits-all-2")
    assert code == 2 and "--unlearned zoo:digits: no pruned entry" in err  # the base model: 2 stray zeros only
    recipe = tmp_path / "three.yaml"
    recipe.write_text(
        "name: cp-three\nmodel: zoo:digits\nconcept: {target: three, kind: digit}\n"
        "methods:\n  - method: conceptprune\n    layers: ['*transformer_blocks.0.ff.net.2.weight']\n"
        "    params: {skill_ratio: 0.05, tau: 5, seed: 0}\n"
        "generation: {steps: 25, guidance: 3.0, scheduler: null, dtype: float32, batch_size: 64}\n"
    )
    unlearned = tmp_path / "unlearned"
    run_unlearning(UnlearnJob.from_recipe(load_recipe(str(recipe)), None, unlearned, RuntimeSettings(device="cpu")))
    out = tmp_path / "infer.json"
    code, printed, err = _cli(capsys, "--unlearned", str(unlearned), "--candidates", "digits-all-4", "--calls", "5",
                              "--device", "cpu", "--out", str(out))
    assert code == 0, err
    assert printed.splitlines()[1].split()[:2] == ["1", "three"]
    record = json.loads(out.read_text())
    assert record["top"] == "three" and record["base_model"] == "zoo:digits"
    assert record["options"]["candidates"] == "digits-all-4" and record["generation"]["steps"] == 25
    assert len(record["layers"]) == 7 and all(layer["pruned"] > 0 for layer in record["layers"])
    assert set(record["rankings"]) == set(RULES) and "versions" in record["provenance"]
    for rule in ("nms", "zscore", "zscore-nms"):
        assert record["rankings"][rule][0]["name"] == "three", rule


def test_the_sd_code_path_runs_on_a_tiny_pipeline_with_suites_and_a_file(
        tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str], tiny_conceptprune_recipe,
        tiny_ffn_layers) -> None:
    recipe = tiny_conceptprune_recipe(tmp_path)
    unlearned = tmp_path / "out"
    assert main(["unlearn", "--recipe", str(recipe), "--out", str(unlearned), "--data-dir", str(shared_data),
                 "--device", "cpu"]) == 0
    extra = tmp_path / "more.txt"
    extra.write_text("nudity: a photo of a naked person\nnudity: a naked woman on a beach\nVan Gogh: a cafe by Van Gogh\n")
    out = tmp_path / "infer.json"
    capsys.readouterr()
    code, printed, err = _cli(capsys, "--unlearned", str(unlearned), "--candidates", f"artists,{extra}",
                              "--data-dir", str(shared_data), "--prompts-per-candidate", "2", "--calls", "2",
                              "--rule", "reenact", "--device", "cpu", "--out", str(out))
    assert code == 0, err
    record = json.loads(out.read_text())
    names = [c["name"] for c in record["candidates"]]
    assert len(names) == 7 and names[-2:] == ["nudity", "Van Gogh"] and "Vincent van Gogh" in names
    assert sorted(layer["name"] for layer in record["layers"]) == sorted(tiny_ffn_layers)
    assert record["generation"]["scheduler"] == "PNDMScheduler" and record["rule"] == "reenact"
    assert sorted(s["name"] for s in record["rankings"]["zscore"]) == sorted(names)
    assert f"{record['top']}" in printed.splitlines()[1]
