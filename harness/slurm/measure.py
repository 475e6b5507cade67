"""`harness slurm plan --measure`: size the jobs from one measured unit of each stage.

Where the plan is made (a login node, an `salloc` shell, a laptop), one unit of each stage runs
for real in a scratch run directory (RUN_DIR/slurm/measure/run), limited to one shard's prompts:
the first method's unlearning, its first attack, one generation shard of the first suite for
the pretrained model, and the scoring of that shard. Each unit runs in its own process; its wall time
and peak resident memory come from the kernel (`os.wait4`), its peak GPU memory from torch in
the process itself (`HARNESS_PEAK_FILE`). A job's limit is its tasks' measured work times the
margin; the report job is not measured and keeps its default.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.errors import HarnessError
from harness.experiment.plan import Plan
from harness.peak import PEAK_FILE_ENV
from harness.provenance import write_json_atomic

MIN_SECONDS = 600
"""No measured limit below 10 minutes: a job's start-up on a busy node varies more than that."""
MIN_MEM_MB = 1024


@dataclass
class Unit:
    """One measured unit of a stage."""

    stage: str
    what: str
    seconds: float
    peak_rss_mb: float
    peak_gpu_mb: float | None
    """Peak GPU memory reserved by torch; None where the process used no GPU."""


@dataclass
class Sizing:
    """The measured limits of one stage's jobs."""

    stage: str
    tasks: int
    units_per_task: float
    seconds_per_task: float
    time: str
    mem: str
    gpu: bool | None
    """Whether the unit used a GPU; None where none was there to use."""
    basis: str


def measure_units(plan: Plan, recipe_path: Path, python: str, scratch: Path, data_dir: str | None) -> list[Unit]:
    """Run one unit of every measured stage in the run directory `scratch`/run (emptied first, so
    no unit is skipped as done), each in its own process; their logs go to `scratch`."""
    run_dir = scratch / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    first = plan.recipe.methods[0] if plan.recipe.methods else None
    method = (first.name or first.method) if first else None
    suite = plan.suites[0]
    limit = min(plan.recipe.generation.shard_size, plan.suite_sizes[suite])
    base = [python, "-m", "harness.cli", "benchmark", str(recipe_path), "--run-dir", str(run_dir),
            "--limit", str(limit), *(["--data-dir", data_dir] if data_dir else [])]
    model = "pretrained"  # scoring another model's images needs the pretrained model's beside them
    units = []
    if method:
        units.append(("unlearn", f"method {method}", ["--method", method]))
    its_attacks = [attack for name, attack in plan.recipe.pairs() if name == method]
    if method and its_attacks:
        attack = its_attacks[0]
        units.append(("attack", f"attack {attack} on {method}", ["--method", method, "--attack", attack]))
    units.append(("generate", f"shard 0 of {suite} ({limit} prompts) for {model}",
                  ["--model", model, "--suite", suite, "--shard", "0"]))
    units.append(("score", f"{suite} ({limit} prompts) of {model}", ["--model", model, "--suite", suite]))
    return [_run_unit(stage, what, [*base, "--stage", stage, *extra], scratch) for stage, what, extra in units]


def _run_unit(stage: str, what: str, command: list[str], scratch: Path) -> Unit:
    """Run one unit of `stage` with its log in `scratch`."""
    print(f"measuring {stage}: {what}", file=sys.stderr, flush=True)
    seconds, rss_mb, gpu_mb = measure_command(command, scratch / f"measure-{stage}.log", f"--measure: the {stage} unit ({what})")
    return Unit(stage, what, seconds, rss_mb, gpu_mb)


def measure_command(command: list[str], log_path: Path, what: str) -> tuple[float, float, float | None]:
    """Run a harness command in its own process, its output into `log_path`: (wall seconds, peak
    resident MB, peak GPU MB or None); a failure is a one-line error with the log's last line."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(suffix=".json", dir=log_path.parent, delete=False) as handle:
        peak_file = Path(handle.name)
    try:
        with log_path.open("w") as log:
            started = time.monotonic()
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                       env=os.environ | {PEAK_FILE_ENV: str(peak_file)})
            _, status, usage = os.wait4(process.pid, 0)
            seconds = time.monotonic() - started
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            last = (log_path.read_text().strip().splitlines() or ["no output"])[-1]
            raise HarnessError(f"{what} failed with exit {code}: {last} (log: {log_path})")
        text = peak_file.read_text() if peak_file.stat().st_size else "{}"
        gpu = json.loads(text).get("peak_gpu_bytes")
    finally:
        peak_file.unlink(missing_ok=True)
    return round(seconds, 1), round(usage.ru_maxrss / 1024, 1), None if gpu is None else round(gpu / 2**20, 1)


def size_jobs(plan: Plan, units: list[Unit], margin: float) -> dict[str, Sizing]:
    """Each measured stage's per-task limit: its units per task x the unit's time and memory x `margin`."""
    by_stage = {unit.stage: unit for unit in units}
    methods = len(plan.recipe.methods)
    models = len(plan.models)
    suite = plan.suites[0]
    measured_prompts = min(plan.recipe.generation.shard_size, plan.suite_sizes[suite])
    all_prompts = sum(plan.suite_sizes.values())
    shards = sum(plan.shard_count(s) for s in plan.suites)
    layout = {  # stage: (tasks, units per task)
        "unlearn": (methods, 1),
        "attack": (len(plan.recipe.pairs()), 1),
        "generate": (shards, models),
        "score": (1, models * all_prompts / measured_prompts),
    }
    sizing = {}
    for stage, unit in by_stage.items():
        tasks, per_task = layout[stage]
        seconds = unit.seconds * per_task
        sizing[stage] = Sizing(
            stage=stage, tasks=tasks, units_per_task=round(per_task, 2), seconds_per_task=round(seconds, 1),
            time=slurm_time(max(MIN_SECONDS, seconds * margin)),
            mem=f"{max(MIN_MEM_MB, math.ceil(unit.peak_rss_mb * margin))}M",
            gpu=None if unit.peak_gpu_mb is None else unit.peak_gpu_mb > 0,
            basis=f"{unit.what}: {unit.seconds:.1f} s, {unit.peak_rss_mb:.0f} MB peak"
                  + (f", {unit.peak_gpu_mb:.0f} MB GPU" if unit.peak_gpu_mb else "")
                  + f"; x{per_task:g} per task, margin x{margin:g}",
        )
    return sizing


def slurm_time(seconds: float) -> str:
    """A SLURM time limit (D-HH:MM:SS) of at least `seconds`, rounded up to the minute."""
    minutes = math.ceil(seconds / 60)
    days, minutes = divmod(minutes, 24 * 60)
    return (f"{days}-" if days else "") + f"{minutes // 60:02d}:{minutes % 60:02d}:00"


def matrix_hours(sizing: dict[str, Sizing], gpus: dict[str, int]) -> tuple[float, float]:
    """(task-hours, GPU-hours) of the measured stages' whole work, before the margin."""
    task_seconds = sum(s.tasks * s.seconds_per_task for s in sizing.values())
    gpu_seconds = sum(s.tasks * s.seconds_per_task * gpus.get(s.stage, 0) for s in sizing.values())
    return task_seconds / 3600, gpu_seconds / 3600


def write_measurements(path: Path, units: list[Unit], sizing: dict[str, Sizing], margin: float) -> None:
    """The measurements and the limits drawn from them, beside the scripts."""
    write_json_atomic(path, {"margin": margin, "units": [asdict(u) for u in units],
                             "sizing": {k: asdict(v) for k, v in sizing.items()}})
