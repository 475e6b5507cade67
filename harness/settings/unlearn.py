"""The unlearn stage's settings: what is erased (the concept), a method entry of the matrix and its defense."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, Any

from annotated_types import Gt

from harness.config import check_bounds
from harness.inputs import INPUT_FOLDER
from harness.layout import check_label

SD_FFN_LAYERS = ["*transformer_blocks.0.ff.net.2.weight"]
"""ConceptPrune's target: the second feed-forward linear of every transformer block 0
(16 layers in the SD-v1.x UNet; the same names in the miniature world)."""


@dataclass
class ConceptSettings:
    """What is erased: a target concept (or several at once) and its kind (which prompt templates apply)."""

    target: str | list[str]
    """the concept, or a list of concepts erased together (pruning methods unite their masks)"""
    kind: str
    """object, artist, nudity, or a world's kind (digit)"""
    anchor: str | None = None
    """A concept to map the target onto (AC's anchor, e.g. "a photo of a digit"); methods that need one say so."""
    data_dir: str | None = field(default=None, metadata=INPUT_FOLDER)
    """Folder of the prompt word lists (things.txt, humans.txt, common_scenes.txt); `--data-dir`
    overrides it and $HARNESS_DATA_DIR stands in when both are unset."""

    def __post_init__(self) -> None:
        targets = self.targets
        if not targets or any(not t.strip() for t in targets):
            raise ValueError("target: empty")
        if len(set(targets)) != len(targets):
            raise ValueError(f"target: {targets} names a concept twice")

    @property
    def targets(self) -> list[str]:
        """The erased concepts, one or several."""
        return [self.target] if isinstance(self.target, str) else list(self.target)

    @property
    def several(self) -> bool:
        """Whether several concepts are erased at once."""
        return len(self.targets) > 1

    @property
    def label(self) -> str:
        """The concepts for tables and titles: `seven` or `seven + three`."""
        return " + ".join(self.targets)

    def each(self) -> list[ConceptSettings]:
        """One single-target concept per target, in order."""
        return [dataclasses.replace(self, target=t) for t in self.targets]


@dataclass
class DefenseSettings:
    """Gaussian obfuscation: pruned weights get N(0, sigma^2) draws instead of zeros."""

    sigma: Annotated[float, Gt(0)]
    """standard deviation sigma_M of the draws"""
    seed: int = 0

    def __post_init__(self) -> None:
        check_bounds(self)


@dataclass
class MethodSettings:
    """One unlearning method of the matrix: a registered name or `package.module:function`, its
    params, the layers it may change, an optional defense and the attacks run on it."""

    method: str
    name: str | None = None
    """The row's label (default: the method's name, with the defense's sigma when defended)."""
    params: dict[str, Any] = field(default_factory=dict)
    layers: list[str] | None = None
    """Glob patterns over UNet parameter names: the weights the method may change (default: the
    method's `default_layers`, else SD_FFN_LAYERS)."""
    defense: DefenseSettings | None = None
    attacks: list[str] | None = None
    """The labels of the recipe's attacks run on this row (default: every attack)."""
    cache: bool = False
    """Keep the unlearned model in the harness cache and reuse it across runs (control rows do)."""

    def __post_init__(self) -> None:
        if self.layers is not None and not self.layers:
            raise ValueError("layers must name at least one glob pattern")
        if self.name is None:
            base = self.method.rpartition(":")[2].replace("_", "-")
            self.name = base + (f"-sigma{self.defense.sigma:g}" if self.defense else "")
        check_label(self.name, "name")

    def runs(self, attack: str) -> bool:
        """Whether the attack labelled `attack` runs on this row."""
        return self.attacks is None or attack in self.attacks
