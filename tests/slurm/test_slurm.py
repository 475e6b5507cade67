"""The SLURM planner: scripts, dependencies, rerun skips, submission (a stand-in sbatch), and the
plan run by a real one-node cluster with stand-in stages (skipped without SLURM)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import HarnessError
from harness.experiment.plan import build_plan
from harness.layout import SlurmFiles, is_run_dir
from harness.outputs import check_output
from harness.recipe import load_recipe
from harness.slurm.measure import Unit, matrix_hours, size_jobs, slurm_time
from harness.slurm.planner import SlurmOptions, submit, write_plan
from harness.slurm.templates import DEFAULT_FOLDER, render

RECIPE = """\
name: tiny
model: zoo:digits
concept: {target: seven, kind: digit}
methods: [{method: conceptprune}]
attacks:
  - {attack: nms}
  - {attack: quant4}
generation: {shard_size: 4}
suites: [digits-seven-10, digits-neutral-4]
"""

FAKE_PYTHON = """\
#!/bin/bash
# Stands in for `python -m harness.cli benchmark RECIPE --run-dir RUN --stage S ...`: logs the
# call and writes what the stage would, so the plan's chaining can be checked in seconds.
set -euo pipefail
shift 2
[[ $1 == benchmark ]] || exit 3
run=""; stage=""; model=""; suite=""; shard=""; cell=""
while (($#)); do
    case $1 in
        --run-dir) run=$2; shift ;; --stage) stage=$2; shift ;; --model) model=$2; shift ;;
        --suite) suite=$2; shift ;; --shard) shard=$2; shift ;;
        --method|--attack) cell="$cell$2/"; shift ;;
    esac
    shift
done
mkdir -p "$run"
echo "$stage $model $suite $shard $cell" | tr -s ' ' | sed 's/ $//' >>"$run/calls.log"
case $stage in
    report) mkdir -p "$run/report"; echo done >"$run/report/report.md" ;;
esac
"""


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(RECIPE)
    return path


@pytest.fixture
def local_cluster(repo: Path) -> Path:
    """The script that starts, stops and checks the one-node cluster."""
    return repo / "slurm" / "local-cluster.sh"


@pytest.fixture
def fake_python(tmp_path: Path) -> Path:
    path = tmp_path / "fake-python"
    path.write_text(FAKE_PYTHON)
    path.chmod(0o755)
    return path


def plan_scripts(recipe: Path, run: Path, **options) -> list:
    plan = build_plan(load_recipe(recipe), run)
    return write_plan(plan, recipe, SlurmOptions(**options), run / "slurm")


def sbatch_lines(script: Path) -> list[str]:
    return [line[len("#SBATCH "):] for line in script.read_text().splitlines() if line.startswith("#SBATCH ")]


def test_plan_writes_one_job_per_stage_and_suite(recipe: Path, tmp_path: Path) -> None:
    jobs = plan_scripts(recipe, tmp_path / "run", partition="gpu", account="lab", gpus=2, attack_gpus=4,
                        max_parallel=2, times={"generate": "04:00:00"}, setup="module load cuda",
                        sbatch_options=["--mem=32G"])
    assert [j.name for j in jobs] == ["unlearn", "attack", "generate-digits-seven-10", "generate-digits-neutral-4",
                                      "score", "report"]
    assert [j.after for j in jobs] == [[], ["unlearn"], ["unlearn", "attack"], ["unlearn", "attack"],
                                       ["generate-digits-seven-10", "generate-digits-neutral-4"], ["score"]]
    by_name = {j.name: j for j in jobs}
    generate = sbatch_lines(by_name["generate-digits-seven-10"].script)
    assert "--array=0-2%2" in generate  # 10 prompts in shards of 4, at most 2 at once
    assert "--array=0-0%1" in sbatch_lines(by_name["generate-digits-neutral-4"].script)
    assert "--array=0-0%1" in sbatch_lines(by_name["unlearn"].script)  # one task per method
    assert "--array=0-1%2" in sbatch_lines(by_name["attack"].script)  # one task per (method, attack) cell
    assert {"--partition=gpu", "--account=lab", "--gres=gpu:2", "--time=04:00:00", "--mem=32G"} <= set(generate)
    assert "--gres=gpu:4" in sbatch_lines(by_name["attack"].script)
    assert not any(line.startswith("--gres") for line in sbatch_lines(by_name["report"].script))
    assert "--time=00:30:00" in sbatch_lines(by_name["report"].script)
    attack = by_name["attack"].script.read_text()
    assert "accelerate.commands.launch --multi_gpu --num_processes 4 -m harness.cli benchmark" in attack
    assert "--stage attack" in attack and "module load cuda" in attack
    assert "--stage score --device cuda" in by_name["score"].script.read_text()
    assert "--ntasks-per-node=2" in generate  # Lightning takes one process per GPU from SLURM
    assert re.search(r"\n    srun \S+ -m harness.cli benchmark .* --stage generate .* --devices 2\n",
                     by_name["generate-digits-seven-10"].script.read_text())
    for job in jobs:
        assert subprocess.run(["bash", "-n", str(job.script)]).returncode == 0, job.script


def test_cpu_plan_has_no_gres_and_plain_attack(recipe: Path, tmp_path: Path) -> None:
    jobs = plan_scripts(recipe, tmp_path / "run", gpus=0, cpus=1)
    for job in jobs:
        assert not any(line.startswith("--gres") for line in sbatch_lines(job.script)), job.name
        assert "--cpus-per-task=1" in sbatch_lines(job.script)
    attack = jobs[1].script.read_text()
    assert "accelerate" not in attack and "--device" not in attack
    # the jobs then run the benchmark in that run directory, which now holds only the scripts
    assert check_output(tmp_path / "run", "--run-dir", is_run_dir) == tmp_path / "run"


def test_submit_sh_chains_jobs_by_their_ids(recipe: Path, tmp_path: Path) -> None:
    plan_scripts(recipe, tmp_path / "run", gpus=0)
    text = SlurmFiles(tmp_path / "run" / "slurm").submit.read_text()
    assert "unlearn=$(sbatch --parsable " in text
    assert "attack=$(sbatch --parsable --dependency=afterok:$unlearn --kill-on-invalid-dep=yes" in text
    assert "score=$(sbatch --parsable --dependency=afterok:$generate_digits_seven_10:$generate_digits_neutral_4 " in text
    assert subprocess.run(["bash", "-n", str(SlurmFiles(tmp_path / "run" / "slurm").submit)]).returncode == 0


def test_a_recipe_without_attacks_has_no_attack_job(tmp_path: Path) -> None:
    path = tmp_path / "plain.yaml"
    path.write_text(RECIPE.replace("attacks:\n  - {attack: nms}\n  - {attack: quant4}\n", ""))
    jobs = plan_scripts(path, tmp_path / "run", gpus=0)
    assert [j.name for j in jobs][:2] == ["unlearn", "generate-digits-seven-10"] and jobs[1].after == ["unlearn"]


def test_array_tasks_run_one_method_and_one_cell_each(tmp_path: Path, fake_python: Path) -> None:
    path = tmp_path / "two.yaml"
    path.write_text(RECIPE.replace("methods: [{method: conceptprune}]",
                                   "methods: [{method: conceptprune}, {method: saliency, name: sal}]"))
    run = tmp_path / "run"
    jobs = {j.name: j for j in write_plan(build_plan(load_recipe(path), run), path,
                                          SlurmOptions(gpus=0, python=str(fake_python)), run / "slurm")}
    assert "--array=0-3%4" in sbatch_lines(jobs["attack"].script)
    for task in range(4):
        subprocess.run(["bash", str(jobs["attack"].script)], check=True, capture_output=True,
                       env=dict(os.environ, SLURM_ARRAY_TASK_ID=str(task)))
    subprocess.run(["bash", str(jobs["unlearn"].script)], check=True, capture_output=True,
                   env=dict(os.environ, SLURM_ARRAY_TASK_ID="1"))
    assert (run / "calls.log").read_text().splitlines() == [
        "attack conceptprune/nms/", "attack conceptprune/quant4/", "attack sal/nms/", "attack sal/quant4/", "unlearn sal/"]


def test_generate_task_asks_every_model_for_its_shard(recipe: Path, tmp_path: Path, fake_python: Path) -> None:
    """Each model's generate stage decides itself whether its shard is complete for the recipe's
    settings (a shard made with other settings is redone), so the task asks every model."""
    run = tmp_path / "run"
    plan = build_plan(load_recipe(recipe), run)
    jobs = write_plan(plan, recipe, SlurmOptions(gpus=0, python=str(fake_python)), run / "slurm")
    script = next(j.script for j in jobs if j.name == "generate-digits-seven-10")
    env = dict(os.environ, SLURM_ARRAY_TASK_ID="1")
    subprocess.run(["bash", str(script)], env=env, check=True, capture_output=True)
    calls = (run / "calls.log").read_text().splitlines()
    assert calls == [f"generate {m.label} digits-seven-10 1" for m in plan.models]
    assert "--method" not in script.read_text()


def test_submit_passes_job_ids_to_dependents(recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "sbatch.log"
    fake = bin_dir / "sbatch"
    fake.write_text(f'#!/bin/bash\necho "$@" >>{log}\necho "$(( $(wc -l <{log}) + 100 ));cluster"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    jobs = plan_scripts(recipe, tmp_path / "run", gpus=0)
    ids = submit(jobs, tmp_path / "run" / "slurm")
    assert ids == {"unlearn": "101", "attack": "102", "generate-digits-seven-10": "103",
                   "generate-digits-neutral-4": "104", "score": "105", "report": "106"}
    calls = log.read_text().splitlines()
    assert calls[1].startswith("--parsable --dependency=afterok:101 --kill-on-invalid-dep=yes ")
    assert calls[4].startswith("--parsable --dependency=afterok:103:104 ")
    record = json.loads(SlurmFiles(tmp_path / "run" / "slurm").jobs.read_text())
    assert record["report"] == {"id": "106", "stage": "report", "script": str(jobs[-1].script), "after": ["score"]}


def test_sbatch_failure_is_one_line_error(recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text("#!/bin/bash\necho 'sbatch: error: invalid partition specified: gpu' >&2\nexit 1\n")
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    jobs = plan_scripts(recipe, tmp_path / "run", gpus=0)
    with pytest.raises(HarnessError, match=r"01-unlearn.sbatch: sbatch: error: invalid partition specified: gpu"):
        submit(jobs, tmp_path / "run" / "slurm")


def test_bad_options_and_templates_name_the_culprit(recipe: Path, tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="--time generate=two hours"):
        SlurmOptions(times={"generate": "two hours"})
    with pytest.raises(HarnessError, match="unknown stage 'train'"):
        SlurmOptions(times={"train": "10"})
    with pytest.raises(HarnessError, match="--gpus / --attack-gpus: must be 0 or more"):
        SlurmOptions(gpus=-1)
    templates = tmp_path / "templates"
    templates.mkdir()
    for file in DEFAULT_FOLDER.glob("*.sbatch"):
        (templates / file.name).write_text(file.read_text())
    (templates / "score.sbatch").write_text("#!/bin/bash\n{{header}}\n{{gpu_type}}\n")
    with pytest.raises(HarnessError, match=r"score.sbatch: unknown placeholder '\{\{gpu_type\}\}'"):
        plan_scripts(recipe, tmp_path / "run", templates=templates)
    assert not (tmp_path / "run" / "slurm").exists()  # nothing written from a broken template set
    (templates / "score.sbatch").write_text((DEFAULT_FOLDER / "score.sbatch").read_text())
    (templates / "report.sbatch").unlink()
    with pytest.raises(HarnessError, match="report.sbatch: template not found"):
        plan_scripts(recipe, tmp_path / "run", templates=templates)
    assert render("a {{ x }} b", {"x": "1"}, "t") == "a 1 b"


def test_command_prints_the_submit_lines(recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["slurm", "plan", str(recipe), "--run-dir", str(tmp_path / "run"), "--gpus", "0",
                 "--time", "score=30"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^report=\$\(sbatch --parsable --dependency=afterok:\$score ", out, re.M)
    assert "--time=30" in (tmp_path / "run" / "slurm" / "04-score.sbatch").read_text()
    assert main(["slurm", "plan", str(recipe), "--run-dir", str(tmp_path / "run"), "--time", "train=1"]) == 2


# ------------------------------------------------------------------ a real one-node cluster

def cluster_up(local_cluster: Path, patience: float = 90) -> bool:
    """Whether the local cluster's node answers; waits up to `patience` s for a node that is
    still registering or marked not responding (`idle*`), as a node just started may be."""
    if shutil.which("sinfo") is None:
        return False
    deadline = time.monotonic() + patience
    while True:
        try:
            if subprocess.run(["bash", str(local_cluster), "status"], capture_output=True, timeout=20).returncode == 0:
                return True
        except (OSError, subprocess.TimeoutExpired):
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(2)


ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED"}


def wait_for(ids: dict[str, str], timeout: float) -> dict[str, str]:
    """Poll scontrol until no task of the jobs is active; job name -> its tasks' states."""
    deadline = time.monotonic() + timeout
    while True:
        states = {}
        for name, job_id in ids.items():
            text = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
            states[name] = ",".join(sorted(set(re.findall(r"JobState=(\w+)", text)))) or "UNKNOWN"
        if not any(set(s.split(",")) & ACTIVE for s in states.values()) or time.monotonic() > deadline:
            return states
        time.sleep(1)


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_cluster_runs_the_chain_with_stand_in_stages(recipe: Path, tmp_path: Path, fake_python: Path,
                                                     local_cluster: Path) -> None:
    """Every job of the plan runs on the local cluster in dependency order; a rerun of the
    generate arrays finds every shard complete and starts nothing."""
    if not cluster_up(local_cluster):
        pytest.skip("no SLURM cluster here (slurm/local-cluster.sh start)")
    run = tmp_path / "run"
    plan = build_plan(load_recipe(recipe), run)
    jobs = write_plan(plan, recipe, SlurmOptions(gpus=0, cpus=1, python=str(fake_python), workdir=tmp_path), run / "slurm")
    ids = submit(jobs, run / "slurm")
    states = wait_for(ids, timeout=300)
    assert set(states.values()) == {"COMPLETED"}, states
    calls = (run / "calls.log").read_text().splitlines()
    stages = [c.split()[0] for c in calls]
    assert stages[:2] == ["unlearn", "attack"] and stages[-2:] == ["score", "report"]
    assert sorted(c for c in calls if c.startswith("generate")) == sorted(
        f"generate {m.label} {s} {i}" for m in plan.models for s in plan.suites for i in range(plan.shard_count(s)))
    assert (run / "report" / "report.md").read_text() == "done\n"


WORLD_RECIPE = """\
name: slurm-mini
model: zoo:digits
concept: {target: seven, kind: digit}
methods:
  - method: conceptprune
    params: {skill_ratio: 0.02, tau: 2, seed: 0}
attacks:
  - {attack: nms}
generation: {steps: 4, guidance: 3.0, scheduler: null, dtype: float32, batch_size: 20, shard_size: 10}
suites: [digits-all-2]
"""


def world_ready() -> bool:
    """Whether the miniature world is installed or shipped (building it takes too long here)."""
    from harness.worlds.digits import store as world

    return world.is_complete(world.world_dir()) or world.is_complete(world.SHIPPED_DIR)


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_cluster_runs_a_miniature_world_benchmark(tmp_path: Path, local_cluster: Path) -> None:
    """The real stages on the local cluster, sized by `--measure`: every unit is measured, each
    job's --mem is its unit's peak times the margin, every job completes and the report exists."""
    if not cluster_up(local_cluster):
        pytest.skip("no SLURM cluster here (slurm/local-cluster.sh start)")
    if not world_ready():
        pytest.skip("the miniature world is neither installed nor shipped")
    recipe = tmp_path / "mini.yaml"
    recipe.write_text(WORLD_RECIPE)
    run = tmp_path / "run"
    plan = build_plan(load_recipe(recipe), run)
    assert main(["slurm", "plan", str(recipe), "--run-dir", str(run), "--gpus", "0", "--cpus", "1",
                 "--setup", "export OMP_NUM_THREADS=1", "--measure", "--margin", "3", "--submit"]) == 0
    measured = json.loads((run / "slurm" / "measure.json").read_text())
    assert [u["stage"] for u in measured["units"]] == ["unlearn", "attack", "generate", "score"]
    for unit in measured["units"]:  # every unit really ran: seconds and the memory of a torch process
        assert unit["seconds"] > 0 and unit["peak_rss_mb"] > 100 and unit["peak_gpu_mb"] is None
        script = next((run / "slurm").glob(f"*-{unit['stage']}*.sbatch"))
        mem = int(re.search(r"--mem=(\d+)M", script.read_text())[1])
        assert mem == max(1024, math.ceil(unit["peak_rss_mb"] * 3))
    assert "not measured" in (run / "slurm" / "05-report.sbatch").read_text()
    ids = {name: job["id"] for name, job in json.loads((run / "slurm" / "jobs.json").read_text()).items()}
    states = wait_for(ids, timeout=540)
    logs = "\n".join(p.read_text()[-2000:] for p in sorted((run / "slurm" / "logs").glob("*.out")))
    assert set(states.values()) == {"COMPLETED"}, f"{states}\n{logs}"
    layout = plan.layout
    assert layout.unlearn("conceptprune").record.is_file() and layout.attack("conceptprune", "nms").record.is_file()
    assert all(layout.images(m, "digits-all-2").shard(i).is_file() for m in plan.models for i in range(2))
    assert all(layout.metrics(m, "digits-all-2").is_file() for m in plan.models)
    report = layout.report.markdown.read_text()
    assert "Table 1. Top-1 accuracy" in report and layout.results.is_file()
    assert (layout.report.folder / "table1_classes.csv").is_file()


# ------------------------------------------------------------------ --measure's arithmetic

def test_sizing_scales_each_unit_to_its_tasks(recipe: Path, tmp_path: Path) -> None:
    """Generate tasks run every model on one shard; the one score job scores every model's every
    prompt; limits are the work times the margin, never under 10 minutes, rounded up."""
    plan = build_plan(load_recipe(recipe), tmp_path / "run")
    units = [Unit("unlearn", "m", 30.0, 900.0, None), Unit("attack", "a", 4000.0, 1500.5, None),
             Unit("generate", "g", 100.0, 800.0, 2000.0), Unit("score", "s", 50.0, 700.0, 0.0)]
    sizing = size_jobs(plan, units, margin=2.0)
    models = len(plan.models)  # pretrained, conceptprune, conceptprune/nms, conceptprune/quant4
    assert sizing["unlearn"].time == "00:10:00" and sizing["unlearn"].mem == "1800M"
    assert sizing["attack"].tasks == 2 and sizing["attack"].time == "02:14:00" and sizing["attack"].mem == "3001M"
    assert sizing["generate"].tasks == 3 + 1 and sizing["generate"].seconds_per_task == 100.0 * models
    measured_prompts = 4  # shard_size of the first suite (digits-seven-10)
    assert sizing["score"].units_per_task == models * (10 + 4) / measured_prompts
    assert sizing["generate"].gpu is True and sizing["score"].gpu is False and sizing["unlearn"].gpu is None
    assert slurm_time(86400 + 61) == "1-00:02:00"
    tasks, gpu_hours = matrix_hours(sizing, {"generate": 1})
    assert gpu_hours == pytest.approx(4 * 100.0 * models / 3600)


def test_measured_limits_go_into_the_scripts(recipe: Path, tmp_path: Path) -> None:
    """A measured stage gets its --time and --mem and the reason; a stage whose unit used no GPU
    asks for none; a stage not measured says so."""
    plan = build_plan(load_recipe(recipe), tmp_path / "run")
    units = [Unit("unlearn", "m", 30.0, 900.0, 500.0), Unit("score", "s", 50.0, 700.0, 0.0)]
    jobs = {j.stage: j for j in write_plan(plan, recipe, SlurmOptions(gpus=1, sizing=size_jobs(plan, units, 2.0)),
                                           tmp_path / "run" / "slurm")}
    unlearn = sbatch_lines(jobs["unlearn"].script)
    assert {"--time=00:10:00", "--mem=1800M", "--gres=gpu:1"} <= set(unlearn)
    assert "# limits measured (m: 30.0 s, 900 MB peak, 500 MB GPU; x1 per task, margin x2)" in jobs["unlearn"].text
    score = sbatch_lines(jobs["score"].script)
    assert not any(line.startswith("--gres") for line in score) and "--device cuda" not in jobs["score"].text
    attack = jobs["attack"].text
    assert "#SBATCH --time=02:00:00" in attack and "--mem" not in attack and "not measured" in attack


def test_measure_refuses_a_margin_below_one(recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["slurm", "plan", str(recipe), "--run-dir", str(tmp_path / "run"), "--measure", "--margin", "0.5"]) == 2
    assert "--margin: expected a factor of at least 1, got 0.5" in capsys.readouterr().err
    assert not (tmp_path / "run" / "slurm" / "measure").exists()
