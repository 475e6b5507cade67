"""Lightning's habits that do not suit the harness, undone where it starts Lightning: warnings
that the harness has handled, the info lines (devices, tips) it prints per Trainer, and its own
Ctrl-C ending (a "graceful shutdown" and exit status 1, where every stage ends with exit 130)."""

from __future__ import annotations

import logging
import signal
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lightning.pytorch.callbacks import Callback

IGNORED: tuple[str, ...] = (
    r"The `srun` command is available",  # the harness's sbatch templates call srun themselves
    r".*custom batch sampler",  # the shard batch sampler does return every index, as Lightning asks
    r".*isinstance\(treespec, LeafSpec\)` is deprecated",  # raised inside Lightning's own code
    r".*does not have many workers",  # prompts are a list in memory; workers would only add start-up time
    r".*module\(s\) in eval mode at the start of training",  # the text encoder and VAE stay in eval
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


class InterruptCheck(Callback):
    """Raises KeyboardInterrupt at the next batch once Ctrl-C was seen. Python only prints a
    KeyboardInterrupt that its handler raises inside a finalizer (`__del__`, a weakref callback:
    such code runs after a checkpoint is written), and the run would go on to its end."""

    def __init__(self) -> None:
        self.seen = False

    def on_train_batch_end(self, *_: Any) -> None:
        self.raise_if_seen()

    def on_predict_batch_end(self, *_: Any) -> None:
        self.raise_if_seen()

    def raise_if_seen(self) -> None:
        if self.seen:
            raise KeyboardInterrupt


@contextmanager
def interrupt_raised(trainer: Any) -> Iterator[None]:
    """Run a Trainer call so that Ctrl-C reaches the caller as KeyboardInterrupt, as it does in
    every other stage: Lightning catches it, ignores SIGINT from then on and exits with status 1;
    this gives the interrupt back and restores the SIGINT handler. A Ctrl-C that Python swallowed
    stops the call at the next batch (`InterruptCheck`), or is raised once the call returns. An
    ignored SIGINT (a process started in the background by a shell) stays ignored."""
    handler = signal.getsignal(signal.SIGINT)
    check = InterruptCheck()
    if handler is signal.default_int_handler:
        def on_ctrl_c(signum: int, frame: Any) -> None:
            check.seen = True
            raise KeyboardInterrupt

        signal.signal(signal.SIGINT, on_ctrl_c)
    trainer.callbacks.append(check)
    try:
        yield
    except SystemExit:
        if not trainer.interrupted:
            raise
        raise KeyboardInterrupt from None
    finally:
        trainer.callbacks.remove(check)
        if signal.getsignal(signal.SIGINT) != handler:
            signal.signal(signal.SIGINT, handler)
    check.raise_if_seen()
