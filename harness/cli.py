"""`harness <stage> ...`: one subcommand per stage; each lives in its own module.

A command module exposes `add_arguments(parser)` and `run(args) -> int`; its one-line help
sits here beside its import path. Modules are imported only when their command runs, so
`harness --help` stays fast. A user's mistake (HarnessError) is one line and exit 2; any other
exception is one line too, with a hint to rerun with --debug for the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from harness.cache import CACHE_ENV, cache_root
from harness.errors import HarnessError
from harness.log import setup_console
from harness.outputs import check_output
from harness.peak import write_peak_at_exit

COMMANDS: dict[str, tuple[str, str]] = {
    "benchmark": ("harness.experiment.command", "run a recipe's matrix of methods x attacks x suites (default: the miniature world's)"),
    "unlearn": ("harness.unlearn.command", "erase a concept with one of a recipe's methods (and its defense)"),
    "attack": ("harness.attack.command", "attack an unlearned model with one of a recipe's attacks"),
    "revive": ("harness.attack.revival.command", "revive pruned weights (the revival attack), layer by layer"),
    "infer-concept": ("harness.infer.command", "guess the erased concept of an unlearned model from its pruned entries"),
    "generate": ("harness.generate.command", "generate a suite's images with a model into WebDataset shards"),
    "score": ("harness.score.command", "score image shards: accuracy, CLIP, FID, NudeNet"),
    "report": ("harness.report.command", "write the results table, the matrix, the paper's tables, plots and image grids"),
    "data": ("harness.generate.data_command", "list prompt suites, verify local copies, fetch missing ones"),
    "slurm": ("harness.slurm.command", "write (and submit) the sbatch scripts of a recipe's matrix"),
    "zoo": ("harness.worlds.digits.command", "build the miniature world (digits) or describe it"),
}


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage dump) with exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; only the selected command's module is imported."""
    parser = OneLineErrorParser(prog="harness", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages on the console")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an unexpected error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=OneLineErrorParser)
    for name, (module_path, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == selected:
            module = importlib.import_module(module_path)
            module.add_arguments(command_parser)
            command_parser.set_defaults(_run=module.run)
    return parser


def _selected_command(argv: Sequence[str]) -> str | None:
    for token in argv:
        if token in COMMANDS:
            return token
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `harness` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_selected_command(argv))
    args = parser.parse_args(argv)
    setup_console(args.verbose)
    write_peak_at_exit()
    try:
        check_output(cache_root(), f"${CACHE_ENV}")  # a bad $HARNESS_CACHE fails before any work
        return int(args._run(args) or 0)
    except HarnessError as error:
        print(f"harness {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"harness {args.command}: interrupted; complete outputs are kept, a rerun resumes", file=sys.stderr)
        return 130
    except Exception as error:  # anything unforeseen: one line, the trace on request
        if args.debug:
            raise
        if isinstance(error, OSError) and error.filename:  # a file that cannot be read or written
            print(f"harness {args.command}: error: {error.filename}: {error.strerror or error}", file=sys.stderr)
            return 2
        first = (str(error).strip().splitlines() or [""])[0]
        print(f"harness {args.command}: unexpected error: {type(error).__name__}: {first} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
