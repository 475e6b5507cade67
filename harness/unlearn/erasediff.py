"""EraseDiff (Wu et al., "Erasing Concepts from Diffusion Models"; JingWu321/EraseDiff, sd/),
registered as `erasediff`: the current code's objectives and its first-order bi-level update
(METHODS.md section 3).

- Forget: f(theta) = MSE(eps_theta(x_t^f, c_f), sg[eps_theta(x_t^f, c_a)]), c_a the unrelated
  anchor prompt "a photo of a pokemon" (erasediff_nsfw.py L139; erasediff_cls.py L143/L210);
  x_t^f noises a forget sample (the frozen model's samples of the concept's prompts, as the NSFW
  code's D_f), both branches sharing x_0, the noise and t.
- Retain: L_r = the plain denoising loss on D_r (a world's real images of the other classes
  with their prompts, as DiMUM; any data source via `retain`).
- Update: a round is R = ceil(forget_samples / batch_size) steps (one pass over D_f). It starts
  with an inner pass: R Adam steps on f (a fresh Adam of its own, same lr, no clipping; whether
  the code shares one optimizer between the passes is not recorded in METHODS.md), recording the mean
  inner loss f_bar (the code's stand-in for f(theta^K)); the weights are then reset and the
  engine makes R Adam steps on L_r(theta) + lam * (f(theta) - f_bar) (nsfw L149-291, loss L281).
  `k_steps` rounds make an epoch.

Defaults, the authors' argparse (erasediff_nsfw.py): batch 8 (L370), 1 epoch (L373), K 2 (L379),
lam 0.1 (L385), lr 1e-5 (L398), so `steps` 200 = 1 epoch x K 2 x R 100 with 800 forget samples;
every UNet weight (`full`, the Imagenette setting: whole-network fine-tuning, the family the
DiMRA relearning attack was published against; the NSFW code's `noxattn`, all but attn2,
time_embed and out.*, can be listed as include globs in `trainable`). The author scripts' (lam 1.0,
batch 16, ~60-160 steps) are a recipe away. In the miniature world a smaller preset
(recipes/digits-erasediff-salun.yaml: 64 forget samples, lr 1e-4) is enough.

Two quirks of the code, kept under the recipe's `fidelity: reference-code`, fixed by default:

- the same first forget batch every step (`next(iter(forget_dl))` on an unshuffled loader; in
  the NSFW code the same first retain batch too, which reference-code keeps for kind nudity).
  Fixed: batches are drawn at random, so D_f is the forget set, not its first 8 samples;
- the reset to the epoch's starting weights inside the K loop, which throws away the outer
  updates of every round but the epoch's last (with K 2, half the outer steps do nothing in the
  end). Fixed: each round resets to its own starting weights, so every outer step counts and the
  bi-level step is the intended one (inner pass from theta, outer step on theta).

The adaptive-lambda path (lam < 0, BOME) references a missing argument in the code and is not
offered. A run resumed from a checkpoint in the middle of a round recomputes that round's
f_bar from the resumed weights (the inner state is not checkpointed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated

import torch
from annotated_types import Ge

from harness.registry import method
from harness.train.data import DataSpec
from harness.train.engine import FineTuneModule, Objective, TrainParams
from harness.unlearn.forget_retain import Conditioned, forget_set, mapping_loss, retain_loss, retain_set, sizes
from harness.unlearn.method import UnlearnContext, UnlearnResult
from harness.unlearn.training import concept_prompts, train_method

POKEMON = "a photo of a pokemon"
"""The authors' unrelated anchor prompt."""


@dataclass
class EraseDiffParams(TrainParams):
    """`params` of the `erasediff` method."""

    steps: int = 200
    batch_size: int = 8
    trainable: str | list[str] = "full"
    lam: Annotated[float, Ge(0)] = 0.1
    """weight of the forget term f(theta) - f_bar in the outer loss"""
    k_steps: Annotated[int, Ge(1)] = 2
    """rounds (inner pass + outer pass) per epoch"""
    round_steps: Annotated[int, Ge(1)] | None = None
    """inner and outer steps of a round (default: one pass over the forget set, ceil(forget_samples / batch_size))"""
    forget_samples: Annotated[int, Ge(1)] = 800
    """how many samples of the concept's prompts the frozen model makes (D_f)"""
    anchor: str = POKEMON
    """the unrelated prompt whose prediction the concept's is mapped to"""
    retain: DataSpec = field(default_factory=DataSpec)
    """the retain data D_r (default: the world's real images of the other classes)"""
    prompts: list[str] = field(default_factory=list)
    """the forget prompts (default: a world's prompts of the concept, else its name)"""

    @property
    def round_length(self) -> int:
        return self.round_steps or math.ceil(self.forget_samples / self.batch_size)


class EraseDiffObjective(Objective):
    """The outer loss of the bi-level update, running each round's inner pass first; see the
    module docstring."""

    def __init__(self, forget: Conditioned, retain: Conditioned, anchor: str, params: EraseDiffParams,
                 reference: bool, same_retain: bool) -> None:
        self.forget, self.retain, self.anchor_prompt, self.params = forget, retain, anchor, params
        self.reference, self.same_retain = reference, same_retain
        self.f_bar: float | None = None
        self.round_done: int | None = None
        self.start: list[torch.Tensor] | None = None
        self.inner_means: list[float] = []

    def prepare(self, module: FineTuneModule) -> None:
        self.forget.prepare(module)
        self.retain.prepare(module)
        self.anchor = module.embed([self.anchor_prompt])
        named = dict(module.unet.named_parameters())
        self.weights = [named[n] for n in module.trainable]

    def forget_loss(self, module: FineTuneModule, generator: torch.Generator) -> torch.Tensor:
        """f(theta) on one forget batch (the first one under reference-code)."""
        index = self.forget.draw(self.params.batch_size, generator, first=self.reference)
        x0, condition = self.forget.batch(index)
        return mapping_loss(module, x0, condition, self.anchor.expand(len(x0), -1, -1), generator)

    def loss(self, module: FineTuneModule, generator: torch.Generator) -> torch.Tensor:
        round_index = module.global_step // self.params.round_length
        if round_index != self.round_done:  # a round begins (or a resumed run enters one)
            self._inner_pass(module, round_index, generator)
            self.round_done = round_index
        assert self.f_bar is not None
        index = self.retain.draw(self.params.batch_size, generator, first=self.same_retain)
        forget = self.forget_loss(module, generator)
        module.log("forget", forget.detach(), prog_bar=True, on_step=True, logger=True, batch_size=self.params.batch_size)
        return retain_loss(module, self.retain, index, generator) + self.params.lam * (forget - self.f_bar)

    @torch.enable_grad()
    def _inner_pass(self, module: FineTuneModule, round_index: int, generator: torch.Generator) -> None:
        """R Adam steps on f from the current weights, f_bar their mean loss, then the reset: to
        this round's start, or (reference-code) to the epoch's start."""
        epoch_start = round_index % self.params.k_steps == 0
        if not self.reference or epoch_start or self.start is None:
            self.start = [w.detach().clone() for w in self.weights]
        inner = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        optimizer = torch.optim.Adam(self.weights, lr=self.params.lr)
        losses = []
        for _ in range(self.params.round_length):
            optimizer.zero_grad(set_to_none=True)
            loss = self.forget_loss(module, inner)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        with torch.no_grad():
            for weight, saved in zip(self.weights, self.start):
                weight.copy_(saved)
                weight.grad = None
        self.f_bar = sum(losses) / len(losses)
        self.inner_means.append(self.f_bar)


@method("erasediff", params=EraseDiffParams)
def erasediff(context: UnlearnContext, params: EraseDiffParams) -> UnlearnResult:
    """EraseDiff, whole-network fine-tuning by a first-order bi-level update (harness.unlearn.method)."""
    prompts = concept_prompts(context, params.prompts)
    forget = forget_set(context, prompts, params.forget_samples, params.seed)
    retained = retain_set(context, params.retain, params.seed)
    reference = context.fidelity == "reference-code"
    objective = EraseDiffObjective(forget, Conditioned(retained.inputs, retained.prompts), params.anchor, params,
                                   reference, same_retain=reference and context.concept.kind == "nudity")
    result = train_method(context, objective, params, {"anchor": params.anchor, "round_steps": params.round_length,
                                                        "fidelity": context.fidelity, **sizes(forget, retained)})
    result.info["inner_mean_losses"] = objective.inner_means
    return result
