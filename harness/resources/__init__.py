"""Files the package ships: recipes, prompt-suite manifests and sbatch templates, found through
importlib.resources so that an ordinary (non-editable) install has them too."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from harness.errors import HarnessError


def resource_dir(part: str) -> Path:
    """The shipped folder `part` (recipes, manifests, slurm)."""
    return Path(str(resources.files("harness.resources") / part))


def packaged_recipes() -> list[str]:
    """Names of the shipped recipes."""
    return sorted(p.stem for p in resource_dir("recipes").glob("*.yaml"))


def find_recipe(text: str) -> Path:
    """A recipe file: the path as given, else the shipped recipe of that name (with or without
    `.yaml`, or as `recipes/NAME.yaml`)."""
    path = Path(text).expanduser()
    if path.is_file():
        return path
    name = Path(text).name.removesuffix(".yaml")
    shipped = resource_dir("recipes") / f"{name}.yaml"
    if shipped.is_file() and (path.parent == Path(".") or path.parent.name == "recipes"):
        return shipped
    raise HarnessError(f"{text}: recipe file not found (shipped recipes: {', '.join(packaged_recipes())})")
