"""Worlds: model families the harness carries itself, as plug-ins (the miniature digits world).

A world is declared by name (`harness.registry.world`) and is an object with the
`World` interface below: the pipeline folder `zoo:NAME` stands for, the concept kinds it knows
(with their prompt pairs for pruning methods), its built-in prompt suites and its reference
image sets for FID. Generic code reaches a world only through this module, so models/,
generate/, score/ and unlearn/ name no world; the plug-ins live in harness/worlds/.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from harness.errors import HarnessError, in_file
from harness.registry import plugins, registered, resolve

ZOO_PREFIX = "zoo:"
BASE_CONCEPT_KINDS = ("object", "artist", "nudity")
"""Concept kinds with prompt templates of their own (harness.unlearn.prompts)."""


class World:
    """The interface of a world plug-in; every hook but `pipeline_dir` has a default."""

    name: str = ""
    concept_kinds: tuple[str, ...] = ()

    def pipeline_dir(self) -> Path:
        """The folder of the world's diffusers pipeline, made ready (installed or built) first."""
        raise NotImplementedError

    def identity(self) -> str:
        """A short content identity of the world's weights (changes when they change)."""
        return self.name

    def prompt_pairs(self, target: str, kind: str) -> tuple[list[str], list[str]]:
        """Base prompts (without the concept) and target prompts (with it) for a concept of one
        of `concept_kinds`; an error is keyed at the recipe's `concept`."""
        raise HarnessError(f"world {self.name} has no prompts for kind '{kind}'", key="concept.kind", rooted=True)

    def suite_names(self) -> list[str]:
        """Names of the world's built-in prompt suites (for listings)."""
        return []

    def suite(self, name: str) -> Any:
        """The built-in suite (a harness.generate.suites.Suite) `name`, or None when it is not one of this world's."""
        return None

    def reference_images(self, name: str, size: tuple[int, int], batch_size: int) -> Iterator[torch.Tensor] | None:
        """uint8 batches (N, C, H, W) of the reference image set `name` at `size`, or None."""
        return None

    def labelled_images(self, split: str, size: int) -> tuple[torch.Tensor, list[str]] | None:
        """Real images in [0, 1] (N, C, size, size) of a split (`train`, `heldout`) and their labels
        (concept names of the world's kind), or None when the world has none."""
        return None

    def label_prompts(self, label: str) -> list[str]:
        """Prompts that describe an image of `label` (the captions of labelled images)."""
        raise HarnessError(f"world {self.name} has no prompts for label '{label}'")

    def concept_names(self, target: str) -> list[str]:
        """Every way a prompt names the concept `target` (a prompt attack rewrites them)."""
        return [target]

    def neutral_prompts(self) -> list[str]:
        """The prompts that name no concept the world was trained with (its prompt dropout's)."""
        return []


def all_worlds() -> list[World]:
    """Every registered world."""
    return [plugin.target for plugin in plugins("world")]


def world_named(name: str) -> World:
    """The world registered as `name` (an error is keyed: the caller names the key)."""
    if name not in registered("world"):
        raise HarnessError(f"unknown world '{name}' (known: {', '.join(registered('world'))})", key="")
    world = resolve("world", name).target
    if not isinstance(world, World):
        raise HarnessError(f"world '{name}' is a {type(world).__name__}, not a harness.world.World", key="")
    return world


def world_of_source(source: str) -> World | None:
    """The world a model source names (`zoo:NAME`), else None."""
    if not source.startswith(ZOO_PREFIX):
        return None
    with in_file(source):
        return world_named(source.removeprefix(ZOO_PREFIX))


def world_of_kind(kind: str) -> World | None:
    """The world that knows concept kind `kind`, else None."""
    return next((w for w in all_worlds() if kind in w.concept_kinds), None)


def concept_names(target: str, kind: str) -> list[str]:
    """Every way a prompt names a concept: its world's names for it, else the target itself."""
    world = world_of_kind(kind)
    return world.concept_names(target) if world is not None else [target]


def concept_kinds() -> list[str]:
    """Every concept kind a recipe may name."""
    return [*BASE_CONCEPT_KINDS, *(k for w in all_worlds() for k in w.concept_kinds)]


def check_concept_kind(kind: str) -> None:
    """Raise (keyed) unless `kind` is a known concept kind."""
    known = concept_kinds()
    if kind not in known:
        raise HarnessError(f"unknown kind '{kind}' (choose from {', '.join(known)})", key="")


def builtin_suite(name: str) -> Any:
    """A world's built-in suite `name`, else None."""
    for world in all_worlds():
        suite = world.suite(name)
        if suite is not None:
            return suite
    return None


def builtin_suite_names() -> list[str]:
    """Every world's built-in suite names."""
    return [name for world in all_worlds() for name in world.suite_names()]


def reference_images(name: str, size: tuple[int, int], batch_size: int) -> Iterator[torch.Tensor] | None:
    """A world's named reference image set, else None."""
    for world in all_worlds():
        batches = world.reference_images(name, size, batch_size)
        if batches is not None:
            return batches
    return None
