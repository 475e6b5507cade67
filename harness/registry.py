"""One resolver for everything a recipe or an option names: methods, attacks, classifiers,
metric scorers, pipeline classes and worlds.

A name is either registered here (`conceptprune`, `nms`, `resnet50`, `digits`) or an import
path `package.module:attribute`, so a new method, attack, classifier or metric plugs in without
an edit to the harness. Registered entries are import paths too, imported only when used.
"""

from __future__ import annotations

import importlib
from typing import Any

from harness.errors import HarnessError

REGISTERED: dict[str, dict[str, str]] = {
    "method": {
        "conceptprune": "harness.unlearn.conceptprune:conceptprune",
        "saliency": "harness.unlearn.saliency:saliency",
        "checkpoint": "harness.unlearn.checkpoint:checkpoint",
        "esd": "harness.unlearn.esd:esd",
        "ac": "harness.unlearn.ac:ac",
        "dimum": "harness.unlearn.dimum:dimum",
        "p-esd": "harness.unlearn.learned_mask:p_esd",
        "p-ac": "harness.unlearn.learned_mask:p_ac",
    },
    "attack": {
        "nms": "harness.attack.revival.family:nms",
        "average": "harness.attack.revival.family:average",
        "sample": "harness.attack.revival.family:sample",
        "align": "harness.attack.revival.family:align",
        "quant4": "harness.attack.revival.family:quant4",
        "ideal-sign-nms": "harness.attack.revival.family:ideal_sign_nms",
        "ideal-sign-sample": "harness.attack.revival.family:ideal_sign_sample",
        "ideal-magnitude-random-sign": "harness.attack.revival.family:ideal_magnitude_random_sign",
        "dimra": "harness.attack.relearn:dimra",
        "concept-inversion": "harness.attack.prompt.inversion:concept_inversion",
        "adversarial-prompt": "harness.attack.prompt.adversarial:adversarial_prompt",
    },
    "classifier": {
        "resnet50": "harness.score.metrics.classifiers:ResNet50Classifier",
        "digits": "harness.worlds.digits.scoring:DigitsImageClassifier",
    },
    "metric": {
        "accuracy": "harness.score.scorers:AccuracyScorer",
        "clip": "harness.score.scorers:ClipScorer",
        "fid": "harness.score.scorers:FidScorer",
        "nudenet": "harness.score.scorers:NudeNetScorer",
    },
    "pipeline": {
        "DigitsPipeline": "harness.worlds.digits.pipeline:DigitsPipeline",
    },
    "world": {
        "digits": "harness.worlds.digits:WORLD",
    },
}
"""kind -> registered name -> import path."""


def registered(kind: str) -> list[str]:
    """The registered names of one kind, in registration order."""
    return list(REGISTERED[kind])


def is_import_path(name: str) -> bool:
    """Whether `name` has the form `package.module:attribute`."""
    module, sep, attribute = name.partition(":")
    return bool(sep and module and attribute) and " " not in name


def resolve(kind: str, name: str, where: str) -> Any:
    """The object a registered name or import path names; `where` prefixes errors (the recipe key
    or option that named it)."""
    path = REGISTERED[kind].get(name, name)
    if not is_import_path(path):
        raise HarnessError(
            f"{where}: unknown {kind} '{name}' (registered: {', '.join(REGISTERED[kind])}; "
            "or give an import path package.module:attribute)"
        )
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise HarnessError(f"{where}: cannot import module '{module_name}' ({error})") from None
    target: Any = module
    for part in attribute.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise HarnessError(f"{where}: module '{module_name}' has no attribute '{attribute}'")
    return target


def resolve_callable(kind: str, name: str, where: str) -> Any:
    """Like `resolve`, and the object must be callable."""
    target = resolve(kind, name, where)
    if not callable(target):
        raise HarnessError(f"{where}: {kind} '{name}' is not callable")
    return target
