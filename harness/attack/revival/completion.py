"""Matrix completion of a weight matrix whose pruned entries are missing.

`soft_impute` solves the paper's Eq. 1, min_M F(M) = 1/2 ||P_Omega(X - M)||^2 + lambda ||M||_*,
the convex problem of SoftImpute (Mazumder, Hastie, Tibshirani 2010), with warm starts along a
decreasing lambda path. The soft-thresholded SVD is exact and never forms V: from the short
side's Gram matrix Z Z^T = U diag(s^2) U^T, S_lambda(Z) = A Z with A = U diag(max(0, 1 - lambda/s)) U^T.

The accelerated solver (the default) works on the missing entries only. Write y for the values
at the missing entries, Z(y) = P_Omega(X) + P_Omega^c(y), T(y) = P_Omega^c S_lambda(Z(y)).
Plain SoftImpute is y <- T(y). With e the Moreau envelope of lambda ||.||_*,
h(y) = e(Z(y)) = min_M 1/2 ||Z(y) - M||^2 + lambda ||M||_* is convex, its gradient y - T(y) is
1-Lipschitz, and min_y h = min_M F (at a minimiser y* = P_Omega^c M*, and M* = S_lambda(Z(y*))):
plain SoftImpute is gradient descent with step 1/L on h, and T is firmly nonexpansive with the
solutions' missing entries as its fixed points. Two accelerations of that same map:
- "anderson" (default): type-II Anderson mixing of the last 6 kept points (Walker and Ni 2011);
  an Anderson point whose residual ||T(y) - y|| exceeds the last kept point's is dropped for
  the plain step; after 2 such rejections in a stage the stage continues with Nesterov (Anderson
  does badly where the rank keeps changing, e.g. exact low-rank recovery at tiny lambda);
- "nesterov": FISTA momentum with O'Donoghue and Candes (2015)'s gradient restart (the scheme
  of AIS-Impute, Yao and Kwok 2015), O(1/k^2) in h between restarts instead of O(1/k).
Both run under the safeguard of Zhang, O'Donoghue and Boyd (2020), which makes their global
convergence theorem apply (see SAFEGUARD_D). The observed entries are never extrapolated:
Z always holds X exactly on Omega.

One iteration costs one m x m eigendecomposition and, instead of the three m x m x n products
of the plain form, only m x m work plus two sparse products on the missing pattern:
- A = U D U^T is formed first (m^3, over the kept eigenvectors only);
- T(y) needs A Z only at the missing entries: a sampled product (SDDMM), nnz * m work;
- Z changes only at the missing entries, so Z Z^T is updated in place,
  (Z + D)(Z + D)^T = Z Z^T + C + C^T with C = D (Z + D/2)^T, a sparse-dense product
  (D lives on the missing entries), with an exact refresh every `gram_refresh` iterations.
The full product A Z is formed once, for the returned matrix. Same-shaped layers share batched
eigendecompositions (`soft_impute_batch`).

Stopping, per lambda stage: the relative change of the imputed entries that a plain SoftImpute
step would make from the returned point, ||T(y) - y|| / ||y|| < tol. This is plain SoftImpute's
own test (its change from y_k is T(y_k) - y_k), measured at the evaluated point y whose
S_lambda(Z(y)) is returned, never at an extrapolation. The path's intermediate stages, which
only give warm starts, stop at max(tol, stage_tol).

float32 noise floor: in float32 the change stalls at about 1e-6 on SD-like layers (the Gram
matrix squares the condition number). A stage counts as stalled when its change is below
STALL_FLOOR * machine epsilon and has not fallen by 10% in `stall_patience` iterations; a
float32 layer then continues in float64 from where it stands (logged as a warning, recorded in
`dtype_used` and `notes`); a float64 layer, or any layer with on_stall="stop", stops the stage
unconverged with a warning and a note, so no tolerance silently burns iterations to max_iters.

The solver's state per matrix is a `_Layer` (with its stage's `_Stage` and the accelerations'
`_Memory`); its options are CompletionSettings fields. The previous algorithm (plain iterations,
three products each), the benchmark's and the tests' reference, is benchmarks/plain_soft_impute.py.

`reference_code_impute` behaves like the authors' published code (PROTOCOL.md 2.2): float64
full SVD, missing entries started at their column's mean, threshold = the current smallest
singular value, convergence against the iterate from two steps back.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from harness.attack.revival.settings import CompletionSettings

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float64": torch.float64}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}

ON_STALL = ("float64", "stop")


@dataclass
class CompletionResult:
    """The completed matrix and how it was reached."""

    matrix: torch.Tensor
    iterations: int
    rank: int
    lam: float
    objective: float
    converged: bool
    residual: float | None = None
    """Fixed-point residual ||M - S_lambda(P_Omega X + P_Omega^c M)|| / ||M|| of `matrix`."""
    dtype_used: str = ""
    """The dtype the last iterations ran in (float64 where a float32 layer stalled)."""
    algorithm: str = ""
    restarts: int = 0
    """Momentum restarts of the accelerated solver."""
    change: float | None = None
    """The last stage's final relative change of the imputed entries (what `tol` bounds)."""
    stage_iterations: list[int] = field(default_factory=list)
    """Iterations of each lambda stage."""
    notes: list[str] = field(default_factory=list)


def soft_threshold(z: torch.Tensor, lam: float, max_rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """S_lambda(z) and the thresholded singular values, via the Gram matrix of the short side."""
    wide = z.shape[0] <= z.shape[1]
    short = z if wide else z.T
    operator, kept = threshold_operator(short @ short.T, lam, max_rank)
    thresholded = operator @ short
    return (thresholded if wide else thresholded.T), kept


def threshold_operator(gram: torch.Tensor, lam: float | torch.Tensor, max_rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A = U diag(max(0, 1 - lam/s)) U^T from the Gram matrix Z Z^T = U diag(s^2) U^T, so that
    S_lam(Z) = A Z, and the thresholded singular values s - lam of the kept directions.
    Batched over a leading dimension (then lam holds one lambda per matrix and kept is a list);
    the product is formed over the kept eigenvectors only."""
    batched = gram.dim() == 3
    eigenvalues, vectors = torch.linalg.eigh(gram if batched else gram.unsqueeze(0))
    operator, kept = _operator_from(eigenvalues, vectors, lam, max_rank)
    return (operator, kept) if batched else (operator[0], kept[0])


def _operator_from(eigenvalues: torch.Tensor, vectors: torch.Tensor, lam: float | torch.Tensor,
                   max_rank: int | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """threshold_operator's second half, from a batched eigendecomposition (ascending)."""
    batch, size = eigenvalues.shape
    lams = torch.as_tensor(lam, dtype=eigenvalues.dtype, device=eigenvalues.device).reshape(-1, 1).expand(batch, 1)
    singular = eigenvalues.clamp(min=0).sqrt()
    keep = singular > lams
    if max_rank is not None and max_rank < size:
        keep &= torch.arange(size, device=keep.device) >= size - max_rank
    zero = torch.zeros((), dtype=eigenvalues.dtype, device=eigenvalues.device)
    shrink = torch.where(keep, 1.0 - lams / singular.clamp(min=torch.finfo(eigenvalues.dtype).tiny), zero)
    top = int(keep.sum(dim=1).max()) if batch else 0
    u = vectors[..., size - top:]
    operator = (u * shrink[:, None, size - top:]) @ u.transpose(-1, -2)
    return operator, [singular[b][keep[b]] - lams[b] for b in range(batch)]


def top_singular_value(x: torch.Tensor) -> float:
    """Largest singular value of x (the scale of the lambda path)."""
    short = x if x.shape[0] <= x.shape[1] else x.T
    return float(torch.linalg.eigvalsh(short @ short.T)[-1].clamp(min=0).sqrt())


def objective(x: torch.Tensor, observed: torch.Tensor, m: torch.Tensor, lam: float, nuclear: float) -> float:
    """1/2 ||P_Omega(X - M)||_F^2 + lambda ||M||_*."""
    residual = torch.where(observed, x - m, torch.zeros((), dtype=x.dtype, device=x.device))
    return 0.5 * float(residual.pow(2).sum()) + lam * nuclear


def fixed_point_residual(x: torch.Tensor, observed: torch.Tensor, m: torch.Tensor, lam: float,
                         max_rank: int | None = None) -> float:
    """||M - S_lambda(P_Omega X + P_Omega^c M)|| / ||M||: zero exactly at the solution."""
    again, _ = soft_threshold(torch.where(observed, x.to(m.dtype), m), lam, max_rank)
    return float((again - m).norm()) / max(float(m.norm()), 1e-30)


def lambda_path(s1: float, ratio: float, steps: int) -> list[float]:
    """Geometric path from s1 down to ratio * s1 in `steps` stages (the first below s1)."""
    return [s1 * ratio ** ((k + 1) / steps) for k in range(steps)]


# ----------------------------------------------------------------------------------------------
# The accelerated solver

ACCELERATIONS = ("anderson", "nesterov", "none")

STALL_FLOOR = 1e3
"""A stage counts as stalled only once its change is below STALL_FLOOR * the dtype's machine
epsilon (1.2e-4 in float32, 2.2e-13 in float64) and has not fallen by 10% for `stall_patience`
iterations: slow but steady progress above that is not a stall."""

ANDERSON_MEMORY = 5
"""Anderson mixes the last ANDERSON_MEMORY + 1 kept points."""
ANDERSON_REJECTIONS = 2
"""After this many rejected Anderson points in a stage, the stage continues with Nesterov."""
SAFEGUARD_D, SAFEGUARD_EPSILON, SAFEGUARD_STEP = 1e6, 1e-6, 1e4
"""The safeguard of Zhang, O'Donoghue and Boyd (2020, SIAM J. Optim. 30(4)): an accelerated step
is taken from a kept point y only while its residual ||T(y) - y|| <= D r0 (n + 1)^-(1 + epsilon)
(r0 the stage's first residual, n the accelerated steps so far) and only if it moves y by at most
SAFEGUARD_STEP ||T(y) - y||; else the plain step T(y). The accelerated steps then perturb the
Krasnosel'skii-Mann iteration of the firmly nonexpansive T by a summable amount, so the iterates
converge to a fixed point of T, i.e. to P_Omega^c of a solution. The bounds are loose on purpose:
in practice they never bind; they make the convergence theorem apply."""


@dataclass(eq=False)
class _Memory:
    """What the accelerated steps remember; a fresh one at every stage's start and dtype change."""

    previous: torch.Tensor | None = None
    """Nesterov: T of the kept point before the last one."""
    momentum: float = 1.0
    """Nesterov: FISTA's momentum t_k (1 after a restart)."""
    history: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    """Anderson: (y_i, T(y_i) - y_i) of the last kept points."""
    candidate: bool = False
    """The current y is an accelerated point, not yet kept."""
    kept: tuple[torch.Tensor, float] | None = None
    """T(y) and the residual ||T(y) - y|| of the last kept point."""


@dataclass(eq=False)
class _Stage:
    """One lambda stage's progress."""

    index: int = 0
    """Position on the lambda path."""
    lam: float = math.nan
    """This stage's lambda (nan before the path is known)."""
    mode: str = ""
    """The acceleration in use: the settings' until Anderson gives way to Nesterov."""
    iterations: int = 0
    """Iterations of this stage."""
    progress_reference: float = math.inf
    """The last change that fell by 10% below the one before it (the stall test)."""
    progress_at: int = 0
    """The stage iteration of `progress_reference`."""
    first_residual: float = math.nan
    """r0 of the safeguard: the residual of the stage's first kept point."""
    accelerated_steps: int = 0
    """Accelerated steps taken in this stage (the safeguard's n)."""
    rejections: int = 0
    """Anderson points dropped in this stage."""


@dataclass(eq=False)
class _Layer:
    """One matrix's completion, held in the wide orientation Z (m x n, m <= n) as zt = Z^T (n x m)."""

    source: torch.Tensor
    """The matrix as given; its entries at `observed` are X."""
    observed: torch.Tensor
    """Where X is known (the source's shape; made bool, on the source's device)."""
    settings: CompletionSettings
    """Path, tolerances, dtype and the solver's options."""
    index: int = 0
    """The layer's position in soft_impute_batch's `xs` (what the trace reports)."""
    # the missing pattern in Z's orientation, fixed
    transposed: bool = field(init=False)
    """The source is tall: Z is its transpose."""
    m: int = field(init=False)
    """Rows of Z (the short side)."""
    n: int = field(init=False)
    """Columns of Z."""
    flat: torch.Tensor = field(init=False)
    """The missing entries' indices into zt.view(-1), in row-major order of Z (the order of y)."""
    crow: torch.Tensor = field(init=False)
    """CSR row pointers of the missing pattern."""
    col: torch.Tensor = field(init=False)
    """CSR column indices of the missing pattern."""
    # the current point, in `dtype`
    dtype: torch.dtype = field(init=False)
    """The dtype of the iterations (float32 may switch to float64 on a stall)."""
    x: torch.Tensor = field(init=False)
    """The source in `dtype`."""
    zt: torch.Tensor = field(init=False)
    """Z^T: X on the observed entries, y on the missing ones."""
    y: torch.Tensor = field(init=False)
    """The missing entries' current values."""
    pattern: torch.Tensor = field(init=False)
    """The missing pattern as a CSR matrix of ones (for the sampled products)."""
    gram: torch.Tensor = field(init=False)
    """Z Z^T, exact or updated since the last refresh."""
    since_refresh: int = field(init=False)
    """Iterations since `gram` was last computed exactly."""
    # progress
    lambdas: list[float] = field(default_factory=list, init=False)
    """The lambda path; empty until the first eigendecomposition (s1 of the zero fill)."""
    stage: _Stage = field(default_factory=_Stage, init=False)
    memory: _Memory = field(default_factory=_Memory, init=False)
    iterations: int = field(default=0, init=False)
    """Iterations so far, all stages."""
    restarts: int = field(default=0, init=False)
    """Momentum restarts and rejected Anderson points, all stages."""
    converged: bool = field(default=False, init=False)
    """The stage last ended below its tolerance."""
    change: float = field(default=math.inf, init=False)
    """The last relative change ||T(y) - y|| / ||y||."""
    per_stage: list[int] = field(default_factory=list, init=False)
    """Iterations of each stage started."""
    notes: list[str] = field(default_factory=list, init=False)
    """Stalls and what was done about them."""
    result: CompletionResult | None = field(default=None, init=False)
    """Set when the layer is done."""

    def __post_init__(self) -> None:
        self.observed = self.observed.to(device=self.source.device, dtype=torch.bool)
        self.transposed = self.source.shape[0] > self.source.shape[1]
        missing = ~(self.observed.T if self.transposed else self.observed)
        rows, cols = missing.nonzero(as_tuple=True)  # row-major order of Z: the order of y
        self.m, self.n = missing.shape
        self.flat = cols * self.m + rows  # index into zt.view(-1)
        counts = torch.bincount(rows, minlength=self.m)
        self.crow = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        self.col = cols
        dtype = DTYPES[self.settings.dtype]
        self.switch_dtype(dtype, torch.zeros(self.flat.numel(), dtype=dtype, device=self.source.device))

    def switch_dtype(self, dtype: torch.dtype, y: torch.Tensor) -> None:
        """Work in `dtype` from the point y (Z, Gram matrix exact; the memory cleared)."""
        self.dtype = dtype
        x = self.source.to(dtype)
        filled = torch.where(self.observed, x, torch.zeros((), dtype=dtype, device=x.device))
        self.x = x
        self.zt = (filled if self.transposed else filled.T).contiguous()
        self.y = y.to(dtype)
        self.zt.view(-1)[self.flat] = self.y
        self.pattern = self.sparse(torch.ones_like(self.y))
        self.refresh()
        self.memory = _Memory()

    def sparse(self, values: torch.Tensor) -> torch.Tensor:
        """An m x n CSR matrix on the missing pattern with these values (in the order of y)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            return torch.sparse_csr_tensor(self.crow, self.col, values, (self.m, self.n), check_invariants=False)

    def refresh(self) -> None:
        """Exact Gram matrix Z Z^T."""
        self.gram = self.zt.T @ self.zt
        self.since_refresh = 0

    @property
    def done(self) -> bool:
        return self.result is not None

    @property
    def last_stage(self) -> bool:
        return self.stage.index == len(self.lambdas) - 1

    @property
    def tol(self) -> float:
        """The current stage's tolerance: settings.tol, at least stage_tol before the last stage."""
        if self.last_stage or self.settings.stage_tol is None:
            return self.settings.tol
        return max(self.settings.tol, self.settings.stage_tol)

    def start(self, s1: float) -> None:
        """The lambda path from s1 (the zero fill's largest singular value); its first stage."""
        self.lambdas = lambda_path(s1, self.settings.lambda_ratio, self.settings.path_steps)
        self.start_stage(0)

    def start_stage(self, index: int) -> None:
        self.stage = _Stage(index=index, lam=self.lambdas[index], mode=self.settings.acceleration)
        self.memory = _Memory()
        self.per_stage.append(0)

    def next_stage(self, t: torch.Tensor, gram_refresh: int) -> None:
        self.start_stage(self.stage.index + 1)
        self.move_to(t, gram_refresh)

    def move_to(self, y_next: torch.Tensor, gram_refresh: int) -> None:
        """Z's missing entries <- y_next, and the Gram matrix with them (updated or refreshed)."""
        flat = self.zt.view(-1)
        self.since_refresh += 1
        if self.since_refresh >= gram_refresh:
            flat[self.flat] = y_next
            self.refresh()
        else:
            delta = y_next - self.y
            flat[self.flat] = self.y + 0.5 * delta
            cross = self.sparse(delta) @ self.zt  # D (Z + D/2)^T
            self.gram += cross
            self.gram += cross.T
            flat[self.flat] = y_next
        self.y = y_next

    def sampled_product(self, operator: torch.Tensor) -> torch.Tensor:
        """(A Z) at the missing entries, in the order of y."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            return torch.sparse.sampled_addmm(self.pattern, operator, self.zt.T, beta=0.0).values()

    def iterate(self, operator: torch.Tensor, kept: torch.Tensor) -> None:
        """Evaluate T at y (A given), test for convergence and stall, choose the next y."""
        settings, stage, y = self.settings, self.stage, self.y
        if self.flat.numel() == 0:  # nothing missing: S_lambda(X) is the answer
            self.iterations, self.converged, self.change = 1, True, 0.0
            self.stage = _Stage(index=len(self.lambdas) - 1, lam=self.lambdas[-1], mode=settings.acceleration)
            self.finish(*threshold_operator(self.gram, self.stage.lam, settings.max_rank))
            return
        t = self.sampled_product(operator)
        self.iterations += 1
        stage.iterations += 1
        self.per_stage[-1] += 1
        step = t - y
        residual = float(step.norm())
        change = residual / max(float(y.norm()), 1e-30)
        self.change = change
        if change < self.tol:
            self.converged = True
            self.end_stage(t, operator, kept, settings.gram_refresh)
            return
        if change < 0.9 * stage.progress_reference:
            stage.progress_reference, stage.progress_at = change, stage.iterations
        if (stage.iterations - stage.progress_at >= settings.stall_patience
                and stage.progress_reference < STALL_FLOOR * torch.finfo(self.dtype).eps):
            self.stall(t, operator, kept)
            return
        if stage.iterations >= settings.max_iters:
            self.converged = False
            self.end_stage(t, operator, kept, settings.gram_refresh)
            return
        self.move_to(self.next_point(y, t, step, residual), settings.gram_refresh)

    def end_stage(self, t: torch.Tensor, operator: torch.Tensor, kept: torch.Tensor, gram_refresh: int) -> None:
        """The last stage finishes the layer; any other continues with the next from T(y)."""
        if self.last_stage:
            self.finish(operator, kept)
        else:
            self.next_stage(t, gram_refresh)

    def next_point(self, y: torch.Tensor, t: torch.Tensor, step: torch.Tensor, residual: float) -> torch.Tensor:
        """The next point to evaluate, after evaluating y (T(y) = t, residual ||t - y||).

        An evaluated accelerated point is kept, except an Anderson point whose residual exceeds the
        last kept point's: it is dropped (history cleared) and T(last kept point) evaluated next.
        From a kept point: the accelerated step where the safeguard allows it, else T(y)."""
        stage, memory = self.stage, self.memory
        if stage.mode == "none":
            return t
        if memory.candidate and stage.mode == "anderson" and memory.kept is not None and residual > memory.kept[1]:
            self.restarts += 1
            stage.rejections += 1
            memory.history = []
            memory.candidate = False
            if stage.rejections >= ANDERSON_REJECTIONS:
                stage.mode = "nesterov"
                memory.previous, memory.momentum = None, 1.0
            return memory.kept[0]
        memory.candidate = False
        memory.kept = (t, residual)
        if math.isnan(stage.first_residual):
            stage.first_residual = residual
        bound = SAFEGUARD_D * stage.first_residual * (stage.accelerated_steps + 1) ** -(1.0 + SAFEGUARD_EPSILON)
        proposal = self.anderson(y, t, step) if stage.mode == "anderson" else self.nesterov(t, step)
        if proposal is None or residual > bound or float((proposal - y).norm()) > SAFEGUARD_STEP * residual:
            return t
        memory.candidate = True
        stage.accelerated_steps += 1
        return proposal

    def nesterov(self, t: torch.Tensor, step: torch.Tensor) -> torch.Tensor | None:
        """FISTA momentum on h with O'Donoghue and Candes' gradient restart (step = -grad h(y))."""
        memory = self.memory
        previous, memory.previous = memory.previous, t
        if previous is None:
            return None
        if float(torch.dot(step, t - previous)) < 0:
            memory.momentum = 1.0
            self.restarts += 1
            return None
        momentum = (1.0 + math.sqrt(1.0 + 4.0 * memory.momentum**2)) / 2.0
        proposal = t + (memory.momentum - 1.0) / momentum * (t - previous)
        memory.momentum = momentum
        return proposal

    def anderson(self, y: torch.Tensor, t: torch.Tensor, step: torch.Tensor) -> torch.Tensor | None:
        """Type-II Anderson mixing of the kept points: y + g - (dY + dG) gamma with gamma the least
        squares fit of g by the residual differences dG (in float64)."""
        memory = self.memory
        memory.history.append((y, step))
        del memory.history[: -(ANDERSON_MEMORY + 1)]
        if len(memory.history) < 2:
            return None
        ys = torch.stack([h[0] for h in memory.history], dim=1).double()
        gs = torch.stack([h[1] for h in memory.history], dim=1).double()
        dy, dg = ys.diff(dim=1), gs.diff(dim=1)
        # the k x k normal equations, solved on the CPU by SVD with a cut at 1e-13 (any device)
        normal, rhs = (dg.T @ dg).cpu(), (dg.T @ step.double()).cpu().unsqueeze(1)
        gamma = torch.linalg.lstsq(normal, rhs, rcond=1e-13, driver="gelsd").solution.squeeze(1).to(dg.device)
        if not bool(torch.isfinite(gamma).all()):
            memory.history = [memory.history[-1]]
            return None
        return (y.double() + step.double() - (dy + dg) @ gamma).to(y.dtype)

    def stall(self, t: torch.Tensor, operator: torch.Tensor, kept: torch.Tensor) -> None:
        """A stalled stage: float32 continues in float64 (on_stall="float64"), else the stage stops."""
        stage = self.stage
        where = (f"stage {stage.index + 1}/{len(self.lambdas)}: the change of the imputed entries stalled at "
                 f"{stage.progress_reference:.2e} (tol {self.tol:g}) for {stage.iterations - stage.progress_at} "
                 f"iterations in {DTYPE_NAMES[self.dtype]}")
        if self.dtype == torch.float32 and self.settings.on_stall == "float64":
            message = f"{where}: float32 cannot reach the tolerance; continued in float64"
            log.warning("completion %d x %d: %s", self.m, self.n, message)
            self.notes.append(message)
            self.switch_dtype(torch.float64, t)
            stage.progress_reference, stage.progress_at = math.inf, stage.iterations
            return
        message = f"{where}: stopped unconverged (the tolerance is below what {DTYPE_NAMES[self.dtype]} reaches here)"
        log.warning("completion %d x %d: %s", self.m, self.n, message)
        self.notes.append(message)
        self.converged = False
        self.end_stage(t, operator, kept, 1)

    def finish(self, operator: torch.Tensor, kept: torch.Tensor) -> None:
        """Form M = A Z in the input's orientation, its objective and fixed-point residual."""
        matrix = (self.zt @ operator) if self.transposed else (operator @ self.zt.T)
        lam, nuclear = self.stage.lam, float(kept.sum())
        self.result = CompletionResult(
            matrix=matrix,
            iterations=self.iterations,
            rank=int(kept.numel()),
            lam=lam,
            objective=objective(self.x, self.observed, matrix, lam, nuclear),
            converged=self.converged,
            dtype_used=DTYPE_NAMES[self.dtype],
            algorithm=self.settings.acceleration,
            restarts=self.restarts,
            change=self.change,
            stage_iterations=self.per_stage[-len(self.lambdas):],
            notes=self.notes,
        )
        if self.settings.residual:
            self.result.residual = fixed_point_residual(self.x, self.observed, matrix, lam, self.settings.max_rank)


def _step(group: list[_Layer], trace: Callable[[int, dict], None] | None) -> None:
    """One iteration of every layer in `group` (same shape, dtype and device): the
    eigendecompositions and A = U D U^T batched, the sparse products per layer."""
    grams = torch.stack([layer.gram for layer in group]) if len(group) > 1 else group[0].gram.unsqueeze(0)
    eigenvalues, vectors = torch.linalg.eigh(grams)
    for index, layer in enumerate(group):
        if not layer.lambdas:  # y = 0: this is the zero fill's Gram matrix
            layer.start(float(eigenvalues[index, -1].clamp(min=0).sqrt()))
    lams = torch.tensor([layer.stage.lam for layer in group], dtype=grams.dtype, device=grams.device)
    operators, kept = _operator_from(eigenvalues, vectors, lams, group[0].settings.max_rank)
    for index, layer in enumerate(group):
        layer.iterate(operators[index], kept[index])
        if trace is not None:
            trace(layer.index, {"iteration": layer.iterations, "stage": layer.stage.index, "change": layer.change,
                                "mode": layer.stage.mode, "candidate": layer.memory.candidate,
                                "dtype": DTYPE_NAMES[layer.dtype], "restarts": layer.restarts})


SOLVER_OPTIONS = ("acceleration", "gram_refresh", "stall_patience", "on_stall", "stage_tol", "residual")
"""The CompletionSettings fields that choose how (not what) the solver solves; soft_impute and
soft_impute_batch take them as keyword overrides of the settings."""


def soft_impute_batch(
    xs: Sequence[torch.Tensor],
    observed: Sequence[torch.Tensor],
    settings: CompletionSettings,
    *,
    trace: Callable[[int, dict], None] | None = None,
    **overrides: Any,
) -> list[CompletionResult]:
    """Complete several matrices together: layers of the same shape (in either orientation),
    dtype and device share batched eigendecompositions and A = U D U^T; each keeps its own lambda
    path, iterations and stopping, so every result is that of completing the layer alone.

    The solver's options are the settings' fields (`overrides`, any of SOLVER_OPTIONS, replace
    them): acceleration: "anderson" (safeguarded Anderson mixing of the SoftImpute map),
    "nesterov" (FISTA momentum with gradient restart) or "none" (plain SoftImpute iterations,
    each as cheap as the others). gram_refresh: exact Z Z^T every this many iterations, updated
    by sparse products in between. stall_patience: iterations without a 10% fall of the change
    that count as a stall. on_stall: "float64" (continue a float32 layer in float64) or "stop".
    stage_tol: tolerance of the path's intermediate stages, never below `settings.tol` (they only
    provide warm starts; None: `settings.tol`). residual: compute each result's fixed-point
    residual (one more exact SoftImpute map). trace: called after every iteration with the
    layer's index in `xs` and a dict (iteration, stage, change, mode, dtype, restarts).
    """
    unknown = set(overrides) - set(SOLVER_OPTIONS)
    if unknown:
        raise TypeError(f"unknown solver options {sorted(unknown)} (known: {', '.join(SOLVER_OPTIONS)})")
    if overrides:
        settings = replace(settings, **overrides)
    if settings.acceleration not in ACCELERATIONS:
        raise ValueError(f"acceleration must be one of {ACCELERATIONS}, got {settings.acceleration!r}")
    if settings.on_stall not in ON_STALL:
        raise ValueError(f"on_stall must be one of {ON_STALL}, got {settings.on_stall!r}")
    if len(xs) != len(observed):
        raise ValueError("xs and observed differ in length")
    layers = [_Layer(x, o, settings, index) for index, (x, o) in enumerate(zip(xs, observed))]
    while True:
        groups: dict[tuple, list[_Layer]] = {}
        for layer in layers:
            if not layer.done:
                groups.setdefault((layer.m, layer.n, layer.dtype, layer.source.device), []).append(layer)
        if not groups:
            break
        for group in groups.values():
            _step(group, trace)
    return [layer.result for layer in layers]  # type: ignore[misc]


def soft_impute(x: torch.Tensor, observed: torch.Tensor, settings: CompletionSettings, **options: Any) -> CompletionResult:
    """SoftImpute's convex solution at lambda = settings.lambda_ratio * s1 by the accelerated
    solver (options: see `soft_impute_batch`); stops a stage when one more SoftImpute step would
    change the imputed entries by < tol (relative)."""
    return soft_impute_batch([x], [observed], settings, **options)[0]


# ----------------------------------------------------------------------------------------------
# The authors' code


def reference_code_impute(
    x: torch.Tensor, observed: torch.Tensor, max_iters: int = 500, tol: float = 1e-5
) -> CompletionResult:
    """The authors' shipped completion (near full-rank hard impute), for reproducing their numbers."""
    x = x.to(torch.float64)
    counts = observed.sum(dim=0).clamp(min=1)
    column_mean = torch.where(observed, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(dim=0) / counts
    z = torch.where(observed, x, column_mean.expand_as(x))
    history: list[torch.Tensor] = [z]
    converged, iterations, rank, lam = False, 0, 0, 0.0
    m = z
    for iterations in range(1, max_iters + 1):  # noqa: B007 (the count is read after the loop)
        u, s, vh = torch.linalg.svd(z, full_matrices=False)
        lam = float(s.min())
        shrunk = (s - lam).clamp(min=0)
        rank = int((shrunk > 0).sum())
        m = (u * shrunk) @ vh
        z = torch.where(observed, x, m)
        history.append(z)
        if len(history) >= 3:
            before = history[-3]
            if float((z - before).norm()) / max(float(before.norm()), 1e-30) < tol:
                converged = True
                break
        history = history[-2:]
    nuclear = float(torch.linalg.svdvals(m).sum())
    return CompletionResult(
        matrix=z,
        iterations=iterations,
        rank=rank,
        lam=lam,
        objective=objective(x, observed, m, lam, nuclear) if math.isfinite(nuclear) else float("nan"),
        converged=converged,
        dtype_used="float64",
        algorithm="reference-code",
    )
