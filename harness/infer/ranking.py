"""Revival without knowing the concept: rank candidate concepts by how strongly each one drives
the pruned weights of an unlearned model (the paper's future work; issue 15).

The attacker has only the unlearned model. A pruned entry (i, j) of a linear layer is an exact
zero; ConceptPrune chose it because the concept's prompts drive input feature j of that layer
harder than neutral prompts do, S = |W_ij| * ||X_j||. So the candidate whose prompts drive the
pruned entries hardest is the best guess of the erased concept. ||X_j|| is collected for every
candidate with the same hooks as ConceptPrune (harness.unlearn.activations: token-normalised
RMS column norms of the layer's input, per UNet call, classifier-free guidance's unconditional
half included), on the unlearned model, for the first `calls` UNet calls. |W_ij| is gone at a
pruned entry; what the attacker has instead is the row's surviving weights.

Scoring rules (every rule is computed from the same norms, so a ranking under each costs one
collection):

- `nms`: sum over pruned entries of m_i * ||X_j||, m_i the row's largest surviving |w| (the
  Neuron-Max magnitude), averaged over calls: ConceptPrune's own score at the pruned entries.
- `zscore`: each candidate's norm of feature j as a z-score over the candidates (per layer, call
  and feature), averaged over the pruned entries: a feature that every candidate drives counts
  for nothing, a feature only one candidate drives stands out.
- `zscore-nms`: the same, each pruned entry weighted by m_i.
- `reenact`: rerun ConceptPrune's skilled-entry selection (harness.unlearn.conceptprune
  .skilled_mask) with the candidate as target and the mean of the other candidates as base,
  |W| estimated as the surviving |w| and m_i at the pruned entries, k per layer the mean
  number of pruned entries of a row that has any; the score is the share of the pruned entries
  that this reenactment selects again.

Candidates (`load_candidates`): a comma-separated list of prompt suites (harness.generate
.suites; a labelled suite gives one candidate per label, an unlabelled one a single candidate
named after the suite) and candidate files. A candidate file is UTF-8 text, one prompt a line;
blank lines and lines starting with `#` are skipped; `name: prompt` (a name of at most 40
letters, digits, spaces, `_`, `-`, `.` or `'` before the first ': ') adds the prompt to the
candidate `name`, so several lines may share a name; any other line is a candidate of its own,
named by its prompt.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.errors import HarnessError, keyed
from harness.settings.generate import GenerationSettings
from harness.unlearn.activations import column_norms
from harness.unlearn.conceptprune import skilled_mask

log = logging.getLogger(__name__)

RULES = ("nms", "zscore", "zscore-nms", "reenact")
"""The scoring rules, in the order the record lists them."""
DEFAULT_RULE = "zscore"
"""The rule the command prints: in the miniature world every rule ranks the erased digit first
(notes/infer.md); the z-score needs no magnitude guess and discounts features that every
candidate drives, which a larger, more varied candidate list (SD's) is likely to need."""
NAMED_LINE = re.compile(r"([A-Za-z0-9][A-Za-z0-9 _.'-]{0,39}):\s+(\S.*)")
"""`name: prompt` in a candidate file."""


@dataclass(frozen=True)
class Candidate:
    """One candidate concept: a name and the prompts (with their seeds) that stand for it."""

    name: str
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]


@dataclass(frozen=True)
class PrunedLayer:
    """What the attacker reads off one pruned linear weight (out, in): where its exact zeros are
    and the Neuron-Max magnitude of every row."""

    name: str
    shape: tuple[int, int]
    pruned: torch.Tensor
    """(out, in) bool: the exact zeros."""
    magnitude: torch.Tensor
    """(out, in) float: |w| where it survives, the row's largest surviving |w| where pruned."""
    row_max: torch.Tensor
    """(out,) float: the row's largest surviving |w| (the layer's largest where a row is all zero)."""

    @property
    def count(self) -> int:
        return int(self.pruned.sum())

    @property
    def column_count(self) -> torch.Tensor:
        """(in,) pruned entries per input feature."""
        return self.pruned.sum(dim=0).float()

    @property
    def column_nms(self) -> torch.Tensor:
        """(in,) sum of the Neuron-Max magnitudes of the pruned entries of each input feature."""
        return (self.pruned.float() * self.row_max.unsqueeze(1)).sum(dim=0)

    @property
    def k(self) -> int:
        """The per-row budget a reenactment uses: pruned entries per row that has any, rounded."""
        rows = int(self.pruned.any(dim=1).sum())
        return max(1, round(self.count / rows)) if rows else 1


@dataclass
class CandidateScore:
    """A candidate's score under one rule and its rank (1 = the best guess)."""

    name: str
    score: float
    rank: int


@dataclass
class Ranking:
    """Every candidate under one rule, best first."""

    rule: str
    scores: list[CandidateScore] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.scores]

    def rank_of(self, name: str) -> int | None:
        """The 1-based rank of candidate `name`, or None when it is not a candidate."""
        return next((s.rank for s in self.scores if s.name == name), None)


# ---------------------------------------------------------------- the pruned layers


MIN_SHARE = 1e-4
"""Below this share of exact zeros a weight counts as unpruned: a trained fp32 or fp16 weight holds
a stray exact zero now and then (the miniature world's UNet has 2 in one 512 x 64 weight), while
pruning zeroes about 1% of a layer (ConceptPrune on SD: ~0.1% of the UNet, all in its target layers)."""


def pruned_layer(name: str, weight: torch.Tensor, min_share: float = MIN_SHARE) -> PrunedLayer | None:
    """The pruned positions of a 2-D floating weight, or None where its exact zeros are fewer
    than `min_share` of its entries (or none)."""
    if weight.dim() != 2 or not weight.is_floating_point():
        return None
    weight = weight.detach().float().cpu()
    pruned = weight == 0
    if not pruned.any() or float(pruned.float().mean()) < min_share:
        return None
    surviving = weight.abs().masked_fill(pruned, 0)
    row_max = surviving.amax(dim=1)
    row_max = torch.where(row_max > 0, row_max, surviving.max())
    magnitude = torch.where(pruned, row_max.unsqueeze(1).expand_as(surviving), surviving)
    return PrunedLayer(name, (weight.shape[0], weight.shape[1]), pruned, magnitude, row_max)


def pruned_layers(tensors: dict[str, torch.Tensor], patterns: Sequence[str] = (),
                  min_share: float = MIN_SHARE) -> list[PrunedLayer]:
    """Every 2-D weight of `tensors` (those matching `patterns`, when given) whose exact zeros
    are at least `min_share` of it; none at all is a keyed error (the caller names the model)."""
    import fnmatch

    names = [n for n in tensors if n.endswith(".weight") and (not patterns or any(fnmatch.fnmatch(n, p) for p in patterns))]
    layers = [layer for layer in (pruned_layer(n, tensors[n], min_share) for n in names) if layer is not None]
    if not layers:
        scope = f" among the weights matching {', '.join(patterns)}" if patterns else ""
        raise HarnessError(f"no pruned entry (no 2-D weight{scope} with exact zeros in at least "
                           f"{min_share:g} of its entries); nothing to infer the concept from", key="")
    return layers


# ---------------------------------------------------------------- the candidates


def parse_candidate_file(path: Path, seed: int = 0) -> list[Candidate]:
    """The candidates of a candidate file (see the module docstring); prompt j of a candidate
    starts from seed `seed + j`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HarnessError(f"{path}: no such candidate file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise HarnessError(f"{path}: not a readable candidate file ({error})") from None
    groups: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = NAMED_LINE.fullmatch(line)
        name, prompt = (match.group(1).strip(), match.group(2).strip()) if match else (line, line)
        groups.setdefault(name, []).append(prompt)
    return [Candidate(name, tuple(prompts), tuple(seed + j for j in range(len(prompts))))
            for name, prompts in groups.items()]


def candidates_of_suite(name: str, data_dir: str | Path | None = None) -> list[Candidate]:
    """One candidate per label of suite `name` (its records' prompts and seeds), or one named
    after the suite when it has no labels."""
    from harness.generate.suites import load_suite

    with keyed("--candidates"):
        suite = load_suite(name, data_dir)
    groups: dict[str, list[Any]] = {}
    for record in suite.records:
        groups.setdefault(record.label or name, []).append(record)
    return [Candidate(label, tuple(r.prompt for r in records), tuple(r.seed for r in records))
            for label, records in groups.items()]


def load_candidates(spec: str, data_dir: str | Path | None = None, per_candidate: int | None = None,
                    seed: int = 0) -> list[Candidate]:
    """The candidates of `spec`: comma-separated suite names and candidate files (a file is
    anything that exists as a path or ends in .txt); at most `per_candidate` prompts each.
    Fewer than two candidates, or a name given twice, is an error."""
    from harness.generate.suites import list_suites

    candidates: list[Candidate] = []
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts:
        raise HarnessError(f"--candidates: '{spec}' names no suite or file")
    for part in parts:
        path = Path(part).expanduser()
        if path.exists() or part.endswith(".txt") or part not in list_suites() and ("/" in part or "." in part):
            found = parse_candidate_file(path, seed)
            if not found:
                raise HarnessError(f"{path}: no candidate (the file holds no prompt)")
        else:
            found = candidates_of_suite(part, data_dir)
        candidates += found
    if per_candidate is not None:
        if per_candidate < 1:
            raise HarnessError(f"--prompts-per-candidate: must be at least 1, got {per_candidate}")
        candidates = [Candidate(c.name, c.prompts[:per_candidate], c.seeds[:per_candidate]) for c in candidates]
    names = [c.name for c in candidates]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice is not None:
        raise HarnessError(f"--candidates {spec}: candidate '{twice}' is given twice")
    if len(candidates) < 2:
        raise HarnessError(f"--candidates {spec}: {len(candidates)} candidate(s); ranking needs at least two")
    return candidates


# ---------------------------------------------------------------- norms and scores


def candidate_norms(pipeline: Any, layers: Sequence[PrunedLayer], candidates: Sequence[Candidate], calls: int,
                    generation: GenerationSettings) -> dict[str, torch.Tensor]:
    """Per layer, the (candidates, calls, in_features) column norms of the layer's input while
    the pipeline generates each candidate's prompts (ConceptPrune's hooks)."""
    per_candidate = [
        column_norms(pipeline, [layer.name for layer in layers], list(c.prompts), calls, generation,
                     list(c.seeds), f"candidate {c.name}")
        for c in candidates
    ]
    return {layer.name: torch.stack([n[layer.name].float().cpu() for n in per_candidate]) for layer in layers}


def zscores(norms: torch.Tensor) -> torch.Tensor:
    """(candidates, calls, in) norms as z-scores over the candidates, per (call, feature); the
    spread is floored at 1e-3 of the layer's mean norm so that dead features stay near 0."""
    mean = norms.mean(dim=0, keepdim=True)
    spread = norms.std(dim=0, keepdim=True, unbiased=False)
    floor = 1e-3 * norms.mean().clamp(min=1e-12)
    return (norms - mean) / spread.clamp(min=float(floor))


def layer_scores(layer: PrunedLayer, norms: torch.Tensor, rule: str) -> tuple[torch.Tensor, float]:
    """One layer's (candidates,) scores under `rule` and the weight its scores get when layers
    are pooled (the number of pruned entries, so every pruned entry counts once)."""
    if rule == "nms":
        return (norms * layer.column_nms).sum(dim=2).mean(dim=1), 1.0
    if rule in ("zscore", "zscore-nms"):
        weights = layer.column_count if rule == "zscore" else layer.column_nms
        z = zscores(norms)
        return (z * weights).sum(dim=2).mean(dim=1) / weights.sum().clamp(min=1e-12), float(layer.count)
    if rule == "reenact":
        return reenact(layer, norms), float(layer.count)
    raise HarnessError(f"--rule: unknown rule '{rule}' (choose from {', '.join(RULES)})")


def reenact(layer: PrunedLayer, norms: torch.Tensor) -> torch.Tensor:
    """(candidates,) share of the layer's pruned entries that ConceptPrune's selection would pick
    with the candidate as target and the mean of the other candidates as base."""
    count = norms.shape[0]
    total = norms.sum(dim=0)
    shares = []
    for c in range(count):
        base = (total - norms[c]) / max(1, count - 1)
        mask = skilled_mask(layer.magnitude, base, norms[c], min(layer.k, layer.shape[1]))
        shares.append(float((mask & layer.pruned).sum()) / max(1, layer.count))
    return torch.tensor(shares)


def rank(layers: Sequence[PrunedLayer], norms: dict[str, torch.Tensor], names: Sequence[str],
         rules: Sequence[str] = RULES) -> dict[str, Ranking]:
    """The ranking of the candidates `names` under each rule: layer scores pooled with their
    weights, best first (ties keep the candidates' order)."""
    rankings = {}
    for rule in rules:
        total = torch.zeros(len(names), dtype=torch.float64)
        weight = 0.0
        for layer in layers:
            scores, w = layer_scores(layer, norms[layer.name], rule)
            total += w * scores.double()
            weight += w
        pooled = (total / max(weight, 1e-12)).tolist()
        order = sorted(range(len(names)), key=lambda i: (-pooled[i], i))
        rankings[rule] = Ranking(rule, [CandidateScore(names[i], pooled[i], r + 1) for r, i in enumerate(order)])
    return rankings


def infer_concept(pipeline: Any, layers: Sequence[PrunedLayer], candidates: Sequence[Candidate], calls: int,
                  generation: GenerationSettings, rules: Sequence[str] = RULES) -> dict[str, Ranking]:
    """Collect every candidate's norms on the unlearned `pipeline` and rank them under `rules`."""
    unknown = [r for r in rules if r not in RULES]
    if unknown:
        raise HarnessError(f"--rule: unknown rule '{unknown[0]}' (choose from {', '.join(RULES)})")
    norms = candidate_norms(pipeline, layers, candidates, calls, generation)
    return rank(layers, norms, [c.name for c in candidates], rules)
