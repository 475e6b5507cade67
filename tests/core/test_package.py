"""An ordinary (non-editable) install works from any directory: the wheel carries the recipes,
the prompt-suite manifests, the sbatch templates and the shipped world, found as package data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]  # a wheel build, then `harness benchmark` in subprocesses

SMALL = """\
name: wheel-small
model: zoo:digits
concept: {target: seven, kind: digit}
methods: [{method: conceptprune, params: {skill_ratio: 0.05, tau: 2}}]
attacks: [{attack: nms}]
generation: {steps: 2, guidance: 3.0, scheduler: null, dtype: float32, batch_size: 10, shard_size: 10}
suites: [digits-seven-2]
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, repo: Path) -> Path:
    """The project built as a wheel and unpacked into a folder of its own (what pip install does
    for a pure-Python wheel), far from the checkout."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(root / "dist"), str(repo)], check=True, capture_output=True, timeout=600)
    [wheel] = (root / "dist").glob("harness-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(root / "site")
    return root / "site"


def harness(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`harness ARGS` with the unpacked wheel first on the path (the checkout nowhere on it)."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import harness.cli as c; "
            "assert c.__file__.startswith(sys.argv[1]), c.__file__; sys.exit(c.main(sys.argv[2:]))")
    env = {**os.environ, "HARNESS_CACHE": str(cwd / "cache"), "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    return subprocess.run([sys.executable, "-c", code, str(site), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_the_wheel_carries_its_resources(installed: Path) -> None:
    package = installed / "harness"
    assert (package / "resources" / "recipes" / "digits-matrix-quick.yaml").is_file()
    assert (package / "resources" / "manifests" / "imagenette.yaml").is_file()
    assert (package / "resources" / "slurm" / "generate.sbatch").is_file()
    assert (package / "worlds" / "digits" / "shipped" / "pipeline" / "model_index.json").is_file()


def test_benchmark_data_and_slurm_plan_run_from_another_directory(installed: Path, tmp_path: Path) -> None:
    listed = harness(installed, tmp_path, "benchmark", "--list-jobs")
    assert listed.returncode == 0, listed.stderr
    plan = json.loads(listed.stdout)
    assert plan["recipe"].startswith(str(installed)) and "conceptprune/nms" in plan["models"]
    data = harness(installed, tmp_path, "data")
    assert data.returncode == 0 and "imagenette" in data.stdout and "digits-all" in data.stdout, data.stderr
    slurm = harness(installed, tmp_path, "slurm", "plan", "digits-matrix", "--gpus", "0", "--cpus", "1")
    assert slurm.returncode == 0, slurm.stderr
    assert (tmp_path / "runs" / "digits-matrix" / "slurm" / "05-report.sbatch").is_file()
    (tmp_path / "small.yaml").write_text(SMALL)
    small = harness(installed, tmp_path, "benchmark", "small.yaml", "--device", "cpu", "--accelerator", "cpu")
    assert small.returncode == 0, small.stderr[-3000:]
    results = json.loads((tmp_path / "runs" / "wheel-small" / "results.json").read_text())
    assert {(r["method"], r["attack"]) for r in results["rows"]} == {
        ("pretrained", "none"), ("conceptprune", "none"), ("conceptprune", "nms")}
    assert all(r["status"] == "done" and r["n_erased"] == 2 for r in results["rows"])
    assert results["versions"]["harness"]
