"""Settings of the revival attack: how pruned positions are found, how the matrix is completed,
and how signs and magnitudes are chosen. `harness revive` takes them as options and a recipe's
revival attacks take them as `params`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from annotated_types import Ge, Gt, Le, Lt

from harness.config import check_bounds
from harness.inputs import INPUT_FILE

Magnitude = Literal["nms", "average", "sample", "align"]
Strategy = Literal["attack", "quant4", "ideal-sign-nms", "ideal-sign-sample", "ideal-magnitude-random-sign"]
IDEAL_STRATEGIES = ("ideal-sign-nms", "ideal-sign-sample", "ideal-magnitude-random-sign")
"""The strategies that read the original weights (the paper's ideal-case study)."""


MIN_PRUNED_SHARE = 1e-4
"""The default least share of exact zeros that makes a layer count as pruned. Natural zeros are far
rarer: random fp32 weights hold about 3 in SD's 16 feed-forward output layers (6e-8 of their
entries), about 2e-6 after an fp16 cast (93); ConceptPrune zeroes up to skill_ratio of each row (the
paper's 0.01-0.02, about 2% of a layer in the digits world at 0.05)."""


@dataclass
class MaskSettings:
    """How pruned positions are found: exact zeros (no key given), a mask file, |w| <= threshold,
    or a detector of Gaussian-obfuscated weights (`harness.attack.revival.detect`) keeping its top share.
    Exact zeros count only in a layer where they make at least `min_pruned_share` of the entries."""

    file: str | None = field(default=None, metadata={"flag": "--mask-file", **INPUT_FILE})
    """safetensors file of masks (nonzero = pruned) per layer"""
    threshold: float | None = field(default=None, metadata={"flag": "--zero-threshold"})
    """count |w| <= THRESHOLD as pruned (for models defended with Gaussian obfuscation)"""
    detector: str | None = field(default=None, metadata={"flag": "--mask-detector"})
    """detector of obfuscated weights (eq7, lowrank, columns, magnitude): count its top share of scores as pruned"""
    share: float | None = field(default=None, metadata={"flag": "--mask-share"})
    """share of each layer's entries the detector marks (none: the detector's estimate of alpha)"""
    min_pruned_share: float = field(default=MIN_PRUNED_SHARE, metadata={"flag": "--min-pruned-share"})
    """exact zeros: a layer counts as pruned only where its zeros are at least this share of its entries
    (1e-4: float weights hold a few zeros per million by chance, ConceptPrune zeroes about 1-2%)"""

    def __post_init__(self) -> None:
        if not 0 <= self.min_pruned_share < 1:
            raise ValueError(f"mask min_pruned_share must lie in [0, 1), got {self.min_pruned_share}")
        if self.file and self.threshold is not None:
            raise ValueError("mask: give a mask file or a threshold, not both")
        if self.threshold is not None and not self.threshold > 0:
            raise ValueError(f"mask threshold must be positive, got {self.threshold}")
        if self.detector is not None:
            from harness.registry import is_import_path, registered

            if self.detector not in registered("detector") and not is_import_path(self.detector):
                raise ValueError(f"unknown mask detector '{self.detector}' (known: {', '.join(registered('detector'))})")
            if self.file or self.threshold is not None:
                raise ValueError(f"mask detector '{self.detector}': give a detector, a mask file or a threshold, "
                                 "not two of them")
        if self.share is not None:
            if self.detector is None:
                raise ValueError(f"mask share {self.share} needs a mask detector")
            if not 0 < self.share < 1:
                raise ValueError(f"mask share must lie in (0, 1), got {self.share}")

    @property
    def kind(self) -> Literal["zeros", "file", "threshold", "detector"]:
        """Which of the four ways the settings choose."""
        if self.detector is not None:
            return "detector"
        return "file" if self.file else "threshold" if self.threshold is not None else "zeros"


@dataclass
class CompletionSettings:
    """Matrix completion: SoftImpute (the paper) or the authors' published code's behaviour."""

    mode: Literal["softimpute", "reference-code"] = field(default="softimpute", metadata={"flag": "--completion"})
    """completion mode: softimpute (the paper's) or reference-code (the authors' published code)"""
    lambda_ratio: Annotated[float, Gt(0), Lt(1)] = 0.02
    """lambda = lambda_ratio * largest singular value of the zero-filled matrix (s1/50)."""
    path_steps: int = 2
    """Warm starts along a geometric lambda path from s1 down to lambda, this many stages."""
    tol: float = 1e-4
    """relative change of the imputed entries that ends a stage"""
    max_iters: int = 100
    """iterations per stage at most"""
    max_rank: Annotated[int, Ge(1)] | None = None
    """keep at most this many singular values (none: no cap)"""
    dtype: Literal["float32", "float64"] = "float32"
    """completion precision"""
    acceleration: Literal["anderson", "nesterov", "none"] = "anderson"
    """acceleration of the SoftImpute map (the same convex solution): safeguarded Anderson mixing,
    Nesterov momentum with gradient restart, or plain iterations"""
    stage_tol: Annotated[float, Gt(0)] | None = 0.03
    """tolerance of the lambda path's intermediate stages (never below tol; they only give warm
    starts); none: tol in every stage"""
    gram_refresh: Annotated[int, Ge(1)] = 20
    """exact Z Z^T every this many iterations, sparse updates on the pruned entries in between"""
    stall_patience: Annotated[int, Ge(1)] = 10
    """iterations without a 10 percent fall of the change, once it is below 1e3 machine epsilon, that count
    as a stall at the dtype's noise floor"""
    on_stall: Literal["float64", "stop"] = "float64"
    """a stalled float32 layer continues in float64 (logged, recorded), or the stage stops unconverged"""
    residual: bool = True
    """report each layer's fixed-point residual ||M - S_lambda(P_Omega X + P_Omega^c M)|| / ||M||"""

    def __post_init__(self) -> None:
        check_bounds(self)
        if self.tol <= 0 or self.max_iters < 1 or self.path_steps < 1:
            raise ValueError("tol must be positive, max_iters and path_steps at least 1")


@dataclass
class RevivalParams:
    """The revival's algorithm: which layers, which positions, completion, Top-K and magnitudes."""

    layers: list[str] | None = None
    """target layer glob over UNet parameter names (repeatable; none: the attacked method's layers, else SD's ff.net.2)"""
    mask: MaskSettings = field(default_factory=MaskSettings)
    completion: CompletionSettings = field(default_factory=CompletionSettings)
    top_k: Annotated[float, Gt(0), Le(1)] = 0.6
    """fraction of completed values whose sign is kept (global per layer)"""
    magnitude: Magnitude = "nms"
    """magnitude rule: nms (the paper's), average, sample, align"""
    strategy: Strategy = "attack"
    """attack, the quant4 baseline, or an ideal case (these read the original weights)"""
    seed: int = 0
    """seed of sampled magnitudes and random signs"""

    def __post_init__(self) -> None:
        check_bounds(self)
        if self.layers is not None and not self.layers:
            raise ValueError("layers must name at least one glob pattern")


@dataclass
class ReviveSettings:
    """Everything `harness revive` needs: the models, the output folder, the device, the algorithm."""

    unlearned: str | None = None
    """unlearned model: hub id, diffusers folder, .safetensors or .pt state dict, or zoo:NAME"""
    original: str | None = None
    """original model, for sign accuracy and the ideal-case ablations"""
    out: str | None = None
    """output folder (revived tensors and the report)"""
    device: str = "auto"
    """auto (each process's own device), cpu, cuda, cuda:1, ..."""
    params: RevivalParams = field(default_factory=RevivalParams)
    fidelity: Literal["paper", "reference-code"] = "paper"
    """paper: the paper's definitions; reference-code: the authors' published code's behaviour
    (Top-K count, Neuron Sample and NMS statistics, fp16 Quant Recover) to reproduce their tables"""
    allow_nothing_pruned: bool = False
    """finish (exit 0) even when no target layer has a pruned entry"""


REVIVAL_PRESETS: dict[str, dict[str, str]] = {
    "nms": {"magnitude": "nms", "strategy": "attack"},
    "average": {"magnitude": "average", "strategy": "attack"},
    "sample": {"magnitude": "sample", "strategy": "attack"},
    "align": {"magnitude": "align", "strategy": "attack"},
    "quant4": {"strategy": "quant4"},
    **{strategy: {"strategy": strategy} for strategy in IDEAL_STRATEGIES},
}
"""The registered attacks of the revival family and the settings each one's name fixes."""
