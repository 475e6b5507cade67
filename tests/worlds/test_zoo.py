"""The miniature world: data and prompts, tokenizer, pipeline shape and determinism, save/load."""

from __future__ import annotations

import fnmatch

import numpy as np
import pytest
import torch
from PIL import Image

from harness.errors import HarnessError
from harness.worlds.digits.data import (
    DIGIT_NAMES,
    NEUTRAL_PROMPTS,
    concept_prompts,
    digit_of_name,
    heldout_digits,
    train_digits,
)
from harness.worlds.digits.pipeline import DigitsPipeline, build_untrained_pipeline
from harness.worlds.digits.text import MAX_LENGTH, build_tokenizer


@pytest.fixture(scope="module")
def pipeline() -> DigitsPipeline:
    return build_untrained_pipeline(seed=0)


def _generate(pipeline: DigitsPipeline, prompts: list[str], seeds: list[int], **kwargs) -> torch.Tensor:
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    kwargs.setdefault("num_inference_steps", 3)
    return pipeline(prompts, generator=generators, output_type="pt", **kwargs).images


def _public(config) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def test_prompts_name_digits_both_ways() -> None:
    assert concept_prompts(7)[0] == "a photo of the digit seven"
    assert len(set(concept_prompts(3))) == len(concept_prompts(3)) >= 4
    assert all(digit_of_name(p) == d for d in range(10) for p in concept_prompts(d))
    assert [digit_of_name(n) for n in DIGIT_NAMES] == list(range(10))
    assert digit_of_name("7") == 7
    assert all(not any(name in p.split() for name in DIGIT_NAMES) for p in NEUTRAL_PROMPTS)
    with pytest.raises(HarnessError, match="names no digit"):
        digit_of_name("a photo of a digit")
    with pytest.raises(HarnessError, match="expected 0-9"):
        concept_prompts(10)


def test_split_is_fixed_stratified_and_disjoint() -> None:
    images, labels = heldout_digits(16)
    train_images, _ = train_digits(16)
    assert images.shape == (360, 1, 16, 16) and train_images.shape == (1437, 1, 16, 16)
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0 and float(images.max()) > 0.9
    assert torch.bincount(labels, minlength=10).min() >= 35
    assert torch.equal(heldout_digits(16)[0], images)
    train_rows = {tuple(x.flatten().tolist()) for x in train_digits(8)[0]}
    heldout_rows = [tuple(x.flatten().tolist()) for x in heldout_digits(8)[0]]
    assert sum(row in train_rows for row in heldout_rows) < 5  # sklearn's digits hold a few exact duplicates


def test_tokenizer_knows_prompt_words_and_maps_others_to_unk() -> None:
    tokenizer = build_tokenizer()
    ids = tokenizer("A photo of the digit SEVEN").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.unk_token_id not in ids
    assert tokenizer("a photo of a zebra").input_ids.count(tokenizer.unk_token_id) == 1
    padded = tokenizer(["a " * 40], padding="max_length", max_length=MAX_LENGTH, truncation=True).input_ids
    assert len(padded[0]) == MAX_LENGTH


def test_ffn_layers_have_sd_names_and_geglu_shapes(pipeline: DigitsPipeline) -> None:
    params = dict(pipeline.unet.named_parameters())
    targets = fnmatch.filter(params, "*transformer_blocks.0.ff.net.2.weight")
    assert len(targets) == 7
    assert "down_blocks.1.attentions.0.transformer_blocks.0.ff.net.2.weight" in targets
    assert "mid_block.attentions.0.transformer_blocks.0.ff.net.2.weight" in targets
    assert "up_blocks.1.attentions.1.transformer_blocks.0.ff.net.2.weight" in targets
    for name in targets:
        assert params[name].shape == (64, 256)
        assert params[name.replace("net.2", "net.0.proj")].shape == (512, 64)
    modules = dict(pipeline.unet.named_modules())
    assert type(modules[targets[0].removesuffix(".2.weight") + ".0"]).__name__ == "GEGLU"


def test_pipeline_outputs_shapes_and_ranges(pipeline: DigitsPipeline) -> None:
    pt = _generate(pipeline, ["a photo of the digit two", "a handwritten five"], [0, 1])
    assert pt.shape == (2, 1, 16, 16) and pt.dtype == torch.float32
    assert 0.0 <= float(pt.min()) and float(pt.max()) <= 1.0
    np_images = pipeline("a handwritten five", num_inference_steps=2, output_type="np").images
    assert isinstance(np_images, np.ndarray) and np_images.shape == (1, 16, 16, 1)
    pil = pipeline(["x", "y"], num_inference_steps=2, num_images_per_prompt=2).images
    assert len(pil) == 4 and isinstance(pil[0], Image.Image) and pil[0].size == (16, 16)
    assert _generate(pipeline, ["a handwritten one"], [0], height=32, width=24).shape == (1, 1, 32, 24)
    with pytest.raises(HarnessError, match="multiples of 4"):
        pipeline("a handwritten one", height=18, num_inference_steps=1)
    with pytest.raises(HarnessError, match="output_type"):
        pipeline("a handwritten one", output_type="latent")


def test_same_seed_same_image_whatever_the_batch(pipeline: DigitsPipeline) -> None:
    prompts = ["a photo of the digit three", "a photo of the digit eight", "a handwritten digit"]
    batch = _generate(pipeline, prompts, [5, 6, 7])
    assert torch.equal(batch, _generate(pipeline, prompts, [5, 6, 7]))
    alone = _generate(pipeline, prompts[1:2], [6])
    torch.testing.assert_close(alone[0], batch[1], atol=1e-5, rtol=0)
    assert not torch.equal(batch[0], _generate(pipeline, prompts[:1], [99])[0])


def test_save_load_round_trips_bit_for_bit(pipeline: DigitsPipeline, tmp_path) -> None:
    pipeline.save_pretrained(tmp_path)
    loaded = DigitsPipeline.from_pretrained(tmp_path)
    for module in ("unet", "text_encoder"):
        before, after = getattr(pipeline, module).state_dict(), getattr(loaded, module).state_dict()
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before)
    assert loaded.tokenizer("a handwritten nine").input_ids == pipeline.tokenizer("a handwritten nine").input_ids
    assert _public(loaded.scheduler.config) == _public(pipeline.scheduler.config)
    prompts = ["a photo of the digit four"]
    assert torch.equal(_generate(pipeline, prompts, [3]), _generate(loaded, prompts, [3]))
