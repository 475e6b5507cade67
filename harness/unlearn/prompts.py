"""ConceptPrune's prompt pairs: neutral base prompts against prompts that carry the concept.

PROTOCOL.md section 1. Art: "a photo of a {thing}" vs "a {thing} in the style of {artist}"
(things.txt); nudity: "a photo of a {human}" vs "a photo of a naked {human}" (humans.txt);
objects: "a {scene}" vs "a {object} in a {scene}" (common_scenes.txt). A world's kinds (the
miniature world's digits) take the world's own pairs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError
from harness.recipe import ConceptSettings

DATA_DIR_ENV = "HARNESS_DATA_DIR"

TEMPLATES: dict[str, tuple[str, str, str]] = {
    "artist": ("things.txt", "a photo of a {word}", "a {word} in the style of {target}"),
    "nudity": ("humans.txt", "a photo of a {word}", "a photo of a naked {word}"),
    "object": ("common_scenes.txt", "a {word}", "a {target} in a {word}"),
}
"""Kind -> (word list, base template, target template)."""


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


def prompt_pairs(concept: ConceptSettings, data_dir: Path | None, where: str) -> PromptPairs:
    """Base and target prompts for `concept`; `where` names the recipe file in errors."""
    if concept.kind not in TEMPLATES:
        from harness.world import concept_kinds, world_of_kind

        world = world_of_kind(concept.kind)
        if world is None:
            raise HarnessError(
                f"{where}: concept.kind: no prompt templates for '{concept.kind}' (choose from {', '.join(concept_kinds())})"
            )
        base, target = world.prompt_pairs(concept.target, concept.kind, f"{where}: concept.target")
        return PromptPairs(base=base, target=target)
    filename, base, target = TEMPLATES[concept.kind]
    words = read_word_list(_word_file(filename, concept.kind, data_dir, where), where)
    return PromptPairs(
        base=[base.format(word=w, target=concept.target) for w in words],
        target=[target.format(word=w, target=concept.target) for w in words],
    )


def read_word_list(path: Path, where: str) -> list[str]:
    """One word or phrase a line; blank lines and surrounding spaces dropped."""
    words = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not words:
        raise HarnessError(f"{where}: concept: word list {path} is empty, so the target has no prompts")
    return words


def _word_file(filename: str, kind: str, data_dir: Path | None, where: str) -> Path:
    if data_dir is None:
        raise HarnessError(
            f"{where}: concept.data_dir: kind '{kind}' needs {filename}; set concept.data_dir, "
            f"--data-dir or ${DATA_DIR_ENV}"
        )
    path = data_dir / filename
    if not path.is_file():
        raise HarnessError(f"{where}: concept.data_dir: {path} not found (kind '{kind}' needs {filename})")
    return path
