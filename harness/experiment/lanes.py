"""A whole run spread over worker processes on one machine (`harness benchmark --workers N`).

The stages keep their order; within a stage the work is split into independent tasks that a
pool of N spawned processes takes in turn: first each method's unlearning followed by its
attacks (a defended method in the task of its undefended twin, whose masks it takes), then each
model's generation (with the snapshots of its recovery curve), then each model's scoring (a
score compares with the pretrained model's images), and the report in this process. Each worker
runs torch with cpu_count // N threads. The tasks call the same stage code as a serial run (each
skips work whose output is complete), so the results are the same files, and an interrupted run
resumes serially or in parallel alike.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor, wait

import torch

from harness.errors import HarnessError
from harness.experiment.plan import Plan
from harness.log import ConsoleHandler, setup_console
from harness.recipe import MethodSettings
from harness.runtime import resolve_device

log = logging.getLogger(__name__)


def resolve_workers(workers: str, device: str) -> int:
    """`--workers` as a count: auto is 1 on a GPU (a run there shares the device through
    Lightning and Accelerate instead) and the CPU count on a CPU, at most 4."""
    if workers == "auto":
        return 1 if resolve_device(device).type != "cpu" else max(1, min(4, os.cpu_count() or 1))
    if not workers.isdigit() or int(workers) < 1:
        raise HarnessError(f"--workers: expected a positive count or 'auto', got '{workers}'")
    return int(workers)


def method_lanes(methods: list[MethodSettings]) -> list[list[str]]:
    """The methods grouped into tasks: each undefended method alone, a defended one after its
    undefended twin (same method, params and layers) so that it takes the twin's masks."""
    lanes: list[list[str]] = []
    twin_lane: dict[tuple[str, str, str], list[str]] = {}
    for entry in methods:
        key = (entry.method, repr(entry.params), repr(entry.layers))
        if entry.defense is not None and key in twin_lane:
            twin_lane[key].append(entry.name)
            continue
        lanes.append([entry.name])
        if entry.defense is None:
            twin_lane.setdefault(key, lanes[-1])
    return lanes


def run_in_lanes(plan: Plan, workers: int, run_stage: Callable[[Plan, str, dict], None]) -> None:
    """The unlearn, attack, generate and score stages of the whole plan over `workers` processes;
    `run_stage(plan, stage, selection)` runs one stage of one selection in a worker."""
    _prepare_model(plan)
    threads = max(1, (os.cpu_count() or 1) // workers)
    verbose = any(isinstance(h, ConsoleHandler) and h.level <= logging.DEBUG for h in logging.getLogger().handlers)
    context = multiprocessing.get_context("spawn")
    log.info("run %s over %d worker processes, %d torch thread(s) each", plan.recipe.name, workers, threads)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                             initargs=(threads, verbose)) as pool:
        lanes = method_lanes(plan.recipe.methods)
        _finish(pool.submit(_task, run_stage, plan, [(stage, {"method": m}) for stage in ("unlearn", "attack")
                                                    for m in lane]) for lane in lanes)
        for stage in ("generate", "score"):  # a model's scores compare its images with the pretrained model's
            _finish(pool.submit(_task, run_stage, plan, [(stage, {"model": model.label})]) for model in plan.models)
    log.info("unlearn and attack: %d tasks; generate and score: %d models each; done", len(lanes), len(plan.models))


def _prepare_model(plan: Plan) -> None:
    """Install a zoo world once here, before workers would each try to."""
    from harness.world import world_of_source

    world = world_of_source(plan.recipe.model)
    if world is not None:
        world.pipeline_dir()


def _finish(futures: Iterable[Future]) -> None:
    """Wait for every task; the first failure is raised (the others still finish their work)."""
    pending = list(futures)
    wait(pending)
    for future in pending:
        future.result()


def _start_worker(threads: int, verbose: bool) -> None:
    setup_console(verbose)
    torch.set_num_threads(threads)


def _task(run_stage: Callable[[Plan, str, dict], None], plan: Plan, steps: list[tuple[str, dict]]) -> None:
    """One task's stages in a worker; a user-facing error crosses back as its one line."""
    threads = torch.get_num_threads()
    try:
        for stage, selection in steps:
            torch.set_num_threads(threads)  # a stage may set its own (the revival's Accelerate runner does)
            run_stage(plan, stage, selection)
    except HarnessError as error:
        raise HarnessError(str(error)) from None

