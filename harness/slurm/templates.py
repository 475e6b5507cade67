"""sbatch templates: text files shipped in the package (harness/resources/slurm) with `{{name}}` placeholders.

A template may only name placeholders the planner fills; an unknown one is an error naming the
file, so a site's edited copy of the templates (`--templates DIR`) fails early, not on the cluster.
"""

from __future__ import annotations

import re
from pathlib import Path

from harness.errors import HarnessError
from harness.resources import resource_dir

DEFAULT_FOLDER = resource_dir("slurm")
"""The shipped templates."""

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def load_template(folder: Path, name: str) -> str:
    """The text of `folder/name`; a missing file is a HarnessError naming it."""
    path = Path(folder) / name
    if not path.is_file():
        raise HarnessError(f"{path}: template not found (pass --templates DIR to use another folder)")
    return path.read_text()


def render(template: str, values: dict[str, str], source: str) -> str:
    """`template` (read from the file `source`) with every `{{name}}` replaced by `values[name]`."""

    def replace(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise HarnessError(f"{source}: unknown placeholder '{{{{{key}}}}}' (known: {', '.join(sorted(values))})")
        return values[key]

    return _PLACEHOLDER.sub(replace, template)
