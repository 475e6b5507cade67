"""The forms published unlearned models come in, told apart by the file itself.

- `diffusers-unet`: UNet tensors under diffusers' names, all or only the changed ones (a
  `.safetensors` / `.pt` file such as UCE's or ConceptPrune's dump, or a UNet folder);
- `diffusers-pipeline`: a whole pipeline folder (FMN, MACE); its UNet is taken, and a text
  encoder that differs from the base model's is refused (below);
- `compvis-unet`: a CompVis / LDM state dict (`model.diffusion_model.*`, ESD's and SalUn's
  `.pt` / `.ckpt` releases), converted by diffusers' single-file conversion with the base UNet's
  config;
- refused, one line each: a text-encoder release (AdvUnlearn's CLIPTextModel folder, a
  `text_encoder.`-prefixed or CLIP-text-named state dict), a LoRA / adapter file, and anything
  that matches no form. The harness applies changed UNet tensors in every stage; a changed text
  encoder is not yet applied, so taking such a file would silently attack the wrong model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from harness.errors import HarnessError
from harness.models.checkpoints import load_state_dict, load_tensor_file, resolve_local

COMPVIS_PREFIX = "model.diffusion_model."
TEXT_ENCODER_MARKS = ("text_encoder.", "text_model.", "cond_stage_model.", "lora_te")
LORA_MARKS = ("lora_", ".lora.", "lora_A", "lora_B", "lora_up", "lora_down", ".alpha")
TEXT_ENCODER_REFUSAL = ("changes the text encoder, which the harness does not yet apply in its stages "
                        "(only UNet tensors); refusing it rather than attacking the unchanged model")


def unet_tensors(path: str, base: dict[str, torch.Tensor], unet_config: dict, base_text_encoder: dict | None = None,
                 ) -> tuple[dict[str, torch.Tensor], str]:
    """The base UNet's tensors the checkpoint at `path` holds (diffusers names, base shapes) and
    its form; a one-line error for a refused or unknown form."""
    local = resolve_local(path)
    if local.is_dir():
        return _folder(local, base, base_text_encoder)
    state = load_tensor_file(local)
    keys = list(state)
    if any(k.startswith(COMPVIS_PREFIX) for k in keys):
        from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

        try:
            converted = convert_ldm_unet_checkpoint(state, dict(unet_config))
        except (KeyError, IndexError, ValueError, RuntimeError) as error:
            raise HarnessError(f"{path}: a CompVis checkpoint diffusers cannot convert for this UNet "
                               f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})", key="") from None
        if not any(name in base and value.shape == base[name].shape for name, value in converted.items()):
            raise HarnessError(f"{path}: a CompVis checkpoint diffusers cannot convert for this UNet "
                               f"(no tensor of the base model's UNet came out of {len(keys)} keys)", key="")
        return _matching(converted, base, path, "compvis-unet"), "compvis-unet"
    if any(mark in k for k in keys for mark in LORA_MARKS):
        raise HarnessError(f"{path}: a LoRA / adapter file; fuse it into the UNet first (diffusers "
                           "load_lora_weights + fuse_lora, then save the UNet) and give that", key="")
    if any(k.startswith(TEXT_ENCODER_MARKS) for k in keys):
        raise HarnessError(f"{path}: a text-encoder release: it {TEXT_ENCODER_REFUSAL}", key="")
    return _matching(state, base, path, "diffusers-unet"), "diffusers-unet"


def _folder(folder: Path, base: dict[str, torch.Tensor], base_text_encoder: dict | None,
            ) -> tuple[dict[str, torch.Tensor], str]:
    config = folder / "config.json"
    if config.is_file() and "CLIPTextModel" in json.loads(config.read_text()).get("architectures", []):
        raise HarnessError(f"{folder}: a text-encoder release (a CLIPTextModel folder): it {TEXT_ENCODER_REFUSAL}", key="")
    if (folder / "model_index.json").is_file():
        if base_text_encoder is not None and (folder / "text_encoder").is_dir():
            changed = _changed_text_encoder(folder / "text_encoder", base_text_encoder)
            if changed:
                raise HarnessError(f"{folder}: its text encoder differs from the base model's ('{changed}'); "
                                   f"the pipeline {TEXT_ENCODER_REFUSAL}", key="")
        return _matching(load_state_dict(str(folder)), base, str(folder), "diffusers-pipeline"), "diffusers-pipeline"
    return _matching(load_state_dict(str(folder)), base, str(folder), "diffusers-unet"), "diffusers-unet"


def _changed_text_encoder(folder: Path, base: dict[str, torch.Tensor]) -> str | None:
    """The first text-encoder tensor that differs from the base model's, else None."""
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    plain = {name.removeprefix("text_model."): tensor for name, tensor in base.items()}
    compared = 0
    for file in files:
        for name, tensor in load_tensor_file(file).items():
            own = plain.get(name.removeprefix("text_model."))
            if own is not None:
                compared += 1
                if own.shape != tensor.shape or not torch.equal(tensor.to(own.dtype), own):
                    return name
    if compared < len(plain):  # weights under other names or missing: not provably the base encoder
        return f"{len(plain) - compared} of its {len(plain)} tensors not found under the base model's names"
    return None


def _matching(state: dict[str, torch.Tensor], base: dict[str, torch.Tensor], path: str, form: str,
              ) -> dict[str, torch.Tensor]:
    tensors = {name: value for name, value in state.items() if name in base and value.shape == base[name].shape}
    if not tensors:
        raise HarnessError(f"{path}: matches no known form (diffusers UNet names, a CompVis model.diffusion_model.* "
                           f"state dict, a pipeline folder): it holds no tensor of the base model's UNet", key="")
    return tensors
