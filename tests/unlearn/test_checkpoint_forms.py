"""Published unlearned models as their authors ship them: each form is told apart by the file
itself, recorded, and either loaded into the same UNet tensors or refused in one line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from harness.errors import HarnessError
from harness.settings.generate import GenerationSettings
from harness.settings.unlearn import ConceptSettings

sys.path.insert(0, str(Path(__file__).parent))
from ldm_names import to_ldm  # noqa: E402

LAYER = "mid_block.attentions.0.transformer_blocks.0.ff.net.2.weight"


@pytest.fixture
def unlearned(tiny_sd_pipeline):
    """A tiny SD pipeline and its 'unlearned' UNet state: one layer's first column zeroed, another tensor moved."""
    pipeline = tiny_sd_pipeline()
    state = {k: v.clone() for k, v in pipeline.unet.state_dict().items()}
    state[LAYER][:, 0] = 0
    state["conv_in.weight"] += 0.5
    return pipeline, state


def _call(pipeline, path, method_context, run_method):
    context = method_context(pipeline, ConceptSettings(target="golf ball", kind="object"), [LAYER], GenerationSettings())
    return run_method("checkpoint", context, {"path": str(path)})


@pytest.mark.parametrize("form", ["compvis-unet", "diffusers-unet", "diffusers-pipeline"])
def test_each_form_gives_the_same_unet_tensors(form, unlearned, tmp_path, method_context, run_method,
                                                tiny_sd_pipeline) -> None:
    pipeline, state = unlearned
    if form == "compvis-unet":  # ESD's and SalUn's releases: the whole LDM state dict under "state_dict"
        path = tmp_path / "esd-golf-ball.ckpt"
        torch.save({"state_dict": to_ldm(state), "global_step": 1000}, path)
    elif form == "diffusers-unet":  # UCE's: only the changed tensors
        path = tmp_path / "uce.safetensors"
        save_file({LAYER: state[LAYER], "conv_in.weight": state["conv_in.weight"]}, str(path))
    else:  # FMN's and MACE's: a whole pipeline folder with the base text encoder
        other = tiny_sd_pipeline()
        other.unet.load_state_dict(state)
        path = tmp_path / "fmn-pipeline"
        other.save_pretrained(path)
    result = _call(pipeline, path, method_context, run_method)
    assert result.info["form"] == form
    assert torch.equal(result.tensors[LAYER], state[LAYER]) and torch.equal(result.tensors["conv_in.weight"],
                                                                             state["conv_in.weight"])
    assert int(result.masks[LAYER].sum()) == state[LAYER].shape[0]  # the zeroed column is what pruning left


def _changed_encoder(pipeline):
    """A copy of the pipeline's text encoder with its first encoder layer's fc1 moved at random
    (an AdvUnlearn-style release changes the encoder layers, never the embeddings)."""
    import copy

    encoder = copy.deepcopy(pipeline.text_encoder)
    name = next(n for n, _ in encoder.named_parameters() if n.endswith("layers.0.mlp.fc1.weight"))
    weight = dict(encoder.named_parameters())[name]
    with torch.no_grad():
        weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(1)))
    return encoder, name


def test_text_encoder_releases_give_the_changed_encoder_tensors(unlearned, tmp_path, method_context, run_method,
                                                                tiny_sd_pipeline) -> None:
    """AdvUnlearn's CLIPTextModel folder, its training wrapper's `text_encoder.`-prefixed state
    dict (transformers-4 names, `text_model.*`) and a pipeline whose encoder differs all give the
    changed tensors under `text_encoder.` names; an unchanged release is refused."""
    pipeline, state = unlearned
    encoder, name = _changed_encoder(pipeline)
    expected = {f"text_encoder.{name}": dict(encoder.named_parameters())[name].detach()}
    encoder.save_pretrained(tmp_path / "advunlearn-text-encoder")
    prefixed = tmp_path / "advunlearn-wrapper.safetensors"
    save_file({f"text_encoder.text_model.{k}": v.contiguous() for k, v in encoder.state_dict().items()}, str(prefixed))
    for path in (tmp_path / "advunlearn-text-encoder", prefixed):
        result = _call(pipeline, path, method_context, run_method)
        assert result.info["form"] == "text-encoder" and result.info["components"] == ["text_encoder"]
        assert set(result.tensors) == set(expected)
        assert torch.equal(result.tensors[f"text_encoder.{name}"], expected[f"text_encoder.{name}"])
        assert result.masks == {}
    mace = tiny_sd_pipeline()
    mace.text_encoder = encoder
    mace.unet.load_state_dict(state)
    mace.save_pretrained(tmp_path / "mace-pipeline")
    result = _call(pipeline, tmp_path / "mace-pipeline", method_context, run_method)
    assert result.info["form"] == "diffusers-pipeline" and result.info["components"] == ["unet", "text_encoder"]
    assert torch.equal(result.tensors[f"text_encoder.{name}"], expected[f"text_encoder.{name}"])
    assert torch.equal(result.tensors[LAYER], state[LAYER])
    pipeline.text_encoder.save_pretrained(tmp_path / "unchanged")
    with pytest.raises(HarnessError, match=r"unchanged: a text-encoder release identical to the base model's encoder"):
        _call(pipeline, tmp_path / "unchanged", method_context, run_method)


def test_a_kohya_lora_is_fused_as_diffusers_applies_it(unlearned, tmp_path, method_context, run_method) -> None:
    """SPM's form: kohya names for a UNet and a text-encoder layer; each weight becomes
    W + alpha / rank * up @ down, nothing else changes; a LoRA whose targets match no layer is
    refused in one line."""
    pipeline, _ = unlearned
    unet = dict(pipeline.unet.named_parameters())
    encoder = dict(pipeline.text_encoder.named_parameters())
    unet_name = next(n for n in unet if n.endswith("attn2.to_k.weight"))
    te_name = next(n for n in encoder if n.endswith("layers.0.mlp.fc1.weight"))
    generator = torch.Generator().manual_seed(0)
    state, expected = {}, {}
    for prefix, name, weight, alpha in (("lora_unet_", unet_name, unet[unet_name], 1.0),
                                        ("lora_te_text_model_", te_name, encoder[te_name], 2.0)):
        key = prefix + name.removesuffix(".weight").replace(".", "_")
        down, up = torch.randn(2, weight.shape[1], generator=generator), torch.randn(weight.shape[0], 2, generator=generator)
        state |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(alpha)}
        expected[("text_encoder." if prefix.startswith("lora_te") else "") + name] = weight.detach() + alpha / 2 * up @ down
    path = tmp_path / "spm.safetensors"
    save_file(state, str(path))
    result = _call(pipeline, path, method_context, run_method)
    assert result.info["form"] == "lora" and set(result.tensors) == set(expected)
    for key, value in expected.items():
        assert torch.allclose(result.tensors[key], value, atol=1e-5)
    stray = tmp_path / "stray.safetensors"
    save_file({"lora_unet_no_such_block.lora_down.weight": torch.zeros(2, 8),
               "lora_unet_no_such_block.lora_up.weight": torch.zeros(8, 2)}, str(stray))
    with pytest.raises(HarnessError, match=r"stray.safetensors: a LoRA file diffusers cannot apply to this model"):
        _call(pipeline, stray, method_context, run_method)


def test_a_file_of_no_known_form_is_refused(unlearned, tmp_path, method_context, run_method) -> None:
    pipeline, _ = unlearned
    path = tmp_path / "foreign.safetensors"
    save_file({"encoder.layers.0.weight": torch.zeros(3, 3)}, str(path))
    with pytest.raises(HarnessError, match=r"matches no known form .* it holds no tensor of the base model's UNet"):
        _call(pipeline, path, method_context, run_method)
    broken = tmp_path / "half.ckpt"  # a CompVis file missing most of its blocks
    torch.save({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}, broken)
    with pytest.raises(HarnessError, match=r"a CompVis checkpoint diffusers cannot convert for this UNet"):
        _call(pipeline, broken, method_context, run_method)


@pytest.mark.slow
def test_a_text_encoder_release_is_applied_by_every_stage(tmp_path, save_tiny_sd_pipeline, tiny_sd_pipeline) -> None:
    """Through the stages: the unlearn stage publishes the changed encoder under `text_encoder.`
    names, generation's pipeline carries it (its prompt embeddings move), and weight revival,
    which reads the UNet, finds no pruned layer there and says so instead of attacking."""
    from harness.attack.job import AttackJob
    from harness.attack.run import run as run_attack
    from harness.generate.run import build_pipeline
    from harness.layout import UnlearnFiles
    from harness.models.checkpoints import load_tensor_file
    from harness.models.pipelines import prompt_embeddings
    from harness.recipe import load_recipe
    from harness.runtime import RuntimeSettings
    from harness.unlearn.job import UnlearnJob
    from harness.unlearn.run import run as run_unlearning

    model = save_tiny_sd_pipeline(tmp_path / "pipe")
    base = tiny_sd_pipeline()
    encoder, name = _changed_encoder(base)
    encoder.save_pretrained(tmp_path / "advunlearn-text-encoder")
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(
        f"name: te\nmodel: {model}\nconcept: {{target: golf ball, kind: object}}\n"
        f"methods: [{{method: checkpoint, params: {{path: {tmp_path / 'advunlearn-text-encoder'}}}}}]\n"
        "attacks: [{attack: nms}]\ngeneration: {steps: 2, height: 64, width: 64}\n")
    recipe = load_recipe(recipe_path, controls=False)  # the one-stage command reads it so
    record = run_unlearning(UnlearnJob.from_recipe(recipe, None, tmp_path / "unlearned", RuntimeSettings(device="cpu")))
    files = UnlearnFiles(tmp_path / "unlearned")
    assert record.info["form"] == "text-encoder" and record.changed == 0
    assert list(load_tensor_file(files.tensors)) == [f"text_encoder.{name}"]
    pipeline = build_pipeline(str(model), [files.tensors], recipe.generation, torch.float32)
    assert torch.equal(dict(pipeline.text_encoder.named_parameters())[name], dict(encoder.named_parameters())[name])
    original = build_pipeline(str(model), [], recipe.generation, torch.float32)
    moved = prompt_embeddings(pipeline, ["a golf ball"]) - prompt_embeddings(original, ["a golf ball"])
    assert moved.abs().max() > 1e-3
    attacked = run_attack(AttackJob.from_recipe(recipe, "nms", tmp_path / "unlearned", tmp_path / "attacked",
                                                RuntimeSettings(device="cpu")))
    assert not attacked.applicable and "pruned" in attacked.reason
