"""Where the work runs: the torch device of unlearning, attacks and scoring, and Lightning's
settings for generation and scoring. Every stage command takes the same options with the same
defaults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from annotated_types import Ge

from harness.config import check_bounds
from harness.errors import HarnessError


@dataclass
class RuntimeSettings:
    """Devices and processes of a stage."""

    device: str = "auto"
    """torch device of unlearning, attacks and scoring: auto (a GPU when there is one), cpu, cuda, cuda:1"""
    accelerator: str = "auto"
    """Lightning accelerator of generation and scoring: auto, cpu or gpu"""
    devices: str = "1"
    """Lightning devices (processes) per node: a count or auto"""
    strategy: str = "auto"
    """Lightning strategy, e.g. ddp"""
    num_nodes: Annotated[int, Ge(1)] = 1
    """nodes (SLURM or torchrun sets the rest)"""
    data_dir: str | None = None
    """folder of the prompt data files (default $HARNESS_DATA_DIR, else the cache's data/)"""

    def __post_init__(self) -> None:
        check_bounds(self)
        resolve_device(self.device)
        if self.accelerator not in ("auto", "cpu", "gpu", "cuda", "mps"):
            raise ValueError(f"accelerator: unknown '{self.accelerator}' (choose from auto, cpu, gpu)")
        if not (self.devices == "auto" or (self.devices.isdigit() and int(self.devices) > 0)):
            raise ValueError(f"devices: expected a positive count or 'auto', got '{self.devices}'")

    @property
    def lightning_devices(self) -> int | str:
        """`devices` as Lightning takes it."""
        return int(self.devices) if self.devices.isdigit() else self.devices


def resolve_device(name: str) -> torch.device:
    """`auto` is the GPU when there is one, else the CPU; an unknown or absent device is an error
    keyed at `--device` (a caller reading it elsewhere names its own key)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise HarnessError(f"unknown device '{name}' (use auto, cpu, cuda or cuda:N)", key="--device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HarnessError(f"'{name}' asked for, but this machine has no CUDA GPU (use cpu or auto)", key="--device")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise HarnessError(f"'{name}': this machine has {torch.cuda.device_count()} GPU(s)", key="--device")
    if device.type not in ("cpu", "cuda", "mps"):
        raise HarnessError(f"unsupported device type '{device.type}' (use auto, cpu, cuda or cuda:N)", key="--device")
    return device
