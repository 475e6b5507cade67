"""The SLURM plan of one recipe's matrix: sbatch scripts chained by `afterok` dependencies.

Jobs, in submission order: the array job `unlearn` whose task i runs method i, the array job
`attack` whose task i runs cell i of the matrix (one attack on one method's model; revival
attacks use Accelerate over the task's GPUs; absent when the recipe lists no attack), one array
job `generate-<suite>` per suite whose task i generates shard i for every model, `score`,
`report`. Scripts are rendered from the shipped templates and written to one folder with the
submit script, the same chain as shell lines.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import HarnessError
from harness.experiment.plan import STAGES, Plan
from harness.layout import SlurmFiles
from harness.provenance import write_json_atomic
from harness.slurm.measure import Sizing
from harness.slurm.templates import DEFAULT_FOLDER, load_template, render

DEFAULT_TIMES = {"unlearn": "02:00:00", "attack": "02:00:00", "generate": "02:00:00",
                 "score": "08:00:00", "report": "00:30:00"}
_TIME = re.compile(r"(\d+-)?\d+(:\d+){0,2}|UNLIMITED|INFINITE", re.IGNORECASE)


@dataclass
class SlurmOptions:
    """Cluster settings of the generated scripts."""

    partition: str | None = None
    account: str | None = None
    gpus: int = 1
    """GPUs of the unlearn and score jobs and of every generate task."""
    attack_gpus: int | None = None
    """GPUs of the attack job, where Accelerate spreads a revival's layers (default: `gpus`)."""
    cpus: int = 8
    times: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_TIMES))
    setup: str = ""
    """A shell line every job runs first (`module load ...`, `source venv/bin/activate`)."""
    max_parallel: int = 16
    """Array tasks of one suite that may run at once."""
    sbatch_options: list[str] = field(default_factory=list)
    """Extra `#SBATCH` options, e.g. `--mem=64G` or `--qos=high`."""
    python: str = sys.executable
    workdir: Path = field(default_factory=Path.cwd)
    templates: Path = DEFAULT_FOLDER
    data_dir: str | None = None
    sizing: dict[str, Sizing] = field(default_factory=dict)
    """Measured limits per stage (`--measure`); a stage without one keeps `times` and no `--mem`."""

    def __post_init__(self) -> None:
        if self.gpus < 0 or (self.attack_gpus is not None and self.attack_gpus < 0):
            raise HarnessError(f"--gpus / --attack-gpus: must be 0 or more, got {self.gpus}/{self.attack_gpus}")
        if self.cpus < 1 or self.max_parallel < 1:
            raise HarnessError(f"--cpus and --max-parallel must be at least 1, got {self.cpus}/{self.max_parallel}")
        for stage, limit in self.times.items():
            if stage not in STAGES:
                raise HarnessError(f"--time: unknown stage '{stage}' (choose from {', '.join(STAGES)})")
            if not _TIME.fullmatch(limit):
                raise HarnessError(f"--time {stage}={limit}: not a SLURM time limit (e.g. 90, 02:00:00, 1-12:00:00)")


@dataclass
class Job:
    """One sbatch submission: its script and the jobs it waits for."""

    name: str
    stage: str
    script: Path
    after: list[str]
    text: str = field(default="", repr=False)
    """The script's content (written by write_plan once every script rendered)."""

    @property
    def variable(self) -> str:
        """The shell variable holding its job id in submit.sh."""
        return re.sub(r"\W", "_", self.name)


def write_plan(plan: Plan, recipe_path: Path, options: SlurmOptions, out: Path) -> list[Job]:
    """Write the scripts and the submit script into `out`; the jobs come back in submission order."""
    writer = _ScriptWriter(plan, Path(recipe_path).resolve(), options, SlurmFiles(Path(out).resolve()))
    jobs: list[Job] = []
    methods = [m.name or m.method for m in plan.recipe.methods]
    if methods:
        jobs.append(writer.job("unlearn", "unlearn", [], {"methods": bash_array(methods)},
                               array=array_range(len(methods), options.max_parallel)))
    cells = [f"{method} {attack}" for method, attack in plan.recipe.pairs()]
    if cells:
        jobs.append(writer.job("attack", "attack", [j.name for j in jobs], {"cells": bash_array(cells)},
                               array=array_range(len(cells), options.max_parallel)))
    before_generate = [j.name for j in jobs]
    models = " ".join(shlex.quote(model.label) for model in plan.models)
    for suite in plan.suites:
        values = {"suite": shlex.quote(suite), "models": models}
        jobs.append(writer.job(f"generate-{suite}", "generate", before_generate, values,
                               array=array_range(plan.shard_count(suite), options.max_parallel)))
    jobs.append(writer.job("score", "score", [j.name for j in jobs if j.stage == "generate"], {}))
    jobs.append(writer.job("report", "report", ["score"], {}))
    writer.files.logs.mkdir(parents=True, exist_ok=True)
    for job in jobs:
        job.script.write_text(job.text)
        job.script.chmod(0o755)
    submit = writer.files.submit
    submit.write_text("#!/bin/bash\n# Submit the matrix of " + str(recipe_path) + " (written by harness slurm plan).\n"
                      "set -euo pipefail\n" + "\n".join(submit_lines(jobs)) + "\n")
    submit.chmod(0o755)
    return jobs


def array_range(count: int, max_parallel: int) -> str:
    """The `--array` value of `count` tasks, at most `max_parallel` at once."""
    return f"0-{count - 1}%{min(max_parallel, count)}"


def bash_array(items: list[str]) -> str:
    """A bash array literal of `items`, each quoted."""
    return "(" + " ".join(shlex.quote(item) for item in items) + ")"


def submit_lines(jobs: list[Job]) -> list[str]:
    """Shell lines that submit `jobs` in order, each after the ones it depends on."""
    by_name = {job.name: job for job in jobs}
    lines = []
    for job in jobs:
        dependency = ":".join(f"${by_name[name].variable}" for name in job.after)
        flags = f" --dependency=afterok:{dependency} --kill-on-invalid-dep=yes" if dependency else ""
        lines.append(f"{job.variable}=$(sbatch --parsable{flags} {shlex.quote(str(job.script))} | cut -d';' -f1)")
        lines.append(f'echo "{job.name}: ${job.variable}"')
    return lines


def submit(jobs: list[Job], out: Path) -> dict[str, str]:
    """Run sbatch for every job in order; the ids are returned and written to `out/jobs.json`."""
    ids: dict[str, str] = {}
    for job in jobs:
        command = ["sbatch", "--parsable"]
        if job.after:
            command += [f"--dependency=afterok:{':'.join(ids[name] for name in job.after)}", "--kill-on-invalid-dep=yes"]
        try:
            result = subprocess.run([*command, str(job.script)], capture_output=True, text=True, check=False)
        except FileNotFoundError:
            raise HarnessError("sbatch not found: is SLURM installed here?") from None
        if result.returncode != 0:
            message = (result.stderr.strip().splitlines() or ["no message"])[-1]
            raise HarnessError(f"sbatch {job.script}: {message}")
        ids[job.name] = result.stdout.strip().split(";")[0]
    write_json_atomic(SlurmFiles(Path(out)).jobs, {
        job.name: {"id": ids[job.name], "stage": job.stage, "script": str(job.script), "after": job.after} for job in jobs
    })
    return ids


class _ScriptWriter:
    """Renders one stage's template with the options every script shares."""

    def __init__(self, plan: Plan, recipe_path: Path, options: SlurmOptions, files: SlurmFiles) -> None:
        self.plan, self.recipe_path, self.options, self.files = plan, recipe_path, options, files
        self.run_dir = plan.run_dir.resolve()
        self.header = load_template(options.templates, "header.sbatch")
        self.harness = f"{shlex.quote(options.python)} -m harness.cli"

    def gpus(self, stage: str) -> int:
        sized = self.options.sizing.get(stage)
        if stage == "report" or (sized is not None and sized.gpu is False):
            return 0
        if stage == "attack" and self.options.attack_gpus is not None:
            return self.options.attack_gpus
        return self.options.gpus

    def job(self, name: str, stage: str, after: list[str], values: dict[str, str], array: str | None = None) -> Job:
        """The job of script `NN-<name>.sbatch`, rendered from `<stage>.sbatch` (not yet written)."""
        options = self.options
        sized = options.sizing.get(stage)
        lines = [f"--partition={options.partition}" if options.partition else None,
                 f"--account={options.account}" if options.account else None,
                 f"--gres=gpu:{self.gpus(stage)}" if self.gpus(stage) > 0 else None,
                 f"--ntasks-per-node={self.gpus(stage)}" if stage == "generate" and self.gpus(stage) > 1 else None,
                 f"--array={array}" if array else None,
                 f"--mem={sized.mem}" if sized else None,
                 *options.sbatch_options]
        log = self.files.logs / ("%x-%A_%a.out" if array else "%x-%j.out")
        header = render(self.header, {
            "job_name": f"{self.plan.recipe.name}-{name}",
            "log": str(log),
            "time": sized.time if sized else options.times.get(stage, DEFAULT_TIMES[stage]),
            "cpus": str(options.cpus),
            "workdir": str(options.workdir.resolve()),
            "sbatch_options": "\n".join(f"#SBATCH {line}" for line in lines if line),
        }, str(options.templates / "header.sbatch")).rstrip("\n")
        header += f"\n# limits measured ({sized.basis})" if sized else "\n# limits: defaults, not measured (harness slurm plan --measure)"
        common = {
            "header": header,
            "setup": options.setup,
            "harness": self.harness,
            "launcher": self.launcher(stage),
            "recipe": shlex.quote(str(self.recipe_path)),
            "run_dir": shlex.quote(str(self.run_dir)),
            "stage_options": self.stage_options(stage),
        }
        text = render(load_template(options.templates, f"{stage}.sbatch"), common | values,
                      str(options.templates / f"{stage}.sbatch"))
        script = self.files.script(STAGES.index(stage) + 1, name)
        return Job(name, stage, script, after, "\n".join(line.rstrip() for line in text.splitlines()) + "\n")

    def launcher(self, stage: str) -> str:
        """How the stage starts `harness` on several GPUs: `accelerate launch` for the attacks, one
        `srun` task per GPU for generation (Lightning takes its processes from SLURM)."""
        gpus = self.gpus(stage)
        if gpus > 1 and stage == "attack":
            accelerate = f"{shlex.quote(self.options.python)} -m accelerate.commands.launch"
            return f"{accelerate} --multi_gpu --num_processes {gpus} -m harness.cli"
        if gpus > 1 and stage == "generate":
            return f"srun {self.harness}"
        return self.harness

    def stage_options(self, stage: str) -> str:
        """Options every command of the stage gets: the data folder and its GPUs."""
        options = ["--data-dir", str(Path(self.options.data_dir).resolve())] if self.options.data_dir else []
        if stage in ("unlearn", "attack", "score") and self.gpus(stage) > 0 and not (stage == "attack" and self.gpus(stage) > 1):
            options += ["--device", "cuda"]
        if stage == "generate" and self.gpus(stage) > 1:
            options += ["--devices", str(self.gpus(stage))]
        return " ".join(shlex.quote(o) for o in options)
