"""The fine-tuning engine: one LightningModule and `Trainer.fit` for every training method and
attack.

An objective (ESD, AC, DiMUM, plain denoising, ...) says what one step's loss is; the engine
trains the chosen UNet parameters toward it with AdamW and gradient clipping, in mixed
precision on a GPU, over the devices, strategy and nodes Lightning is given, with a progress
bar and a CSV log of the loss per step (TensorBoard too when it is installed). Every step's
randomness comes from a generator seeded by (seed, step, process), and a Lightning checkpoint
is written every `checkpoint_every` steps (loaded back with `weights_only=True`), so a run
killed at any point resumes from its last checkpoint and ends with the weights an uninterrupted
run reaches. Checkpoints hold only the trained parameters and the optimizer's state; they are
kept under a key of the run's settings and dropped when the settings change.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import lightning.pytorch as pl
import torch
from annotated_types import Ge, Gt
from diffusers import DDPMScheduler
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from harness.config import check_bounds
from harness.errors import HarnessError, keyed
from harness.lightning_quiet import interrupt_raised, quiet_lightning
from harness.models.checkpoints import save_tensors
from harness.progress import tqdm_class
from harness.runtime import RuntimeSettings
from harness.train.trainable import trainable_names

log = logging.getLogger(__name__)

LAST = "last.ckpt"
KEY_FILE = "settings.key"


@dataclass
class OptimParams:
    """What every training method and attack takes in its `params`: the optimisation's settings."""

    steps: Annotated[int, Ge(1)] = 1000
    """optimizer steps"""
    lr: Annotated[float, Gt(0)] = 1e-5
    """AdamW learning rate"""
    weight_decay: Annotated[float, Ge(0)] = 0.0
    """AdamW weight decay"""
    batch_size: Annotated[int, Ge(1)] = 1
    """samples per micro-batch"""
    accumulate: Annotated[int, Ge(1)] = 1
    """micro-batches per optimizer step (gradient accumulation: batch_size x accumulate samples a step)"""
    grad_clip: Annotated[float, Ge(0)] = 1.0
    """gradient-norm clipping (0: none)"""
    checkpoint_every: Annotated[int, Ge(1)] = 100
    """steps between Lightning checkpoints (a killed run resumes from the last)"""
    seed: int = 0
    """seed of every step's draws"""

    def __post_init__(self) -> None:
        check_bounds(self)  # also of the fields of the methods' params that derive from these


@dataclass
class TrainParams(OptimParams):
    """The settings of a run that trains UNet weights: the optimisation's and which weights."""

    trainable: str | list[str] = "esd-x"
    """the parameters trained: a preset (esd-x: cross-attention, esd-u: all but cross-attention, full) or UNet globs"""


class Objective:
    """One training objective: `prepare` once on the training device, then one step's `loss`."""

    needs_frozen = False
    """Whether the objective reads the UNet as it was before training (`FineTuneModule.frozen`)."""

    def attach(self, module: FineTuneModule) -> None:
        """Add what trains besides UNet weights, once, after the trained weights' originals are copied: parameters
        of the objective's own go into `module.extra` (token embeddings, mask scores), and may
        be wired into the models by parametrizations (torch.nn.utils.parametrize)."""

    @contextmanager
    def as_before_training(self) -> Iterator[None]:
        """While open, the objective's own parameters leave the UNet as it was before training
        (a learned mask computes with the unmasked weights); `FineTuneModule.frozen` opens it."""
        yield

    def prepare(self, module: FineTuneModule) -> None:
        """Precompute what every step reads (prompt embeddings, anchor samples)."""

    def loss(self, module: FineTuneModule, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError


class FineTuneModule(pl.LightningModule):
    """The pipeline's UNet under training (only the `trainable` spec's parameters receive
    gradients, and the objective's own `extra` ones), the UNet as it was before training where
    the objective needs it (`frozen`: copies of the trained tensors only), and the pipeline's
    other parts for the objective's use."""

    def __init__(self, pipeline: Any, trainable: str | list[str], objective: Objective, params: OptimParams) -> None:
        super().__init__()
        self.unet = pipeline.unet
        self.parts = {"pipeline": pipeline}  # not submodules: neither trained nor checkpointed
        self.extra = torch.nn.ParameterDict()
        self.objective = objective
        self.params = params
        self.noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
        self.strict_loading = False  # checkpoints hold the trained parameters only
        names = [n for n, _ in self.unet.named_parameters()]
        with keyed("trainable"):
            self.trainable = trainable_names(names, trainable) if trainable else []
        self.originals = Originals(self.unet, self.trainable) if objective.needs_frozen else None
        objective.attach(self)
        if not self.trainable and not len(self.extra):
            raise HarnessError("the run trains nothing (no UNet parameter, no parameter of the objective)", key="")
        wanted = set(self.trainable)
        for name, parameter in self.unet.named_parameters():
            parameter.requires_grad_(name in wanted)
        self.extra.requires_grad_(True)

    @property
    def pipeline(self) -> Any:
        return self.parts["pipeline"]

    def frozen(self, *args: Any, **kwargs: Any) -> Any:
        """The UNet as it was before training, called like the UNet (for objectives that
        declare `needs_frozen`): one UNet, with the trained tensors swapped for their copies from
        before training (torch.func.functional_call) and the objective's own parameters out of
        the way (`Objective.as_before_training`: a learned mask off); no copy of the untrained
        weights is held."""
        if self.originals is None:
            raise RuntimeError(f"{type(self.objective).__name__} reads the frozen UNet but does not declare needs_frozen")
        with self.objective.as_before_training():
            return torch.func.functional_call(self.unet, self.originals.tensors(), args, kwargs)

    def on_fit_start(self) -> None:
        for part in ("text_encoder", "vae"):
            module = getattr(self.pipeline, part, None)
            if module is not None:
                module.to(self.device).requires_grad_(False).eval()
        self.extra.requires_grad_(True)  # an objective's parameters may live inside those parts
        self.objective.prepare(self)

    @torch.no_grad()
    def embed(self, prompts: list[str]) -> torch.Tensor:
        """The UNet's conditioning for prompts, from the pipeline's own text encoder."""
        embeddings, _ = self.pipeline.encode_prompt(prompts, self.device, 1, False)
        return embeddings.to(self.device)

    def step_generator(self, batch_idx: int) -> torch.Generator:
        """A CPU generator for this micro-batch and process: the same draws on a resumed run
        (checkpoints fall on optimizer steps, so the micro-batch's place in its step is
        `batch_idx` modulo the accumulation however Lightning counts after a resume)."""
        micro = self.global_step * self.params.accumulate + batch_idx % self.params.accumulate
        return torch.Generator().manual_seed(self.params.seed * 1_000_003 + micro * 1_009 + self.global_rank)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self.objective.loss(self, self.step_generator(batch_idx))
        self.log("loss", loss.detach(), prog_bar=True, on_step=True, logger=True, batch_size=self.params.batch_size)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        chosen = [p for n, p in self.unet.named_parameters() if n in set(self.trainable)]
        return torch.optim.AdamW([*chosen, *self.extra.values()], lr=self.params.lr,
                                 weight_decay=self.params.weight_decay)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = {f"unet.{n}" for n in self.trainable} | {f"extra.{n}" for n in self.extra}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}

    def trained(self) -> dict[str, torch.Tensor]:
        """The trained UNet parameters, on the CPU, by UNet parameter name."""
        params = dict(self.unet.named_parameters())
        return {name: params[name].detach().float().cpu().clone() for name in self.trainable}

    def trained_extra(self) -> dict[str, torch.Tensor]:
        """The objective's own trained parameters, on the CPU, by their `extra` name."""
        return {name: value.detach().float().cpu().clone() for name, value in self.extra.items()}


class Originals(torch.nn.Module):
    """Copies of the named UNet parameters as they are now: non-persistent buffers, so that they
    move with the module to the training device and stay out of its checkpoints."""

    def __init__(self, unet: torch.nn.Module, names: list[str]) -> None:
        super().__init__()
        self.names = list(names)
        parameters = dict(unet.named_parameters())
        for index, name in enumerate(self.names):
            self.register_buffer(f"original{index}", parameters[name].detach().clone(), persistent=False)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The copies by UNet parameter name."""
        return {name: getattr(self, f"original{index}") for index, name in enumerate(self.names)}

    def numel(self) -> int:
        """Entries held."""
        return sum(t.numel() for t in self.tensors().values())


class StepBar(TQDMProgressBar):
    """Lightning's progress bar over steps, on the standard error like every other bar of the
    harness (whole lines when that is not a terminal: harness.progress), named after the run,
    without its logger version number."""

    def __init__(self, desc: str) -> None:
        super().__init__()
        self.desc = desc

    def init_train_tqdm(self) -> Tqdm:
        return tqdm_class(Tqdm)(desc=self.desc, unit="step", position=2 * self.process_position,
                                disable=self.is_disabled, leave=False, dynamic_ncols=True, file=sys.stderr,
                                smoothing=0, bar_format=self.BAR_FORMAT)

    def on_train_epoch_start(self, trainer: pl.Trainer, *_: Any) -> None:
        super().on_train_epoch_start(trainer)
        self.train_progress_bar.set_description(self.desc)

    @property
    def total_train_batches(self) -> int | float:
        """The run's optimizer steps (Lightning counts micro-batches, and none when accumulating)."""
        return self.trainer.max_steps if self.trainer.max_steps > 0 else super().total_train_batches

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *_: Any) -> None:
        """Move on once per optimizer step, to the step count (a resumed run starts at its step)."""
        bar, step = self.train_progress_bar, trainer.global_step
        if step > bar.n:
            bar.update(step - bar.n)
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


class Snapshots(Callback):
    """Write what trains every `every` optimizer steps (for curves over training): the trained
    UNet parameters, or what `content` picks from the module (a token attack's embeddings)."""

    def __init__(self, every: int, path: Callable[[int], Path],
                 content: Callable[[FineTuneModule], dict[str, torch.Tensor]] | None = None) -> None:
        self.every, self.path = every, path
        self.content = content or FineTuneModule.trained

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step  # called after every micro-batch: a step's last one sees it counted
        if step and step % self.every == 0 and trainer.is_global_zero and not self.path(step).is_file():
            save_tensors(self.content(pl_module), self.path(step))


@dataclass
class TrainOutcome:
    """What a run trained: the UNet parameters, the objective's own (`extra`), the loss per
    step, how long it took."""

    tensors: dict[str, torch.Tensor]
    steps: int
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: int = 0
    device: str = "cpu"

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1] if self.losses else None


def precision_for(device: torch.device) -> str:
    """Mixed precision on GPUs (bf16 where the GPU has it), full precision on CPUs."""
    if device.type == "cuda":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def fine_tune(
    pipeline: Any,
    objective: Objective,
    params: OptimParams,
    folder: Path,
    key: str,
    label: str,
    device: torch.device,
    runtime: RuntimeSettings | None = None,
    snapshot: Snapshots | None = None,
) -> TrainOutcome:
    """Train toward `objective` for `params.steps` steps (the UNet weights `params.trainable`
    names, when the params are TrainParams, and the objective's own parameters), checkpointing
    into `folder` (resumed when it holds a checkpoint of the same `key`); `snapshot` also writes what
    trains along the way. `label` names the run in the progress bar and the log; errors are keyed
    at the params (`trainable`)."""
    trainable = params.trainable if isinstance(params, TrainParams) else []
    module = FineTuneModule(pipeline, trainable, objective, params)
    folder = Path(folder)
    keep_only_same_key(folder, key)
    last = folder / LAST
    resumed = _checkpoint_step(last)
    loggers: list[Any] = [CSVLogger(str(folder), name="logs")]  # a resumed run logs into a version of its own
    if importlib.util.find_spec("tensorboard") is not None:
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(str(folder), name="tensorboard", version=0))
    callbacks: list[Callback] = [ModelCheckpoint(dirpath=str(folder), every_n_train_steps=params.checkpoint_every,
                                                 save_last=True, save_top_k=0, enable_version_counter=False),
                                 StepBar(f"train {label}")]
    if snapshot is not None:
        callbacks.append(snapshot)
    runtime = runtime or RuntimeSettings(accelerator="gpu" if device.type == "cuda" else "cpu")
    started = time.perf_counter()
    with quiet_lightning():
        trainer = pl.Trainer(
            max_steps=params.steps, accelerator="gpu" if device.type == "cuda" else "cpu",
            devices=runtime.lightning_devices if device.type == "cuda" else 1, strategy=runtime.strategy,
            num_nodes=runtime.num_nodes, precision=precision_for(device), gradient_clip_val=params.grad_clip or None,
            accumulate_grad_batches=params.accumulate,
            logger=loggers, callbacks=callbacks, enable_model_summary=False, log_every_n_steps=1,
            num_sanity_val_steps=0, deterministic=False,
        )
        steps = DataLoader(range(params.steps * params.accumulate), batch_size=None)
        with interrupt_raised(trainer):
            trainer.fit(module, train_dataloaders=steps, ckpt_path=str(last) if resumed else None, weights_only=True)
    seconds = time.perf_counter() - started
    log.debug("%s: %d steps (resumed at %d) in %.1f s", label, trainer.global_step, resumed, seconds)
    return TrainOutcome(module.trained(), trainer.global_step, module.trained_extra(), _losses(folder), round(seconds, 3),
                        resumed, str(device))


def keep_only_same_key(folder: Path, key: str) -> None:
    """Checkpoints of other settings are dropped, not resumed."""
    marker = folder / KEY_FILE
    if folder.exists() and (not marker.is_file() or marker.read_text().strip() != key):
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marker.write_text(key + "\n")


def _checkpoint_step(path: Path) -> int:
    """The global step a checkpoint was written at (0 when there is none)."""
    if not path.is_file():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=True)
    return int(state.get("global_step", 0))


def _losses(folder: Path) -> list[float]:
    """The loss of every step from the CSV logs (a resumed run writes a version of its own), by step."""
    import csv

    by_step: dict[int, float] = {}
    for path in sorted((folder / "logs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1])):
        with open(path) as handle:
            for row in csv.DictReader(handle):
                if row.get("loss"):
                    by_step[int(row["step"])] = float(row["loss"])
    return [by_step[s] for s in sorted(by_step)]
