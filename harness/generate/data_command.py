"""`harness data`: list the prompt suites, verify local copies, fetch missing ones."""

from __future__ import annotations

import argparse

from harness.errors import HarnessError
from harness.generate import manifests
from harness.generate.suites import is_builtin, list_suites, load_suite
from harness.outputs import check_output


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Suites to check (default: list all), a data folder, and whether to download."""
    parser.add_argument(
        "suites", nargs="*", metavar="SUITE", help="suites to verify (load and count); default: list all"
    )
    parser.add_argument(
        "--data-dir", help=f"folder of local prompt files (default ${manifests.DATA_DIR_ENV}, else the cache's data/)"
    )
    parser.add_argument("--fetch", action="store_true", help="download missing or mismatching files from their source")


def run(args: argparse.Namespace) -> int:
    """Listing reports each suite's state; named suites must load with their count or it fails."""
    folder = manifests.data_dir(args.data_dir)
    if args.fetch:
        check_output(folder, "--data-dir")
    names = args.suites or list_suites()
    print(f"data directory: {folder}")
    for name in names:
        if args.fetch and not is_builtin(name):
            manifests.fetch(manifests.load_manifest(name), folder)
        if args.suites:
            suite = load_suite(name, folder)
            print(f"{name:16} ok  {len(suite):6d} prompts  ({suite.kind})")
        else:
            print(f"{name:16} {status(name, folder)}")
    return 0


def status(name: str, folder) -> str:
    """One line on a suite: built in, ready, or what is wrong with its files."""
    if is_builtin(name):
        return "built-in (a world's own suite)"
    manifest = manifests.load_manifest(name)
    try:
        for entry in manifest.files:
            manifests.check_file(manifest, entry, folder)
    except HarnessError as error:
        return f"unavailable: {str(error).removeprefix(f'suite {name}: ')}"
    pinned = all(entry.sha256 for entry in manifest.files)
    return f"ready {manifest.count:6d} prompts ({manifest.kind}){'' if pinned else ', checksum not pinned'}"
