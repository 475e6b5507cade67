"""The forms published unlearned models come in, told apart by the file itself.

Each form gives tensors in the model's namespace (harness.models.components: UNet names, and
`text_encoder.`-prefixed text-encoder names), which every stage applies:

- `diffusers-unet`: UNet tensors under diffusers' names, all or only the changed ones (a
  `.safetensors` / `.pt` file such as UCE's or ConceptPrune's dump, or a UNet folder);
- `diffusers-pipeline`: a whole pipeline folder (FMN, MACE): its UNet, and its text encoder's
  tensors where they differ from the base model's;
- `compvis-unet`: a CompVis / LDM state dict (`model.diffusion_model.*`, ESD's and SalUn's
  `.pt` / `.ckpt` releases), converted by diffusers' single-file conversion with the base UNet's
  config;
- `text-encoder`: a text-encoder release, AdvUnlearn's CLIPTextModel folder or a state dict of
  CLIP text names, bare or `text_encoder.`-prefixed (AdvUnlearn's training wrapper); the tensors
  that differ from the base encoder's;
- `lora`: a LoRA / adapter file (kohya names such as SPM's, or diffusers / PEFT names), loaded by
  diffusers' `load_lora_weights` and fused; the UNet and text-encoder tensors it changed.
Anything that matches no form is refused in one line, never loaded as zero changes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from harness.errors import HarnessError
from harness.models.checkpoints import load_state_dict, load_tensor_file, resolve_local
from harness.models.components import TEXT_ENCODER

COMPVIS_PREFIX = "model.diffusion_model."
TEXT_ENCODER_NAMES = (TEXT_ENCODER, "text_model.")
LORA_MARKS = ("lora_", ".lora.", "lora_A", "lora_B", "lora_up", "lora_down", ".alpha")
CHANGES_ONLY = ("text-encoder", "lora")
"""Forms that hold only what they change: a target layer they lack is the base model's."""


def unlearned_tensors(path: str, pipeline: Any) -> tuple[dict[str, torch.Tensor], str]:
    """The tensors the checkpoint at `path` gives the base `pipeline` (namespace names, base
    shapes, on the CPU) and its form; a one-line error for a file of no known form. A LoRA is
    fused into `pipeline` itself (the stage loads it for this method alone)."""
    base = {n: p.detach().cpu() for n, p in pipeline.unet.named_parameters()}
    encoder = getattr(pipeline, "text_encoder", None)
    base_encoder = {n: t.detach().cpu() for n, t in encoder.state_dict().items()} if encoder is not None else None
    local = resolve_local(path)
    if local.is_dir():
        return _folder(local, base, base_encoder)
    state = load_tensor_file(local)
    keys = list(state)
    if any(k.startswith(COMPVIS_PREFIX) for k in keys):
        return _compvis(state, base, pipeline.unet.config, path), "compvis-unet"
    if any(mark in k for k in keys for mark in LORA_MARKS):
        return _fused_lora(state, pipeline, path), "lora"
    if any(k.startswith(TEXT_ENCODER_NAMES) for k in keys):
        plain = {k.removeprefix(TEXT_ENCODER): v for k, v in state.items()}
        return _changed_text_encoder(plain, _need_encoder(base_encoder, path), path), "text-encoder"
    return _matching(state, base, path), "diffusers-unet"


def _compvis(state: dict[str, torch.Tensor], base: dict[str, torch.Tensor], unet_config: Any, path: str,
             ) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    try:
        converted = convert_ldm_unet_checkpoint(state, dict(unet_config))
    except (KeyError, IndexError, ValueError, RuntimeError) as error:
        raise HarnessError(f"{path}: a CompVis checkpoint diffusers cannot convert for this UNet "
                           f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})", key="") from None
    if not any(name in base and value.shape == base[name].shape for name, value in converted.items()):
        raise HarnessError(f"{path}: a CompVis checkpoint diffusers cannot convert for this UNet "
                           f"(no tensor of the base model's UNet came out of {len(state)} keys)", key="")
    return _matching(converted, base, path)


def _folder(folder: Path, base: dict[str, torch.Tensor], base_encoder: dict[str, torch.Tensor] | None,
            ) -> tuple[dict[str, torch.Tensor], str]:
    config = folder / "config.json"
    if config.is_file() and "CLIPTextModel" in json.loads(config.read_text()).get("architectures", []):
        return _changed_text_encoder(_folder_state(folder), _need_encoder(base_encoder, str(folder)),
                                     str(folder)), "text-encoder"
    if (folder / "model_index.json").is_file():
        tensors = _matching(load_state_dict(str(folder)), base, str(folder))
        if base_encoder is not None and (folder / "text_encoder").is_dir():
            tensors |= _changed_text_encoder(_folder_state(folder / "text_encoder"), base_encoder,
                                             str(folder / "text_encoder"), allow_none=True)
        return tensors, "diffusers-pipeline"
    return _matching(load_state_dict(str(folder)), base, str(folder)), "diffusers-unet"


def _folder_state(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of a transformers model folder (safetensors, else .bin read weights-only)."""
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_tensor_file(file))
    return state


def _need_encoder(base_encoder: dict[str, torch.Tensor] | None, path: str) -> dict[str, torch.Tensor]:
    if base_encoder is None:
        raise HarnessError(f"{path}: a text-encoder release, but the base model has no text encoder", key="")
    return base_encoder


def _changed_text_encoder(state: dict[str, torch.Tensor], base: dict[str, torch.Tensor], path: str,
                          allow_none: bool = False) -> dict[str, torch.Tensor]:
    """The release's text-encoder tensors that differ from the base encoder's, under
    `text_encoder.` names. A release that does not hold the base encoder's tensors under its
    names is refused (it would be applied only in part); one that changes nothing too, unless
    `allow_none` (a pipeline's unchanged encoder)."""
    by_plain = {name.removeprefix("text_model."): name for name in base}
    changed, found = {}, 0
    for name, tensor in state.items():
        own = by_plain.get(name.removeprefix("text_model."))
        if own is None:
            continue
        found += 1
        if tensor.shape != base[own].shape:
            raise HarnessError(f"{path}: text-encoder tensor '{name}' has shape {tuple(tensor.shape)}, the base "
                               f"model's {tuple(base[own].shape)}", key="")
        if not torch.equal(tensor.to(base[own].dtype), base[own]):
            changed[TEXT_ENCODER + own] = tensor.to(base[own].dtype)
    if found < len([n for n in base if not n.endswith("position_ids")]):
        raise HarnessError(f"{path}: a text encoder with {found} of the base model's {len(base)} tensors under "
                           "its names; not provably a release of this model's encoder", key="")
    if not changed and not allow_none:
        raise HarnessError(f"{path}: a text-encoder release identical to the base model's encoder", key="")
    return changed


def _fused_lora(state: dict[str, torch.Tensor], pipeline: Any, path: str) -> dict[str, torch.Tensor]:
    """diffusers' `load_lora_weights` + `fuse_lora` on the pipeline, and what that changed."""
    from harness.models.components import model_parameters

    if not hasattr(pipeline, "load_lora_weights"):
        raise HarnessError(f"{path}: a LoRA file, but the base model's pipeline "
                           f"({type(pipeline).__name__}) cannot load LoRA weights", key="")
    before = {n: p.detach().cpu().clone() for n, p in model_parameters(pipeline).items()}
    try:
        pipeline.load_lora_weights(dict(state), adapter_name="release")
        pipeline.fuse_lora(adapter_names=["release"])
        pipeline.unload_lora_weights()
    except (KeyError, ValueError, RuntimeError, TypeError, AttributeError) as error:
        raise HarnessError(f"{path}: a LoRA file diffusers cannot apply to this model "
                           f"({type(error).__name__}: {_first_line(error)})", key="") from None
    after = model_parameters(pipeline)
    changed = {n: after[n].detach().cpu().clone() for n in before
               if n in after and not torch.equal(after[n].detach().cpu(), before[n])}
    if not changed:
        raise HarnessError(f"{path}: a LoRA file whose targets match no layer of the model "
                           f"({len(state)} tensors, none changed a weight)", key="")
    return changed


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _matching(state: dict[str, torch.Tensor], base: dict[str, torch.Tensor], path: str) -> dict[str, torch.Tensor]:
    tensors = {name: value for name, value in state.items() if name in base and value.shape == base[name].shape}
    if not tensors:
        raise HarnessError(f"{path}: matches no known form (diffusers UNet names, a CompVis model.diffusion_model.* "
                           "state dict, a pipeline or text-encoder folder, a text-encoder or LoRA state dict): it "
                           "holds no tensor of the base model's UNet", key="")
    return tensors
