"""The recipe: the whole of one experiment in one YAML file, validated on load, and its sections.

Sections: `model` (hub id, local path or `zoo:NAME`), `concept`, `methods` (the matrix's rows:
unlearning methods with params, an optional defense and optionally the attacks run on them),
`attacks` (its columns beside the implicit `none`: attacks with params), `controls` (auto: a
row for each attack's positive control the rows lack, harness.controls), `generation`, `score`,
`suites` and `fidelity`. Every key is checked: a typo is an error naming the file and the key.
The sections are the settings the stages take, one module a stage in `harness/settings/` (below
both the recipe and the stages); each method's and attack's params are parsed on load by the
type its plug-in declares (harness.registry).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from annotated_types import Ge

from harness.config import check_bounds, load_yaml, parse_dataclass
from harness.errors import HarnessError, in_file, keyed
from harness.layout import PRETRAINED_MODEL, ModelRef, check_name, suite_name
from harness.resources import find_recipe
from harness.settings.attack import AttackEntry
from harness.settings.generate import GenerationSettings
from harness.settings.score import ScoreSettings
from harness.settings.unlearn import ConceptSettings, MethodSettings

Fidelity = Literal["paper", "reference-code"]

OLD_FORM = {
    "unlearn": "the one method is now an entry of 'methods' (method, params, layers, defense)",
    "attack": "revival settings are now the params of each entry of 'attacks'",
    "variants": "each variant is now an entry of 'attacks' (attack: nms | average | sample | quant4 | ideal-..., params)",
}
"""Keys of the recipe form before the matrix, and where their content went."""


@dataclass
class Recipe:
    """One experiment: methods x attacks x suites on one base model."""

    name: str
    model: str
    concept: ConceptSettings | None = None
    methods: list[MethodSettings] = field(default_factory=list)
    attacks: list[AttackEntry] = field(default_factory=list)
    """Attacks run against every method that does not restrict them (the attack `none`, the
    unlearned model as it is, is always there)."""
    controls: Literal["auto", "off"] = "auto"
    """auto: a row of each attack's positive control that no undefended row has, from the model
    family's control preset (harness.controls); off: no such rows."""
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    score: ScoreSettings = field(default_factory=ScoreSettings)
    suites: list[str] | None = None
    """The prompt suites every model is generated and scored on (the benchmark needs at least one):
    shipped suites by name, or a user's prompt file (a .csv or .txt path, named after its stem)."""
    fidelity: Fidelity = "paper"
    """paper: the paper's definitions; reference-code: the authors' published code's behaviour."""
    limit: Annotated[int, Ge(1)] | None = None
    """A pilot: only the first N prompts of every suite are generated and scored (`--limit N`)."""
    source: str = field(default="", metadata={"flag": False})
    """The file the recipe was read from (set on load)."""

    def __post_init__(self) -> None:
        check_name(self.name, "name")
        check_bounds(self)
        for index, suite in enumerate(self.suites or []):
            check_name(suite_name(suite), f"suites[{index}]")
        names = [suite_name(suite) for suite in self.suites or []]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"suites: two suites are named '{repeated[0]}' (a prompt file's suite is named after its stem)")
        if self.suites is not None and not self.suites:
            raise ValueError("suites: list at least one prompt suite (or leave the key out)")
        for what, labels in (("methods", [m.name for m in self.methods]), ("attacks", [a.name for a in self.attacks])):
            repeated = sorted({n for n in labels if labels.count(n) > 1})
            if repeated:
                raise ValueError(f"{what}: name '{repeated[0]}' is used twice (give each entry its own 'name')")
        if self.methods and self.concept is None:
            raise ValueError("methods need a 'concept' section (what is erased)")

    def pairs(self) -> list[tuple[str, str]]:
        """Every (method, attack) label pair of the matrix that runs: each method with each
        attack its entry does not leave out."""
        return [(m.name, a.name) for m in self.methods for a in self.attacks if m.runs(a.name)]

    def models(self) -> list[ModelRef]:
        """Every model of the matrix: the pretrained one, each method's unlearned model, and each
        method's model after each of its attacks."""
        return [PRETRAINED_MODEL, *(ModelRef(m.name) for m in self.methods),
                *(ModelRef(method, attack) for method, attack in self.pairs())]

    def method(self, name: str | None) -> tuple[int, MethodSettings]:
        """The index and entry of the method labelled `name` (None: the recipe's only method)."""
        return self._pick(self.methods, "method", name)

    def attack(self, name: str | None) -> tuple[int, AttackEntry]:
        """The index and entry of the attack labelled `name` (None: the recipe's only attack)."""
        return self._pick(self.attacks, "attack", name)

    def _pick(self, entries: list[Any], kind: str, name: str | None) -> tuple[int, Any]:
        if not entries:
            raise HarnessError(f"{self.source}: {kind}s: the recipe lists no {kind}")
        if name is None:
            if len(entries) > 1:
                raise HarnessError(f"--{kind}: the recipe lists {len(entries)} {kind}s; "
                                   f"name one of {', '.join(e.name for e in entries)}")
            return 0, entries[0]
        for index, entry in enumerate(entries):
            if entry.name == name:
                return index, entry
        raise HarnessError(f"{self.source}: {kind}s: no {kind} named '{name}' (have: {', '.join(e.name for e in entries)})")


def load_recipe(path: str | Path, controls: bool = True) -> Recipe:
    """Read and validate a recipe file (a path, or the name of a shipped recipe); with `controls`
    and the recipe's `controls: auto`, the matrix's automatic control rows are added (the
    one-stage commands, which pick one method, leave them out)."""
    path = find_recipe(str(path))
    data = load_yaml(path)
    for key, moved in OLD_FORM.items():
        if key in data:
            raise HarnessError(f"{path}: '{key}' is the recipe form before the matrix: {moved} (README: Recipes)")
    if "source" in data:
        raise HarnessError(f"{path}: unknown key 'source'")
    if data.get("controls") is False:  # YAML reads a bare `off` as false
        data["controls"] = "off"
    from harness.world import ZOO_PREFIX, check_concept_kind, world_named

    with in_file(path):
        recipe = parse_dataclass(Recipe, data)
        recipe.source = str(path)
        if recipe.model.startswith(ZOO_PREFIX):
            with keyed("model"):
                world_named(recipe.model.removeprefix(ZOO_PREFIX))
        if recipe.concept is not None:
            with keyed("concept.kind"):
                check_concept_kind(recipe.concept.kind)
        check_entries(recipe)
    if controls and recipe.controls == "auto":
        from harness.controls import control_rows

        with in_file(path), keyed("controls"):
            recipe.methods += control_rows(asdict(recipe), recipe.concept is not None and recipe.concept.several)
            check_entries(recipe)
    return recipe


def check_entries(recipe: Recipe) -> None:
    """Every method and attack resolves to a declared plug-in and its params parse, before any
    work; several targets need a pruning method; a method's `attacks` are labels of the recipe's.
    Errors are keyed at the entry."""
    for index, method in enumerate(recipe.methods):
        with keyed(f"methods[{index}]"):
            plugin, _ = declared("method", method.method, method.params)
            if recipe.concept is not None and recipe.concept.several and not plugin.prunes:
                raise HarnessError(f"{method.method} erases one concept at a time; concept.target lists "
                                   f"{len(recipe.concept.targets)} (only pruning methods unite masks)", key="method")
        unknown = [label for label in method.attacks or [] if label not in {a.name for a in recipe.attacks}]
        if unknown:
            raise HarnessError(f"no attack labelled '{unknown[0]}' (have: {', '.join(a.name for a in recipe.attacks) or 'none'})",
                               key=f"methods[{index}].attacks")
    for index, attack in enumerate(recipe.attacks):
        with keyed(f"attacks[{index}]"):
            declared("attack", attack.attack, attack.params)


def declared(kind: str, name: str, params: dict[str, Any]) -> tuple[Any, Any]:
    """The plug-in an entry names and its params parsed by the type it declares (errors keyed
    `method`/`attack` and `params` under the entry)."""
    from harness.registry import resolve

    with keyed(kind):
        plugin = resolve(kind, name)
    with keyed("params"):
        return plugin, plugin.parse(params)
