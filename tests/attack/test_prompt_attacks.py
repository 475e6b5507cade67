"""Prompt-space attacks: the prompt rewrite, new tokens in a pipeline's vocabulary, concept
inversion and UnlearnDiff-style adversarial prompts on a tiny randomly initialised SD pipeline
(the SD code path: CLIP tokenizer and text encoder, VAE latents), and generation with their
output in the miniature world."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from harness.attack.job import AttackJob
from harness.attack.run import run as run_attack
from harness.errors import HarnessError, in_file
from harness.generate import run as generate_stage
from harness.generate import shards
from harness.generate.rewrite import PromptRewrite, prompt_changes
from harness.generate.run import GenerateJob
from harness.generate.suites import PromptRecord, Suite, load_suite
from harness.layout import AttackFiles
from harness.models.pipelines import add_tokens, load_pipeline
from harness.registry import resolve
from harness.runtime import RuntimeSettings
from harness.settings.generate import GenerationSettings
from harness.settings.unlearn import ConceptSettings

TINY_GENERATION = GenerationSettings(steps=3, guidance=3.0, height=64, width=64, batch_size=4)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, save_tiny_sd_pipeline) -> Path:
    return save_tiny_sd_pipeline(tmp_path_factory.mktemp("sd") / "pipe")


def test_the_rewrite_changes_the_concepts_prompts_only_keeping_ids_seeds_and_labels() -> None:
    suite = load_suite("digits-all-1")
    rewrite = PromptRewrite(names=["seven", "7"], labels=["seven"], replacement="<c>")
    rewritten = rewrite.suite(suite)
    changed = [(a.prompt, b.prompt) for a, b in zip(suite.records, rewritten.records) if a.prompt != b.prompt]
    assert changed == [(suite.records[7].prompt, suite.records[7].prompt.replace("seven", "<c>"))]
    assert [(r.id, r.seed, r.label) for r in rewritten.records] == [(r.id, r.seed, r.label) for r in suite.records]
    assert rewrite.prompt("the digit 7") == "the digit <c>"
    assert rewrite.prompt("a handwritten digit") == "<c> a handwritten digit"  # names none: the token goes first
    prefix = PromptRewrite(names=["seven"], labels=["seven"], prefix="w1 w2")
    assert prefix.prompt("a handwritten seven") == "w1 w2 a handwritten seven"


def test_unlabelled_prompts_are_the_concepts_when_they_name_it_or_the_suite_is_of_its_kind() -> None:
    records = (PromptRecord(0, "Van Gogh's starry night", 0), PromptRecord(1, "a vangoghish tree", 1))
    artists = Suite("a", "artists", records, (), "test")
    rewrite = PromptRewrite(names=["Van Gogh"], kind="artist", prefix="x")
    assert [r.prompt for r in rewrite.suite(artists).records] == ["x Van Gogh's starry night", "a vangoghish tree"]
    nudity = Suite("n", "nudity", records, (), "test")
    whole = PromptRewrite(names=["nudity"], kind="nudity", prefix="x")
    assert all(r.prompt.startswith("x ") for r in whole.suite(nudity).records)


def test_new_tokens_join_the_vocabulary_with_their_embedding(tiny: Path) -> None:
    pipeline = load_pipeline(str(tiny))
    vector = torch.linspace(-1, 1, 16)
    add_tokens(pipeline, {"<c>": vector})
    ids = pipeline.tokenizer("a <c>", add_special_tokens=False).input_ids
    new = pipeline.tokenizer.convert_tokens_to_ids("<c>")
    assert ids[-1] == new and torch.equal(pipeline.text_encoder.get_input_embeddings().weight[new].detach(), vector)
    with pytest.raises(HarnessError, match="tokens.safetensors: token '<c>' is already a word"), in_file("tokens.safetensors"):
        add_tokens(pipeline, {"<c>": vector})
    with pytest.raises(HarnessError, match=r"token '<d>' has an embedding of shape \(3,\), the model's is \(16,\)"):
        add_tokens(pipeline, {"<d>": torch.zeros(3)})


def _concept_folder(tmp_path: Path, count: int = 4) -> Path:
    folder = tmp_path / "concept"
    folder.mkdir()
    for i in range(count):
        Image.new("RGB", (70, 64), (200, 30 * i, 40)).save(folder / f"{i}.png")
    return folder


def _job(tiny: Path, tmp_path: Path, attack: str, params: dict) -> AttackJob:
    return AttackJob(attack=attack, params=resolve("attack", attack).parse(params), model=str(tiny), unlearned_files=[],
                     out=tmp_path / "attack", method="m", generation=TINY_GENERATION,
                     runtime=RuntimeSettings(device="cpu"), concept=ConceptSettings(target="golf ball", kind="object"),
                     original=str(tiny))


def _inversion_loss(tiny: Path, folder: Path, vector: torch.Tensor) -> float:
    """The frozen model's denoising loss on the folder's images captioned with a token of `vector`
    (fixed noise and timesteps)."""
    from diffusers import DDPMScheduler

    from harness.train.data import folder_images
    from harness.train.denoise import denoising_loss

    pipeline = load_pipeline(str(tiny))
    add_tokens(pipeline, {"<concept>": vector})
    images = folder_images(pipeline, folder, 64)
    scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    with torch.no_grad():
        condition, _ = pipeline.encode_prompt(["a photo of a <concept>"] * len(images), "cpu", 1, False)
        losses = [denoising_loss(pipeline.unet, scheduler, images, condition, torch.Generator().manual_seed(s))
                  for s in range(8)]
    return float(torch.stack(losses).mean())


@pytest.mark.slow
@pytest.mark.timeout(360)
def test_concept_inversion_learns_a_token_that_fits_the_concepts_images_better(tiny: Path, tmp_path: Path) -> None:
    folder = _concept_folder(tmp_path)
    params = {"steps": 12, "lr": 0.1, "batch_size": 4, "images": str(folder), "templates": ["a photo of a {token}"],
              "checkpoint_every": 6, "curve_every": 4}  # the published 4 micro-batches a step
    record = run_attack(_job(tiny, tmp_path, "concept-inversion", params))
    assert record is not None and record.reads == ["concept"] and record.applicable
    files = AttackFiles(tmp_path / "attack")
    assert record.info["snapshots"] == [4, 8] and files.token_snapshot(4).is_file()  # the curve's points
    assert record.info["budget"]["samples"] == 12 * 4 * 4 and not record.info["budget"]["at_published_strength"]
    assert not torch.equal(load_file(files.token_snapshot(4))["<concept>"], load_file(files.tokens)["<concept>"])
    learned = load_file(files.tokens)["<concept>"]
    assert load_file(files.tensors) == {}  # no UNet weight changes
    tokens, rewrite = prompt_changes(files.folder)
    assert tokens == files.tokens and rewrite == PromptRewrite(names=["golf ball"], labels=["golf ball"], kind="object",
                                                               replacement="<concept>")
    pipeline = load_pipeline(str(tiny))
    start = pipeline.text_encoder.get_input_embeddings().weight.detach().float().mean(0)  # "object" is 6 tokens here
    assert _inversion_loss(tiny, folder, learned) < _inversion_loss(tiny, folder, start)


@pytest.mark.parametrize(("contents", "error"), [
    ([], "r.yaml: attacks[1].params.images: {folder} holds no images"),
    (["broken.png"], "r.yaml: attacks[1].params.images: {folder}/broken.png: not a readable image"),
])
def test_an_inversion_folder_that_is_empty_or_unreadable_is_refused(tiny: Path, tmp_path: Path, contents: list[str],
                                                                    error: str) -> None:
    folder = tmp_path / "concept"
    folder.mkdir()
    for name in contents:
        (folder / name).write_bytes(b"not a png")
    job = _job(tiny, tmp_path, "concept-inversion", {"steps": 1, "images": str(folder)})
    job.source, job.entry = "r.yaml", "attacks[1]"
    with pytest.raises(HarnessError, match=re.escape(error.format(folder=folder))):
        run_attack(job)
    assert not (tmp_path / "attack" / "attack.json").exists()


@pytest.mark.parametrize("soft", [False, True])
def test_the_adversarial_prefix_is_real_words_or_soft_tokens(tiny: Path, tmp_path: Path, soft: bool) -> None:
    params = {"steps": 4, "tokens": 3, "prompts": ["a golf ball", "a golf ball on grass"], "images_per_prompt": 1,
              "batch_size": 2, "soft": soft}
    record = run_attack(_job(tiny, tmp_path, "adversarial-prefix", params))
    assert record is not None and record.reads == ["concept", "original"]
    files = AttackFiles(tmp_path / "attack")
    tokens, rewrite = prompt_changes(files.folder)
    assert rewrite is not None and rewrite.replacement is None
    if soft:
        assert rewrite.prefix == "<adv0> <adv1> <adv2>"
        assert sorted(load_file(files.tokens)) == ["<adv0>", "<adv1>", "<adv2>"]
    else:
        assert tokens is None and rewrite.prefix == record.info["prefix"]
        pipeline = load_pipeline(str(tiny))
        vocabulary = set(pipeline.tokenizer.get_vocab().values())
        ids = record.info["prefix_ids"]
        assert len(ids) == 3 and set(ids) <= vocabulary
        assert not set(ids) & set(pipeline.tokenizer.all_special_ids)


def test_generation_asks_with_the_rewrite_and_the_new_token(tmp_path: Path) -> None:
    settings = GenerationSettings(steps=2, guidance=3.0, batch_size=10, shard_size=10, scheduler=None)
    suite = load_suite("digits-all-1")
    pipeline = load_pipeline("zoo:digits")
    seven = pipeline.text_encoder.get_input_embeddings().weight[pipeline.tokenizer.convert_tokens_to_ids("seven")]
    from harness.models.checkpoints import save_tensors

    save_tensors({"<c>": seven.detach().clone()}, tmp_path / "tokens.safetensors")
    rewrite = PromptRewrite(names=["seven", "7"], labels=["seven"], replacement="<c>")
    plain, attacked = tmp_path / "plain", tmp_path / "attacked"
    generate_stage.run(GenerateJob("zoo:digits", [], suite, settings, plain, "pretrained"))
    generate_stage.run(GenerateJob("zoo:digits", [], suite, settings, attacked, "m/a", tokens=tmp_path / "tokens.safetensors",
                   rewrite=rewrite))
    before = {s.id: s for p in sorted(plain.glob("shard-*.tar")) for s in shards.read_shard(p)}
    after = {s.id: s for p in sorted(attacked.glob("shard-*.tar")) for s in shards.read_shard(p)}
    assert after[7].record["prompt"] == "a photo of the digit <c>"
    assert after[7].png == before[7].png  # the token is the word 'seven' itself: the same image
    assert all(after[i].png == before[i].png for i in range(10))
