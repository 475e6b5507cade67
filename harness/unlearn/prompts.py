"""ConceptPrune's prompt pairs: neutral base prompts against prompts that carry the concept.

PROTOCOL.md section 1. Art: "a photo of a {thing}" vs "a {thing} in the style of {artist}"
(things.txt); nudity: "a photo of a {human}" vs "a photo of a naked {human}" (humans.txt);
objects: "a {scene}" vs "a {object} in a {scene}" (common_scenes.txt). A world's kinds (the
miniature world's digits) take the world's own pairs.

fidelity "reference-code": the attack authors' prompt code (utils/prompts.py of
Brankozz/Roots-Beneath-the-Cut, extending ConceptPrune's, which has the church and garbage truck
lists) gives four object classes their own scene lists instead of common_scenes.txt:
church, motorcycle and school bus "a {name}" vs "a {object} {phrase}" over 8 scenes (e.g.
"a road" vs "a church on a road"), garbage truck over 13 places ("a white car" vs
"a garbage truck near a white car"). The phrases are theirs verbatim, including the leading
space of " on the street" (so "a church  on the street", two spaces). Every other class, and
every class under "paper", uses the common template.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError
from harness.settings.unlearn import ConceptSettings

DATA_DIR_ENV = "HARNESS_DATA_DIR"

TEMPLATES: dict[str, tuple[str, str, str]] = {
    "artist": ("things.txt", "a photo of a {word}", "a {word} in the style of {target}"),
    "nudity": ("humans.txt", "a photo of a {word}", "a photo of a naked {word}"),
    "object": ("common_scenes.txt", "a {word}", "a {target} in a {word}"),
}
"""Kind -> (word list, base template, target template)."""

FIDELITIES = ("paper", "reference-code")

_SCENE_NAMES = ("road", "park", "beach", "street", "house", "statue", "tree", "forest")
_SCENE_PHRASES = ("on a road", "in the park", "near the beach", " on the street", "in front of a house",
                  "in front of a statue", "near a tree", "in a forest")
_PLACE_NAMES = ("road", "park", "street", "white car", "blue car", "black car", "white automobile",
                "black automobile", "blue automobile", "truck", "tree", "forest", "house")
_PLACE_PHRASES = ("on the road", "in the park", "on the street", "near a white car", "near a blue car",
                  "near a black car", "near a white automobile", "near a black automobile",
                  "near a blue automobile", "near a big truck", "near a tree", "in a forest", "in front of a house")

REFERENCE_CODE_OBJECT_SCENES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "church": (_SCENE_NAMES, _SCENE_PHRASES),
    "motorcycle": (_SCENE_NAMES, _SCENE_PHRASES),
    "school bus": (_SCENE_NAMES, _SCENE_PHRASES),
    "garbage truck": (_PLACE_NAMES, _PLACE_PHRASES),
}
"""Object (lower case) -> (base scene names, target phrases), paired in order: base prompt
"a {name}", target prompt "a {object} {phrase}" (the authors' prompt code, fidelity reference-code)."""


@dataclass(frozen=True)
class PromptPairs:
    """Prompts without the concept (base) and with it (target)."""

    base: list[str]
    target: list[str]


def resolve_data_dir(explicit: str | Path | None, from_recipe: str | None) -> Path | None:
    """The prompt data folder: a command-line value, else the recipe's, else $HARNESS_DATA_DIR."""
    for value in (explicit, from_recipe, os.environ.get(DATA_DIR_ENV)):
        if value:
            return Path(value).expanduser()
    return None


def reference_code_scenes(target: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """The authors' special scene lists for an object class, or None where it has none."""
    return REFERENCE_CODE_OBJECT_SCENES.get(" ".join(target.lower().split()))


def object_prompt_pairs(target: str, scenes: list[str] | None, fidelity: str = "paper") -> PromptPairs:
    """Object prompts: "a {scene}" vs "a {target} in a {scene}" over `scenes` (common_scenes.txt);
    under fidelity "reference-code", the authors' own lists for church, motorcycle, school bus and
    garbage truck (which need no word list, so `scenes` may then be None)."""
    if fidelity not in FIDELITIES:
        raise ValueError(f"fidelity must be one of {', '.join(FIDELITIES)}, got {fidelity!r}")
    special = reference_code_scenes(target) if fidelity == "reference-code" else None
    if special is not None:
        names, phrases = special
        return PromptPairs(base=[f"a {name}" for name in names], target=[f"a {target} {phrase}" for phrase in phrases])
    if scenes is None:
        raise ValueError(f"object '{target}' needs the common scenes word list")
    _, base, target_template = TEMPLATES["object"]
    return PromptPairs(
        base=[base.format(word=w, target=target) for w in scenes],
        target=[target_template.format(word=w, target=target) for w in scenes],
    )


def prompt_pairs(concept: ConceptSettings, data_dir: Path | None, fidelity: str = "paper") -> PromptPairs:
    """Base and target prompts for `concept` (errors name the recipe's `concept` keys).
    `fidelity` "reference-code" switches four object classes to the authors' scene lists."""
    if fidelity not in FIDELITIES:
        raise HarnessError(f"'{fidelity}' (choose from {', '.join(FIDELITIES)})", key="fidelity", rooted=True)
    if concept.kind not in TEMPLATES:
        from harness.world import concept_kinds, world_of_kind

        world = world_of_kind(concept.kind)
        if world is None:
            raise HarnessError(f"no prompt templates for '{concept.kind}' (choose from {', '.join(concept_kinds())})",
                               key="concept.kind", rooted=True)
        base, target = world.prompt_pairs(concept.target, concept.kind)
        return PromptPairs(base=base, target=target)
    if concept.kind == "object" and fidelity == "reference-code" and reference_code_scenes(concept.target):
        return object_prompt_pairs(concept.target, None, fidelity)
    filename, base, target = TEMPLATES[concept.kind]
    words = read_word_list(_word_file(filename, concept.kind, data_dir))
    return PromptPairs(
        base=[base.format(word=w, target=concept.target) for w in words],
        target=[target.format(word=w, target=concept.target) for w in words],
    )


def read_word_list(path: Path) -> list[str]:
    """One word or phrase a line; blank lines and surrounding spaces dropped."""
    words = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not words:
        raise HarnessError(f"word list {path} is empty, so the target has no prompts", key="concept", rooted=True)
    return words


def _word_file(filename: str, kind: str, data_dir: Path | None) -> Path:
    if data_dir is None:
        raise HarnessError(f"kind '{kind}' needs {filename}; set concept.data_dir, --data-dir or ${DATA_DIR_ENV}",
                           key="concept.data_dir", rooted=True)
    path = data_dir / filename
    if not path.is_file():
        raise HarnessError(f"{path} not found (kind '{kind}' needs {filename})", key="concept.data_dir", rooted=True)
    return path
