"""`harness slurm plan RECIPE`: the sbatch scripts of a recipe's whole matrix.

Writes one script per job (unlearn, attack, one array job per suite, score, report) and the
submit script into RUN_DIR/slurm, then prints the sbatch commands; `--submit` runs them,
chaining the jobs with `afterok` dependencies, and records the job ids. GPUs and CPUs per task
default to what the cluster's nodes have (`sinfo`), so a small local cluster works as it is.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from harness.errors import HarnessError
from harness.experiment.plan import STAGES
from harness.layout import SlurmFiles
from harness.outputs import check_output
from harness.slurm.measure import Sizing, matrix_hours, measure_units, size_jobs, write_measurements
from harness.slurm.planner import DEFAULT_TIMES, SlurmOptions, submit, write_plan
from harness.slurm.templates import DEFAULT_FOLDER


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    plan = actions.add_parser("plan", help="write the sbatch scripts of a recipe's benchmark (and submit them)",
                              description="write the sbatch scripts of a recipe's benchmark (and submit them)")
    plan.add_argument("recipe", help="recipe YAML")
    plan.add_argument("--run-dir", type=Path, help="run directory (default runs/<recipe name>, as harness benchmark)")
    plan.add_argument("--out", type=Path, help="folder for the scripts (default RUN_DIR/slurm)")
    plan.add_argument("--partition", help="SLURM partition (default: the cluster's)")
    plan.add_argument("--account", help="SLURM account to charge")
    plan.add_argument("--gpus", type=int,
                      help="GPUs of each generate task and of the unlearn, attack and score jobs "
                           "(default: 1 when the cluster's nodes have GPUs, else 0)")
    plan.add_argument("--attack-gpus", type=int, help="GPUs of the attack job, used by Accelerate (default --gpus)")
    plan.add_argument("--cpus", type=int, help="CPUs per task (default: 8, or fewer when the nodes have fewer)")
    plan.add_argument("--time", action="append", default=[], metavar="STAGE=LIMIT",
                      help="time limit of a stage, e.g. generate=04:00:00 (repeatable; defaults: "
                           + ", ".join(f"{k}={v}" for k, v in DEFAULT_TIMES.items()) + ")")
    plan.add_argument("--setup", default="", metavar="LINE",
                      help="shell line every job runs first, e.g. 'module load cuda; source venv/bin/activate'")
    plan.add_argument("--max-parallel", type=int, default=16, help="array tasks of one suite running at once (default 16)")
    plan.add_argument("--sbatch-option", action="append", default=[], metavar="OPTION",
                      help="extra #SBATCH option for every job, e.g. --sbatch-option=--mem=64G (repeatable)")
    plan.add_argument("--python", default=sys.executable, help="Python that runs harness in the jobs (default: this one)")
    plan.add_argument("--templates", type=Path, default=DEFAULT_FOLDER, help=f"template folder (default {DEFAULT_FOLDER})")
    plan.add_argument("--data-dir", help="folder of the prompt data, passed to every stage")
    plan.add_argument("--submit", action="store_true", help="submit the jobs with sbatch")
    plan.add_argument("--measure", action="store_true",
                      help="run one unit of each stage here (in RUN_DIR/slurm/measure/run) and size every job's "
                           "--time, --mem and GPUs from it")
    plan.add_argument("--margin", type=float, default=2.0,
                      help="measured time and memory are multiplied by this (default 2.0)")


def parse_times(items: list[str]) -> dict[str, str]:
    """`STAGE=LIMIT` items over the default limits."""
    times = dict(DEFAULT_TIMES)
    for item in items:
        stage, sep, limit = item.partition("=")
        if not sep or stage not in STAGES:
            raise HarnessError(f"--time {item!r}: expected STAGE=LIMIT with STAGE one of {', '.join(STAGES)}")
        times[stage] = limit
    return times


def cluster_resources() -> tuple[int, int]:
    """(GPUs, CPUs) a task may ask for on the cluster's smallest node: from `sinfo`, else (1, 8)."""
    try:
        result = subprocess.run(["sinfo", "-h", "-o", "%c %G"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return 1, 8
    lines = [line.split(maxsplit=1) for line in result.stdout.splitlines() if line.strip()]
    if result.returncode != 0 or not lines:
        return 1, 8
    cpus = min((int(parts[0].rstrip("+")) for parts in lines if parts[0].rstrip("+").isdigit()), default=8)
    gpus = 1 if all(len(parts) > 1 and "gpu" in parts[1] for parts in lines) else 0
    return gpus, min(8, cpus)


def run(args: argparse.Namespace) -> int:
    from harness.experiment.plan import build_plan
    from harness.recipe import load_recipe
    from harness.runtime import RuntimeSettings

    recipe = load_recipe(args.recipe)
    run_dir = args.run_dir or Path("runs") / recipe.name
    gpus, cpus = (args.gpus, args.cpus) if args.gpus is not None and args.cpus is not None else cluster_resources()
    options = SlurmOptions(
        partition=args.partition, account=args.account, gpus=gpus if args.gpus is None else args.gpus,
        attack_gpus=args.attack_gpus, cpus=cpus if args.cpus is None else args.cpus,
        times=parse_times(args.time), setup=args.setup, max_parallel=args.max_parallel,
        sbatch_options=args.sbatch_option, python=args.python, templates=args.templates, data_dir=args.data_dir,
    )
    if args.margin < 1:
        raise HarnessError(f"--margin: expected a factor of at least 1, got {args.margin}")
    plan = build_plan(recipe, run_dir, RuntimeSettings(data_dir=args.data_dir))
    files = SlurmFiles(Path(args.out)) if args.out else plan.layout.slurm
    check_output(files.folder, "--out" if args.out else "--run-dir", lambda folder: SlurmFiles(folder).is_own())
    if args.measure:
        options.sizing = measured_sizing(plan, Path(recipe.source), options, files, args)
    jobs = write_plan(plan, Path(recipe.source), options, files.folder)
    if not args.submit:
        print(f"# {len(jobs)} jobs written to {files.folder} (GPUs per task {options.gpus}, CPUs {options.cpus}); "
              f"submit them with: bash {files.submit}")
        if not args.measure:
            print("# time limits are defaults, not measured; --measure sizes them from one unit of each stage")
        print(files.submit.read_text().split("set -euo pipefail\n", 1)[1], end="")
        return 0
    ids = submit(jobs, files.folder)
    for job in jobs:
        print(f"{job.name}: {ids[job.name]}")
    print(f"# job ids in {files.jobs}; logs in {files.logs}")
    return 0


def measured_sizing(plan, recipe_path: Path, options: SlurmOptions, files: SlurmFiles,
                    args: argparse.Namespace) -> dict[str, Sizing]:
    """Measure one unit per stage here and print the limits and the matrix's estimated hours;
    a stage named in --time keeps the user's limit."""
    units = measure_units(plan, recipe_path, options.python, files.measure, args.data_dir)
    sizing = size_jobs(plan, units, args.margin)
    for item in args.time:
        stage = item.partition("=")[0]
        if stage in sizing:
            sizing[stage].time = options.times[stage]
    write_measurements(files.measurements, units, sizing, args.margin)
    gpus = {stage: options.attack_gpus if stage == "attack" and options.attack_gpus is not None else options.gpus
            for stage in sizing if sizing[stage].gpu is not False}
    task_hours, gpu_hours = matrix_hours(sizing, gpus)
    for stage, sized in sizing.items():
        print(f"# {stage}: {sized.tasks} task(s), --time={sized.time} --mem={sized.mem} ({sized.basis})")
    print(f"# the matrix, measured stages, before the margin: {task_hours:.2f} task-hours, {gpu_hours:.2f} GPU-hours"
          + ("" if any(u.peak_gpu_mb is not None for u in units) else " (measured without a GPU)")
          + f"; measurements in {files.measurements}")
    return sizing
