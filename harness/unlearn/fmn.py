"""Forget-Me-Not (Zhang et al., "Forget-Me-Not: Learning to Forget in Text-to-Image Diffusion
Models"; SHI-Labs/Forget-Me-Not), registered as `fmn`: attention resteering, the concept's
cross-attention driven to zero (METHODS.md section 4).

- Loss (src/train_attn.py L277-285, L563): L = || concat over every attn2 (cross-attention)
  layer, head and pixel of A[..., S] ||_2, the Frobenius norm (not squared, not averaged) of the
  cross-attention softmax probabilities A at the concept's token positions S. No denoising or
  retain loss; the UNet's output is unused. The probabilities are captured by `CaptureProcessor`,
  a diffusers attention processor on the attn2 modules that computes them as diffusers' default
  `AttnProcessor` does (`Attention.get_attention_scores`) and keeps them for the step's loss.
- Token positions S (L90-96, L138-153): the tokens of the concept c in "a photo of {c}" (object)
  or "a photo in the style of {c}" (kind style), or in each of `prompts`; the concept's text is
  the recipe's target unless `concept_text`. `use_pooler` (default true, attn.yaml L8) adds the
  end-of-text token. The code marks every `<|endoftext|>` id, and SD1.x's tokenizer pads with
  that id (49407), so on SD1.x it marks the end token *and all the padding* (diffusers #2201);
  on SD2.x, the authors' base model (stable-diffusion-2-1-base, attn.yaml L14), whose tokenizer
  pads with "!", it marks the end token only. That code behaviour is kept under the recipe's
  `fidelity: reference-code`; by default the first end token only is marked, which is what the
  code does on the authors' own base model and what "the pooler token" means (CLIP's pooled
  output is read at the first end token), whatever tokenizer pads the prompt.
- Latents: images of the concept, encoded to the UNet's input space (VAE latents; pixels in a
  pixel-space world) and noised at t ~ U{0..999}. The code reads `data/{concept}/` (count not
  given); here `images: generated` is the frozen model's own samples of the concept's prompts
  (a world's prompts of it, else its name: as EraseDiff's and SalUn's D_f) and `images: world`
  the world's real training images of that class; `samples` of them.
- Parameters (b): every UNet weight, or the cross-attention (attn2) only with
  `only_optimize_ca`; the text encoder is frozen (the engine trains UNet weights only).
- Defaults (c, configs/attn.yaml): lr 2e-6 (L10), 35 steps (L11), batch 1 (L9), AdamW weight
  decay 0.01 (L44), gradient clipping 1.0 (L46), a constant schedule (the engine's).

Textual inversion (`use_ti`, default true as attn.yaml L6; ti.yaml L5-11): first `ti_tokens` (4)
new words <s1>..<s4> are learned on the same concept images by the frozen model's denoising loss
under "a photo of <s1> <s2> <s3> <s4>" (each prompt with the concept's words replaced), `ti_steps`
500 at `ti_lr` 1e-3 (the rest of its optimizer is not in METHODS.md: here the engine's AdamW, no
weight decay, grad clip 1.0, batch `batch_size`; only the new embeddings train,
harness.train.tokens, from checkpoints in the scratch folder's ti/); the resteered tokens are
then those words. Their starts (ti.yaml "elon|musk|<rand-1>|<rand-1>" for Elon Musk) are
`ti_init`: a one-token word starts at its embedding, "<rand-S>" at N(0, S^2) per entry
(lora_diffusion's initializer tokens, which the authors' TI stage builds on; not checked in
METHODS.md); by default the concept's one-token words, then "<rand-1>" up to four. The learned
words live only in the training pipeline: the stages apply UNet tensors, so the unlearned model
keeps the base's tokenizer and text encoder (the authors save them carrying the tokens, (e)),
and is prompted with the concept's own words. With batch > 1 the code mis-orders the head/batch mask
(L279); here each sample's heads are masked at its own prompt's positions (identical at batch 1).
The miniature world's preset is recipes/digits-fmn.yaml: the authors' 35 steps at lr 2e-6 leave
its sevens untouched, and every UNet weight at lr 1e-4 erases the other digits with the seven (no
retain term), so the preset trains attn2 only (`only_optimize_ca`), 200 steps at lr 1e-4, after
the textual-inversion stage at its defaults (BENCHMARKS.md, "Forget-Me-Not in the world").
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import torch
from annotated_types import Ge, Gt

from harness.errors import HarnessError, keyed
from harness.registry import method
from harness.train.data import encode, model_size
from harness.train.denoise import noise_samples
from harness.train.engine import FineTuneModule, Objective, OptimParams, TrainParams, fine_tune
from harness.train.tokens import TokenObjective, word_embedding
from harness.unlearn.forget_retain import Conditioned, forget_set
from harness.unlearn.method import UnlearnContext, UnlearnResult
from harness.unlearn.training import concept_prompts, train_method

OBJECT_TEMPLATE = "a photo of {}"
STYLE_TEMPLATE = "a photo in the style of {}"
"""The authors' prompts (train_attn.py L90-96)."""


@dataclass
class FMNParams(TrainParams):
    """`params` of the `fmn` method."""

    steps: int = 35
    lr: float = 2e-6
    batch_size: int = 1
    weight_decay: float = 0.01
    trainable: str | list[str] = "full"
    only_optimize_ca: bool = False
    """train the cross-attention (attn2) only, not every UNet weight"""
    use_pooler: bool = True
    """also attend-away the end-of-text token (reference-code: every end-of-text id, padding included)"""
    use_ti: bool = True
    """learn the concept's tokens by textual inversion first, and resteer those"""
    ti_tokens: Annotated[int, Ge(1)] = 4
    """how many words textual inversion learns"""
    ti_steps: Annotated[int, Ge(1)] = 500
    """textual-inversion steps"""
    ti_lr: Annotated[float, Gt(0)] = 1e-3
    """textual-inversion learning rate"""
    ti_init: list[str] = field(default_factory=list)
    """the learned words' starts: one-token words or "<rand-S>" (default: the concept's words, then <rand-1>)"""
    concept_text: str | None = None
    """the words of the concept whose tokens are resteered (default: the recipe's target)"""
    prompts: list[str] = field(default_factory=list)
    """the prompts the attention is read under (default: "a photo of {c}", style "a photo in the style of {c}")"""
    images: Literal["generated", "world"] = "generated"
    """the concept's images: the frozen model's samples of the concept's prompts, or the world's real ones"""
    samples: Annotated[int, Ge(1)] = 16
    """how many concept images"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.ti_init) > self.ti_tokens:
            raise ValueError(f"ti_init: {len(self.ti_init)} starts for {self.ti_tokens} ti_tokens")
        if self.only_optimize_ca:
            if self.trainable not in ("full", "esd-x"):
                raise ValueError(f"only_optimize_ca: true trains attn2 only; leave trainable unset, got {self.trainable!r}")
            self.trainable = "esd-x"


def token_positions(tokenizer: Any, prompt: str, concept: str, use_pooler: bool, every_eos: bool) -> torch.Tensor:
    """Bool (max_length,): the positions of `concept`'s tokens in the tokenized, padded `prompt`
    (every occurrence of the whole token sequence) and, with `use_pooler`, of the end-of-text
    token: the first one, or (`every_eos`, the authors' code) every position holding its id."""
    length = tokenizer.model_max_length
    ids = tokenizer(prompt, padding="max_length", max_length=length, truncation=True).input_ids
    words = tokenizer(concept, add_special_tokens=False).input_ids
    if not words:
        raise HarnessError(f"'{concept}' has no tokens", key="concept_text")
    marked = torch.zeros(length, dtype=torch.bool)
    for start in range(len(ids) - len(words) + 1):
        if ids[start:start + len(words)] == words:
            marked[start:start + len(words)] = True
    if not marked.any():
        raise HarnessError(f"the concept '{concept}' is not among the tokens of '{prompt}'", key="prompts")
    eos = tokenizer.eos_token_id
    if use_pooler and eos in ids:
        if every_eos:
            marked |= torch.tensor(ids) == eos
        else:
            marked[ids.index(eos)] = True
    return marked


class CaptureProcessor:
    """diffusers' default attention (`AttnProcessor`) that also keeps its softmax probabilities
    (batch x heads, pixels, tokens) in `store`, one entry per call."""

    def __init__(self, store: list[torch.Tensor]) -> None:
        self.store = store

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args: Any, **kwargs: Any) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probabilities = attn.get_attention_scores(attn.head_to_batch_dim(query), key, attention_mask)
        self.store.append(probabilities)
        hidden_states = attn.batch_to_head_dim(torch.bmm(probabilities, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@contextmanager
def capturing(unet: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """While open, every attn2 module of `unet` runs `CaptureProcessor`, its probabilities going
    to the yielded list (in call order); the UNet's processors are restored on leaving."""
    before = unet.attn_processors
    store: list[torch.Tensor] = []
    capture = CaptureProcessor(store)
    if not any(name.endswith("attn2.processor") for name in before):
        raise HarnessError("the UNet has no cross-attention (attn2) layers to resteer", key="")
    unet.set_attn_processor({name: capture if name.endswith("attn2.processor") else processor
                             for name, processor in before.items()})
    try:
        yield store
    finally:
        unet.set_attn_processor(before)


def attention_norm(store: list[torch.Tensor], positions: torch.Tensor, heads: list[int]) -> torch.Tensor:
    """|| concat over layers, heads, pixels of A[..., S] ||_2: the Frobenius norm of every captured
    probability at each sample's marked token positions (`positions`: bool (batch, tokens))."""
    total = positions.new_zeros((), dtype=torch.float32)
    for probabilities, count in zip(store, heads):
        batch = positions.shape[0]
        by_sample = probabilities.float().reshape(batch, count, *probabilities.shape[1:])  # head_to_batch_dim's order
        picked = by_sample * positions[:, None, None, :]
        total = total + picked.pow(2).sum()
    return total.sqrt()


class AttentionResteering(Objective):
    """The Forget-Me-Not loss of one step; see the module docstring."""

    def __init__(self, images: Conditioned, prompts: list[str], positions: torch.Tensor, batch_size: int) -> None:
        self.images, self.prompts, self.positions, self.batch_size = images, prompts, positions, batch_size
        self.last_norms: list[float] = []

    def prepare(self, module: FineTuneModule) -> None:
        self.images.inputs = self.images.inputs.to(module.device)
        self.embeddings = module.embed(self.prompts)
        self.positions = self.positions.to(module.device)
        self.heads = [m.heads for n, m in module.unet.named_modules() if n.endswith("attn2")]

    def loss(self, module: FineTuneModule, generator: torch.Generator) -> torch.Tensor:
        image = self.images.draw(self.batch_size, generator)
        prompt = torch.randint(0, len(self.prompts), (self.batch_size,), generator=generator).to(module.device)
        noised = noise_samples(module.noise_scheduler, self.images.inputs[image.to(module.device)], generator)
        with capturing(module.unet) as store:
            module.unet(noised.inputs, noised.timesteps, encoder_hidden_states=self.embeddings[prompt])
        if len(store) != len(self.heads):
            raise RuntimeError(f"captured {len(store)} cross-attention maps for {len(self.heads)} attn2 layers")
        return attention_norm(store, self.positions[prompt], self.heads)


def resteer_prompts(context: UnlearnContext, params: FMNParams) -> tuple[list[str], str]:
    """The prompts the attention is read under and the concept's words in them."""
    concept = params.concept_text or context.concept.target
    template = STYLE_TEMPLATE if context.concept.kind == "style" else OBJECT_TEMPLATE
    return (list(params.prompts) or [template.format(concept)]), concept


def concept_images(context: UnlearnContext, params: FMNParams) -> Conditioned:
    """`samples` images of the concept in the UNet's input space (see the module docstring)."""
    if params.images == "generated":
        return forget_set(context, concept_prompts(context, []), params.samples, params.seed)
    from harness.world import world_of_source

    with keyed("params.images"):
        world = world_of_source(context.model)
        found = world.labelled_images("train", model_size(context.pipeline, context.generation)) if world else None
        if found is None:
            raise HarnessError(f"'world' needs a world's model with labelled images (zoo:NAME), not {context.model}", key="")
        images, labels = found
        keep = [i for i, label in enumerate(labels) if label == context.concept.target][: params.samples]
        if not keep:
            raise HarnessError(f"world {world.name} has no images of '{context.concept.target}'", key="")
    return Conditioned(encode(context.pipeline, images[keep]), [context.concept.target] * len(keep))


RAND = re.compile(r"<rand-([0-9.eE+-]+)>")


class InversionStage(TokenObjective):
    """Textual inversion of the concept: new words learned on its images (see the module docstring)."""

    def __init__(self, images: torch.Tensor, captions: list[str], tokens: list[str], init: torch.Tensor,
                 batch_size: int) -> None:
        super().__init__(images, tokens, init, batch_size, project=False)
        self.all_captions = captions

    def captions(self, index: list[int], generator: torch.Generator) -> list[str]:
        drawn = torch.randint(0, len(self.all_captions), (len(index),), generator=generator)
        return [self.all_captions[i] for i in drawn.tolist()]


def ti_starts(pipeline: Any, concept: str, params: FMNParams) -> torch.Tensor:
    """The learned words' starting embeddings (ti_tokens, width); errors keyed at ti_init."""
    one_token = [w for w in concept.split() if len(pipeline.tokenizer(w, add_special_tokens=False).input_ids) == 1]
    words = list(params.ti_init) or one_token[: params.ti_tokens]
    words += ["<rand-1>"] * (params.ti_tokens - len(words))
    width = pipeline.text_encoder.get_input_embeddings().weight.shape[1]
    generator = torch.Generator().manual_seed(params.seed)
    starts = []
    for index, word in enumerate(words):
        with keyed(f"ti_init[{index}]" if params.ti_init else "ti_init"):
            found = RAND.fullmatch(word)
            starts.append(torch.randn(width, generator=generator) * float(found.group(1)) if found
                          else word_embedding(pipeline, word))
    return torch.stack(starts)


def learn_tokens(context: UnlearnContext, params: FMNParams, images: Conditioned, prompts: list[str],
                 concept: str) -> tuple[list[str], dict[str, Any]]:
    """The textual-inversion stage: the prompts with the concept's words replaced by the learned
    words, and its record. The words stay attached to the pipeline's text encoder."""
    from harness.train.engine import keep_only_same_key

    vocabulary = context.pipeline.tokenizer.get_vocab()
    tokens = [f"<s{i + 1}>" for i in range(params.ti_tokens)]
    with keyed("params"):
        if any(t in vocabulary for t in tokens):
            raise HarnessError(f"the model's vocabulary already holds {tokens[0]}..", key="use_ti")
        starts = ti_starts(context.pipeline, concept, params)
    words = " ".join(tokens)
    learned = [p.replace(concept, words) for p in prompts]
    stage = InversionStage(images.inputs, learned, tokens, starts, params.batch_size)
    optim = OptimParams(steps=params.ti_steps, lr=params.ti_lr, batch_size=params.batch_size,
                        grad_clip=params.grad_clip, checkpoint_every=params.checkpoint_every, seed=params.seed)
    assert context.scratch is not None
    keep_only_same_key(context.scratch, context.settings_key)  # the next stage keeps the folder, and ti/ in it
    with keyed("params"):
        outcome = fine_tune(context.pipeline, stage, optim, context.scratch / "ti", context.settings_key,
                            f"{context.job.method.name or 'fmn'} (textual inversion)", context.device, context.runtime)
    record = {"ti_tokens": tokens, "ti_steps": outcome.steps, "ti_loss_first_last_10": [
        _mean(outcome.losses[:10]), _mean(outcome.losses[-10:])], "ti_seconds": outcome.seconds}
    return learned, record


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


@method("fmn", params=FMNParams)
def fmn(context: UnlearnContext, params: FMNParams) -> UnlearnResult:
    """Forget-Me-Not, attention resteering (harness.unlearn.method)."""
    prompts, concept = resteer_prompts(context, params)
    every_eos = context.fidelity == "reference-code"
    with keyed("params"):
        for prompt in prompts:  # the concept must be found before any work
            token_positions(context.pipeline.tokenizer, prompt, concept, params.use_pooler, every_eos)
    images = concept_images(context, params)
    info: dict[str, Any] = {}
    if params.use_ti:
        prompts, info = learn_tokens(context, params, images, prompts, concept)
        concept = " ".join(info["ti_tokens"])
    with keyed("params"):
        positions = torch.stack([token_positions(context.pipeline.tokenizer, p, concept, params.use_pooler, every_eos)
                                 for p in prompts])
    objective = AttentionResteering(images, prompts, positions, params.batch_size)
    return train_method(context, objective, params, {
        "prompts": prompts, "concept_text": concept, "token_positions": [p.nonzero().flatten().tolist() for p in positions],
        "images": params.images, "image_count": len(images), "fidelity": context.fidelity, **info})
