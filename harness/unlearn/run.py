"""The unlearn stage: load the model, call the method, apply the defense, publish the output.

Output folder (harness.layout.UnlearnFiles): the changed tensors only (UNet parameter names, and
`text_encoder.`-prefixed ones for a changed text encoder: harness.models.components),
the mask (uint8, 1 = changed by the method) and the record (method, params, concept, layers,
changed counts and shares, sigma_U, seeds, provenance). The three appear together or not at all,
and a folder whose record has the same settings key is reused without work.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from harness.atomic import publish_folder
from harness.errors import HarnessError, in_file, keyed
from harness.layout import UnlearnFiles
from harness.models.checkpoints import save_tensors
from harness.models.components import is_text_encoder, model_parameters
from harness.models.layers import select_layers
from harness.models.pipelines import load_pipeline, resolve_dtype, set_scheduler
from harness.outputs import check_output
from harness.provenance import provenance
from harness.records import LayerCount, UnlearnRecord, completed, write_record
from harness.registry import Plugin
from harness.runtime import resolve_device
from harness.unlearn.cached import run_cached
from harness.unlearn.defense import obfuscate
from harness.unlearn.detectability import detectability, exact_zeros, modified_share, unmodified_sigma
from harness.unlearn.job import UnlearnJob
from harness.unlearn.method import UnlearnContext, UnlearnResult, call_method, check_sampling, method_layers, resolve_method
from harness.unlearn.twin import twin_result, undefended_twin

log = logging.getLogger(__name__)


def output_is_ours(folder: Path) -> bool:
    """Whether `folder` holds an unlearn stage's output, or a training method's checkpoints."""
    files = UnlearnFiles(folder)
    return files.record.is_file() or files.checkpoints.is_dir()


def run(job: UnlearnJob) -> UnlearnRecord:
    """Unlearn as `job` says and publish the output folder; an output with the same key is reused,
    and a method marked `cache` is also kept in (and taken from) the harness cache. An error names
    the recipe file and the method's entry."""
    with in_file(job.source), keyed(job.entry):
        if job.method.cache:
            return run_cached(job.key(), Path(job.out), job.method.name or job.method.method, lambda: _run(job))
        return _run(job)


def _run(job: UnlearnJob) -> UnlearnRecord:
    files = UnlearnFiles(Path(job.out))
    check_output(files.folder, "--out", output_is_ours)
    key = job.key()
    done = completed(UnlearnRecord, files.record, key)
    if done is not None and files.tensors.is_file() and files.mask.is_file():
        log.info("unlearning %s: already done with these settings (%s)", job.method.name, files.folder)
        return done
    with keyed("method"):
        method = resolve_method(job.method.method)
    with keyed("params"):
        check_sampling(method.parse(job.method.params), job.model, job.generation)
    start = time.perf_counter()
    device = resolve_device(job.runtime.device)
    pipeline = load_pipeline(job.model, device, dtype=resolve_dtype(job.generation.dtype, device))
    with keyed("generation.scheduler"):
        set_scheduler(pipeline, job.generation.scheduler)
    parameters = model_parameters(pipeline)
    globs = method_layers(job.method)
    with keyed("layers"):
        layers = select_layers(parameters, globs)
    context = UnlearnContext(job=job, pipeline=pipeline, layers=layers, device=device,
                             scratch=files.checkpoints, settings_key=key)
    log.debug("unlearning '%s' (%s) with %s on %d layers", job.concept.label, job.concept.kind, job.method.name, len(layers))
    twin = undefended_twin(job)
    if twin is not None:
        log.info("unlearning %s: the weights and masks of its undefended twin %s, then the defense",
                 job.method.name, twin.folder)
    result = twin_result(twin, parameters) if twin is not None else apply_method(method, context, job.method.params, parameters)
    with keyed("method"):
        masks = check_result(result, parameters)
    tensors = {name: t.detach().cpu() for name, t in result.tensors.items()}
    defense = job.method.defense
    if defense is not None:
        with keyed("defense.sigma"):
            tensors |= obfuscate({n: tensors[n] for n in masks}, masks, defense.sigma, defense.seed)
    record = unlearn_record(job, key, layers, parameters, masks, tensors, result, time.perf_counter() - start)

    def fill(folder: Path) -> None:
        out = UnlearnFiles(folder)
        save_tensors(tensors, out.tensors, metadata={"method": job.method.method, "recipe": job.source})
        save_tensors({n: m.to(torch.uint8) for n, m in masks.items()}, out.mask, metadata={"recipe": job.source})
        write_record(out.record, record)

    publish_folder(files.folder, fill)
    log.debug("%s: changed %d weights (%.4f%% of the target layers) -> %s", job.method.name, record.changed,
             100 * record.fraction_of_layers, files.folder)
    return record


def apply_method(method: Plugin, context: UnlearnContext, params: Mapping[str, Any],
                 parameters: dict[str, torch.Tensor]) -> UnlearnResult:
    """The method's result; with several targets a pruning method runs once per target and
    their masks are united (the weights zeroed at the union)."""
    if not context.concept.several:
        return call_method(method, context, params)
    if not method.prunes:
        raise HarnessError(f"the method erases one concept at a time; concept.target lists "
                           f"{len(context.concept.targets)} (only pruning methods unite masks)", key="method")
    parts = {}
    for single in context.concept.each():
        log.info("unlearning '%s' (%d of %d targets)", single.target, len(parts) + 1, len(context.concept.targets))
        parts[single.target] = call_method(method, context.for_concept(single), params)
    with keyed("method"):
        return united(parts, parameters)


def united(parts: dict[str, UnlearnResult], parameters: dict[str, torch.Tensor]) -> UnlearnResult:
    """One pruning result per target as one: masks or-ed, the original weights zeroed there."""
    masks: dict[str, torch.Tensor] = {}
    for target, part in parts.items():
        for name, mask in check_result(part, parameters).items():
            original = parameters[name].detach().cpu()
            if not torch.equal(part.tensors[name].detach().cpu(), original.masked_fill(mask, 0)):
                raise HarnessError(f"for '{target}' it changes '{name}' beyond zeroing the masked "
                                   "weights, so masks cannot be united", key="")
            masks[name] = masks[name] | mask if name in masks else mask
    first = next(iter(parts.values()))
    info = {"params": first.info.get("params"),
            "targets": {t: {"changed": sum(int(m.sum()) for m in part.masks.values())}
                        | {k: v for k, v in part.info.items() if k != "params"} for t, part in parts.items()}}
    tensors = {name: parameters[name].detach().cpu().masked_fill(mask, 0) for name, mask in masks.items()}
    return UnlearnResult(masks=masks, tensors=tensors, info=info)


def check_result(result: UnlearnResult, parameters: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The method's masks as CPU bool tensors, after checking names, shapes and values against the UNet."""
    if not isinstance(result, UnlearnResult):
        raise HarnessError(f"returned {type(result).__name__}, not an UnlearnResult", key="")
    for kind, group in (("mask", result.masks), ("tensor", result.tensors)):
        for name, value in group.items():
            if name not in parameters:
                where = "a text-encoder" if is_text_encoder(name) else "a UNet"
                raise HarnessError(f"{kind} '{name}' is not {where} parameter of the model", key="")
            if tuple(value.shape) != tuple(parameters[name].shape):
                raise HarnessError(f"{kind} '{name}' has shape {tuple(value.shape)}, the parameter {tuple(parameters[name].shape)}", key="")
            if kind == "tensor" and value.is_floating_point() and not torch.isfinite(value).all():
                raise HarnessError(f"tensor '{name}' holds non-finite values", key="")
    missing = sorted(set(result.masks) - set(result.tensors))
    if missing:
        raise HarnessError(f"mask '{missing[0]}' has no changed tensor", key="")
    return {name: mask.detach().cpu().bool() for name, mask in result.masks.items()}


def unlearn_record(
    job: UnlearnJob,
    key: str,
    layers: list[str],
    parameters: dict[str, torch.Tensor],
    masks: dict[str, torch.Tensor],
    tensors: dict[str, torch.Tensor],
    result: UnlearnResult,
    seconds: float,
) -> UnlearnRecord:
    """The record: what was done, how much was changed, sigma_U, with seeds and provenance."""
    rows = [LayerCount(n, list(m.shape), int(m.sum()), int(m.sum()) / m.numel()) for n, m in masks.items()]
    changed = sum(r.changed for r in rows)
    layer_size = sum(parameters[n].numel() for n in masks) or 1
    unet_size = sum(p.numel() for n, p in parameters.items() if not is_text_encoder(n))
    masked = {n: tensors[n] for n in masks}
    sigma_u = unmodified_sigma(masked, masks) if masks and changed < layer_size else None
    defense = job.method.defense
    record_detectability = None
    if defense is not None and changed and sigma_u:
        alpha = modified_share(masks)
        record_detectability = {
            "alpha": alpha,
            "sigma_m": defense.sigma,
            "sigma_u": sigma_u,
            "exact_zeros": exact_zeros(masked.values()),
            "exact_zeros_at_mask": exact_zeros(tensors[n][masks[n]] for n in masks),
            "p_at_w_sigma_m": float(detectability(defense.sigma, alpha, defense.sigma, sigma_u)),
        }
    params = result.info.get("params", job.method.params)
    return UnlearnRecord(
        key=key,
        name=job.method.name or job.method.method,
        method=job.method.method,
        model=job.model,
        params=params,
        concept=dataclasses.asdict(job.concept),
        layers=rows,
        selected_layers=layers,
        changed=changed,
        fraction_of_layers=changed / layer_size,
        fraction_of_unet=sum(r.changed for r in rows if not is_text_encoder(r.name)) / unet_size,
        sigma_u=sigma_u,
        defense=dataclasses.asdict(defense) if defense else None,
        detectability=record_detectability,
        info={k: v for k, v in result.info.items() if k != "params"},
        generation=dataclasses.asdict(job.generation),
        seeds={"generation.fixed_seed": job.generation.fixed_seed,
               "method": params.get("seed") if isinstance(params, dict) else None,
               "defense": defense.seed if defense else None},
        fidelity=job.fidelity,
        seconds=round(seconds, 3),
        provenance=provenance(),
    )
