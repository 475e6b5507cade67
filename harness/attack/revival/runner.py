"""The sharded revival: layers spread over Accelerate processes, balanced by cost.

Every process revives its share of the layers on its own device and writes a part file; the main
process merges the parts, in the model's layer order. Each layer's result depends only on its
own inputs and seed, so the output is the same for any number of processes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors import safe_open

from harness.attack.revival.layer import LayerJob, revive_layer
from harness.attack.revival.masks import LayerMask, check_finite, layer_mask
from harness.attack.revival.settings import RevivalParams
from harness.config import parse_dataclass
from harness.errors import HarnessError, in_file, keyed
from harness.layout import AttackFiles
from harness.models.checkpoints import load_tensor_file, save_tensors
from harness.models.layers import select_layers
from harness.progress import bar
from harness.provenance import write_json_atomic
from harness.records import LayerReport, to_json
from harness.settings.unlearn import SD_FFN_LAYERS

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


def load_jobs(
    unlearned: dict[str, torch.Tensor],
    original: dict[str, torch.Tensor] | None,
    params: RevivalParams,
    device: torch.device | None = None,
    accelerator: Accelerator | None = None,
    shared: Path | None = None,
) -> list[LayerJob]:
    """The inputs of every target layer, checked (same in every process); errors are keyed at the params.

    The pruned positions (`layer_mask`) are found once, by the main process on `device`, and
    shared with the other processes through the file `shared` (see `found_once`)."""
    with keyed("layers"):
        names = select_layers(unlearned, params.layers or SD_FFN_LAYERS)
    masks = load_tensor_file(params.mask.file) if params.mask.kind == "file" else {}
    checked = []
    for name in names:
        weight = unlearned[name]
        if weight.ndim != 2:
            raise HarnessError(f"layer '{name}' is not a matrix (shape {tuple(weight.shape)})", key="layers")
        check_finite(weight, name)
        reference = None
        if original is not None:
            if name not in original or original[name].shape != weight.shape:
                raise HarnessError(f"the original model has no weight '{name}' of shape {tuple(weight.shape)}")
            reference = original[name]
        checked.append((name, weight, reference))
    where = device or torch.device("cpu")

    def find() -> dict[str, LayerMask]:
        found = {}
        for name, weight, _ in checked:
            start = time.perf_counter()
            mask = layer_mask(weight.to(where), params.mask, name, masks.get(name))
            found[name] = dataclasses.replace(mask, pruned=mask.pruned.cpu())
            log.debug("%s: %s (%.2fs on %s)", name, mask.why, time.perf_counter() - start, where)
        return found

    found = found_once(find, accelerator, shared)
    return [LayerJob(name, weight, found[name].pruned, reference, found[name]) for name, weight, reference in checked]


def found_once(find: Callable[[], dict[str, LayerMask]], accelerator: Accelerator | None, shared: Path | None
               ) -> dict[str, LayerMask]:
    """`find()` on the main process alone; with several processes its result goes through the file
    `shared` (written atomically, masks as tensors and the rest as JSON metadata, removed once every
    process has read it). An error of the main process is raised in every process."""
    if accelerator is None or accelerator.num_processes == 1:
        return find()
    if shared is None:
        raise ValueError("several processes share the masks through a file: give `shared`")
    if accelerator.is_main_process:
        shared.parent.mkdir(parents=True, exist_ok=True)
        try:
            found = find()
        except Exception as error:
            save_tensors({}, shared, metadata={"error": str(error)})
            accelerator.wait_for_everyone()
            accelerator.wait_for_everyone()
            shared.unlink(missing_ok=True)
            raise
        info = {name: {k: v for k, v in dataclasses.asdict(mask).items() if k != "pruned"} for name, mask in found.items()}
        save_tensors({name: mask.pruned for name, mask in found.items()}, shared, metadata={"masks": json.dumps(info)})
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        with safe_open(str(shared), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if "error" in metadata:
                accelerator.wait_for_everyone()
                raise HarnessError(f"the main process failed to find the pruned positions: {metadata['error']}")
            info = json.loads(metadata["masks"])
            found = {name: LayerMask(pruned=handle.get_tensor(name), **info[name]) for name in info}
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shared.unlink(missing_ok=True)
    return found


def revive_layers(
    jobs: list[LayerJob], params: RevivalParams, device: torch.device, accelerator: Accelerator, parts: AttackFiles,
    fidelity: str = "paper",
) -> tuple[dict[str, torch.Tensor], list[LayerReport]] | None:
    """Revive every job, this process's share on `device`; the merged tensors and reports (in the
    jobs' order) come back on the main process, None elsewhere."""
    if device.type == "cpu":  # a share of the cores per process, never more threads than the process was given
        torch.set_num_threads(max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) // accelerator.num_processes)))
    if accelerator.is_main_process:
        shutil.rmtree(parts.parts, ignore_errors=True)
        parts.parts.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    rank = accelerator.process_index
    mine = balance([layer_cost(tuple(j.weight.shape)) for j in jobs], accelerator.num_processes)[rank]
    outcomes = []
    for index in bar(mine, desc=f"revive [{rank}]", unit="layer", disable=not accelerator.is_local_main_process):
        outcome = revive_layer(jobs[index], params, device, fidelity)
        log.debug("%s: pruned %d, %d iterations, rank %s, %.2fs", outcome.name, outcome.report.pruned,
                  outcome.report.iterations, outcome.report.rank, outcome.report.seconds)
        outcomes.append(outcome)
    save_tensors({o.name: o.weight for o in outcomes}, parts.part_tensors(rank))
    write_json_atomic(parts.part_record(rank), [to_json(o.report) for o in outcomes])
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return None
    tensors: dict[str, torch.Tensor] = {}
    reports: dict[str, LayerReport] = {}
    for process in range(accelerator.num_processes):
        tensors.update(load_tensor_file(parts.part_tensors(process)))
        for entry in json.loads(parts.part_record(process).read_text()):
            with in_file(parts.part_record(process)):
                report = parse_dataclass(LayerReport, entry)
            reports[report.name] = report
    shutil.rmtree(parts.parts, ignore_errors=True)
    order = [job.name for job in jobs]
    return {name: tensors[name] for name in order}, [reports[name] for name in order]


def make_accelerator(device: str) -> Accelerator:
    """An Accelerator whose process count is Accelerate's own whatever the device: on a machine
    without GPUs (or with `cpu`), processes are CPU processes (gloo)."""
    return Accelerator(cpu=device == "cpu" or not torch.cuda.is_available())


def process_device(device: str, accelerator: Accelerator) -> torch.device:
    """This process's device: the named one, or Accelerate's own for `auto`."""
    from harness.runtime import resolve_device

    return accelerator.device if device == "auto" else resolve_device(device)
