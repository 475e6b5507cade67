"""Lightning warnings that do not apply to the harness, silenced where it starts Lightning."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

IGNORED: tuple[str, ...] = (
    r"The `srun` command is available",  # the harness's sbatch templates call srun themselves
    r".*custom batch sampler",  # the shard batch sampler does return every index, as Lightning asks
    r".*isinstance\(treespec, LeafSpec\)` is deprecated",  # raised inside Lightning's own code
)


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Run the block with the `IGNORED` warnings silenced (and only those)."""
    with warnings.catch_warnings():
        for message in IGNORED:
            warnings.filterwarnings("ignore", message=message)
        yield
