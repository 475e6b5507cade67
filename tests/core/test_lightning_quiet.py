"""Ctrl-C in a Lightning call ends it with KeyboardInterrupt, even when Python swallowed the
interrupt (raised inside a finalizer, it is only printed): the call stops at the next batch."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from harness.lightning_quiet import interrupt_raised


class SwallowsCtrlC(pl.LightningModule):
    """Ctrl-C arrives at batch 2 inside code that drops the KeyboardInterrupt, as a finalizer does."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch: int, batch_idx: int) -> torch.Tensor:
        if batch_idx == 2:
            try:
                signal.raise_signal(signal.SIGINT)
            except KeyboardInterrupt:
                pass
        return self.layer(torch.ones(1, 2)).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.fixture
def ctrl_c_by_default() -> Iterator[None]:
    """SIGINT at Python's default handler (a test run in the background inherits it ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_swallowed_ctrl_c_stops_the_fit_at_the_next_batch(ctrl_c_by_default: None) -> None:
    trainer = pl.Trainer(max_steps=50, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    with pytest.raises(KeyboardInterrupt), interrupt_raised(trainer):
        trainer.fit(SwallowsCtrlC(), DataLoader(range(50), batch_size=None))
    assert trainer.global_step == 3  # batch 2's end, not the 50 steps
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert not any(type(c).__name__ == "InterruptCheck" for c in trainer.callbacks)
