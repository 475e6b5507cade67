"""Reviving one layer: pruned positions -> completion -> Top-K signs -> magnitudes."""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass

import torch

from harness.attack.revival.baselines import ideal_case, quant4
from harness.attack.revival.completion import reference_code_impute, soft_impute
from harness.attack.revival.magnitudes import magnitudes
from harness.attack.revival.masks import LayerMask
from harness.attack.revival.settings import RevivalParams
from harness.attack.revival.signs import check_fidelity, sign_agreement, top_k_keep
from harness.errors import HarnessError
from harness.records import LayerReport

REPORTED_K = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
"""Top-K fractions at which sign accuracy is reported when the original weights are known."""


@dataclass
class LayerJob:
    """One layer's inputs: the unlearned weight, its pruned positions, the original if known."""

    name: str
    weight: torch.Tensor
    pruned: torch.Tensor
    original: torch.Tensor | None = None
    mask: LayerMask | None = None
    """How the pruned positions were found (exact zeros, share, why); None: given as they are."""


@dataclass
class LayerOutcome:
    """The revived weight and the layer's line of the report."""

    name: str
    weight: torch.Tensor
    report: LayerReport


def layer_generator(seed: int, name: str) -> torch.Generator:
    """A generator that depends only on the seed and the layer's name, not on sharding."""
    return torch.Generator().manual_seed((seed << 32) ^ zlib.crc32(name.encode()))


def revive_layer(job: LayerJob, settings: RevivalParams, device: torch.device, fidelity: str = "paper") -> LayerOutcome:
    """Revive one layer on `device`; the result comes back on the CPU in the weight's dtype."""
    start = time.perf_counter()
    weight = job.weight.to(device=device, dtype=torch.float32)
    pruned = job.pruned.to(device)
    original = job.original.to(device=device, dtype=torch.float32) if job.original is not None else None
    count = int(pruned.sum())
    report = LayerReport(name=job.name, shape=list(weight.shape), pruned=count)
    if job.mask is not None:
        report.zeros, report.zero_share = job.mask.zeros, job.mask.zero_share
        report.counts_as_pruned, report.why = job.mask.counts_as_pruned, job.mask.why
    generator = layer_generator(settings.seed, job.name)
    fidelity = check_fidelity(fidelity)
    report.fidelity = fidelity
    if settings.strategy == "quant4":
        revived = quant4(weight, fidelity=fidelity)
    elif count == 0:
        revived = weight
        report.note = "nothing pruned; left as it is"
    elif settings.strategy.startswith("ideal-"):
        if original is None:
            raise HarnessError(f"strategy '{settings.strategy}' needs the original weights (--original)")
        revived = ideal_case(settings.strategy, weight, pruned, original, generator, fidelity=fidelity)
    else:
        revived = _attack(weight, pruned, original, settings, generator, report, fidelity=fidelity)
    report.seconds = round(time.perf_counter() - start, 4)
    return LayerOutcome(job.name, revived.to(device="cpu", dtype=job.weight.dtype), report)


def _attack(
    weight: torch.Tensor,
    pruned: torch.Tensor,
    original: torch.Tensor | None,
    settings: RevivalParams,
    generator: torch.Generator,
    report: LayerReport,
    fidelity: str = "paper",
) -> torch.Tensor:
    observed = ~pruned
    known = torch.where(observed, weight, torch.zeros((), device=weight.device))
    if settings.completion.mode == "reference-code":
        result = reference_code_impute(known, observed)
    else:
        result = soft_impute(known, observed, settings.completion)
    completed = result.matrix.to(torch.float32)
    values = completed[pruned]
    keep = top_k_keep(values, settings.top_k, fidelity=fidelity)
    scale = magnitudes(settings.magnitude, weight, pruned, completed, generator, fidelity=fidelity)[pruned]
    revived_values = torch.where(keep, torch.sign(values) * scale, torch.zeros_like(values))
    revived = weight.masked_scatter(pruned, revived_values)
    report.iterations, report.rank, report.kept = result.iterations, result.rank, int(keep.sum())
    report.lam, report.objective, report.converged = result.lam, result.objective, result.converged
    report.residual, report.completion_dtype = result.residual, result.dtype_used or None
    report.completion_algorithm, report.completion_notes = result.algorithm or None, list(result.notes)
    if original is not None:
        truth = original[pruned]
        report.sign_accuracy = sign_agreement(values, truth)
        report.sign_accuracy_topk = sign_agreement(values[keep], truth[keep])
        report.sign_accuracy_by_k = {
            f"{k:g}": sign_agreement(values[mask], truth[mask])
            for k in REPORTED_K for mask in [top_k_keep(values, k, fidelity=fidelity)]
        }
    return revived
