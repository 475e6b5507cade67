"""Pilots: a user's own prompt file as a suite beside the shipped ones, and `--limit N` (the first
N prompts of every suite, end to end), on the shipped world with the pretrained model only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.cli import main
from harness.errors import HarnessError
from harness.generate import shards
from harness.generate.suites import load_suite
from harness.layout import PRETRAINED_MODEL, RunLayout
from harness.records import Results, ScoreResult, read_record

RECIPE = """\
name: pilot
model: zoo:digits
generation: {{steps: 2, guidance: 3.0, scheduler: null, dtype: float32, batch_size: 8, shard_size: 2, fixed_seed: 40}}
score: {{classifier: digits, classifier_weights: {weights}}}
suites: [{suites}]
"""
CSV = "prompt,seed,label\na handwritten seven,11,seven\nthe digit seven,,seven\na one,13,one\n"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from harness.worlds.digits.store import ensure_world

    root = tmp_path_factory.mktemp("cache")
    ensure_world(root)
    return root


@pytest.fixture(scope="module")
def local_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from harness.worlds.digits.classifier import DigitClassifier, save_classifier

    torch.manual_seed(5)
    folder = tmp_path_factory.mktemp("classifier")
    save_classifier(DigitClassifier(16), {"size": 16}, folder)
    return folder


def test_a_prompt_file_is_a_suite_named_after_its_stem(tmp_path: Path) -> None:
    (tmp_path / "mine.csv").write_text(CSV)
    suite = load_suite(str(tmp_path / "mine.csv"), seed_base=40)
    assert suite.name == "mine" and suite.metrics == ("accuracy",)
    assert [(r.id, r.prompt, r.seed, r.label) for r in suite.records] == [
        (0, "a handwritten seven", 11, "seven"), (1, "the digit seven", 41, "seven"), (2, "a one", 13, "one")]
    (tmp_path / "lines.txt").write_text("a cat\n\n  a dog  \n")
    suite = load_suite(str(tmp_path / "lines.txt"), seed_base=7)
    assert suite.name == "lines" and suite.metrics == ("clip",)
    assert [(r.id, r.prompt, r.seed) for r in suite.records] == [(0, "a cat", 7), (1, "a dog", 8)]


@pytest.mark.parametrize(("name", "text", "fragment"), [
    ("missing.csv", None, "missing.csv: no such prompt file"),
    ("empty.txt", "\n \n", "empty.txt: the prompt file holds no prompt"),
    ("empty.csv", "prompt,seed\n", "empty.csv: the prompt file holds no prompt"),
    ("noprompt.csv", "text,seed\na cat,1\n", "noprompt.csv: no 'prompt' column in the CSV's header (columns: text, seed)"),
    ("badseed.csv", "prompt,seed\na cat,1\na dog,x\n", "badseed.csv: row 1: seed 'x' is not a number"),
    ("fracseed.csv", "prompt,seed\na cat,1.5\n", "fracseed.csv: row 0: seed '1.5' is not a non-negative integer"),
])
def test_a_bad_prompt_file_is_one_line_naming_the_file_before_any_work(
        name: str, text: str | None, fragment: str, tmp_path: Path, local_classifier: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    if text is not None:
        (tmp_path / name).write_text(text)
    with pytest.raises(HarnessError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        load_suite(str(tmp_path / name))
    recipe = tmp_path / "pilot.yaml"
    recipe.write_text(RECIPE.format(weights=local_classifier, suites=f"digits-seven-2, {tmp_path / name}"))
    argv = ["benchmark", str(recipe), "--run-dir", str(tmp_path / "run"), "--device", "cpu", "--accelerator", "cpu"]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "pilot.yaml: suites[1]: " in error[0] and fragment in error[0], error
    assert not (tmp_path / "run").exists()


@pytest.mark.timeout(300)
def test_a_prompt_file_beside_a_shipped_suite_runs_end_to_end(
        cache: Path, local_classifier: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_CACHE", str(cache))
    (tmp_path / "mine.csv").write_text(CSV)
    recipe = tmp_path / "pilot.yaml"
    recipe.write_text(RECIPE.format(weights=local_classifier, suites=f"digits-seven-2, {tmp_path / 'mine.csv'}"))
    run = tmp_path / "run"
    assert main(["benchmark", str(recipe), "--run-dir", str(run), "--device", "cpu", "--accelerator", "cpu"]) == 0
    layout = RunLayout(run)
    results = read_record(Results, layout.results)
    assert {r.suite for r in results.rows} == {"digits-seven-2", "mine"}
    row = results.row("pretrained", "none", "mine")
    assert row.status == "done" and row.n_images == 3 and "accuracy" in row.metrics
    samples = [s for p in layout.images(PRETRAINED_MODEL, "mine").shards() for s in shards.read_shard(p)]
    assert sorted(s.record["seed"] for s in samples) == [11, 13, 41]
    assert read_record(ScoreResult, layout.metrics(PRETRAINED_MODEL, "mine")).count == 3


@pytest.mark.timeout(300)
def test_limit_generates_and_scores_the_first_n_prompts_of_every_suite_and_says_so(
        cache: Path, local_classifier: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HARNESS_CACHE", str(cache))
    (tmp_path / "mine.csv").write_text(CSV)
    recipe = tmp_path / "pilot.yaml"
    recipe.write_text(RECIPE.format(weights=local_classifier, suites=f"digits-seven-3, {tmp_path / 'mine.csv'}"))
    run = tmp_path / "run"
    argv = ["benchmark", str(recipe), "--run-dir", str(run), "--device", "cpu", "--accelerator", "cpu"]
    assert main([*argv, "--limit", "2"]) == 0
    assert "pilot: only the first 2 prompts of every suite" in capsys.readouterr().out
    layout = RunLayout(run)
    results = read_record(Results, layout.results)
    assert results.recipe["limit"] == 2
    for suite, seeds in (("digits-seven-3", None), ("mine", [11, 41])):
        row = results.row("pretrained", "none", suite)
        assert row.status == "done" and row.n_images == 2
        samples = [s for p in layout.images(PRETRAINED_MODEL, suite).shards() for s in shards.read_shard(p)]
        assert sorted(s.id for s in samples) == [0, 1]
        if seeds:
            assert sorted(s.record["seed"] for s in samples) == seeds
        score = read_record(ScoreResult, layout.metrics(PRETRAINED_MODEL, suite))
        assert score.count == 2 and score.config["limit"] == 2
    # the run directory of a pilot never resumes as a whole run, nor as a pilot of another size
    for other in ([], ["--limit", "3"]):
        assert main([*argv, *other]) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and "holds a run made with --limit 2" in error[0], error
    assert read_record(ScoreResult, layout.metrics(PRETRAINED_MODEL, "mine")).count == 2
    # `harness score` on a pilot's folder scores the prompts it holds
    alone = tmp_path / "alone.json"
    assert main(["score", "--shards", str(layout.images(PRETRAINED_MODEL, "digits-seven-3").folder), "--suite",
                 "digits-seven-3", "--out", str(alone), "--recipe", str(recipe), "--accelerator", "cpu"]) == 0
    assert read_record(ScoreResult, alone).count == 2
    assert main([*argv, "--limit", "0"]) == 2
    assert "--limit: must be at least 1" in capsys.readouterr().err

    lines = tmp_path / "lines.txt"
    lines.write_text("a handwritten seven\nthe digit one\nthe digit two\n")
    out = tmp_path / "images" / "pretrained"
    assert main(["generate", "--model", "zoo:digits", "--suite", str(lines), "--out", str(out), "--accelerator", "cpu",
                 "--steps", "2", "--scheduler", "DDIMScheduler", "--limit", "1", "--fixed-seed", "9"]) == 0
    samples = [s for p in sorted(out.glob("shard-*.tar")) for s in shards.read_shard(p)]
    assert [(s.id, s.record["seed"]) for s in samples] == [(0, 9)]
