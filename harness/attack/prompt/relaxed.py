"""UnlearnDiff's relaxed prompt tokens (OPTML-Group/Diffusion-MU-Attack, `src/attackers/
text_grad_.py`): each of k prefix positions is a distribution over the whole vocabulary, kept on
the probability simplex by a bisection projection after every step; the forward pass samples one
word per position and feeds its embedding, the gradient passes straight through to the
distribution (their `STERandSelect`); at the end of a round the prefix is each distribution's
most likely word.

The distributions range over the vocabulary's real words (`harness.train.prefix.PrefixEncoder`
makes the conditioning of "prefix + prompt" from them): the special tokens (start, end, padding)
have no text a prompt could carry.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

BISECTION_STEPS = 50


def project_simplex(x: torch.Tensor) -> torch.Tensor:
    """Each row of `x` (last dimension) projected onto the probability simplex: clamp(x - mu, 0, 1)
    with mu found by bisection so that the row sums to 1 (the authors' `project_simplex`)."""
    low = (x.min(-1, keepdim=True).values - 1).detach()
    high = x.max(-1, keepdim=True).values.detach()
    for _ in range(BISECTION_STEPS):
        mu = (low + high) / 2
        over = (x - mu).clamp(0, 1).sum(-1, keepdim=True) > 1
        low = torch.where(over, mu, low)
        high = torch.where(over, high, mu)
    return (x - (low + high) / 2).clamp(0, 1)


def sample_one_hot(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One word per row drawn from `probs` (rows on the simplex) as a one-hot vector; the gradient
    of the one-hot goes straight through to `probs`."""
    flat = probs.detach().reshape(-1, probs.shape[-1]).float().clamp_min(0).cpu()
    drawn = torch.multinomial(flat + 1e-12, 1, generator=generator).reshape(probs.shape[:-1]).to(probs.device)
    one_hot = F.one_hot(drawn, probs.shape[-1]).to(probs.dtype)
    return one_hot + probs - probs.detach()
