"""`harness report RUN_DIR [RUN_DIR ...]`: tables, the matrix, plots and image grids of run directories."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from harness.config import settings_arguments, settings_from_arguments
from harness.errors import HarnessError
from harness.report import run as report
from harness.report.run import ReportJob


@dataclass
class ReportOptions:
    """Where the report goes and how wide its grids are."""

    out: str | None = None
    """output folder (default: the first run directory's report/)"""
    grid_columns: int = 6
    """prompts per image grid"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories to report on")
    parser.set_defaults(_flags=settings_arguments(parser, ReportOptions))


def run(args: argparse.Namespace) -> int:
    options = settings_from_arguments(ReportOptions, args, args._flags)
    if options.grid_columns < 1:
        raise HarnessError(f"--grid-columns must be at least 1, got {options.grid_columns}")
    record = report.run(ReportJob([Path(p) for p in args.run_dirs], Path(options.out) if options.out else None,
                                  options.grid_columns))
    print(record.markdown)
    return 0
