"""SalUn for Stable Diffusion (Fan et al., ICLR 2024; OPTML-Group/Unlearn-Saliency, SD/),
registered as `salun`: a saliency mask, then masked fine-tuning with the random-label loss
(METHODS.md section 2). Pruning by saliency alone is the `saliency` method.

- Mask (generate_mask.py L57-107): one pass over the forget set D_f at the original weights
  accumulates g = sum grad[-MSE(eps, (1 + w) eps_theta(x_t, c_f) - w eps_theta(x_t, empty))],
  w = `mask_guidance` 7.5; the mask keeps the top `mask_fraction` (50 %) of |g|, one threshold
  over every trainable entry together (exactly that many entries; ties broken by position).
- Fine-tuning (random_label.py L78-139): per step one forget and one retain batch,
  L = MSE(eps_theta(x_t^f, c_f), sg[eps_theta(x_t^f, c')]) + alpha MSE(eps_theta(x_t^r, c_r), eps_r),
  the target the current model's prediction, detached; the gradients outside the mask are
  zeroed before each Adam step, so those entries never move (weight decay is refused).
- c' is another concept: the next class, (c + 1) mod 10 (objects: Imagenette's label order,
  "an image of a {label}"; a world: the label after the concept in the order of its labelled
  images, with its prompts paired to the concept's by position); NSFW (nsfw_removal.py L83-105):
  c_f "a photo of a nude person", c' = c_r = "a photo of a person wearing clothes" (give the
  clothed images as `retain`, e.g. `{source: prompts, prompts: [...], count: 800}`).

D_f is the frozen model's samples of the concept's prompts (the NSFW setting's; the object
setting uses real Imagenette images, which `forget_samples` of the model stand in for). D_r: a
world's real images of the other classes (as DiMUM), or any data source. Defaults
(random_label.py): alpha 0.1 (L229; the README command uses 0.5), lr 1e-5 (L246), batch 8
(L236), Adam; `steps` 500 = 5 epochs (L239) x ceil(800 / 8); every UNet weight (`full`, README).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

import torch
from annotated_types import Ge, Gt, Le
from diffusers import DDPMScheduler
from torch.nn import functional as F

from harness.errors import HarnessError, keyed
from harness.registry import method
from harness.train.data import DataSpec
from harness.train.denoise import noise_samples
from harness.train.engine import FineTuneModule, Objective, TrainParams
from harness.train.trainable import trainable_names
from harness.unlearn.forget_retain import Conditioned, forget_set, mapping_loss, retain_loss, retain_set, sizes
from harness.unlearn.method import UnlearnContext, UnlearnResult
from harness.unlearn.training import concept_prompts, train_method

CLOTHED = "a photo of a person wearing clothes"
NUDE = "a photo of a nude person"
IMAGENETTE = ("tench", "English springer", "cassette player", "chain saw", "church", "French horn",
              "garbage truck", "gas pump", "golf ball", "parachute")
"""The authors' object classes in their label order (dataset.py)."""


@dataclass
class SalUnParams(TrainParams):
    """`params` of the `salun` method."""

    steps: int = 500
    batch_size: int = 8
    trainable: str | list[str] = "full"
    alpha: Annotated[float, Ge(0)] = 0.1
    """weight of the retain denoising loss"""
    mask_fraction: Annotated[float, Gt(0), Le(1)] = 0.5
    """share of the trainable entries the saliency mask leaves trainable"""
    mask_guidance: Annotated[float, Ge(0)] = 7.5
    """guidance w inside the mask's forget loss"""
    forget_samples: Annotated[int, Ge(1)] = 800
    """how many samples of the concept's prompts the frozen model makes (D_f)"""
    other: list[str] = field(default_factory=list)
    """the other concept's prompts c' (default: the next class's; clothed people for nudity)"""
    retain: DataSpec = field(default_factory=DataSpec)
    """the retain data D_r (default: the world's real images of the other classes)"""
    prompts: list[str] = field(default_factory=list)
    """the forget prompts (default: a world's prompts of the concept, "a photo of a nude person" for nudity, else its name)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.weight_decay:
            raise ValueError(f"weight_decay must be 0 for salun (it would move the entries outside the mask), "
                             f"got {self.weight_decay}")


def saliency_mask(pipeline: Any, forget: Conditioned, names: list[str], guidance: float, fraction: float,
                  batch_size: int, seed: int, device: torch.device) -> dict[str, torch.Tensor]:
    """True for the top `fraction` of |g| over every named entry together, g the gradient of the
    guided forget loss summed over one pass of D_f (see the module docstring)."""
    unet = pipeline.unet
    scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    wanted = set(names)
    saved = {n: p.requires_grad for n, p in unet.named_parameters()}
    for name, parameter in unet.named_parameters():
        parameter.requires_grad_(name in wanted)
        parameter.grad = None
    with torch.no_grad():
        embeddings, _ = pipeline.encode_prompt(forget.table, device, 1, False)
        empty, _ = pipeline.encode_prompt([""], device, 1, False)
    generator = torch.Generator().manual_seed(seed)
    with torch.enable_grad():
        for index in torch.arange(len(forget)).split(batch_size):
            x0 = forget.inputs[index].to(device)
            noised = noise_samples(scheduler, x0, generator)
            conditioned = unet(noised.inputs, noised.timesteps, encoder_hidden_states=embeddings[forget.prompt_index[index]]).sample
            unconditioned = unet(noised.inputs, noised.timesteps, encoder_hidden_states=empty.expand(len(x0), -1, -1)).sample
            guided = (1 + guidance) * conditioned - guidance * unconditioned
            (-F.mse_loss(guided.float(), noised.target.float())).backward()
    parameters = dict(unet.named_parameters())
    scores = torch.cat([parameters[n].grad.detach().abs().flatten().float().cpu() for n in names])
    kept = torch.zeros(len(scores), dtype=torch.bool)
    kept[torch.topk(scores, round(fraction * len(scores)), sorted=False).indices] = True
    for name, parameter in unet.named_parameters():
        parameter.grad = None
        parameter.requires_grad_(saved[name])
    parts = kept.split([parameters[n].numel() for n in names])
    return {name: part.view(parameters[name].shape) for name, part in zip(names, parts)}


class RandomLabelObjective(Objective):
    """SalUn's random-label loss with the gradients outside the mask zeroed; see the module docstring."""

    def __init__(self, forget: Conditioned, others: list[str], retain: Conditioned, masks: dict[str, torch.Tensor],
                 params: SalUnParams) -> None:
        self.forget, self.others, self.retain, self.masks, self.params = forget, others, retain, masks, params
        self.hooks: list[Any] = []

    def prepare(self, module: FineTuneModule) -> None:
        self.forget.prepare(module)
        self.retain.prepare(module)
        self.other = module.embed(self.others)
        parameters = dict(module.unet.named_parameters())
        for name, mask in self.masks.items():
            frozen = (~mask).to(parameters[name].device)
            self.hooks.append(parameters[name].register_hook(lambda grad, frozen=frozen: grad.masked_fill(frozen, 0)))

    def remove_hooks(self) -> None:
        for hook in self.hooks:
            hook.remove()
        self.hooks = []

    def loss(self, module: FineTuneModule, generator: torch.Generator) -> torch.Tensor:
        size = self.params.batch_size
        index = self.forget.draw(size, generator)
        x0, condition = self.forget.batch(index)
        other = self.other[(self.forget.prompt_index[index] % len(self.others)).to(self.other.device)]
        forget = mapping_loss(module, x0, condition, other, generator)
        module.log("forget", forget.detach(), prog_bar=True, on_step=True, logger=True, batch_size=size)
        return forget + self.params.alpha * retain_loss(module, self.retain, self.retain.draw(size, generator), generator)


def other_prompts(context: UnlearnContext, given: list[str]) -> list[str]:
    """c': the prompts given, else the clothed person (nudity), the next label's prompts (a
    world), the next Imagenette class; else an error asking for them."""
    if given:
        return list(given)
    concept = context.concept
    if concept.kind == "nudity":
        return [CLOTHED]
    from harness.world import world_of_kind

    world = world_of_kind(concept.kind)
    if world is not None:
        found = world.labelled_images("train", 8)
        labels = list(dict.fromkeys(found[1])) if found else []
        names = {name.lower() for name in world.concept_names(concept.target)}
        here = [i for i, label in enumerate(labels) if label.lower() in names]
        if here:
            return world.label_prompts(labels[(here[0] + 1) % len(labels)])
    lowered = [c.lower() for c in IMAGENETTE]
    if concept.target.lower() in lowered:
        return [f"an image of a {IMAGENETTE[(lowered.index(concept.target.lower()) + 1) % len(IMAGENETTE)]}"]
    raise HarnessError("name the other concept's prompts that the forget prompts are pulled to "
                       "(no next class is known for this concept)", key="other")


@method("salun", params=SalUnParams)
def salun(context: UnlearnContext, params: SalUnParams) -> UnlearnResult:
    """SalUn: saliency mask, then masked random-label fine-tuning (harness.unlearn.method)."""
    given = params.prompts or ([NUDE] if context.concept.kind == "nudity" else [])
    prompts = concept_prompts(context, given)
    with keyed("params"):
        others = other_prompts(context, params.other)
        with keyed("trainable"):
            names = trainable_names([n for n, _ in context.pipeline.unet.named_parameters()],
                                    params.trainable)
    forget = forget_set(context, prompts, params.forget_samples, params.seed)
    retained = retain_set(context, params.retain, params.seed)
    masks = saliency_mask(context.pipeline, forget, names, params.mask_guidance, params.mask_fraction,
                          params.batch_size, params.seed, context.device)
    objective = RandomLabelObjective(forget, others, Conditioned(retained.inputs, retained.prompts), masks, params)
    try:
        result = train_method(context, objective, params, {"other": others, **sizes(forget, retained)})
    finally:
        objective.remove_hooks()
    kept = sum(int(m.sum()) for m in masks.values())
    result.info["saliency_kept"] = kept
    result.info["saliency_share"] = kept / sum(m.numel() for m in masks.values())
    result.info["changed_outside_mask"] = sum(int((result.masks[n] & ~masks[n]).sum()) for n in masks)
    return result
