"""The recipe: the whole of one experiment in one YAML file, validated on load.

Sections: `model` (hub id, local path or `zoo:NAME`), `concept`, `unlearn`, `attack`,
`generation`, `suites`. Every key is checked: a typo is an error naming the file and the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from harness.config import load_yaml, parse_dataclass
from harness.errors import HarnessError

SD_FFN_LAYERS = ["*transformer_blocks.0.ff.net.2.weight"]
"""ConceptPrune's target: the second feed-forward linear of every transformer block 0
(16 layers in the SD-v1.x UNet; the same names in the miniature world)."""

Magnitude = Literal["nms", "average", "sample", "align"]
Strategy = Literal[
    "attack", "quant4", "ideal-sign-nms", "ideal-sign-sample", "ideal-magnitude-random-sign"
]


@dataclass
class MaskSettings:
    """How pruned positions are found: exact zeros, a mask file, or |w| <= threshold."""

    kind: Literal["zeros", "file", "threshold"] = "zeros"
    file: str | None = None
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.kind == "file" and not self.file:
            raise ValueError("mask kind 'file' needs key 'file'")
        if self.kind == "threshold" and (self.threshold is None or self.threshold <= 0):
            raise ValueError("mask kind 'threshold' needs a positive 'threshold'")


@dataclass
class CompletionSettings:
    """Matrix completion: SoftImpute (the paper) or the authors' published code's behaviour."""

    mode: Literal["softimpute", "reference-code"] = "softimpute"
    lambda_ratio: float = 0.02
    """lambda = lambda_ratio * largest singular value of the zero-filled matrix (s1/50)."""
    path_steps: int = 2
    """Warm starts along a geometric lambda path from s1 down to lambda, this many stages."""
    tol: float = 1e-4
    max_iters: int = 100
    max_rank: int | None = None
    dtype: Literal["float32", "float64"] = "float32"

    def __post_init__(self) -> None:
        if not 0 < self.lambda_ratio < 1:
            raise ValueError(f"lambda_ratio must lie in (0, 1), got {self.lambda_ratio}")
        if self.tol <= 0 or self.max_iters < 1 or self.path_steps < 1:
            raise ValueError("tol must be positive, max_iters and path_steps at least 1")
        if self.max_rank is not None and self.max_rank < 1:
            raise ValueError(f"max_rank must be at least 1, got {self.max_rank}")


@dataclass
class AttackSettings:
    """Everything `harness revive` needs; command-line options override these."""

    unlearned: str | None = None
    original: str | None = None
    out: str | None = None
    layers: list[str] = field(default_factory=lambda: list(SD_FFN_LAYERS))
    mask: MaskSettings = field(default_factory=MaskSettings)
    completion: CompletionSettings = field(default_factory=CompletionSettings)
    top_k: float = 0.6
    magnitude: Magnitude = "nms"
    strategy: Strategy = "attack"
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if not 0 < self.top_k <= 1:
            raise ValueError(f"top_k must lie in (0, 1], got {self.top_k}")
        if not self.layers:
            raise ValueError("layers must name at least one glob pattern")


@dataclass
class VariantSettings:
    """One revival to run and evaluate: a name and what it changes in the recipe's attack."""

    name: str
    strategy: Strategy | None = None
    magnitude: Magnitude | None = None
    top_k: float | None = None


@dataclass
class ConceptSettings:
    """What is erased: a target concept and its kind (which prompt templates apply)."""

    target: str
    kind: Literal["object", "artist", "nudity", "digit"]
    data_dir: str | None = None
    """Folder of the prompt word lists (things.txt, humans.txt, common_scenes.txt); `--data-dir`
    overrides it and $HARNESS_DATA_DIR stands in when both are unset."""


@dataclass
class DefenseSettings:
    """Gaussian obfuscation: pruned weights get N(0, sigma^2) draws instead of zeros."""

    sigma: float
    seed: int = 0

    def __post_init__(self) -> None:
        if self.sigma <= 0:
            raise ValueError(f"sigma must be positive, got {self.sigma}")


@dataclass
class UnlearnSettings:
    """A method by registered name or import path `package.module:function`, with its params."""

    method: str
    params: dict[str, Any] = field(default_factory=dict)
    defense: DefenseSettings | None = None
    layers: list[str] = field(default_factory=lambda: list(SD_FFN_LAYERS))
    """Glob patterns over UNet parameter names: the weights the method may change."""

    def __post_init__(self) -> None:
        if not self.layers:
            raise ValueError("layers must name at least one glob pattern")


@dataclass
class GenerationSettings:
    """Sampling settings; defaults are the protocol's (PROTOCOL.md section 4)."""

    steps: int = 50
    guidance: float = 7.5
    height: int | None = None
    width: int | None = None
    seed_policy: Literal["row", "fixed"] = "row"
    fixed_seed: int = 0
    batch_size: int = 8
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    shard_size: int = 100
    scheduler: str | None = "PNDMScheduler"
    guidance_policy: Literal["fixed", "row"] = "fixed"
    """fixed: `guidance` for every prompt; row: a suite row's own guidance where it has one."""


@dataclass
class Recipe:
    """One experiment."""

    name: str
    model: str
    concept: ConceptSettings | None = None
    unlearn: UnlearnSettings | None = None
    attack: AttackSettings = field(default_factory=AttackSettings)
    variants: list[VariantSettings] = field(default_factory=lambda: [VariantSettings(name="nms")])
    """The revivals the benchmark runs, each evaluated as model `revived-<name>`."""
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    suites: list[str] = field(default_factory=list)
    source: str = ""
    """The file the recipe was read from (set on load)."""


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file; relative paths inside it stay as written."""
    data = load_yaml(path)
    if "source" in data:
        raise HarnessError(f"{path}: unknown key 'source'")
    recipe = parse_dataclass(Recipe, data, str(path))
    recipe.source = str(path)
    return recipe
