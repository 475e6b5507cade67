"""`harness <stage> ...`: one subcommand per stage; each lives in its own module.

A command module exposes `add_arguments(parser)` and `run(args) -> int`; its one-line help
sits here beside its import path. Modules are imported only when their command runs, so
`harness --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from harness.errors import HarnessError

COMMANDS: dict[str, tuple[str, str]] = {
    "benchmark": ("harness.experiment.command", "run a recipe's whole benchmark (default: the miniature world's)"),
    "revive": ("harness.attack.command", "revive pruned weights (the attack), layer by layer"),
    "unlearn": ("harness.unlearn.command", "erase a concept as a recipe says (ConceptPrune, saliency, defense)"),
    "data": ("harness.eval.commands.data", "list prompt suites, verify local copies, fetch missing ones"),
    "generate": ("harness.eval.commands.generate", "generate a suite's images with a model into WebDataset shards"),
    "score": ("harness.eval.commands.score", "score image shards: accuracy, CLIP, FID, NudeNet"),
    "report": ("harness.eval.report", "write the paper's tables, plots and image grids from run directories"),
    "slurm": ("harness.slurm.command", "write (and submit) the sbatch scripts of a recipe's benchmark"),
    "zoo": ("harness.models.zoo.command", "build the miniature world (digits) or describe it"),
}


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage dump) with exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; only the selected command's module is imported."""
    parser = OneLineErrorParser(prog="harness", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=OneLineErrorParser)
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
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args._run(args) or 0)
    except HarnessError as error:
        print(f"harness {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
