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


def test_text_encoder_and_lora_releases_are_refused_by_name(unlearned, tmp_path, method_context, run_method,
                                                             tiny_sd_pipeline) -> None:
    pipeline, state = unlearned
    te = tmp_path / "advunlearn-text-encoder"
    pipeline.text_encoder.save_pretrained(te)  # AdvUnlearn's release: a CLIPTextModel folder
    with pytest.raises(HarnessError, match=r"a text-encoder release \(a CLIPTextModel folder\): it changes "
                                           r"the text encoder, which the harness does not yet apply"):
        _call(pipeline, te, method_context, run_method)
    prefixed = tmp_path / "text_encoder.safetensors"
    save_file({f"text_encoder.{k}": v.contiguous() for k, v in pipeline.text_encoder.state_dict().items()}, str(prefixed))
    with pytest.raises(HarnessError, match=r"a text-encoder release: it changes the text encoder"):
        _call(pipeline, prefixed, method_context, run_method)
    lora = tmp_path / "spm.safetensors"  # kohya names, as SPM ships
    save_file({"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_mid_block_attentions_0_proj_in.alpha": torch.tensor(4.0)}, str(lora))
    with pytest.raises(HarnessError, match=r"a LoRA / adapter file; fuse it into the UNet first"):
        _call(pipeline, lora, method_context, run_method)
    changed = tiny_sd_pipeline()
    with torch.no_grad():
        next(changed.text_encoder.parameters()).add_(1.0)
    changed.unet.load_state_dict(state)
    changed.save_pretrained(tmp_path / "mace-pipeline")
    with pytest.raises(HarnessError, match=r"its text encoder differs from the base model's \('.*token_embedding"):
        _call(pipeline, tmp_path / "mace-pipeline", method_context, run_method)


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
