"""Lightning's messages that do not apply to the harness, silenced where it starts Lightning:
warnings that the harness has handled, and the info lines (devices, tips) it prints per Trainer."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

IGNORED: tuple[str, ...] = (
    r"The `srun` command is available",  # the harness's sbatch templates call srun themselves
    r".*custom batch sampler",  # the shard batch sampler does return every index, as Lightning asks
    r".*isinstance\(treespec, LeafSpec\)` is deprecated",  # raised inside Lightning's own code
    r".*does not have many workers",  # prompts are a list in memory; workers would only add start-up time
    r".*module\(s\) in eval mode at the start of training",  # the frozen copy and text encoder stay in eval
)
INFO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                "lightning.pytorch.accelerators.cuda", "lightning.fabric.utilities.distributed")
"""Loggers of Lightning's per-Trainer info lines (GPU/TPU available, tips), kept at warnings only."""


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Run the block with the `IGNORED` warnings and Lightning's info lines silenced (and only those)."""
    levels = {name: logging.getLogger(name).level for name in INFO_LOGGERS}
    with warnings.catch_warnings():
        for message in IGNORED:
            warnings.filterwarnings("ignore", message=message)
        for name in INFO_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
