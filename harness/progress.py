"""Progress bars for a person at a terminal, whole lines for a log file.

On a terminal (the standard error is a tty) every progress bar of the harness is tqdm's, redrawn
in place as before. Anywhere else (a SLURM job, `harness benchmark > log 2>&1`) a bar is a
`LineBar`: the same tqdm object, but instead of carriage-return frames it writes one log line
each time a tenth of its total is done (each step when the total is ten or less), every minute
when it has no total, and one at its end: `train ac: 30/30 step (100%) [00:01<00:00, 21.0it/s]`.
The lines go through the `harness.progress` logger, so they reach the console and the run
directory's log file like every other line. `HARNESS_PROGRESS=bars` or `=lines` overrides the
choice.

`bar(...)` takes tqdm's arguments; `tqdm_class(base)` gives the class to use where a library
builds the bar itself (Lightning's `TQDMProgressBar.init_train_tqdm`).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

from tqdm.auto import tqdm as auto_tqdm
from tqdm.std import tqdm as std_tqdm

log = logging.getLogger("harness.progress")

PROGRESS_ENV = "HARNESS_PROGRESS"
LINES_PER_BAR = 10
"""Lines a bar with a known total writes (one per tenth), besides the one at its end."""
SECONDS_PER_LINE = 60.0
"""How often a bar without a total writes a line."""


def interactive() -> bool:
    """Whether bars are drawn in place: `$HARNESS_PROGRESS` (bars or lines), else whether the
    standard error is a terminal."""
    choice = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if choice in ("bars", "lines"):
        return choice == "bars"
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


class _Discard:
    """The file a LineBar hands tqdm: tqdm's own frames and clearing go nowhere."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


class LineBarMixin:
    """A tqdm (sub)class that logs whole lines at each tenth of its total instead of redrawing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._line_step = 0
        self._line_n = 0
        self._line_time = time.monotonic()
        kwargs["file"] = _Discard()
        kwargs["dynamic_ncols"] = False
        kwargs.pop("ncols", None)
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg is not None:  # a clearing or a message meant for a terminal
            return True
        n, total = self.n, self.total
        if total:
            step = n * min(LINES_PER_BAR, total) // total
            if step > self._line_step:
                self._log_line()
            self._line_step = max(self._line_step, step)
        elif n > self._line_n and time.monotonic() - self._line_time >= SECONDS_PER_LINE:
            self._log_line()
        return True

    def reset(self, total: float | None = None) -> None:
        self._line_step, self._line_n, self._line_time = 0, 0, time.monotonic()
        super().reset(total)

    def close(self) -> None:
        if not getattr(self, "disable", True) and self.n != self._line_n:
            self._log_line()
        super().close()

    def __del__(self) -> None:
        # a bar left open (Lightning's, after an exception) is closed when collected, perhaps after
        # the run's last word (an error, "interrupted"): it says nothing more then
        self._line_n = getattr(self, "n", 0)
        super().__del__()

    def _log_line(self) -> None:
        values = dict(self.format_dict)
        desc = values.get("prefix") or "progress"
        unit = values.get("unit") or "it"
        total = values.get("total")
        values.update(prefix="", bar_format="{n_fmt}" + (" of {total_fmt}" if total else "")
                      + f" {unit}" + (" ({percentage:.0f}%)" if total else "")
                      + " [{elapsed}" + ("<{remaining}" if total else "") + ", {rate_fmt}{postfix}]")
        log.info("%s: %s", desc.rstrip(": "), self.format_meter(**values))
        self._line_n, self._line_time = self.n, time.monotonic()
        if total:
            self._line_step = max(self._line_step, self.n * min(LINES_PER_BAR, total) // total)


class LineBar(LineBarMixin, std_tqdm):
    """tqdm writing whole log lines (see the module's docstring)."""


def tqdm_class(base: type = auto_tqdm) -> type:
    """`base` on a terminal, else `base` writing whole lines (a LineBarMixin subclass of it)."""
    if interactive():
        return base
    if base is auto_tqdm or base is std_tqdm:
        return LineBar
    return type(f"Line{base.__name__}", (LineBarMixin, base), {})


def bar(iterable: Any = None, **kwargs: Any) -> Any:
    """A progress bar over `iterable` (tqdm's arguments): tqdm's on a terminal, else a LineBar."""
    return tqdm_class()(iterable, **kwargs)
