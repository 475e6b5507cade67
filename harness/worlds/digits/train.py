"""Training the world's generator: DDPM noise prediction on the real digits, text encoder included.

Each training image is paired with one of its digit's prompts, a neutral prompt (10%) or the
empty prompt (`cond_dropout`, 10%): the empty prompt is what classifier-free guidance subtracts
at sampling time, so it is learned too. Noise comes from a DDPM scheduler built from the
pipeline's own sampling scheduler config, so training and sampling share betas and prediction
type. An exponential moving average of the weights is what the world keeps. Generation accuracy
is measured every `eval_every` steps, with the sampler the world ships, and returned as the
training history. Two more losses shape where a digit lives: routing (`ffn_routing`) pushes the
prompt's influence into the feed-forwards, selectivity (`ffn_selectivity`) gives each digit its
own feed-forward units, so that pruning a few percent of them erases one digit and spares the rest.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from torch import nn
from torch.utils.hooks import RemovableHandle

from harness.errors import HarnessError
from harness.progress import bar
from harness.worlds.digits.data import NEUTRAL_PROMPTS, concept_prompts, train_digits
from harness.worlds.digits.pipeline import DigitsPipeline, build_untrained_pipeline
from harness.worlds.digits.quality import generation_accuracy

log = logging.getLogger(__name__)


@dataclass
class TrainSettings:
    """Everything that shapes a training run; recorded in the build report."""

    steps: int = 1500
    seed: int = 0
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 1e-2
    ema_decay: float = 0.999
    cond_dropout: float = 0.1
    neutral_fraction: float = 0.1
    ffn_init_scale: float = 0.1
    """Feed-forward weights start at this fraction of their default init, so that what training
    writes into them dominates the random start, as in a large pretrained model; at full scale a
    model this small keeps near-random FFN weights whose pruned signs no completion can recover."""
    ffn_routing: float = 3.0
    """Weight of the feed-forward routing loss (0: off): on half of each batch, the UNet with its
    feed-forwards switched off is asked to predict the same noise for the digit's prompt as for
    the empty prompt, so that the prompt reaches the image only through the feed-forwards, the
    layers ConceptPrune prunes. Alone it makes the digits depend on the feed-forwards as a whole,
    not on a few percent of their weights per digit (BENCHMARKS.md, "World designs tried")."""
    ffn_selectivity: float = 0.05
    """Weight of the feed-forward selectivity loss (0: off): hidden unit u of every GEGLU
    feed-forward belongs to digit u mod 10, and the share of activation outside the prompt's
    digit's units is penalised (`selectivity_loss`), so each digit has units of its own, as the
    concept neurons ConceptPrune finds in Stable Diffusion. It is measured on half of each batch
    paired with prompts drawn independently of the images, so that the units answer the prompt,
    not the digit already visible in the noisy image."""
    init_from: str | None = None
    """A world folder (or its `pipeline/`) whose generator training starts from, instead of a
    fresh initialisation (None): a warm start."""
    exclude: tuple[int, ...] = ()
    """Digits the generator never sees, neither their images nor their prompts (a control: a
    world that never learned them). The text encoder is then the installed world's, frozen, so
    the UNet stands beside it as a `checkpoint` row of the shipped world's matrix."""
    eval_every: int = 500
    eval_per_digit: int = 10
    eval_guidance: list[float] = field(default_factory=lambda: [1.0, 3.0])
    eval_steps: int = 20


def _prompt_table(pipeline: DigitsPipeline) -> tuple[torch.Tensor, list[list[int]], list[int], int]:
    """Token ids of every training prompt; per-digit and neutral row indices; the empty prompt's row."""
    prompts = [""] + list(NEUTRAL_PROMPTS) + [p for d in range(10) for p in concept_prompts(d)]
    ids = pipeline.tokenizer(
        prompts, padding="max_length", max_length=pipeline.tokenizer.model_max_length,
        truncation=True, return_tensors="pt",
    ).input_ids
    per_digit = len(concept_prompts(0))
    first = 1 + len(NEUTRAL_PROMPTS)
    digit_rows = [list(range(first + d * per_digit, first + (d + 1) * per_digit)) for d in range(10)]
    return ids, digit_rows, list(range(1, first)), 0


def _choose_prompts(
    labels: torch.Tensor, table: tuple, settings: TrainSettings, rng: random.Random
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of each image's prompt, and the digit that prompt names (-1: neutral or empty)."""
    ids, digit_rows, neutral_rows, empty_row = table
    rows, named = [], []
    for label in labels.tolist():
        draw = rng.random()
        if draw < settings.cond_dropout:
            rows.append(empty_row)
            named.append(-1)
        elif draw < settings.cond_dropout + settings.neutral_fraction:
            rows.append(rng.choice(neutral_rows))
            named.append(-1)
        else:
            rows.append(rng.choice(digit_rows[label]))
            named.append(label)
    return ids[rows], torch.tensor(named)


def _evaluate(pipeline: DigitsPipeline, classifier: nn.Module, settings: TrainSettings) -> dict:
    return {
        str(g): generation_accuracy(
            pipeline, classifier, per_digit=settings.eval_per_digit,
            num_inference_steps=settings.eval_steps, guidance_scale=g,
        )["mean"]
        for g in settings.eval_guidance
    }


def _sampler(pipeline: DigitsPipeline) -> dict:
    """The sampling settings a measurement used."""
    config = pipeline.scheduler.config
    return {"scheduler": type(pipeline.scheduler).__name__, "timestep_spacing": config.timestep_spacing,
            "clip_sample": config.clip_sample}


def scale_feed_forward_init(unet: nn.Module, scale: float) -> None:
    """Multiply the initial weights of every transformer feed-forward linear by `scale`."""
    with torch.no_grad():
        for name, weight in unet.named_parameters():
            if ".ff.net." in name and name.endswith(".weight"):
                weight.mul_(scale)


@contextmanager
def _hooked(unet: nn.Module, suffix: str, attach: Callable[[nn.Module], RemovableHandle]) -> Iterator[None]:
    """Attach a hook (`attach` returns its handle) to every module whose name ends with `suffix`,
    for the duration of the block."""
    with ExitStack() as handles:
        for name, module in unet.named_modules():
            if name.endswith(suffix):
                handles.enter_context(attach(module))
        yield


@contextmanager
def feed_forwards_off(unet: nn.Module) -> Iterator[None]:
    """Make every transformer feed-forward (`...ff`) output zeros inside the block."""
    with _hooked(unet, ".ff", lambda m: m.register_forward_hook(lambda _m, _args, output: torch.zeros_like(output))):
        yield


@contextmanager
def feed_forward_hidden(unet: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the GEGLU output (the input of every `ff.net.2`), (N, tokens, hidden) per layer."""
    hidden: list[torch.Tensor] = []
    with _hooked(unet, ".ff.net.2", lambda m: m.register_forward_pre_hook(lambda _m, args: hidden.append(args[0]))):
        yield hidden


def selectivity_loss(hidden: list[torch.Tensor], named: torch.Tensor) -> torch.Tensor:
    """How little of the feed-forward activation lies in the named digit's units: -log of its share.

    Unit u belongs to digit u mod 10; `named` is each image's digit (-1: a prompt naming none,
    left out). Per image and layer, the share is the |activation| (mean over tokens) of the named
    digit's units over that of all units; it is scale-free, so it is raised by moving activation
    into the named units, not by shrinking it everywhere, and its -log pulls hardest on the digits
    whose units are quietest, so that no digit's units die while others are learned (a plain share
    let them: BENCHMARKS.md, "Design N"). The mean over images and layers is returned.
    """
    rows = named >= 0
    if not rows.any():
        return hidden[0].sum() * 0
    digits = named[rows].to(hidden[0].device)
    losses = []
    for layer in hidden:
        owner = torch.arange(layer.shape[-1], device=layer.device) % 10
        inside = (owner[None, :] == digits[:, None]).float()
        magnitude = layer[rows].abs().mean(dim=1)
        share = (magnitude * inside).sum(dim=1) / magnitude.sum(dim=1).clamp(min=1e-12)
        losses.append(-share.clamp(min=1e-12).log().mean())
    return torch.stack(losses).mean()


def routing_loss(unet: nn.Module, noisy: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                 empty: torch.Tensor) -> torch.Tensor:
    """How much the prompt changes the noise prediction of the UNet without its feed-forwards."""
    with feed_forwards_off(unet):
        both = unet(torch.cat([noisy, noisy]), torch.cat([t, t]), encoder_hidden_states=torch.cat([context, empty])).sample
    prompted, unprompted = both.chunk(2)
    return F.mse_loss(prompted, unprompted.detach())


def warm_start_folder(init_from: str | Path) -> Path:
    """The pipeline folder a warm start loads: `init_from` itself or its `pipeline/`."""
    folder = Path(init_from).expanduser()
    if (folder / "pipeline" / "model_index.json").is_file():
        folder = folder / "pipeline"
    if not (folder / "model_index.json").is_file():
        raise HarnessError(f"--init-from {init_from}: not a world or pipeline folder (no model_index.json)")
    return folder


def starting_pipeline(settings: TrainSettings) -> DigitsPipeline:
    """The generator training starts from: a world's (`init_from`) or a fresh one with small FFNs."""
    if settings.init_from is None:
        pipeline = build_untrained_pipeline(settings.seed)
        scale_feed_forward_init(pipeline.unet, settings.ffn_init_scale)
        return pipeline
    folder = warm_start_folder(settings.init_from)
    log.info("generator training starts from %s", folder)
    return DigitsPipeline.from_pretrained(folder)


def train_generator(
    settings: TrainSettings, classifier: nn.Module | None = None, size: int = 16,
    frozen_text_encoder: nn.Module | None = None,
) -> tuple[DigitsPipeline, list[dict]]:
    """Train a fresh world pipeline; returns its EMA weights and the history of measurements.
    With `settings.exclude` the generator trains beside `frozen_text_encoder` (the installed
    world's), which it never changes."""
    if settings.exclude and frozen_text_encoder is None:
        raise HarnessError("a world without some digits keeps the installed world's text encoder; none was given")
    pipeline = starting_pipeline(settings)
    if settings.exclude:
        pipeline.text_encoder = frozen_text_encoder.requires_grad_(False)
    unet, text_encoder = pipeline.unet.train(), pipeline.text_encoder.train(not settings.exclude)
    ema = copy.deepcopy(pipeline)
    ema.unet.eval()
    ema.text_encoder.eval()
    noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    images, labels = train_digits(size)
    seen = torch.tensor([d for d in range(10) if d not in settings.exclude])
    if settings.exclude:
        keep = torch.isin(labels, seen)
        images, labels = images[keep], labels[keep]
        log.info("generator training without digits %s: %d images", list(settings.exclude), len(labels))
    data = images * 2 - 1
    table = _prompt_table(pipeline)
    rng = random.Random(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)

    params = list(unet.parameters()) + ([] if settings.exclude else list(text_encoder.parameters()))
    ema_params = list(ema.unet.parameters()) + ([] if settings.exclude else list(ema.text_encoder.parameters()))
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min(1.0, (step + 1) / settings.warmup)
        * 0.5 * (1 + math.cos(math.pi * min(step, settings.steps) / settings.steps)),
    )

    history: list[dict] = []
    started = time.time()
    progress = bar(range(1, settings.steps + 1), desc="generator", unit="step")
    running = 0.0
    for step in progress:
        batch = torch.randint(0, len(data), (settings.batch_size,), generator=generator)
        x0 = data[batch]
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(x0),), generator=generator)
        noisy = noise_scheduler.add_noise(x0, noise, t)
        context = text_encoder(_choose_prompts(labels[batch], table, settings, rng)[0])[0]
        loss = F.mse_loss(unet(noisy, t, encoder_hidden_states=context).sample, noise)
        half = len(x0) // 2  # the share of the batch each optional loss is measured on
        if settings.ffn_selectivity:
            drawn = seen[torch.randint(0, len(seen), (half,), generator=generator)]
            unrelated, named = _choose_prompts(drawn, table, settings, rng)
            with feed_forward_hidden(unet) as hidden:
                unet(noisy[:half], t[:half], encoder_hidden_states=text_encoder(unrelated)[0])
            loss = loss + settings.ffn_selectivity * selectivity_loss(hidden, named)
        if settings.ffn_routing:
            ids, _, _, empty_row = table
            empty = text_encoder(ids[[empty_row] * half])[0]
            loss = loss + settings.ffn_routing * routing_loss(unet, noisy[:half], t[:half], context[:half], empty)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            decay = min(settings.ema_decay, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema_params, params, 1 - decay)
        running = loss.item() if step == 1 else 0.98 * running + 0.02 * loss.item()
        progress.set_postfix(loss=f"{running:.4f}")
        if classifier is not None and settings.eval_every and (step % settings.eval_every == 0 or step == settings.steps):
            record = {"step": step, "loss": running, "seconds": round(time.time() - started, 1),
                      "accuracy_by_guidance": _evaluate(ema, classifier, settings), "sampler": _sampler(ema)}
            history.append(record)
            log.info("step %d: loss %.4f, generation accuracy by guidance %s", step, running, record["accuracy_by_guidance"])
    return ema, history


def settings_dict(settings: TrainSettings) -> dict:
    """The settings as JSON-ready data."""
    return asdict(settings)
