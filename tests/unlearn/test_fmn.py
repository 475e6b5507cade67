"""Forget-Me-Not (`fmn`) on the tiny SD pipeline: the attention capture against diffusers' default
processor, the token positions and the end-of-text rule under each fidelity, the loss falling,
`only_optimize_ca`, and bad params."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.errors import HarnessError
from harness.recipe import load_recipe
from harness.registry import BUILTIN
from harness.settings.generate import GenerationSettings
from harness.settings.unlearn import ConceptSettings
from harness.unlearn.fmn import attention_norm, capturing, fmn, token_positions
from harness.unlearn.method import resolve_method

GENERATION = GenerationSettings(steps=2, guidance=3.0, height=64, width=64, batch_size=4)


def test_fmn_is_registered() -> None:
    assert "fmn" in BUILTIN["method"] and resolve_method("fmn").target is fmn


def inputs(pipeline, prompt: str = "a photo of golf ball", seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((2, 4, 8, 8), generator=generator)
    t = torch.tensor([10, 700])
    with torch.no_grad():
        context, _ = pipeline.encode_prompt([prompt, "a photo of a cat"], "cpu", 1, False)
    return x, t, context


def test_the_capture_computes_the_default_processors_attention(tiny_sd_pipeline) -> None:
    pipeline = tiny_sd_pipeline(seed=0)
    unet = pipeline.unet
    x, t, context = inputs(pipeline)
    kinds = {n: type(p) for n, p in unet.attn_processors.items()}
    with torch.no_grad():
        plain = unet(x, t, encoder_hidden_states=context).sample
        with capturing(unet) as store:
            captured = unet(x, t, encoder_hidden_states=context).sample
    assert torch.allclose(plain, captured, atol=1e-5) and not torch.equal(plain, torch.zeros_like(plain))
    attn2 = [m for n, m in unet.named_modules() if n.endswith("attn2")]
    assert len(store) == len(attn2) >= 3
    for probabilities, module in zip(store, attn2):
        assert probabilities.shape[0] == 2 * module.heads and probabilities.shape[-1] == context.shape[1]
        assert torch.allclose(probabilities.sum(-1), torch.ones(()), atol=1e-5)  # a softmax over the tokens
    assert {n: type(p) for n, p in unet.attn_processors.items()} == kinds  # restored on leaving
    # the probabilities are the layer's own: recomputed from its query and key for the first attn2
    first = attn2[0]
    hidden = {}

    def keep(module, args, kwargs) -> None:
        hidden.setdefault("h", kwargs.get("hidden_states", args[0] if args else None))

    handle = first.register_forward_pre_hook(keep, with_kwargs=True)
    with torch.no_grad(), capturing(unet) as store:
        unet(x, t, encoder_hidden_states=context)
    handle.remove()
    with torch.no_grad():
        q = first.head_to_batch_dim(first.to_q(hidden["h"]))
        k = first.head_to_batch_dim(first.to_k(context))
        expected = torch.softmax(q @ k.transpose(1, 2) * first.scale, dim=-1)
    assert torch.allclose(store[0], expected, atol=1e-5)


def test_attention_norm_is_the_frobenius_norm_at_each_samples_positions() -> None:
    heads = 2
    probabilities = torch.rand(2 * heads, 5, 4)  # (batch x heads, pixels, tokens)
    positions = torch.tensor([[False, True, False, False], [False, False, True, True]])
    expected = torch.cat([probabilities[:heads, :, 1].flatten(), probabilities[heads:, :, 2:].flatten()]).norm()
    both = attention_norm([probabilities, probabilities], positions, [heads, heads])
    assert torch.allclose(attention_norm([probabilities], positions, [heads]), expected)
    assert torch.allclose(both, expected * 2 ** 0.5)  # concatenated, not averaged or squared


def test_token_positions_and_the_end_of_text_rule(tiny_tokenizer) -> None:
    tokenizer = tiny_tokenizer()  # one token per character, padded with the end-of-text id (as SD1.x)
    prompt = "a photo of golf ball"
    ids = tokenizer(prompt).input_ids
    start = 1 + len(tokenizer("a photo of ", add_special_tokens=False).input_ids)
    words = len(tokenizer("golf ball", add_special_tokens=False).input_ids)
    concept = set(range(start, start + words))
    eos = len(ids) - 1
    found = token_positions(tokenizer, prompt, "golf ball", use_pooler=False, every_eos=False)
    assert set(found.nonzero().flatten().tolist()) == concept
    first = token_positions(tokenizer, prompt, "golf ball", use_pooler=True, every_eos=False)
    assert set(first.nonzero().flatten().tolist()) == concept | {eos}
    every = token_positions(tokenizer, prompt, "golf ball", use_pooler=True, every_eos=True)
    assert set(every.nonzero().flatten().tolist()) == concept | set(range(eos, 77))  # the padding too
    with pytest.raises(HarnessError, match="prompts: the concept 'teapot' is not among the tokens"):
        token_positions(tokenizer, prompt, "teapot", use_pooler=True, every_eos=False)


def test_the_worlds_tokenizer_pads_with_its_own_token_so_every_eos_is_one() -> None:
    from harness.worlds.digits.text import build_tokenizer

    tokenizer = build_tokenizer()
    prompt = "a photo of the digit seven"
    paper = token_positions(tokenizer, prompt, "seven", use_pooler=True, every_eos=False)
    reference = token_positions(tokenizer, prompt, "seven", use_pooler=True, every_eos=True)
    assert paper.nonzero().flatten().tolist() == [6, 7] and torch.equal(paper, reference)


def trained_norm(pipeline, tensors: dict[str, torch.Tensor] | None, positions: torch.Tensor) -> float:
    unet = pipeline.unet
    if tensors:
        unet.load_state_dict({**unet.state_dict(), **tensors})
    x, t, context = inputs(pipeline, seed=3)
    heads = [m.heads for n, m in unet.named_modules() if n.endswith("attn2")]
    with torch.no_grad(), capturing(unet) as store:
        unet(x, t, encoder_hidden_states=context)
    return float(attention_norm(store, positions.expand(2, -1), heads))


@pytest.mark.parametrize("only_ca", [False, True])
def test_the_concepts_attention_falls_and_only_optimize_ca_trains_attn2_only(tiny_sd_pipeline, method_context, run_method,
                                                                              tmp_path: Path, only_ca: bool) -> None:
    pipeline = tiny_sd_pipeline(seed=0)
    before = {n: p.detach().clone() for n, p in pipeline.unet.named_parameters()}
    context = method_context(pipeline, ConceptSettings(target="golf ball", kind="object"), [], GENERATION,
                             scratch=tmp_path / "scratch")
    positions = token_positions(pipeline.tokenizer, "a photo of golf ball", "golf ball", True, False)
    start = trained_norm(pipeline, None, positions)
    result = run_method("fmn", context, {"steps": 8, "lr": 1.0e-2, "samples": 2, "only_optimize_ca": only_ca, "use_ti": False})
    assert result.info["prompts"] == ["a photo of golf ball"] and result.info["token_positions"] == [
        positions.nonzero().flatten().tolist()]
    moved = {n for n, t in result.tensors.items() if not torch.equal(t, before[n])}
    assert trained_norm(pipeline, result.tensors, positions) < 0.6 * start
    if only_ca:
        assert set(result.tensors) == {n for n in before if ".attn2." in n} and moved
        assert all(".attn2." in n for n in moved)
    else:
        assert set(result.tensors) == set(before)
        assert any(".attn1." in n for n in moved) and any(".attn2." in n for n in moved)


def test_style_prompts_and_reference_code_mark_the_padding(tiny_sd_pipeline, method_context, run_method,
                                                           tmp_path: Path) -> None:
    pipeline = tiny_sd_pipeline(seed=0)
    context = method_context(pipeline, ConceptSettings(target="van gogh", kind="style"), [], GENERATION,
                             scratch=tmp_path / "scratch")
    context.job.fidelity = "reference-code"
    result = run_method("fmn", context, {"steps": 1, "samples": 1, "use_ti": False})
    assert result.info["prompts"] == ["a photo in the style of van gogh"]
    marked = result.info["token_positions"][0]
    assert marked[-1] == 76 and len(marked) > 77 - len("a photo in the style of van gogh") - 2


@pytest.mark.parametrize(("params", "message"), [
    ("{ti_init: [a, b, c], ti_tokens: 2}", r"methods\[0\]\.params: ti_init: 3 starts for 2 ti_tokens"),
    ("{ti_lr: 0}", r"methods\[0\]\.params: ti_lr "),
    ("{only_optimize_ca: true, trainable: esd-u}", r"methods\[0\]\.params: only_optimize_ca: true trains attn2 only"),
    ("{samples: 0}", r"methods\[0\]\.params: samples "),
    ("{images: real}", r"methods\[0\]\.params\.images: unknown value .real."),
    ("{use_poler: true}", r"methods\[0\]\.params: unknown key 'use_poler'"),
])
def test_bad_params_are_one_line_errors_naming_the_key(tmp_path: Path, params: str, message: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(f"name: t\nmodel: zoo:digits\nconcept: {{target: seven, kind: digit}}\n"
                    f"methods: [{{method: fmn, params: {params}}}]\n")
    with pytest.raises(HarnessError, match=message) as caught:
        load_recipe(path)
    assert "\n" not in str(caught.value)


def test_a_concept_missing_from_the_prompts_is_a_one_line_error(tiny_sd_pipeline, method_context, run_method,
                                                                tmp_path: Path) -> None:
    context = method_context(tiny_sd_pipeline(seed=0), ConceptSettings(target="golf ball", kind="object"), [],
                             GENERATION, scratch=tmp_path / "scratch")
    with pytest.raises(HarnessError, match=r"methods\[0\]\.params\.prompts: the concept 'golf ball' is not among") as caught:
        run_method("fmn", context, {"prompts": ["a photo of a cat"]})
    assert "\n" not in str(caught.value)


def test_world_images_are_the_worlds_real_images_of_the_concept(tiny_sd_pipeline, method_context) -> None:
    from harness.train.data import encode
    from harness.unlearn.fmn import FMNParams, concept_images
    from harness.world import world_of_source

    pipeline = tiny_sd_pipeline(seed=0)
    context = method_context(pipeline, ConceptSettings(target="seven", kind="digit"), [], GENERATION)
    context.job.model = "zoo:digits"
    found = concept_images(context, FMNParams(images="world", samples=5))
    images, labels = world_of_source("zoo:digits").labelled_images("train", 64)
    sevens = [i for i, label in enumerate(labels) if label == "seven"][:5]
    assert len(found) == 5 and len(set(labels)) == 10
    assert torch.allclose(found.inputs, encode(pipeline, images[sevens]), atol=1e-5)
    context.job.model = "unused-folder"
    with pytest.raises(HarnessError, match=r"params\.images: 'world' needs a world's model"):
        concept_images(context, FMNParams(images="world"))


def test_textual_inversion_learns_the_words_that_are_then_resteered(tiny_sd_pipeline, method_context, run_method,
                                                                    tmp_path: Path) -> None:
    from torch.nn.utils import parametrize

    pipeline = tiny_sd_pipeline(seed=0)
    context = method_context(pipeline, ConceptSettings(target="golf ball", kind="object"), [], GENERATION,
                             scratch=tmp_path / "scratch")
    result = run_method("fmn", context, {"steps": 2, "samples": 2, "ti_steps": 6, "ti_lr": 0.1,
                                         "ti_init": ["a", "<rand-0.5>"], "ti_tokens": 3})
    tokens = ["<s1>", "<s2>", "<s3>"]
    assert result.info["ti_tokens"] == tokens and result.info["ti_steps"] == 6
    assert result.info["prompts"] == ["a photo of <s1> <s2> <s3>"] and result.info["concept_text"] == "<s1> <s2> <s3>"
    ids = pipeline.tokenizer(result.info["prompts"][0]).input_ids
    learned = [pipeline.tokenizer.convert_tokens_to_ids(t) for t in tokens]
    assert result.info["token_positions"] == [[ids.index(i) for i in learned] + [len(ids) - 1]]  # + the end token
    embedding = pipeline.text_encoder.get_input_embeddings()
    assert parametrize.is_parametrized(embedding, "weight")
    vectors = embedding.weight[learned].detach()
    start_a = embedding.parametrizations.weight.original[pipeline.tokenizer.convert_tokens_to_ids("a</w>")].detach()
    assert not torch.allclose(vectors[0], start_a) and float((vectors[0] - start_a).abs().max()) < 1.0  # moved from "a"
    assert (tmp_path / "scratch" / "ti").is_dir() and (tmp_path / "scratch" / "last.ckpt").is_file()


def test_a_ti_start_of_several_tokens_is_a_one_line_error(tiny_sd_pipeline, method_context, run_method,
                                                          tmp_path: Path) -> None:
    context = method_context(tiny_sd_pipeline(seed=0), ConceptSettings(target="golf ball", kind="object"), [],
                             GENERATION, scratch=tmp_path / "scratch")
    with pytest.raises(HarnessError, match=r"methods\[0\]\.params\.ti_init\[0\]: 'golf' is 4 tokens") as caught:
        run_method("fmn", context, {"samples": 1, "ti_init": ["golf"]})
    assert "\n" not in str(caught.value)


def test_a_run_resumes_both_stages_from_the_scratch_folder(tiny_sd_pipeline, method_context, run_method,
                                                           tmp_path: Path) -> None:
    params = {"steps": 3, "samples": 2, "ti_steps": 4, "lr": 1.0e-2, "checkpoint_every": 2}
    concept = ConceptSettings(target="golf ball", kind="object")
    first = run_method("fmn", method_context(tiny_sd_pipeline(seed=0), concept, [], GENERATION,
                                             scratch=tmp_path / "scratch", settings_key="k"), params)
    again = run_method("fmn", method_context(tiny_sd_pipeline(seed=0), concept, [], GENERATION,
                                             scratch=tmp_path / "scratch", settings_key="k"), params)
    assert first.info["resumed_from_step"] == 0 and again.info["resumed_from_step"] == 2  # the last checkpoint
    assert again.info["ti_steps"] == 4 and again.info["token_positions"] == first.info["token_positions"]
    assert all(torch.equal(first.tensors[n], again.tensors[n]) for n in first.tensors)
