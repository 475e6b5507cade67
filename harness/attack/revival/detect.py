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
from typing import TypeVar

import torch
from torchmetrics.functional.classification import binary_auroc

from harness.registry import detector, resolve

T = TypeVar("T")
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
    and a hundredth / ten times the mean square); the fit of higher likelihood is kept.

    Runs on the weight's device, both starts at once. An E-step is one affine map and a sigmoid
    per entry, the posterior logit log(a N(w; 0, var_m)) - log((1 - a) N(w; 0, var_u)) being
    c0 + c1 w^2; the M-step needs only sum(gamma) and sum(gamma w^2) (sum(w^2) is fixed). The
    entries are float32, the sums float64 over float32 pieces of FIT_PIECE entries (on the CPU;
    one piece on an accelerator); the parameters stay float64. The last fit of each weight is
    kept (`_remembered`), so a detector's scores and its share estimate fit the layer once."""
    return _remembered("mixture", weight, iterations, lambda: _fit(weight, iterations))


FIT_PIECE = 1 << 20
"""Entries per float32 partial sum of the EM on the CPU (the partial sums add in float64; fewer, larger
pieces keep torch's threads from waiting on each other on a busy machine)."""

_LAST_FIT: dict[str, tuple[torch.Tensor, tuple[int, object], object]] = {}
"""Per kind of fit ("mixture", "columns"), the last weight fitted (the tensor itself, its in-place
version and the fit's option) and its fit: the same tensor, unchanged, is not fitted again."""


def _remembered(kind: str, weight: torch.Tensor, option: object, compute: Callable[[], T]) -> T:
    """`compute()`, or the fit remembered for this very tensor, unchanged since, and option."""
    key = (weight._version, option)
    last = _LAST_FIT.get(kind)
    if last is not None and last[0] is weight and last[1] == key:
        return last[2]  # type: ignore[return-value]
    fit = compute()
    _LAST_FIT[kind] = (weight, key, fit)
    return fit


def _fit(weight: torch.Tensor, iterations: int) -> Mixture:
    f64 = torch.float64
    w2 = weight.detach().flatten().float().square()
    n = w2.numel()
    total = w2.sum(dtype=f64)
    scale = (total / n).clamp_min(1e-300)
    var_m, var_u = torch.stack([scale / 100, scale * 10]), torch.stack([scale, scale])  # the two starts
    alpha = torch.full((2,), 0.05, dtype=f64, device=w2.device)
    pieces = w2.split(FIT_PIECE if w2.device.type == "cpu" else max(1, n))
    work = torch.empty(2, max(p.numel() for p in pieces), device=w2.device)
    for _ in range(iterations):
        c0, c1 = _logit(alpha, var_m, var_u)
        g, gw = torch.zeros(2, dtype=f64, device=w2.device), torch.zeros(2, dtype=f64, device=w2.device)
        for piece in pieces:
            gamma = work[:, :piece.numel()]
            torch.addcmul(c0, piece, c1, out=gamma).sigmoid_()
            g += gamma.sum(1)
            gw += gamma.mul_(piece).sum(1)
        alpha = (g / n).clamp(1e-6, 1 - 1e-6)
        var_m = (gw / g.clamp_min(1e-300)).clamp_min(1e-300)
        var_u = ((total - gw) / (n - g).clamp_min(1e-300)).clamp_min(1e-300)
    # log-likelihood (without the shared constant): sum log((1 - a) N(w; 0, var_u)) + softplus(logit)
    c0, c1 = _logit(alpha, var_m, var_u)
    softplus = torch.zeros(2, dtype=f64, device=w2.device)
    for piece in pieces:
        gamma = work[:, :piece.numel()]
        softplus += torch.nn.functional.softplus(torch.addcmul(c0, piece, c1, out=gamma)).sum(1)
    likelihood = n * (torch.log1p(-alpha) - 0.5 * torch.log(var_u)) - total / (2 * var_u) + softplus
    best = int(torch.argmax(likelihood.nan_to_num(nan=-math.inf)))  # the first start wins a tie, as before
    fit = Mixture(float(alpha[best]), float(var_m[best].sqrt()), float(var_u[best].sqrt()))
    return Mixture(1 - fit.alpha, fit.sigma_u, fit.sigma_m) if fit.alpha > 0.5 else fit  # the minority is obfuscated


def _logit(alpha: torch.Tensor, var_m: torch.Tensor, var_u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """c0 and c1 (float32 columns) of the posterior logit c0 + c1 w^2 of the component N(0, var_m)."""
    c0 = torch.log(alpha) - torch.log1p(-alpha) - 0.5 * torch.log(var_m / var_u)
    c1 = 0.5 / var_u - 0.5 / var_m
    big = torch.finfo(torch.float32).max / 4  # a collapsed component (exact zeros): finite, so 0 * c1 = 0
    return c0.clamp(-big, big).float()[:, None], c1.clamp(-big, big).float()[:, None]


def eq7(weight: torch.Tensor, mixture: Mixture | None = None) -> torch.Tensor:
    """Posterior that each entry was obfuscated (float64, on the weight's device); `mixture`
    defaults to `fit_mixture(weight)`."""
    mixture = fit_mixture(weight) if mixture is None else mixture
    if not 0 < mixture.alpha < 1 or mixture.sigma_m <= 0 or mixture.sigma_u <= 0:
        raise ValueError(f"eq7: alpha must lie in (0, 1) and the sigmas be positive, got {mixture}")
    var_m, var_u = mixture.sigma_m ** 2, mixture.sigma_u ** 2
    c0 = math.log(mixture.alpha) - math.log1p(-mixture.alpha) - 0.5 * math.log(var_m / var_u)
    return torch.sigmoid(weight.detach().double().square().mul_(0.5 / var_u - 0.5 / var_m).add_(c0))


def column_scores(weight: torch.Tensor, rank: int | None = None) -> torch.Tensor:
    """Per column, the share of its (unit-normalised) energy outside the top `rank` left singular
    vectors. By default the rank is the number of singular values with s^2 > NOISE_FACTOR * columns
    / rows (a direction that only one or a few columns carry, such as an obfuscated column's, is
    never part of the structure); the fit is repeated without the flagged columns (`flagged`)."""
    return _column_fit(weight, rank)[0]


def _column_fit(weight: torch.Tensor, rank: int | None) -> tuple[torch.Tensor, int]:
    """Column scores and the rank used, fitted once per weight (`_remembered`), on its device."""
    return _remembered("columns", weight, rank, lambda: _fit_columns(weight, rank))


def _left_singular(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left singular vectors and singular values (descending) of a float64 matrix; of a wide one
    from its Gram matrix's eigendecomposition (rows x rows, cheaper than the SVD)."""
    if matrix.shape[0] > matrix.shape[1]:
        vectors, values, _ = torch.linalg.svd(matrix, full_matrices=False)
        return vectors, values
    eigenvalues, vectors = torch.linalg.eigh(matrix @ matrix.T)
    return vectors.flip(-1), eigenvalues.flip(-1).clamp_min(0).sqrt()


def _fit_columns(weight: torch.Tensor, rank: int | None) -> tuple[torch.Tensor, int]:
    w = weight.detach().double()
    if rank is not None and rank < 1:
        raise ValueError(f"lowrank: rank must be at least 1, got {rank}")
    rows = w.shape[0]
    unit = w / w.norm(dim=0, keepdim=True).clamp_min(1e-300)
    keep = torch.ones(w.shape[1], dtype=torch.bool, device=w.device)
    scores, used = torch.zeros(w.shape[1], dtype=torch.float64, device=w.device), 1
    for _ in range(FIT_ROUNDS):
        vectors, values = _left_singular(unit[:, keep])
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
