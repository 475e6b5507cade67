"""The sharded revival run: layers spread over Accelerate processes, balanced by cost.

Every process loads the inputs, revives its share of the layers on its own device and writes
a part file; the main process merges the parts, in the model's layer order, into
`revived.safetensors` and `report.json`. Each layer's result depends only on its own inputs and
seed, so the output is the same for any number of processes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from tqdm import tqdm

from harness.attack.layer import LayerJob, revive_layer
from harness.attack.masks import check_finite, pruned_positions
from harness.errors import HarnessError
from harness.models.checkpoints import load_state_dict, load_tensor_file, save_tensors
from harness.models.layers import select_layers
from harness.provenance import provenance, write_json_atomic
from harness.recipe import AttackSettings

log = logging.getLogger(__name__)


def layer_cost(shape: tuple[int, ...]) -> float:
    """Work of one completion iteration: short side squared times long side."""
    rows, cols = shape[0], shape[1]
    return float(min(rows, cols) ** 2 * max(rows, cols))


def balance(costs: list[float], shards: int) -> list[list[int]]:
    """Longest-processing-time-first assignment of item indices to shards (deterministic)."""
    loads = [0.0] * shards
    assignment: list[list[int]] = [[] for _ in range(shards)]
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        target = min(range(shards), key=lambda s: (loads[s], s))
        assignment[target].append(index)
        loads[target] += costs[index]
    return [sorted(items) for items in assignment]


def load_jobs(settings: AttackSettings) -> list[LayerJob]:
    """Read and check the inputs of every target layer (same in every process)."""
    if not settings.unlearned:
        raise HarnessError("no unlearned model given (--unlearned or attack.unlearned)")
    unlearned = load_state_dict(settings.unlearned)
    names = select_layers(unlearned, settings.layers)
    original = load_state_dict(settings.original) if settings.original else None
    masks = load_tensor_file(settings.mask.file) if settings.mask.kind == "file" else {}
    jobs = []
    for name in names:
        weight = unlearned[name]
        if weight.ndim != 2:
            raise HarnessError(f"{settings.unlearned}: layer '{name}' is not a matrix (shape {tuple(weight.shape)})")
        check_finite(weight, f"{settings.unlearned}: {name}")
        reference = None
        if original is not None:
            if name not in original or original[name].shape != weight.shape:
                raise HarnessError(f"{settings.original}: no weight '{name}' of shape {tuple(weight.shape)}")
            reference = original[name]
        pruned = pruned_positions(weight, settings.mask, name, masks.get(name))
        jobs.append(LayerJob(name, weight, pruned, reference))
    return jobs


def run_revival(settings: AttackSettings, accelerator: Accelerator | None = None) -> Path | None:
    """Revive every target layer; returns the output folder on the main process, None elsewhere."""
    if not settings.out:
        raise HarnessError("no output folder given (--out or attack.out)")
    accelerator = accelerator or Accelerator(cpu=settings.device == "cpu")
    device = torch.device(settings.device) if settings.device not in ("auto", "cpu") else accelerator.device
    if device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // accelerator.num_processes))
    out = Path(settings.out)
    parts = out / ".parts"
    if accelerator.is_main_process:
        shutil.rmtree(parts, ignore_errors=True)
        parts.mkdir(parents=True, exist_ok=True)
    jobs = load_jobs(settings)
    accelerator.wait_for_everyone()
    start = time.perf_counter()
    mine = balance([layer_cost(tuple(j.weight.shape)) for j in jobs], accelerator.num_processes)[accelerator.process_index]
    outcomes = []
    for index in tqdm(mine, desc=f"revive [{accelerator.process_index}]", unit="layer",
                      disable=not accelerator.is_local_main_process):
        outcome = revive_layer(jobs[index], settings, device)
        log.info("%s: pruned %d, %d iterations, rank %s, %.2fs", outcome.name, outcome.report["pruned"],
                 outcome.report["iterations"], outcome.report["rank"], outcome.report["seconds"])
        outcomes.append(outcome)
    rank = accelerator.process_index
    save_tensors({o.name: o.weight for o in outcomes}, parts / f"part-{rank}.safetensors")
    write_json_atomic(parts / f"part-{rank}.json", [o.report for o in outcomes])
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return None
    return _merge(settings, jobs, out, parts, accelerator.num_processes, time.perf_counter() - start)


def _merge(settings: AttackSettings, jobs: list[LayerJob], out: Path, parts: Path,
           processes: int, seconds: float) -> Path:
    tensors: dict[str, torch.Tensor] = {}
    reports: dict[str, dict[str, Any]] = {}
    for rank in range(processes):
        tensors.update(load_tensor_file(parts / f"part-{rank}.safetensors"))
        reports.update({r["name"]: r for r in json.loads((parts / f"part-{rank}.json").read_text())})
    order = [job.name for job in jobs]
    settings_record = dataclasses.asdict(settings)
    save_tensors({name: tensors[name] for name in order}, out / "revived.safetensors",
                 metadata={"settings": json.dumps(settings_record)})
    layers = [reports[name] for name in order]
    write_json_atomic(out / "report.json", {
        "layers": layers,
        "summary": summarise(layers),
        "processes": processes,
        "seconds": round(seconds, 3),
        "settings": settings_record,
        "provenance": provenance(),
    })
    shutil.rmtree(parts, ignore_errors=True)
    return out


def summarise(layers: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over layers; sign accuracies weighted by the number of entries they count."""
    summary: dict[str, Any] = {"layers": len(layers), "pruned": sum(l["pruned"] for l in layers)}
    for key, weight_key in (("sign_accuracy", "pruned"), ("sign_accuracy_topk", "kept")):
        pairs = [(l[key], l.get(weight_key, 0)) for l in layers if l.get(key) is not None]
        total = sum(w for _, w in pairs)
        summary[key] = sum(a * w for a, w in pairs) / total if total else None
    by_k: dict[str, float | None] = {}
    for k in {k for layer in layers for k in layer.get("sign_accuracy_by_k", {})}:
        pairs = [(l["sign_accuracy_by_k"][k], round(float(k) * l["pruned"])) for l in layers
                 if l.get("sign_accuracy_by_k", {}).get(k) is not None]
        total = sum(w for _, w in pairs)
        by_k[k] = sum(a * w for a, w in pairs) / total if total else None
    if by_k:
        summary["sign_accuracy_by_k"] = dict(sorted(by_k.items(), key=lambda item: float(item[0])))
    return summary
