"""Running a recipe's unlearning: load the model, call the method, apply the defense, write files.

Output folder: `unlearned.safetensors` (the changed tensors only, UNet parameter names),
`mask.safetensors` (uint8, 1 = changed by the method) and `unlearn.json` (method, params,
concept, layers, pruned counts and shares, seeds, provenance).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import diffusers
import torch

from harness.errors import HarnessError
from harness.models.checkpoints import save_tensors
from harness.models.layers import select_layers
from harness.models.pipelines import load_pipeline
from harness.provenance import provenance, write_json_atomic
from harness.recipe import Recipe
from harness.unlearn.defense import obfuscate
from harness.unlearn.detectability import detectability, exact_zeros, modified_share, unmodified_sigma
from harness.unlearn.prompts import resolve_data_dir
from harness.unlearn.registry import UnlearnContext, UnlearnResult, resolve_method

log = logging.getLogger(__name__)

UNLEARNED_FILE = "unlearned.safetensors"
MASK_FILE = "mask.safetensors"
RECORD_FILE = "unlearn.json"


def run_unlearning(
    recipe: Recipe, out_dir: str | Path, data_dir: str | Path | None = None, device: str = "cpu"
) -> Path:
    """Unlearn as `recipe` says and write the three files into `out_dir`; returns `out_dir`."""
    where = recipe.source or recipe.name
    if recipe.unlearn is None:
        raise HarnessError(f"{where}: missing section 'unlearn'")
    if recipe.concept is None:
        raise HarnessError(f"{where}: missing section 'concept'")
    method = resolve_method(recipe.unlearn.method, f"{where}: unlearn.method")
    torch_device = resolve_device(device)
    pipeline = load_pipeline(recipe.model, torch_device, dtype=pipeline_dtype(recipe.generation.dtype, torch_device))
    set_scheduler(pipeline, recipe.generation.scheduler, where)
    parameters = dict(pipeline.unet.named_parameters())
    try:
        layers = select_layers(parameters, recipe.unlearn.layers)
    except HarnessError as error:
        raise HarnessError(f"{where}: unlearn.layers: {error}") from None
    context = UnlearnContext(
        pipeline=pipeline,
        concept=recipe.concept,
        layers=layers,
        device=torch_device,
        seed=recipe.generation.fixed_seed,
        generation=recipe.generation,
        data_dir=resolve_data_dir(data_dir, recipe.concept.data_dir),
        where=where,
    )
    log.info("unlearning '%s' (%s) with %s on %d layers", recipe.concept.target, recipe.concept.kind,
             recipe.unlearn.method, len(layers))
    result = method(context, dict(recipe.unlearn.params))
    masks = check_result(result, parameters, where)
    tensors = {name: t.detach().cpu() for name, t in result.tensors.items()}
    defense = recipe.unlearn.defense
    if defense is not None:
        try:
            tensors |= obfuscate({n: tensors[n] for n in masks}, masks, defense.sigma, defense.seed)
        except HarnessError as error:
            raise HarnessError(f"{where}: unlearn.defense.sigma: {error}") from None
    record = unlearn_record(recipe, layers, parameters, masks, tensors, result, where)
    out = Path(out_dir)
    save_tensors(tensors, out / UNLEARNED_FILE, metadata={"method": recipe.unlearn.method, "recipe": where})
    save_tensors({n: m.to(torch.uint8) for n, m in masks.items()}, out / MASK_FILE, metadata={"recipe": where})
    write_json_atomic(out / RECORD_FILE, record)
    log.info("pruned %d weights (%.4f%% of the target layers) -> %s", record["pruned"],
             100 * record["fraction_of_layers"], out)
    return out


def resolve_device(device: str) -> torch.device:
    """`auto` is the GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise HarnessError(f"--device: unknown device '{device}'") from None


def pipeline_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` is float16 on a GPU (as the protocol generates) and float32 elsewhere."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def set_scheduler(pipeline: Any, name: str | None, where: str) -> None:
    """Swap in the diffusers scheduler class `name`, built from the current scheduler's config."""
    if name is None or type(pipeline.scheduler).__name__ == name:
        return
    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        raise HarnessError(f"{where}: generation.scheduler: '{name}' is not a diffusers scheduler")
    pipeline.scheduler = cls.from_config(pipeline.scheduler.config)


def check_result(result: UnlearnResult, parameters: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """The method's masks as CPU bool tensors, after checking names and shapes against the UNet."""
    if not isinstance(result, UnlearnResult):
        raise HarnessError(f"{where}: unlearn.method returned {type(result).__name__}, not an UnlearnResult")
    for kind, group in (("mask", result.masks), ("tensor", result.tensors)):
        for name, value in group.items():
            if name not in parameters:
                raise HarnessError(f"{where}: unlearn.method: {kind} '{name}' is not a UNet parameter")
            if tuple(value.shape) != tuple(parameters[name].shape):
                raise HarnessError(
                    f"{where}: unlearn.method: {kind} '{name}' has shape {tuple(value.shape)}, "
                    f"the parameter {tuple(parameters[name].shape)}"
                )
    missing = sorted(set(result.masks) - set(result.tensors))
    if missing:
        raise HarnessError(f"{where}: unlearn.method: mask '{missing[0]}' has no changed tensor")
    return {name: mask.detach().cpu().bool() for name, mask in result.masks.items()}


def unlearn_record(
    recipe: Recipe,
    layers: list[str],
    parameters: dict[str, torch.Tensor],
    masks: dict[str, torch.Tensor],
    tensors: dict[str, torch.Tensor],
    result: UnlearnResult,
    where: str,
) -> dict[str, Any]:
    """The JSON record: what was done, how much was pruned, with seeds and provenance."""
    assert recipe.unlearn is not None and recipe.concept is not None
    rows = [
        {"name": n, "shape": list(m.shape), "pruned": int(m.sum()), "fraction": int(m.sum()) / m.numel()}
        for n, m in masks.items()
    ]
    pruned = sum(r["pruned"] for r in rows)
    layer_size = sum(parameters[n].numel() for n in masks) or 1
    unet_size = sum(p.numel() for p in parameters.values())
    record: dict[str, Any] = {
        "recipe": where,
        "model": recipe.model,
        "method": recipe.unlearn.method,
        "params": result.info.get("params", recipe.unlearn.params),
        "concept": dataclasses.asdict(recipe.concept),
        "layers": rows,
        "selected_layers": layers,
        "pruned": pruned,
        "fraction_of_layers": pruned / layer_size,
        "fraction_of_unet": pruned / unet_size,
        "defense": dataclasses.asdict(recipe.unlearn.defense) if recipe.unlearn.defense else None,
        "info": {k: v for k, v in result.info.items() if k != "params"},
        "generation": dataclasses.asdict(recipe.generation),
        "seeds": {
            "generation.fixed_seed": recipe.generation.fixed_seed,
            "method": result.info.get("params", {}).get("seed"),
            "defense": recipe.unlearn.defense.seed if recipe.unlearn.defense else None,
        },
        "provenance": provenance(),
    }
    if recipe.unlearn.defense is not None and pruned:
        sigma_m = recipe.unlearn.defense.sigma
        sigma_u = unmodified_sigma({n: tensors[n] for n in masks}, masks)
        alpha = modified_share(masks)
        record["detectability"] = {
            "alpha": alpha,
            "sigma_m": sigma_m,
            "sigma_u": sigma_u,
            "exact_zeros": exact_zeros(tensors[n] for n in masks),
            "exact_zeros_at_mask": exact_zeros(tensors[n][masks[n]] for n in masks),
            "p_at_w_sigma_m": float(detectability(sigma_m, alpha, sigma_m, sigma_u)),
        }
    return record
