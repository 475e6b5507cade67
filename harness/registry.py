"""One declaration for every plug-in kind, and one resolver for every name a recipe or an option gives.

A plug-in is declared where it is defined, by a decorator that names it and says what the harness
must know about it before any work (lm-eval-harness's `@register_model` style):

    @method("conceptprune", params=ConceptPruneParams, prunes=True)
    def conceptprune(context: UnlearnContext, params: ConceptPruneParams) -> UnlearnResult: ...

    @attack("concept-inversion", params=InversionParams, reads={"concept"})
    def concept_inversion(context: AttackContext, params: InversionParams) -> AttackResult: ...

Kinds: `method`, `attack`, `metric`, `classifier`, `detector`, `table`, `world`, `pipeline`. The
decorator returns the object unchanged and records a `Plugin` (its kind, name, the object, its
params type and options). The harness parses a plug-in's params once, with its params type,
before any work (`Plugin.parse`), and passes the typed object.

A name is either one of the harness's own (`BUILTIN`: name -> the module that declares it, imported
only when used, so `harness --help` stays fast) or an import path `package.module:attribute` to an
object declared the same way in the user's own package, so a new method, attack, metric,
classifier or world plugs in without an edit to the harness.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from harness.errors import HarnessError

T = TypeVar("T")

BUILTIN: dict[str, dict[str, str]] = {
    "method": {
        "conceptprune": "harness.unlearn.conceptprune",
        "saliency": "harness.unlearn.saliency",
        "checkpoint": "harness.unlearn.checkpoint",
        "esd": "harness.unlearn.esd",
        "ac": "harness.unlearn.ac",
        "dimum": "harness.unlearn.dimum",
        "p-esd": "harness.unlearn.learned_mask",
        "p-ac": "harness.unlearn.learned_mask",
        "uce": "harness.unlearn.uce",
        "erasediff": "harness.unlearn.erasediff",
        "salun": "harness.unlearn.salun",
        "fmn": "harness.unlearn.fmn",
        "advunlearn": "harness.unlearn.advunlearn",
    },
    "attack": {
        "nms": "harness.attack.revival.family",
        "average": "harness.attack.revival.family",
        "sample": "harness.attack.revival.family",
        "align": "harness.attack.revival.family",
        "quant4": "harness.attack.revival.family",
        "ideal-sign-nms": "harness.attack.revival.family",
        "ideal-sign-sample": "harness.attack.revival.family",
        "ideal-magnitude-random-sign": "harness.attack.revival.family",
        "dimra": "harness.attack.relearn",
        "concept-inversion": "harness.attack.prompt.inversion",
        "adversarial-prefix": "harness.attack.prompt.adversarial",
        "unlearndiff": "harness.attack.prompt.unlearndiff",
        "p4d": "harness.attack.prompt.p4d",
    },
    "detector": {
        "eq7": "harness.attack.revival.detect",
        "lowrank": "harness.attack.revival.detect",
        "columns": "harness.attack.revival.detect",
        "magnitude": "harness.attack.revival.detect",
    },
    "classifier": {
        "resnet50": "harness.score.metrics.classifiers",
        "digits": "harness.worlds.digits.scoring",
    },
    "metric": {
        "accuracy": "harness.score.scorers",
        "clip": "harness.score.scorers",
        "fid": "harness.score.scorers",
        "nudenet": "harness.score.scorers",
        "q16": "harness.score.scorers",
    },
    "table": {
        "matrix": "harness.report.table_matrix",
        "objects": "harness.report.table_objects",
        "artists": "harness.report.table_artists",
        "nudity": "harness.report.table_nudity",
        "ablation": "harness.report.table_ablation",
        "signs": "harness.report.table_signs",
        "defense": "harness.report.table_defense",
        "curves": "harness.report.table_curves",
        "metrics": "harness.report.table_metrics",
    },
    "pipeline": {
        "DigitsPipeline": "harness.worlds.digits.pipeline",
    },
    "world": {
        "digits": "harness.worlds.digits",
    },
}
"""kind -> the harness's own names, in order, -> the module that declares each."""

KINDS = tuple(BUILTIN)
READS = ("concept", "original", "sharded", "suites")
"""What an attack may declare it reads beyond the unlearned model (harness.attack.interface)."""


@dataclass(frozen=True)
class NoParams:
    """The params of a plug-in that takes none: any key is an error."""


@dataclass(frozen=True)
class Plugin:
    """One declared plug-in: its kind and name, the object, its params type and its options."""

    kind: str
    name: str
    target: Any
    params: type = NoParams
    """The dataclass its params are parsed into (NoParams: it takes none)."""
    fixed: Mapping[str, Any] = field(default_factory=dict)
    """Params its name fixes (the revival family: `nms` fixes magnitude = nms)."""
    prunes: bool = False
    """A method that only zeroes weights: with several targets it runs once per target, masks united."""
    layers: tuple[str, ...] | None = None
    """A method's default layer globs (else the harness's default, SD's ff.net.2)."""
    reads: frozenset[str] = frozenset()
    """What an attack reads beyond the unlearned model (`concept`, `original`, `sharded`, `suites`)."""
    label: str = ""
    """A report table's title."""
    absent: str = ""
    """Why a report table does not apply, when it builds nothing."""
    estimate: Callable[..., float] | None = None
    """A detector's estimate of the obfuscated share of a matrix (its default share)."""
    control: str | None = None
    """An attack's positive control: the method it is known to break (PROTOCOL.md section 8)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.target(*args, **kwargs)

    def parse(self, data: Mapping[str, Any] | None) -> Any:
        """The params `data` (a recipe entry's `params`) as this plug-in's params type, with what
        its name fixes; an error names the key relative to `params`."""
        from harness.budgets import with_budget
        from harness.config import parse_dataclass

        data = with_budget(self.params, data or {})
        for key, value in self.fixed.items():
            if key in data and data[key] != value:
                raise HarnessError(f"this attack fixes {key} = {value}; choose the attack named for {data[key]} instead",
                                   key=key)
        return parse_dataclass(self.params, {**data, **self.fixed})


REGISTRY: dict[str, dict[str, Plugin]] = {kind: {} for kind in KINDS}
"""kind -> name -> Plugin, filled as declaring modules are imported."""


def declare(kind: str, name: str, **options: Any) -> Callable[[T], T]:
    """The decorator behind every kind: record a Plugin for the object and return the object unchanged."""
    if kind not in REGISTRY:
        raise ValueError(f"unknown plug-in kind '{kind}' (choose from {', '.join(KINDS)})")

    def record(target: T) -> T:
        plugin = Plugin(kind=kind, name=name, target=target, **options)
        known = REGISTRY[kind].get(name)
        if known is not None and known.target is not target:
            raise ValueError(f"{kind} '{name}' is declared twice ({known.target!r} and {target!r})")
        REGISTRY[kind][name] = plugin
        return target

    return record


def method(name: str, *, params: type = NoParams, prunes: bool = False,
           layers: list[str] | tuple[str, ...] | None = None) -> Callable[[T], T]:
    """Declare an unlearning method `(context: UnlearnContext, params) -> UnlearnResult`."""
    return declare("method", name, params=params, prunes=prunes, layers=tuple(layers) if layers else None)


def attack(name: str, *, params: type = NoParams, reads: set[str] | frozenset[str] = frozenset(),
           fixed: Mapping[str, Any] | None = None, control: str | None = None) -> Callable[[T], T]:
    """Declare an attack `(context: AttackContext, params) -> AttackResult`, what it reads and the
    method it is known to break (its positive control)."""
    unknown = sorted(set(reads) - set(READS))
    if unknown:
        raise ValueError(f"unknown declaration '{unknown[0]}' (choose from {', '.join(READS)})")
    return declare("attack", name, params=params, reads=frozenset(reads), fixed=dict(fixed or {}), control=control)


def metric(name: str) -> Callable[[T], T]:
    """Declare a scorer class (harness.score.scorers)."""
    return declare("metric", name)


def classifier(name: str) -> Callable[[T], T]:
    """Declare a classifier factory `(weights) -> ImageClassifier`."""
    return declare("classifier", name)


def detector(name: str, *, estimate: Callable[..., float]) -> Callable[[T], T]:
    """Declare a detector of obfuscated weights `(weight) -> scores` with its estimate of the
    obfuscated share `(weight) -> float` (harness.attack.revival.detect)."""
    return declare("detector", name, estimate=estimate)


def table(name: str, *, label: str, absent: str) -> Callable[[T], T]:
    """Declare a report table builder `(runs) -> Table | list[Table] | None`."""
    return declare("table", name, label=label, absent=absent)


def world(name: str) -> Callable[[T], T]:
    """Declare a world (a harness.world.World instance)."""
    return declare("world", name)


def pipeline(name: str) -> Callable[[T], T]:
    """Declare a pipeline class a model folder's model_index.json may name."""
    return declare("pipeline", name)


def registered(kind: str) -> list[str]:
    """The harness's own names of one kind, in order."""
    return list(BUILTIN[kind])


def is_import_path(name: str) -> bool:
    """Whether `name` has the form `package.module:attribute`."""
    module, sep, attribute = name.partition(":")
    return bool(sep and module and attribute) and " " not in name


def resolve(kind: str, name: str) -> Plugin:
    """The Plugin a registered name or an import path names; an error is keyed (the caller adds
    the recipe key or option that named it)."""
    if name in BUILTIN[kind]:
        importlib.import_module(BUILTIN[kind][name])
        return REGISTRY[kind][name]
    if not is_import_path(name):
        raise HarnessError(f"unknown {kind} '{name}' (registered: {', '.join(BUILTIN[kind])}; "
                           "or give an import path package.module:attribute)", key="")
    target = _import(name)
    found = [p for p in REGISTRY[kind].values() if p.target is target]
    if not found:
        raise HarnessError(f"'{name}' is not declared as a {kind}: decorate it with "
                           f"@harness.registry.{kind}(\"a-name\", ...)", key="")
    return found[0]


def _import(path: str) -> Any:
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise HarnessError(f"cannot import module '{module_name}' ({error})", key="") from None
    target: Any = module
    for part in attribute.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise HarnessError(f"module '{module_name}' has no attribute '{attribute}'", key="")
    return target


def plugins(kind: str) -> list[Plugin]:
    """The harness's own plug-ins of one kind, in order (their modules imported)."""
    return [resolve(kind, name) for name in BUILTIN[kind]]


def params_dict(params: Any) -> dict[str, Any]:
    """Parsed params as plain data (for records)."""
    return dataclasses.asdict(params) if dataclasses.is_dataclass(params) else dict(params or {})
