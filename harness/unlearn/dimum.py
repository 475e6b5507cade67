"""DiMUM, unlearning by memorisation (seed 004, "Towards Irreversible Machine Unlearning for
Diffusion Models"), registered as `dimum`. The paper's exact loss is not public; this is the form
PROTOCOL.md section 6 describes, kept swappable as a method like any other:

    L = E_retain ||eps - eps_theta(x_t | c)||^2 + lambda * E_alt ||eps - eps_theta(x^alt_t | c_forget)||^2

The forget prompts are trained with the plain denoising loss on alternative samples (by default
the frozen model's samples of the recipe's `concept.anchor`, or of the prompt `alternative`), so
the model memorises the alternative where the concept was. Samples a classifier names as the
erased concept are dropped first (`alternative_filter`: the world's classifier, or ResNet-50 for
an object on SD; harness.train.concept_filter), and the record says how many; the retain term (weight 1) keeps the
rest: a world's real images of every other class with their prompts, or any data source
(`retain`). Defaults: lr 1e-4, 500 steps, batch 4 per term, lambda 1, every UNet parameter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import torch
from annotated_types import Ge

from harness.errors import keyed
from harness.inputs import INPUT_PATH
from harness.registry import method
from harness.score.metrics.classifiers import concept_classifier
from harness.train.concept_filter import drop_concept_samples
from harness.train.data import DataSpec, TrainingSet, build_set, generated_set
from harness.train.denoise import denoising_loss
from harness.train.engine import FineTuneModule, Objective, TrainParams
from harness.unlearn.ac import anchor_prompt
from harness.unlearn.method import UnlearnContext, UnlearnResult
from harness.unlearn.training import concept_prompts, train_method


@dataclass
class DiMUMParams(TrainParams):
    """`params` of the `dimum` method."""

    steps: int = 500
    lr: float = 1e-4
    batch_size: int = 4
    trainable: str | list[str] = "full"
    lam: Annotated[float, Ge(0)] = 1.0
    """weight of the alternative (forget) term"""
    alternative: str | None = None
    """the prompt whose samples replace the concept (default: concept.anchor)"""
    alternative_samples: Annotated[int, Ge(1)] = 50
    """how many alternative samples the frozen model makes"""
    alternative_filter: str = "auto"
    """the classifier that drops alternatives showing the concept: auto (the world's, resnet50 for
    objects), none, a registered classifier or package.module:factory"""
    alternative_filter_weights: str | None = field(default=None, metadata=INPUT_PATH)
    """local weights of that classifier (a resnet50 state dict, a world folder)"""
    retain: DataSpec = field(default_factory=DataSpec)
    """the retain data (default: the world's real images of the other classes)"""
    prompts: list[str] = field(default_factory=list)
    """the forget prompts (default: a world's prompts of the concept, else its name)"""


class MemorisationObjective(Objective):
    """Retain denoising plus lambda times the forget prompts' denoising on alternative samples."""

    def __init__(self, retain: TrainingSet, alternatives: torch.Tensor, forget: list[str], params: DiMUMParams) -> None:
        self.retain, self.alternatives, self.forget, self.params = retain, alternatives, forget, params

    def prepare(self, module: FineTuneModule) -> None:
        self.retain_inputs = self.retain.inputs.to(module.device)
        self.prompt_index = {p: i for i, p in enumerate(dict.fromkeys(self.retain.prompts))}
        self.retain_embeddings = module.embed(list(self.prompt_index))
        self.alternatives = self.alternatives.to(module.device)
        self.forget_embeddings = module.embed(self.forget)

    def loss(self, module: FineTuneModule, generator: torch.Generator) -> torch.Tensor:
        size = self.params.batch_size
        retain = torch.randint(0, len(self.retain_inputs), (size,), generator=generator)
        condition = self.retain_embeddings[[self.prompt_index[self.retain.prompts[i]] for i in retain.tolist()]]
        loss = denoising_loss(module.unet, module.noise_scheduler, self.retain_inputs[retain.to(module.device)],
                              condition, generator)
        alternative = torch.randint(0, len(self.alternatives), (size,), generator=generator)
        forget = torch.randint(0, len(self.forget), (size,), generator=generator)
        return loss + self.params.lam * denoising_loss(
            module.unet, module.noise_scheduler, self.alternatives[alternative.to(module.device)],
            self.forget_embeddings[forget.to(module.device)], generator)


@method("dimum", params=DiMUMParams)
def dimum(context: UnlearnContext, params: DiMUMParams) -> UnlearnResult:
    """DiMUM, memorisation unlearning (harness.unlearn.method)."""
    alternative = params.alternative or anchor_prompt(context)
    forget = concept_prompts(context, params.prompts)
    with keyed("params.retain"):
        retain = build_set(context.pipeline, params.retain, context.generation, context.model, params.seed,
                           context.concept.targets, str(context.data_dir) if context.data_dir else None,
                           context.concept.kind)
    with keyed("params"):
        alternatives = generated_set(context.pipeline, [alternative] * params.alternative_samples,
                                     context.generation, params.seed, "alternative samples")
        classifier = concept_classifier(params.alternative_filter, context.model, context.concept.kind)
        with keyed("alternative_filter"):
            filtered = drop_concept_samples(context.pipeline, alternatives.inputs, context.concept.targets,
                                            classifier, params.alternative_filter_weights)
    objective = MemorisationObjective(retain, filtered.kept, forget, params)
    return train_method(context, objective, params, {"forget_prompts": forget, "alternative": alternative,
                                                       "alternatives_filtered": filtered.info,
                                                       "retain": retain.source, "retain_samples": len(retain.inputs)})
