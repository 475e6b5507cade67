"""`harness benchmark` end to end on a small matrix of the shipped world: every stage, results.json
with n and intervals, the recipe's score section (local classifier weights) passed on, reruns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from harness.cli import main
from harness.generate import shards
from harness.layout import ModelRef, RunLayout
from harness.records import Results, ScoreResult, read_record
from harness.score.metrics.classifiers import load_image_classifier
from harness.stats import wilson_interval

RECIPE = """\
name: small
model: zoo:digits
concept: {{target: seven, kind: digit}}
methods:
  - {{method: conceptprune, params: {{skill_ratio: 0.05, tau: 2}}}}
attacks:
  - {{attack: nms}}
  - {{attack: quant4}}
generation: {{steps: 3, guidance: 3.0, scheduler: null, dtype: float32, batch_size: 20, shard_size: 10}}
score: {{classifier: digits, classifier_weights: {weights}}}
suites: [digits-seven-3, digits-one-2]
"""


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from harness.worlds.digits.store import ensure_world

    root = tmp_path_factory.mktemp("cache")
    ensure_world(root)
    return root


@pytest.fixture(scope="module")
def local_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A world folder holding only a randomly initialised digit classifier (not the world's)."""
    from harness.worlds.digits.classifier import DigitClassifier, save_classifier

    torch.manual_seed(5)
    folder = tmp_path_factory.mktemp("classifier")
    save_classifier(DigitClassifier(16), {"size": 16}, folder)
    return folder


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_small_matrix_runs_every_stage_and_reports_with_intervals(
        cache: Path, local_classifier: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HARNESS_CACHE", str(cache))
    recipe = tmp_path / "small.yaml"
    recipe.write_text(RECIPE.format(weights=local_classifier))
    run = tmp_path / "run"
    assert main(["benchmark", str(recipe), "--run-dir", str(run), "--device", "cpu", "--accelerator", "cpu"]) == 0
    printed = capsys.readouterr().out
    layout = RunLayout(run)
    results = read_record(Results, layout.results)
    assert {(r.method, r.attack) for r in results.rows} == {("pretrained", "none"), ("conceptprune", "none"),
                                                           ("conceptprune", "nms"), ("conceptprune", "quant4")}
    assert results.recipe["score"]["classifier_weights"] == str(local_classifier) and results.versions["torch"]
    classifier = load_image_classifier("digits", str(local_classifier))
    for row in results.rows:
        assert row.status == "done"
        score = read_record(ScoreResult, layout.metrics(ModelRef(row.method, row.attack), row.suite))
        assert score.config["score"]["classifier_weights"] == str(local_classifier)
        images = layout.images(ModelRef(row.method, row.attack), row.suite)
        samples = sorted((s for p in images.shards() for s in shards.read_shard(p)), key=lambda s: s.id)
        predicted = classifier.predict(torch.stack([s.image for s in samples]))
        correct = sum(p == s.record["label"] for p, s in zip(predicted, samples))
        if row.suite == "digits-seven-3":  # the erased class's suite
            assert (row.n_erased, row.n_preserved) == (3, 0)
            assert row.erased_accuracy == pytest.approx(correct / 3)
            assert row.erased_ci == pytest.approx(list(wilson_interval(correct, 3)))
        else:
            assert (row.n_erased, row.n_preserved) == (0, 2) and row.preserved_accuracy == pytest.approx(correct / 2)
    nms = results.row("conceptprune", "nms", "digits-seven-3")
    assert 0 <= nms.metrics["sign_accuracy"] <= 1
    assert "conceptprune nms" in " ".join(printed.split()) and "n=3" in printed
    assert (layout.report.folder / "matrix_small_digits-seven-3.csv").is_file()
    log = layout.log.read_text()
    assert "attack nms on conceptprune" in log and "DEBUG" in log  # the detail goes to the run's log

    stamps = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and "report" not in p.parts
              and p.name not in (layout.results.name, layout.log.name)}
    assert main(["benchmark", str(recipe), "--run-dir", str(run), "--device", "cpu", "--accelerator", "cpu"]) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # a rerun with the same settings redoes nothing
    assert json.loads(layout.results.read_text())["rows"] == json.loads(json.dumps(
        [r.__dict__ for r in results.rows]))


@pytest.mark.parametrize("n", [1, 3, 10, 20, 50, 77])
def test_the_wilson_interval_holds_the_share_at_every_count(n: int) -> None:
    """PROTOCOL section 8's formula; at 0 and n its rounding must not leave the share outside."""
    for correct in range(n + 1):
        low, high = wilson_interval(correct, n)
        assert 0.0 <= low <= correct / n <= high <= 1.0
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
