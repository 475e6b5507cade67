"""A process's peak GPU memory, written at exit where `harness slurm plan --measure` asks for it."""

from __future__ import annotations

import atexit
import json
import os
import sys
from pathlib import Path

PEAK_FILE_ENV = "HARNESS_PEAK_FILE"
"""A JSON file the harness writes its peak GPU memory to at exit (set by the measurement)."""


def write_peak_at_exit() -> None:
    """Where $HARNESS_PEAK_FILE is set, write this process's peak GPU memory there when it ends
    (null where it used no GPU)."""
    path = os.environ.get(PEAK_FILE_ENV)
    if path:
        atexit.register(_write_peak, Path(path))


def _write_peak(path: Path) -> None:
    torch = sys.modules.get("torch")
    peak = None
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        peak = sum(torch.cuda.max_memory_reserved(i) for i in range(torch.cuda.device_count()))
    path.write_text(json.dumps({"peak_gpu_bytes": peak}))
