"""The harness's previous eq7 mixture fit, kept as a reference for `eq7_speed.py` and the tests.

EM on a two-component zero-mean Gaussian mixture in float64, one start after the other, each
iteration forming both components' log densities per entry (the code of
`harness.attack.revival.detect.fit_mixture` before issue 23). Not used by the harness itself.
The tests load this file by path (tests/attack/test_detect.py); `eq7_speed.py` imports it beside itself.
"""

from __future__ import annotations

import torch

from harness.attack.revival.detect import EM_ITERATIONS, Mixture


def fit_mixture_reference(weight: torch.Tensor, iterations: int = EM_ITERATIONS) -> Mixture:
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
