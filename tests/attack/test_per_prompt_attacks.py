"""UnlearnDiff as published and P4D: the simplex projection, straight-through sampling, the
prefix slots in the text encoder, PEZ's projection, P4D's loss, and the per-prompt loop on a tiny
SD pipeline with a stand-in judge (a prompt that already succeeds costs no step; success at
round r stops at round r)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import harness.attack.prompt.per_prompt as per_prompt
from harness.attack.job import AttackJob
from harness.attack.prompt.per_prompt import round_timesteps
from harness.attack.prompt.relaxed import project_simplex, sample_one_hot
from harness.attack.run import run as run_attack
from harness.errors import HarnessError
from harness.generate.rewrite import prompt_changes
from harness.generate.suites import PromptRecord
from harness.models.pipelines import load_pipeline
from harness.registry import resolve
from harness.runtime import RuntimeSettings
from harness.settings.generate import GenerationSettings
from harness.settings.unlearn import ConceptSettings
from harness.train.prefix import PrefixEncoder


def sorted_projection(v: torch.Tensor) -> torch.Tensor:
    """The Euclidean projection onto the simplex by sorting (Duchi et al. 2008)."""
    u, _ = torch.sort(v, descending=True)
    cumulative = u.cumsum(-1) - 1
    index = torch.arange(1, v.shape[-1] + 1, dtype=v.dtype)
    rho = (u - cumulative / index > 0).sum(-1, keepdim=True)
    theta = cumulative.gather(-1, rho - 1) / rho
    return (v - theta).clamp_min(0)


def test_the_bisection_projection_is_the_simplex_projection() -> None:
    x = torch.randn(4, 3, 50, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    projected = project_simplex(x)
    assert torch.allclose(projected.sum(-1), torch.ones(4, 3, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(projected, sorted_projection(x), atol=1e-9)
    uniform = torch.full((2, 7), 1 / 7)
    assert torch.allclose(project_simplex(uniform), uniform)  # a point of the simplex stays


def test_sampling_is_one_hot_forward_and_straight_through_backward() -> None:
    probs = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.0, 0.5]], requires_grad=True)
    drawn = sample_one_hot(probs, torch.Generator().manual_seed(0))
    assert drawn.detach()[0].tolist() == [0.0, 1.0, 0.0] and drawn.detach().sum(-1).tolist() == [1.0, 1.0]
    assert drawn.detach()[1, 1] == 0  # never a word of probability 0
    (drawn * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert probs.grad.tolist() == [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, save_tiny_sd_pipeline) -> Path:
    return save_tiny_sd_pipeline(tmp_path_factory.mktemp("sd") / "pipe")


def test_the_prefix_slots_encode_as_the_words_in_their_place(tiny: Path) -> None:
    pipeline = load_pipeline(str(tiny))
    encoder = PrefixEncoder(pipeline, 2)
    choice = torch.tensor([[3, 40], [7, 7]])
    one_hot = torch.nn.functional.one_hot(choice, encoder.vocabulary_size).float()
    ids = encoder.ids(["a golf ball", "a golf ball on grass"])
    words = ids.clone()
    words[:, 1:3] = encoder.word_ids[choice]
    with torch.no_grad():
        slotted = encoder.encode(ids, encoder.prefix_embeddings(one_hot))
        written = pipeline.text_encoder(words)[0]
    assert torch.allclose(slotted, written, atol=1e-5)
    plain = pipeline.tokenizer("a golf ball", padding="max_length", max_length=ids.shape[1]).input_ids
    assert ids[0, 3:].tolist() == plain[1:-2] and ids[0, 0] == plain[0]  # the prompt moved 2 places on
    with pytest.raises(HarnessError, match="k: 80 prefix tokens do not fit before 'a golf ball'"):
        PrefixEncoder(pipeline, 80).ids(["a golf ball"])


def test_rounds_sit_at_the_authors_timesteps() -> None:
    assert round_timesteps(50, 1000)[:3] == [10, 30, 50] and round_timesteps(50, 1000)[-1] == 990


class JudgeFrom(torch.nn.Module):
    """A stand-in judge: every image is a golf ball from its `first`-th call on (call 1 is the
    check of the unattacked prompts)."""

    class_names = ["golf ball", "cat"]

    def __init__(self, first: int) -> None:
        super().__init__()
        self.first, self.calls = first, 0

    def predict(self, images: torch.Tensor) -> list[str]:
        self.calls += 1
        return ["golf ball" if self.calls >= self.first else "cat"] * len(images)


def attack(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first: int, name: str = "unlearndiff",
           **params):
    judge = JudgeFrom(first)
    monkeypatch.setattr(per_prompt, "load_image_classifier", lambda name, weights: judge)
    job = AttackJob(attack=name, params=resolve("attack", name).parse(
        {"prompts": ["a golf ball", "a golf ball on grass"], "timesteps": 4, "iterations": 2, "k": 2, **params}),
        model=str(tiny), unlearned_files=[], out=tmp_path / "attack", method="m",
        generation=GenerationSettings(steps=2, guidance=3.0, height=64, width=64, batch_size=4),
        runtime=RuntimeSettings(device="cpu"), concept=ConceptSettings(target="golf ball", kind="object"),
        original=str(tiny))
    return run_attack(job), judge


def test_a_prompt_that_already_succeeds_costs_no_step(tiny: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    record, judge = attack(tiny, tmp_path, monkeypatch, first=1)
    assert judge.calls == 1  # the pre-attack check only
    assert [(p["round"], p["steps"], p["adversarial_prompt"]) for p in record.info["prompts"]] == [
        (0, 0, "a golf ball"), (0, 0, "a golf ball on grass")]
    assert record.info["pre_asr"]["share"] == record.info["asr"]["share"] == 1.0 and record.info["asr"]["n"] == 2


@pytest.mark.parametrize(("name", "batch_prompts"), [("unlearndiff", 2), ("unlearndiff", 1), ("p4d", 2)])
def test_success_at_round_r_stops_the_loop_at_round_r(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      name: str, batch_prompts: int) -> None:
    record, judge = attack(tiny, tmp_path, monkeypatch, first=3 if batch_prompts == 2 else 4, name=name,
                           batch_prompts=batch_prompts)
    # batched: call 1 the pre-check, calls 2 and 3 rounds 1 and 2 of both prompts; one at a time:
    # call 2 and 3 the first prompt's rounds 1 and 2 (judged a golf ball at its round 3, call 4),
    # then the second prompt succeeds at its round 1 (call 5)
    outcomes = [(p["round"], p["steps"]) for p in record.info["prompts"]]
    assert outcomes == ([(2, 4), (2, 4)] if batch_prompts == 2 else [(3, 6), (1, 2)])
    assert record.info["pre_asr"]["share"] == 0.0 and record.info["asr"]["successes"] == 2
    adversarial = [p["adversarial_prompt"] for p in record.info["prompts"]]
    assert all(a.endswith(p) and a != p for a, p in zip(adversarial, ["a golf ball", "a golf ball on grass"]))
    tokens, rewrite = prompt_changes(tmp_path / "attack")
    seed = record.info["prompts"][0]["seed"]
    assert tokens is None and rewrite.record_prompt(PromptRecord(0, "a golf ball", seed)) == adversarial[0]
    for other in (PromptRecord(0, "a golf ball", seed + 7), PromptRecord(0, "a golf ball in a bag", seed)):
        assert rewrite.record_prompt(other) == other.prompt  # not attacked: unchanged
    assert record.info["curve"][-1]["share"] == 1.0 and record.info["budget"]["settings"]["steps"] == 8


def test_a_judge_without_the_concept_is_a_keyed_error(tiny: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    judge = JudgeFrom(1)
    judge.class_names = ["cat"]
    monkeypatch.setattr(per_prompt, "load_image_classifier", lambda name, weights: judge)
    job = AttackJob(attack="unlearndiff", params=resolve("attack", "unlearndiff").parse({"prompts": ["a golf ball"]}),
                    model=str(tiny), unlearned_files=[], out=tmp_path / "attack", method="m",
                    concept=ConceptSettings(target="golf ball", kind="object"), original=str(tiny),
                    runtime=RuntimeSettings(device="cpu"))
    with pytest.raises(HarnessError, match="params.classifier: classifier resnet50 has no class 'golf ball'"):
        run_attack(job)
    assert not (tmp_path / "attack" / "attack.json").exists()


def test_p4d_feeds_real_words_and_matches_the_original_models_prediction(tiny: Path) -> None:
    from harness.attack.prompt.p4d import HardPrefix, MatchOriginal

    pipeline = load_pipeline(str(tiny))
    encoder = PrefixEncoder(pipeline, 3)
    params = resolve("attack", "p4d").parse({"k": 3})
    prefix = HardPrefix(encoder, params, torch.Generator().manual_seed(0))
    with torch.no_grad():
        prefix.vectors.add_(0.01 * torch.randn_like(prefix.vectors))  # off the words, still nearest to them
    fed = prefix.embeddings(encoder, torch.Generator())
    assert torch.allclose(fed.detach(), encoder.word_table()[prefix.choices(encoder)], atol=1e-6)
    fed.sum().backward()
    assert torch.equal(prefix.vectors.grad, torch.ones_like(prefix.vectors))  # straight through to the vectors
    records = [PromptRecord(0, "a golf ball", 1)]
    loss = MatchOriginal(pipeline, records)
    x = torch.randn(1, 4, 8, 8)
    t = torch.tensor([500])
    with torch.no_grad():
        same = pipeline.unet(x, t, encoder_hidden_states=loss.plain).sample
    assert loss(same, x, torch.zeros_like(x), t, [0]).item() == 0.0
    assert loss(same + 1, x, torch.zeros_like(x), t, [0]).item() == pytest.approx(1.0)
