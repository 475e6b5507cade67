"""Finding Gaussian-obfuscated weights (issue 15): scores per weight, higher = more likely obfuscated.

Against the Gaussian defense (`harness.unlearn.defense`) the pruned positions hold N(0, sigma_M^2)
draws instead of zeros, and the attacker has to guess them. Detectors, each `weight -> scores`:

- `eq7`: the paper's Eq. 7 as a per-weight posterior. With a share alpha of entries drawn from
  N(0, sigma_M^2) and the rest from N(0, sigma_U^2),
  p(w) = a N(w; 0, sM) / (a N(w; 0, sM) + (1 - a) N(w; 0, sU)). alpha, sigma_M and sigma_U are
  estimated per matrix by EM on a two-component zero-mean Gaussian mixture (`fit_mixture`), the
  minority component counting as the obfuscated one, unless given.
- `lowrank`: structure. Skilled-neuron pruning (ConceptPrune on a feed-forward's output matrix)
  prunes nearly whole columns (the concept's hidden units), and draws from N(0, sigma_M^2) are
  directions the matrix's low-rank structure does not explain, whatever sigma_M is. Each column
  is scaled to unit norm (so the score does not depend on sigma_M), the structure's left singular
  vectors are fitted (again without the flagged columns), and a column's score is the share of
  its energy outside that subspace; inside a column, entries whose magnitude is far from the
  unflagged columns' typical one come first. Its share estimate is that of the flagged columns
  (ConceptPrune leaves some entries of those columns, so it over-covers them).
- `columns`: `lowrank`'s flagged columns, and inside them the small entries first (ConceptPrune
  prunes about half of each skilled column; the revival completes the marked entries from the
  column's unmarked ones, so the whole column must not be marked). Every entry of a flagged column
  scores above every entry of the others; within each group the score decreases with |w|. Its share
  estimate is the narrow component's share of a mixture (`fit_mixture`) fitted on the flagged
  columns' entries, times their share of the matrix.
- `magnitude`: the naive guess, -|w| (small entries first).

`detected_mask` keeps the top `share` of a detector's scores (default: the detector's own
estimate of alpha, `estimated_share`); `auroc` measures scores against a true mask.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torchmetrics.functional.classification import binary_auroc

from harness.registry import detector, resolve

Detector = Callable[[torch.Tensor], torch.Tensor]
"""weight matrix -> float score per entry (same shape), higher = more likely obfuscated."""

EM_ITERATIONS = 50
NOISE_FACTOR = 2.0
"""`lowrank`'s default rank keeps singular values with s^2 > NOISE_FACTOR * columns / rows of the
column-normalised matrix (whose total energy is the number of columns)."""
FIT_ROUNDS = 3


@dataclass(frozen=True)
class Mixture:
    """A two-component zero-mean Gaussian mixture: share `alpha` from N(0, sigma_m^2), the rest N(0, sigma_u^2)."""

    alpha: float
    sigma_m: float
    sigma_u: float


def fit_mixture(weight: torch.Tensor, iterations: int = EM_ITERATIONS) -> Mixture:
    """EM on the entries of `weight`, from a narrow and from a wide minority component (alpha 0.05
    and a hundredth / ten times the mean square); the fit of higher likelihood is kept."""
    w2 = weight.detach().double().flatten().pow(2)
    scale = w2.mean().clamp_min(1e-300)
    best: tuple[float, Mixture] | None = None
    for start in (scale / 100, scale * 10):
        alpha = torch.tensor(0.05, dtype=torch.float64)
        var_m, var_u = start.clone(), scale.clone()
        for _ in range(iterations):
            log_m, log_u = _log_joint(w2, alpha, var_m, var_u)
            gamma = torch.sigmoid(log_m - log_u)
            alpha = gamma.mean().clamp(1e-6, 1 - 1e-6)
            var_m = ((gamma * w2).sum() / gamma.sum().clamp_min(1e-300)).clamp_min(1e-300)
            var_u = (((1 - gamma) * w2).sum() / (1 - gamma).sum().clamp_min(1e-300)).clamp_min(1e-300)
        log_m, log_u = _log_joint(w2, alpha, var_m, var_u)
        likelihood = float(torch.logaddexp(log_m, log_u).sum())
        fit = Mixture(float(alpha), float(var_m.sqrt()), float(var_u.sqrt()))
        if fit.alpha > 0.5:  # the minority component is the obfuscated one
            fit = Mixture(1 - fit.alpha, fit.sigma_u, fit.sigma_m)
        if best is None or likelihood > best[0]:
            best = (likelihood, fit)
    assert best is not None
    return best[1]


def _log_joint(w2: torch.Tensor, alpha: torch.Tensor, var_m: torch.Tensor, var_u: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """log(a N(w; 0, var_m)) and log((1 - a) N(w; 0, var_u)), without the shared constant."""
    return (torch.log(alpha) - 0.5 * torch.log(var_m) - w2 / (2 * var_m),
            torch.log1p(-alpha) - 0.5 * torch.log(var_u) - w2 / (2 * var_u))


def eq7(weight: torch.Tensor, mixture: Mixture | None = None) -> torch.Tensor:
    """Posterior that each entry was obfuscated (float64); `mixture` defaults to `fit_mixture(weight)`."""
    mixture = fit_mixture(weight) if mixture is None else mixture
    if not 0 < mixture.alpha < 1 or mixture.sigma_m <= 0 or mixture.sigma_u <= 0:
        raise ValueError(f"eq7: alpha must lie in (0, 1) and the sigmas be positive, got {mixture}")
    w2 = weight.detach().double().pow(2)
    alpha = torch.tensor(mixture.alpha, dtype=torch.float64)
    log_m, log_u = _log_joint(w2, alpha, torch.tensor(mixture.sigma_m ** 2, dtype=torch.float64),
                              torch.tensor(mixture.sigma_u ** 2, dtype=torch.float64))
    return torch.sigmoid(log_m - log_u)


def column_scores(weight: torch.Tensor, rank: int | None = None) -> torch.Tensor:
    """Per column, the share of its (unit-normalised) energy outside the top `rank` left singular
    vectors. By default the rank is the number of singular values with s^2 > NOISE_FACTOR * columns
    / rows (a direction that only one or a few columns carry, such as an obfuscated column's, is
    never part of the structure); the fit is repeated without the flagged columns (`flagged`)."""
    return _column_fit(weight, rank)[0]


def _column_fit(weight: torch.Tensor, rank: int | None) -> tuple[torch.Tensor, int]:
    w = weight.detach().double()
    if rank is not None and rank < 1:
        raise ValueError(f"lowrank: rank must be at least 1, got {rank}")
    rows = w.shape[0]
    unit = w / w.norm(dim=0, keepdim=True).clamp_min(1e-300)
    keep = torch.ones(w.shape[1], dtype=torch.bool, device=w.device)
    scores, used = torch.zeros(w.shape[1], dtype=torch.float64, device=w.device), 1
    for _ in range(FIT_ROUNDS):
        vectors, values, _ = torch.linalg.svd(unit[:, keep], full_matrices=False)
        used = rank if rank is not None else max(1, int((values.pow(2) > NOISE_FACTOR * int(keep.sum()) / rows).sum()))
        used = min(used, rows - 1) if rows > 1 else 1
        basis = vectors[:, :used]
        scores = (unit - basis @ (basis.T @ unit)).pow(2).sum(0)
        new_keep = ~flagged(scores, used, rows)
        if int(new_keep.sum()) <= used or new_keep.equal(keep):
            break
        keep = new_keep
    return scores, used


def flagged(scores: torch.Tensor, rank: int, rows: int) -> torch.Tensor:
    """Columns scoring above the midpoint between the median score and 1 - rank / rows, the
    expected score of a random direction (an obfuscated column's)."""
    return scores > (scores.median() + 1 - rank / rows) / 2


def lowrank(weight: torch.Tensor, rank: int | None = None) -> torch.Tensor:
    """Column score (`column_scores`) of every entry, plus up to 1e-3 for how far log|w| lies from
    the typical log|w| of the unflagged columns (tiny or huge draws inside a flagged column first)."""
    per_column, used = _column_fit(weight, rank)
    logs = weight.detach().double().abs().clamp_min(1e-300).log()
    normal = ~flagged(per_column, used, weight.shape[0])
    typical = logs[:, normal].median() if normal.any() else logs.median()
    distance = (logs - typical).abs()
    return per_column.expand(weight.shape[0], -1) + 1e-3 * distance / (1 + distance)


def flagged_columns(weight: torch.Tensor) -> torch.Tensor:
    """Boolean per column: `lowrank`'s flagged columns (default rank)."""
    scores, used = _column_fit(weight, None)
    return flagged(scores, used, weight.shape[0])


def columns(weight: torch.Tensor) -> torch.Tensor:
    """1 + 1 / (1 + |w| / m) in the flagged columns (`flagged_columns`), 1 / (1 + |w| / m)
    elsewhere, with m the median |w| of the unflagged columns: flagged columns first, small
    entries first within each."""
    hit = flagged_columns(weight)
    size = weight.detach().double().abs()
    typical = (size[:, ~hit].median() if (~hit).any() else size.median()).clamp_min(1e-300)
    return hit.double().expand(weight.shape[0], -1) + 1 / (1 + size / typical)


def magnitude(weight: torch.Tensor) -> torch.Tensor:
    """The naive guess: -|w| (the smallest entries first)."""
    return -weight.detach().double().abs()


def mixture_share(weight: torch.Tensor) -> float:
    """alpha of the fitted mixture."""
    return fit_mixture(weight).alpha


def flagged_column_share(weight: torch.Tensor) -> float:
    """The share of entries in flagged columns (`flagged_columns`); the mixture's alpha where none is."""
    count = int(flagged_columns(weight).sum())
    return count / weight.shape[1] if count else mixture_share(weight)


def in_column_share(weight: torch.Tensor) -> float:
    """The narrow component's share of a mixture fitted on the flagged columns' entries, times
    those columns' share of the matrix; the mixture's alpha where no column is flagged."""
    hit = flagged_columns(weight)
    if not hit.any():
        return mixture_share(weight)
    fit = fit_mixture(weight[:, hit])
    narrow = fit.alpha if fit.sigma_m <= fit.sigma_u else 1 - fit.alpha
    return narrow * int(hit.sum()) / weight.shape[1]


for _name, _detector, _estimate in (("eq7", eq7, mixture_share), ("lowrank", lowrank, flagged_column_share),
                                    ("columns", columns, in_column_share), ("magnitude", magnitude, mixture_share)):
    detector(_name, estimate=_estimate)(_detector)


def resolve_detector(name: str | Detector) -> Detector:
    """A declared detector by name or import path (a callable passes through)."""
    return name if callable(name) else resolve("detector", name).target


def estimated_share(weight: torch.Tensor, name: str | Detector) -> float:
    """The detector's estimate of the obfuscated share (the mixture's alpha for an undeclared callable)."""
    estimate = resolve("detector", name).estimate if isinstance(name, str) else None
    return (estimate or mixture_share)(weight)


def detected_mask(weight: torch.Tensor, name: str | Detector, share: float | None = None) -> torch.Tensor:
    """Boolean mask of the top `share` of the detector's scores (at least one entry); `share`
    defaults to `estimated_share`. Ties at the cut are broken by position (deterministic)."""
    if share is not None and not 0 < share < 1:
        raise ValueError(f"mask share must lie in (0, 1), got {share}")
    scores = resolve_detector(name)(weight).flatten()
    share = estimated_share(weight, name) if share is None else share
    count = min(scores.numel(), max(1, math.ceil(share * scores.numel())))
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    mask[torch.argsort(scores, descending=True, stable=True)[:count]] = True
    return mask.view(weight.shape)


def auroc(scores: torch.Tensor, truth: torch.Tensor) -> float:
    """ROC AUC of `scores` against the true mask (torchmetrics' binary_auroc)."""
    return float(binary_auroc(scores.detach().flatten().double().cpu(), truth.detach().flatten().long().cpu()))
