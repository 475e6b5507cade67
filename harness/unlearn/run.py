"""The unlearn stage: load the model, call the method, apply the defense, publish the output.

Output folder (harness.layout.UnlearnFiles): the changed tensors only (UNet parameter names),
the mask (uint8, 1 = changed by the method) and the record (method, params, concept, layers,
changed counts and shares, sigma_U, seeds, provenance). The three appear together or not at all,
and a folder whose record has the same settings key is reused without work.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.atomic import check_output_folder, publish_folder
from harness.errors import HarnessError
from harness.recipe import GenerationSettings
from harness.layout import UnlearnFiles
from harness.models.checkpoints import save_tensors, source_identity
from harness.models.layers import select_layers
from harness.models.pipelines import load_pipeline, resolve_dtype, set_scheduler
from harness.provenance import provenance
from harness.recipe import Recipe
from harness.records import LayerCount, UnlearnRecord, completed, settings_key, write_record
from harness.runtime import RuntimeSettings, resolve_device
from harness.unlearn.defense import obfuscate
from harness.unlearn.detectability import detectability, exact_zeros, modified_share, unmodified_sigma
from harness.unlearn.method import UnlearnContext, UnlearnMethod, UnlearnResult, method_layers, resolve_method
from harness.unlearn.prompts import resolve_data_dir
from harness.recipe import ConceptSettings, MethodSettings

log = logging.getLogger(__name__)


@dataclass
class UnlearnJob:
    """One method of a recipe applied to its base model, into one output folder."""

    model: str
    concept: ConceptSettings
    method: MethodSettings
    generation: GenerationSettings
    out: Path
    where: str = "recipe"
    """The recipe file, for error messages."""
    entry: str = "method"
    """The recipe key of the method's entry (`methods[0]`)."""
    data_dir: str | None = None
    device: str = "auto"
    fidelity: str = "paper"
    runtime: RuntimeSettings | None = None
    """Devices and processes for training methods (default: one process on `device`)."""

    @classmethod
    def from_recipe(cls, recipe: Recipe, method: str | None, out: Path, data_dir: str | None = None,
                    device: str = "auto", runtime: RuntimeSettings | None = None) -> UnlearnJob:
        """The job of one of a recipe's methods (`method` may be None when the recipe has only one)."""
        if not recipe.methods:
            raise HarnessError(f"{recipe.source}: methods: the recipe lists no unlearning method")
        if method is None and len(recipe.methods) > 1:
            raise HarnessError(f"--method: the recipe lists {len(recipe.methods)} methods; "
                               f"name one of {', '.join(m.name or '' for m in recipe.methods)}")
        entry = recipe.method(method) if method else recipe.methods[0]
        assert recipe.concept is not None  # the recipe checks that methods come with a concept
        return cls(model=recipe.model, concept=recipe.concept, method=entry, generation=recipe.generation,
                   out=Path(out), where=recipe.source, entry=f"methods[{recipe.methods.index(entry)}]",
                   data_dir=data_dir, device=device, fidelity=recipe.fidelity, runtime=runtime)

    def key(self) -> str:
        """The identity of the output: base model content, concept, method entry, sampling, fidelity."""
        concept = dataclasses.asdict(self.concept) | {"data_dir": None}
        return settings_key("unlearn", source_identity(self.model), concept, dataclasses.asdict(self.method),
                            dataclasses.asdict(self.generation), self.fidelity)


def output_is_ours(folder: Path) -> bool:
    """Whether `folder` holds an unlearn stage's output, or a training method's checkpoints."""
    files = UnlearnFiles(folder)
    return files.record.is_file() or files.checkpoints.is_dir()


def run_unlearning(job: UnlearnJob) -> UnlearnRecord:
    """Unlearn as `job` says and publish the output folder; an output with the same key is reused."""
    files = UnlearnFiles(Path(job.out))
    check_output_folder(files.folder, "--out", output_is_ours)
    key = job.key()
    done = completed(UnlearnRecord, files.record, key)
    if done is not None and files.tensors.is_file() and files.mask.is_file():
        log.info("unlearning %s: already done with these settings (%s)", job.method.name, files.folder)
        return done
    method = resolve_method(job.method.method, f"{job.where}: {job.entry}.method")
    start = time.perf_counter()
    device = resolve_device(job.device)
    pipeline = load_pipeline(job.model, device, dtype=resolve_dtype(job.generation.dtype, device))
    set_scheduler(pipeline, job.generation.scheduler, job.where)
    parameters = dict(pipeline.unet.named_parameters())
    try:
        layers = select_layers(parameters, method_layers(job.method, f"{job.where}: {job.entry}.method"))
    except HarnessError as error:
        raise HarnessError(f"{job.where}: {job.entry}.layers: {error}") from None
    context = UnlearnContext(
        pipeline=pipeline, concept=job.concept, layers=layers, device=device, seed=job.generation.fixed_seed,
        generation=job.generation, data_dir=resolve_data_dir(job.data_dir, job.concept.data_dir),
        where=job.where, entry=job.entry, fidelity=job.fidelity, base_model=job.model,
        scratch=files.checkpoints, settings_key=key, runtime=job.runtime,
    )
    log.debug("unlearning '%s' (%s) with %s on %d layers", job.concept.label, job.concept.kind, job.method.name, len(layers))
    result = apply_method(method, context, dict(job.method.params), parameters)
    masks = check_result(result, parameters, f"{job.where}: {job.entry}.method")
    tensors = {name: t.detach().cpu() for name, t in result.tensors.items()}
    defense = job.method.defense
    if defense is not None:
        try:
            tensors |= obfuscate({n: tensors[n] for n in masks}, masks, defense.sigma, defense.seed)
        except HarnessError as error:
            raise HarnessError(f"{job.where}: {job.entry}.defense.sigma: {error}") from None
    record = unlearn_record(job, key, layers, parameters, masks, tensors, result, time.perf_counter() - start)

    def fill(folder: Path) -> None:
        out = UnlearnFiles(folder)
        save_tensors(tensors, out.tensors, metadata={"method": job.method.method, "recipe": job.where})
        save_tensors({n: m.to(torch.uint8) for n, m in masks.items()}, out.mask, metadata={"recipe": job.where})
        write_record(out.record, record)

    publish_folder(files.folder, fill)
    log.debug("%s: changed %d weights (%.4f%% of the target layers) -> %s", job.method.name, record.changed,
             100 * record.fraction_of_layers, files.folder)
    return record


def apply_method(method: UnlearnMethod, context: UnlearnContext, params: dict,
                 parameters: dict[str, torch.Tensor]) -> UnlearnResult:
    """The method's result; with several targets a pruning method runs once per target and
    their masks are united (the weights zeroed at the union)."""
    if not context.concept.several:
        return method(context, params)
    where = context.key("method")
    if not getattr(method, "prunes", False):
        raise HarnessError(f"{where}: the method erases one concept at a time; concept.target lists "
                           f"{len(context.concept.targets)} (only pruning methods unite masks)")
    parts = {}
    for single in context.concept.each():
        log.info("unlearning '%s' (%d of %d targets)", single.target, len(parts) + 1, len(context.concept.targets))
        parts[single.target] = method(dataclasses.replace(context, concept=single), dict(params))
    return united(parts, parameters, where)


def united(parts: dict[str, UnlearnResult], parameters: dict[str, torch.Tensor], where: str) -> UnlearnResult:
    """One pruning result per target as one: masks or-ed, the original weights zeroed there."""
    masks: dict[str, torch.Tensor] = {}
    for target, part in parts.items():
        for name, mask in check_result(part, parameters, where).items():
            original = parameters[name].detach().cpu()
            if not torch.equal(part.tensors[name].detach().cpu(), original.masked_fill(mask, 0)):
                raise HarnessError(f"{where}: for '{target}' it changes '{name}' beyond zeroing the masked "
                                   "weights, so masks cannot be united")
            masks[name] = masks[name] | mask if name in masks else mask
    first = next(iter(parts.values()))
    info = {"params": first.info.get("params"),
            "targets": {t: {"changed": sum(int(m.sum()) for m in part.masks.values())}
                        | {k: v for k, v in part.info.items() if k != "params"} for t, part in parts.items()}}
    tensors = {name: parameters[name].detach().cpu().masked_fill(mask, 0) for name, mask in masks.items()}
    return UnlearnResult(masks=masks, tensors=tensors, info=info)


def check_result(result: UnlearnResult, parameters: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """The method's masks as CPU bool tensors, after checking names, shapes and values against the UNet."""
    if not isinstance(result, UnlearnResult):
        raise HarnessError(f"{where}: returned {type(result).__name__}, not an UnlearnResult")
    for kind, group in (("mask", result.masks), ("tensor", result.tensors)):
        for name, value in group.items():
            if name not in parameters:
                raise HarnessError(f"{where}: {kind} '{name}' is not a UNet parameter")
            if tuple(value.shape) != tuple(parameters[name].shape):
                raise HarnessError(
                    f"{where}: {kind} '{name}' has shape {tuple(value.shape)}, the parameter {tuple(parameters[name].shape)}"
                )
            if kind == "tensor" and value.is_floating_point() and not torch.isfinite(value).all():
                raise HarnessError(f"{where}: tensor '{name}' holds non-finite values")
    missing = sorted(set(result.masks) - set(result.tensors))
    if missing:
        raise HarnessError(f"{where}: mask '{missing[0]}' has no changed tensor")
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
    unet_size = sum(p.numel() for p in parameters.values())
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
        fraction_of_unet=changed / unet_size,
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
