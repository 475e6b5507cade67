"""benchmarks/gpu_check.sh --tiny: every step runs on the CPU at tiny sizes and its summary row
holds the step's figure (the device run uses the same commands at full size on the GPU)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]  # the checkout (benchmarks/ is not a package)

NUMBER = r"(\d+(?:\.\d+)?)"
FIGURES = {
    "env": rf"torch {NUMBER}",
    "revival": rf"power-law {NUMBER} s, real-spectrum {NUMBER} s",
    "generation": rf"harness/plain {NUMBER}x \(harness {NUMBER} img/s, plain {NUMBER} img/s\)",
    "esd": rf"ESD {NUMBER} steps/s .*update only {NUMBER} steps/s",
    "revival-batch": rf"power-law {NUMBER} s, real-spectrum {NUMBER} s",
    "sd-scale": rf"unlearn conceptprune {NUMBER} s, .*revival nms-eq7 {NUMBER} s, .*score fid {NUMBER} s",
}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_gpu_check_tiny_gives_every_figure(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--tiny", "--out", str(tmp_path)],
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    table = (tmp_path / "gpu_check.md").read_text()
    rows = {}
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] in FIGURES:
            rows[cells[0]] = cells
    assert set(rows) == set(FIGURES), table
    for step, pattern in FIGURES.items():
        _, status, seconds, figure, *_ = rows[step]
        assert status == "ok", (step, rows[step])
        assert float(seconds) > 0
        match = re.search(pattern, figure)
        assert match, (step, figure)
        if step != "env":
            assert all(float(value) > 0 for value in match.groups()), (step, figure)
        assert (tmp_path / f"{step}.log").is_file()
    assert table.count("n/a (tiny)") == len(FIGURES)
