"""AdvUnlearn (Zhang et al., "Defensive Unlearning with Adversarial Training for Robust Concept
Erasure in Diffusion Models", NeurIPS 2024; OPTML-Group/AdvUnlearn), registered as `advunlearn`:
ESD-style unlearning of the *text encoder* under adversarial training (METHODS.md section 5; the
line numbers are of the authors' train-scripts/).

- Trained (b, `utils/util.py` L41-67, `text_encoder_full`): every CLIP encoder layer and the final
  layer norm; the token and position embeddings and the whole UNet stay frozen. Result tensors
  and masks are keyed `text_encoder.<name in pipeline.text_encoder.named_parameters()>` (the
  declared default layers match that with or without transformers' `text_model.` level).
- Inner attack (a, `utils/attack_util.py` L126-222): one (`adv_prompt_num` k) continuous token
  embedding delta inserted after the start token ("prefix_k", `harness.train.prefix.
  PrefixEncoder`); `attack_step` (30) Adam steps at `attack_lr` (1e-3), each on fresh draws,
  minimising MSE(eps(z, t, E_theta([BOS, delta, c, ...])), eps(z, t, E_orig(c))) (L203), with
  the text encoder being trained and its parameters frozen during the attack (AdvUnlearn.py
  L92-94). Init (L5-20): `latest` reuses the previous round's delta, the first round (and
  `random` always) a random vocabulary word's embedding. `attack_method: fast_at` takes the
  gradient's sign (L206-212). The code never zeroes delta's gradient, so Adam sees the running
  sum of every step's gradient; that is kept under the recipe's `fidelity: reference-code`, and
  by default each step's own gradient is used (plain PGD-with-Adam).
- Outer loss (`utils/get_loss.py` L270-366): t_enc ~ U{0..ddim_steps-1}; z = t_enc DDIM steps
  (eta 0, guidance `start_guidance` 3) from noise under c with the original model (the UNet is
  frozen and E_orig(c) is the original encoder's, as the code's `model_orig.
  get_learned_conditioning`); t ~ U[T t_enc / n, T (t_enc + 1) / n) (T the scheduler's training
  steps, 1000: the ESD compvis code's convention, which is not the DDIM timestep z was sampled
  to); l_u = MSE(eps(z, t, E_theta(c_adv)), eps_o(z, t, empty) - eta (eps_o(z, t, c) - eps_o(z,
  t, empty))), eta = `negative_guidance` 1, eps_o the frozen UNet under E_orig.
- Retain: `retain_train: iter` (the argparse default, AdvUnlearn.py L165-195): after each
  update, `retain_step` (1) separate optimizer steps on l_r = MSE(eps(z_r, t, E_theta(c_r)),
  eps_o(z_r, t, E_orig(c_r))) over `retain_batch` (5) retain prompts, z_r sampled under c_r as z;
  `reg` (L352-360): one step on l_u + `retain_loss_w` l_r, z_r sharing t_enc and t with z. The
  retain prompts are drawn without replacement within a step (the code's dataset draws without
  replacement until fewer than a batch remain). With `iter` the engine counts 1 + retain_step
  optimizer steps per iteration (one Adam, as the code's `opt`).
- Schedule (L74-152): iterations below `warmup` (200) train on the clean concept prompt (no
  attack); from then on every iteration attacks first, then trains on the adversarial prompt
  only. Each iteration draws one concept prompt.
- Defaults (c, AdvUnlearn.py): iterations 1000 (L249), lr 1e-5 (L251), Adam (L62; the engine's
  AdamW at weight decay 0 is Adam), no gradient clipping, start_guidance 3 (L226),
  negative_guidance 1 (L227), ddim_steps 50 (L234), retain_batch 5 (L240), retain_train iter
  (L241), retain_step 1 (L242), retain_loss_w 1.0 (L243), adv_prompt_num 1 (L254), attack_init
  latest (L257), attack_step 30 (L258), attack_lr 1e-3 (L260), warmup 200 (L261). The README's
  command uses `attack_init: random, retain_train: reg, retain_loss_w: 0.3`.
- Data (d): the concept prompts as ESD's (a world's prompts of the concept, else its name);
  retain prompts "a photo of {object}" over the first 40 objects of the authors' 243-line
  `coco_object_retain.csv` (filtered by a language model; resources/prompts/
  advunlearn_coco_objects.txt), or, in a world, every prompt of the world's other classes.

Training runs on the fine-tuning engine (Lightning): the text encoder's trained parameters are
the objective's own (`FineTuneModule.extra`), and so is the latest delta, which receives no
gradient from the outer loss (it is only copied in), so that a resumed run continues the attack's
chain. The miniature world's preset is recipes/digits-advunlearn.yaml.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import torch
from annotated_types import Ge, Gt
from diffusers import DDIMScheduler
from torch.nn import functional as F

from harness.config import check_bounds
from harness.errors import HarnessError, keyed
from harness.registry import method
from harness.settings.generate import GenerationSettings
from harness.train.data import latent_shape
from harness.train.engine import FineTuneModule, Objective, OptimParams, fine_tune
from harness.train.prefix import PrefixEncoder
from harness.unlearn.method import UnlearnContext, UnlearnResult
from harness.unlearn.training import concept_prompts

log = logging.getLogger(__name__)

PREFIX = "text_encoder."
"""Result names of text-encoder tensors: this + the name in `pipeline.text_encoder.named_parameters()`."""

ADVUNLEARN_LAYERS = [f"{PREFIX}*encoder.layers.*", f"{PREFIX}*final_layer_norm.*"]
"""`text_encoder_full`: every encoder layer and the final layer norm (with or without the
`text_model.` level that transformers' CLIPTextModel had before version 5)."""

RETAIN_OBJECTS = "advunlearn_coco_objects.txt"
RETAIN_TEMPLATE = "a photo of {}"
DELTA = "adv_delta"
"""The latest adversarial embedding's slot in `FineTuneModule.extra`."""


@dataclass
class AdvUnlearnParams:
    """`params` of the `advunlearn` method."""

    iterations: Annotated[int, Ge(1)] = 1000
    """training iterations (each: an attack after the warm-up, an update, and with `iter` the retain steps)"""
    lr: Annotated[float, Gt(0)] = 1e-5
    """Adam learning rate of the text encoder"""
    warmup: Annotated[int, Ge(0)] = 200
    """iterations on the clean concept prompt before the attacks start"""
    attack_step: Annotated[int, Ge(1)] = 30
    """Adam steps of each inner attack"""
    attack_lr: Annotated[float, Gt(0)] = 1e-3
    """the inner attack's Adam learning rate"""
    attack_init: Literal["latest", "random"] = "latest"
    """start each attack from the previous round's embedding (latest) or a random word's"""
    attack_method: Literal["pgd", "fast_at"] = "pgd"
    """pgd: Adam on the gradient; fast_at: Adam on its sign"""
    adv_prompt_num: Annotated[int, Ge(1)] = 1
    """k, the adversarial token embeddings inserted after the start token"""
    retain_train: Literal["iter", "reg"] = "iter"
    """iter: separate retain steps after each update; reg: the retain loss added to the update's"""
    retain_batch: Annotated[int, Ge(1)] = 5
    """retain prompts per retain loss"""
    retain_step: Annotated[int, Ge(1)] = 1
    """retain steps after each update (iter)"""
    retain_loss_w: Annotated[float, Ge(0)] = 1.0
    """weight of the retain loss (reg)"""
    start_guidance: Annotated[float, Ge(0)] = 3.0
    """guidance of the DDIM sampling that makes z"""
    negative_guidance: Annotated[float, Ge(0)] = 1.0
    """eta: how far past the empty prompt the concept's prediction is pushed"""
    ddim_steps: Annotated[int, Ge(2)] = 50
    """DDIM steps of that sampling"""
    prompts: list[str] = field(default_factory=list)
    """the concept prompts (default: a world's prompts of the concept, else its name)"""
    retain_prompts: list[str] = field(default_factory=list)
    """the retain prompts (default: a world's other classes' prompts, else "a photo of {object}" over COCO objects)"""
    grad_clip: Annotated[float, Ge(0)] = 0.0
    """gradient-norm clipping of the text encoder's update (0: none, as the authors)"""
    checkpoint_every: Annotated[int, Ge(1)] = 100
    """optimizer steps between Lightning checkpoints (a killed run resumes from the last)"""
    seed: int = 0
    """seed of every step's draws"""

    def __post_init__(self) -> None:
        check_bounds(self)

    def optim(self) -> OptimParams:
        """The engine's settings: one optimizer step per iteration, 1 + retain_step with `iter`."""
        return OptimParams(steps=self.iterations * self.period, lr=self.lr, weight_decay=0.0, batch_size=1,
                           accumulate=1, grad_clip=self.grad_clip, checkpoint_every=self.checkpoint_every,
                           seed=self.seed)

    @property
    def period(self) -> int:
        """Optimizer steps per iteration."""
        return 1 + self.retain_step if self.retain_train == "iter" else 1


def slot(name: str) -> str:
    """A text-encoder parameter's key in `FineTuneModule.extra` (no dots)."""
    return "te__" + name.replace(".", "__")


def text_encoder_targets(context: UnlearnContext) -> list[str]:
    """The text encoder's parameter names (unprefixed) the method trains: the prefixed names in
    `context.layers`, else the declared default globs over the encoder's names."""
    encoder = getattr(context.pipeline, "text_encoder", None)
    if encoder is None:
        raise HarnessError("advunlearn trains the text encoder; the pipeline has none", key="method")
    names = [n for n, _ in encoder.named_parameters()]
    unet = [n for n in context.layers if not n.startswith(PREFIX)]
    if unet:
        raise HarnessError(f"advunlearn trains the text encoder only (layers named '{PREFIX}...'); "
                           f"'{unet[0]}' is not one", key="layers")
    chosen = {n[len(PREFIX):] for n in context.layers}
    if not chosen:
        chosen = {n for n in names if any(fnmatch.fnmatch(PREFIX + n, g) for g in ADVUNLEARN_LAYERS)}
    missing = sorted(chosen - set(names))
    if missing:
        raise HarnessError(f"'{PREFIX}{missing[0]}' is not a parameter of the text encoder", key="layers")
    if not chosen:
        raise HarnessError("no text-encoder parameter to train", key="layers")
    return [n for n in names if n in chosen]


def retain_prompts(context: UnlearnContext, given: list[str]) -> list[str]:
    """The retain prompts: the ones given, else a world's other classes' prompts, else "a photo
    of {object}" over the shipped COCO objects."""
    if given:
        return list(given)
    from harness.world import world_of_kind

    world = world_of_kind(context.concept.kind)
    if world is not None:
        found = world.labelled_images("train", 8)
        labels = list(dict.fromkeys(found[1])) if found else []
        names = {name.lower() for name in world.concept_names(context.concept.target)}
        others = [p for label in labels if label.lower() not in names for p in world.label_prompts(label)]
        if others:
            return others
    from harness.resources import resource_dir

    lines = (resource_dir("prompts") / RETAIN_OBJECTS).read_text().splitlines()
    return [RETAIN_TEMPLATE.format(line.strip()) for line in lines if line.strip() and not line.startswith("#")]


def token_ids(tokenizer: Any, prompts: list[str]) -> torch.Tensor:
    """The prompts' padded token ids, as the pipeline's own encoding tokenizes them."""
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def encode(encoder: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The text encoder's conditioning (last hidden state) of token ids."""
    return encoder(ids.to(next(encoder.parameters()).device))[0]


@dataclass
class Originals:
    """E_orig of the prompts, computed before training (a resumed run restores trained weights first)."""

    concept: torch.Tensor
    empty: torch.Tensor
    retain: torch.Tensor

    @classmethod
    @torch.no_grad()
    def of(cls, pipeline: Any, concept: list[str], retain: list[str]) -> Originals:
        encoder, tokenizer = pipeline.text_encoder, pipeline.tokenizer
        return cls(*(encode(encoder, token_ids(tokenizer, p)).float().cpu() for p in (concept, [""], retain)))


@dataclass
class Record:
    """What the run did, step by step (this process's steps: a resumed run's record starts at its resume)."""

    unlearn: list[float] = field(default_factory=list)
    retain: list[float] = field(default_factory=list)
    attacked: list[int] = field(default_factory=list)
    """the iterations that attacked"""
    attack_losses: list[list[float]] = field(default_factory=list)
    """each attack's loss per step"""
    clean: int = 0
    """updates on the clean prompt (warm-up)"""


class AdvUnlearnObjective(Objective):
    """The AdvUnlearn step; see the module docstring. `loss` dispatches on the optimizer step:
    an update (an attack first after the warm-up) or a retain step."""

    def __init__(self, params: AdvUnlearnParams, prompts: list[str], retain: list[str], targets: list[str],
                 originals: Originals, generation: GenerationSettings | None = None, reference_code: bool = False) -> None:
        self.params, self.prompts, self.retain_prompts, self.targets = params, prompts, retain, targets
        self.originals, self.generation = originals, generation or GenerationSettings()
        self.reference_code = reference_code
        self.record = Record()

    # set-up ----------------------------------------------------------------------------------

    def attach(self, module: FineTuneModule) -> None:
        encoder = module.pipeline.text_encoder
        parameters = dict(encoder.named_parameters())
        for name in self.targets:
            module.extra[slot(name)] = parameters[name]
        width = encoder.get_input_embeddings().weight.shape[1]
        module.extra[DELTA] = torch.nn.Parameter(torch.zeros(self.params.adv_prompt_num, width))

    def prepare(self, module: Any) -> None:
        pipeline, device = module.pipeline, module.device
        self.encoder = pipeline.text_encoder
        self.prefix = PrefixEncoder(pipeline, self.params.adv_prompt_num)
        self.adv_ids = self.prefix.ids(self.prompts).to(device)
        self.ids = token_ids(pipeline.tokenizer, self.prompts).to(device)
        self.retain_ids = token_ids(pipeline.tokenizer, self.retain_prompts).to(device)
        self.e_concept = self.originals.concept.to(device)
        self.e_empty = self.originals.empty.to(device)
        self.e_retain = self.originals.retain.to(device)
        self.sampler = DDIMScheduler.from_config(pipeline.scheduler.config)
        self.sampler.set_timesteps(self.params.ddim_steps, device=device)
        self.train_steps = int(pipeline.scheduler.config.num_train_timesteps)
        self.shape = latent_shape(pipeline, self.generation)
        self.trained = [p for n, p in self.encoder.named_parameters() if n in set(self.targets)]

    # one optimizer step ----------------------------------------------------------------------

    def loss(self, module: Any, generator: torch.Generator) -> torch.Tensor:
        iteration, phase = divmod(int(module.global_step), self.params.period)
        if phase:
            loss = self.retain_loss(module, generator, *self.draw_t(generator))
            self.record.retain.append(float(loss.detach()))
            return loss
        index = int(torch.randint(0, len(self.prompts), (1,), generator=generator))
        if iteration >= self.params.warmup:
            delta = self.attack(module, index, generator, first=iteration == self.params.warmup)
            self.record.attacked.append(iteration)
            condition = self.prefix.encode(self.adv_ids[index:index + 1], delta[None])
        else:
            self.record.clean += 1
            condition = encode(self.encoder, self.ids[index:index + 1])
        t_enc, t = self.draw_t(generator)
        loss = self.unlearn_loss(module, generator, index, condition, t_enc, t)
        self.record.unlearn.append(float(loss.detach()))
        if self.params.retain_train == "reg":
            loss = loss + self.params.retain_loss_w * self.retain_loss(module, generator, t_enc, t)
        return loss

    def draw_t(self, generator: torch.Generator) -> tuple[int, torch.Tensor]:
        """t_enc ~ U{0..n-1} DDIM steps, and the UNet's t ~ U[T t_enc / n, T (t_enc + 1) / n)."""
        n = self.params.ddim_steps
        t_enc = int(torch.randint(0, n, (1,), generator=generator))
        low, high = round(t_enc / n * self.train_steps), round((t_enc + 1) / n * self.train_steps)
        t = torch.randint(low, max(high, low + 1), (1,), generator=generator)
        return t_enc, t.to(self.e_empty.device)

    @torch.no_grad()
    def sample(self, module: Any, generator: torch.Generator, condition: torch.Tensor, steps: int) -> torch.Tensor:
        """`steps` DDIM steps from fresh noise under `condition` (E_orig) with guidance, by the frozen UNet."""
        count = condition.shape[0]
        z = torch.randn((count, *self.shape), generator=generator).to(module.device)
        empty = self.e_empty.expand(count, -1, -1)
        guidance = self.params.start_guidance
        for t in self.sampler.timesteps[:steps]:
            both = module.unet(torch.cat([z, z]), t, encoder_hidden_states=torch.cat([empty, condition])).sample
            uncond, cond = both.chunk(2)
            z = self.sampler.step(uncond + guidance * (cond - uncond), t, z).prev_sample
        return z

    def unlearn_loss(self, module: Any, generator: torch.Generator, index: int, condition: torch.Tensor,
                     t_enc: int, t: torch.Tensor) -> torch.Tensor:
        """l_u of one draw: the ESD target from the frozen model, the prediction under `condition`."""
        concept = self.e_concept[index:index + 1]
        z = self.sample(module, generator, concept, t_enc)
        with torch.no_grad():
            e_0 = module.unet(z, t, encoder_hidden_states=self.e_empty).sample
            e_p = module.unet(z, t, encoder_hidden_states=concept).sample
        e_n = module.unet(z, t, encoder_hidden_states=condition).sample
        target = e_0 - self.params.negative_guidance * (e_p - e_0)
        return F.mse_loss(e_n.float(), target.float())

    def retain_loss(self, module: Any, generator: torch.Generator, t_enc: int, t: torch.Tensor) -> torch.Tensor:
        """l_r over `retain_batch` retain prompts (without replacement within the batch)."""
        count = min(self.params.retain_batch, len(self.retain_prompts))
        chosen = torch.randperm(len(self.retain_prompts), generator=generator)[:count].to(self.retain_ids.device)
        original = self.e_retain[chosen]
        z = self.sample(module, generator, original, t_enc)
        with torch.no_grad():
            e_p = module.unet(z, t, encoder_hidden_states=original).sample
        e_n = module.unet(z, t, encoder_hidden_states=encode(self.encoder, self.retain_ids[chosen])).sample
        return F.mse_loss(e_n.float(), e_p.float())

    # the inner attack ------------------------------------------------------------------------

    def initial_delta(self, module: Any, generator: torch.Generator, first: bool) -> torch.Tensor:
        """The attack's start: the latest delta, else (first round, `random`) a random word's embedding."""
        extra = getattr(module, "extra", None)
        if self.params.attack_init == "latest" and not first and extra is not None and DELTA in extra:
            return extra[DELTA].detach().clone()
        table = self.prefix.word_table()
        pick = torch.randint(0, table.shape[0], (self.params.adv_prompt_num,), generator=generator)
        return table[pick.to(table.device)].clone()

    def attack_loss(self, module: Any, delta: torch.Tensor, index: int, generator: torch.Generator) -> torch.Tensor:
        """MSE(eps(z, t, E_theta([BOS, delta, c])), eps_o(z, t, E_orig(c))) on one fresh draw."""
        t_enc, t = self.draw_t(generator)
        concept = self.e_concept[index:index + 1]
        z = self.sample(module, generator, concept, t_enc)
        with torch.no_grad():
            e_p = module.unet(z, t, encoder_hidden_states=concept).sample
        condition = self.prefix.encode(self.adv_ids[index:index + 1], delta[None])
        e_n = module.unet(z, t, encoder_hidden_states=condition).sample
        return F.mse_loss(e_n.float(), e_p.float())

    def attack(self, module: Any, index: int, generator: torch.Generator, first: bool = False) -> torch.Tensor:
        """`attack_step` Adam steps on delta (the encoder's parameters frozen meanwhile); the result
        is also kept as the latest delta."""
        delta = self.initial_delta(module, generator, first).requires_grad_(True)
        optimizer = torch.optim.Adam([delta], lr=self.params.attack_lr)
        states = [p.requires_grad for p in self.trained]
        for p in self.trained:
            p.requires_grad_(False)
        summed = torch.zeros_like(delta)
        losses: list[float] = []
        try:
            with torch.enable_grad():
                for _ in range(self.params.attack_step):
                    loss = self.attack_loss(module, delta, index, generator)
                    (grad,) = torch.autograd.grad(loss, [delta])
                    if self.reference_code:  # the code never zeroes the gradient: Adam sees the running sum
                        summed = summed + grad
                        grad = summed
                    delta.grad = grad.sign() if self.params.attack_method == "fast_at" else grad.clone()
                    optimizer.step()
                    losses.append(float(loss.detach()))
        finally:
            for p, state in zip(self.trained, states):
                p.requires_grad_(state)
        self.record.attack_losses.append(losses)
        result = delta.detach()
        if hasattr(module, "extra") and DELTA in module.extra:
            with torch.no_grad():
                module.extra[DELTA].copy_(result)
        return result


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


@method("advunlearn", params=AdvUnlearnParams, layers=ADVUNLEARN_LAYERS)
def advunlearn(context: UnlearnContext, params: AdvUnlearnParams) -> UnlearnResult:
    """AdvUnlearn: adversarial ESD training of the text encoder (harness.unlearn.method)."""
    assert context.scratch is not None, "the unlearn stage gives training methods a scratch folder"
    targets = text_encoder_targets(context)
    prompts = concept_prompts(context, params.prompts)
    retain = retain_prompts(context, params.retain_prompts)
    if params.warmup >= params.iterations:
        log.warning("advunlearn: warmup %d >= iterations %d: no attack runs (plain ESD on the text encoder)",
                    params.warmup, params.iterations)
    pipeline = context.pipeline
    parameters = dict(pipeline.text_encoder.named_parameters())
    before = {name: parameters[name].detach().float().cpu().clone() for name in targets}
    try:
        PrefixEncoder(pipeline, params.adv_prompt_num).ids(prompts)
    except HarnessError as error:
        raise HarnessError(error.message, key="params.adv_prompt_num") from None
    originals = Originals.of(pipeline, prompts, retain)
    objective = AdvUnlearnObjective(params, prompts, retain, targets, originals, context.generation,
                                    reference_code=context.fidelity == "reference-code")
    with keyed("params"):
        outcome = fine_tune(pipeline, objective, params.optim(), context.scratch, context.settings_key,
                            context.job.method.name or context.job.method.method, context.device, context.runtime)
    tensors = {PREFIX + name: outcome.extra[slot(name)] for name in targets}
    masks = {PREFIX + name: tensors[PREFIX + name] != before[name] for name in targets}
    record = objective.record
    attacks = record.attack_losses
    info = {
        "params": dataclasses.asdict(params),
        "iterations": params.iterations,
        "optimizer_steps": outcome.steps,
        "resumed_from_step": outcome.resumed_from,
        "warmup_covers_all": params.warmup >= params.iterations,
        "clean_updates": record.clean,
        "attack_rounds": len(record.attacked),
        "attack_steps": sum(len(a) for a in attacks),
        "attack_loss_first_last": [_mean([a[0] for a in attacks if a]), _mean([a[-1] for a in attacks if a])],
        "unlearn_loss_first_last_10": [_mean(record.unlearn[:10]), _mean(record.unlearn[-10:])],
        "retain_loss_first_last_10": [_mean(record.retain[:10]), _mean(record.retain[-10:])],
        "train_seconds": outcome.seconds,
        "trained_parameters": len(tensors),
        "trained_entries": sum(t.numel() for t in tensors.values()),
        "changed_entries": int(sum(int(m.sum()) for m in masks.values())),
        "prompts": prompts,
        "retain_prompts": len(retain),
        "fidelity": context.fidelity,
    }
    return UnlearnResult(masks=masks, tensors=tensors, info=info)
