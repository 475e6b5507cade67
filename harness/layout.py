"""The run directory's contract: every file name and folder of a stage's output and of a run,
in one place. Nothing else spells a file name, and a model of the matrix is named here.

A run directory (`runs/<recipe name>/`):

    recipe.yaml                          the recipe that made it
    harness.log                          everything the run logged, in detail
    unlearn/<method>/                    one method's output (UnlearnFiles)
    attacks/<method>/<attack>/           one attack on one method's model (AttackFiles)
    images/<method>/<attack>/<suite>/    a model's images of a suite (GenerationFiles)
    metrics/<method>/<attack>/<suite>.json
    results.json                         one row per method x attack x suite
    report/                              tables, plots, grids (ReportFiles)
    slurm/                               sbatch scripts (SlurmFiles)

The pretrained model is method `pretrained`, attack `none`; a method's unlearned model as it is
has attack `none`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError

PROMPT_FILE_SUFFIXES = (".csv", ".txt")


def is_prompt_file(spec: str) -> bool:
    """Whether a suite entry names a user's prompt file (a .csv or .txt path) rather than a suite."""
    return spec.lower().endswith(PROMPT_FILE_SUFFIXES)


def suite_name(spec: str) -> str:
    """The name a suite entry stands for in results and folders: a prompt file's stem, else itself."""
    return Path(spec).stem if is_prompt_file(spec) else spec


PRETRAINED = "pretrained"
NO_ATTACK = "none"
LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
"""What a method or attack label may look like (it names folders)."""


def check_name(name: str, what: str) -> str:
    """`name` if it may name a folder: letters, digits, '.', '_', '-', starting with a letter or
    digit (so never empty, '.', '..', absolute or holding a separator)."""
    if not isinstance(name, str) or not LABEL.fullmatch(name):
        raise ValueError(f"{what} {name!r} must be letters, digits, '.', '_' or '-', starting with a letter "
                         "or digit (it names a folder)")
    return name


def check_label(name: str, what: str) -> str:
    """`name` if it may label a method or attack (check_name, and not a reserved label)."""
    check_name(name, what)
    if name in (PRETRAINED, NO_ATTACK):
        raise ValueError(f"{what} '{name}' is reserved ('{PRETRAINED}' and '{NO_ATTACK}' label the matrix's own rows and columns)")
    return name


@dataclass(frozen=True, order=True)
class ModelRef:
    """One model of the matrix: a method's unlearned model after an attack (or none), or a
    snapshot of a training attack after `step` steps (a point of its recovery curve)."""

    method: str
    attack: str = NO_ATTACK
    step: int | None = None

    @property
    def label(self) -> str:
        """`pretrained`, `<method>`, `<method>/<attack>` or `<method>/<attack>@<step>`."""
        if self.attack == NO_ATTACK:
            return self.method
        return f"{self.method}/{self.attack}" + (f"@{self.step}" if self.step is not None else "")

    @property
    def attack_folder(self) -> str:
        """The folder name of the attack part of the model's images and metrics."""
        return self.attack if self.step is None else f"{self.attack}@{self.step}"

    @property
    def final(self) -> ModelRef:
        """The attack's final model (a snapshot's end point)."""
        return ModelRef(self.method, self.attack)

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """The model a label names (`conceptprune/nms`, `esd/dimra@50`, `conceptprune`, `pretrained`)."""
        method, _, attack = text.partition("/")
        attack, _, step = attack.partition("@")
        return cls(method, attack or NO_ATTACK, int(step) if step.isdigit() else None)

    def __str__(self) -> str:
        return self.label


PRETRAINED_MODEL = ModelRef(PRETRAINED)


@dataclass(frozen=True)
class UnlearnFiles:
    """An unlearning method's output folder: the changed tensors, the mask, the record."""

    folder: Path

    @property
    def tensors(self) -> Path:
        return self.folder / "unlearned.safetensors"

    @property
    def mask(self) -> Path:
        return self.folder / "mask.safetensors"

    @property
    def record(self) -> Path:
        return self.folder / "unlearn.json"

    @property
    def checkpoints(self) -> Path:
        """Training checkpoints of methods that train (resumed after a crash)."""
        return self.folder / "checkpoints"


@dataclass(frozen=True)
class AttackFiles:
    """An attack's output folder: the attacked tensors and the record."""

    folder: Path

    @property
    def tensors(self) -> Path:
        return self.folder / "attacked.safetensors"

    @property
    def record(self) -> Path:
        return self.folder / "attack.json"

    @property
    def tokens(self) -> Path:
        """A prompt-space attack's new words and their input embeddings."""
        return self.folder / "tokens.safetensors"

    @property
    def parts(self) -> Path:
        """Per-process parts of a sharded attack, merged by the main process."""
        return self.folder / ".parts"

    @property
    def masks(self) -> Path:
        """A sharded revival's pruned positions, found by the main process for every process."""
        return self.folder / ".masks.safetensors"

    def part_tensors(self, rank: int) -> Path:
        return self.parts / f"part-{rank}.safetensors"

    def part_record(self, rank: int) -> Path:
        return self.parts / f"part-{rank}.json"

    @property
    def checkpoints(self) -> Path:
        """Training checkpoints of attacks that train (resumed after a crash)."""
        return self.folder / "checkpoints"

    def snapshot(self, step: int) -> Path:
        """The attacked tensors after `step` training steps (the points of a recovery curve)."""
        return self.folder / "snapshots" / f"step-{step:06d}.safetensors"

    def token_snapshot(self, step: int) -> Path:
        """A prompt-space attack's new words after `step` training steps (its curve's points)."""
        return self.folder / "snapshots" / f"tokens-step-{step:06d}.safetensors"


SHARD_NAME = "shard-{:06d}.tar"
SHARD_GLOB = "shard-*.tar"


@dataclass(frozen=True)
class GenerationFiles:
    """A suite's images from one model: the record and WebDataset shards of fixed id ranges."""

    folder: Path

    @property
    def record(self) -> Path:
        return self.folder / "generation.json"

    def shard(self, index: int) -> Path:
        """The complete shard's file name."""
        return self.folder / SHARD_NAME.format(index)

    def digest(self, index: int) -> Path:
        """The size and sha256 shard `index` had when it was written (checked on every reuse)."""
        return self.folder / f".{SHARD_NAME.format(index)}.sha256"

    def partial(self, index: int, writer: str) -> Path:
        """The name shard `index` has while `writer` (unique per process) writes it."""
        return self.folder / f".{SHARD_NAME.format(index)}.{writer}.partial"

    def shards(self) -> list[Path]:
        return sorted(self.folder.glob(SHARD_GLOB))

    def digests(self) -> list[Path]:
        return sorted(self.folder.glob(f".{SHARD_GLOB}.sha256"))


@dataclass(frozen=True)
class ReportFiles:
    """The report folder: markdown, its record, and the tables, plots and grids it lists."""

    folder: Path

    @property
    def markdown(self) -> Path:
        return self.folder / "report.md"

    @property
    def record(self) -> Path:
        return self.folder / "report.json"

    @property
    def html(self) -> Path:
        """The whole report in one file a browser opens."""
        return self.folder / "report.html"


@dataclass(frozen=True)
class SlurmFiles:
    """The sbatch scripts of a run, the script that submits them, the job ids and the logs."""

    folder: Path

    @property
    def submit(self) -> Path:
        return self.folder / "submit.sh"

    @property
    def jobs(self) -> Path:
        return self.folder / "jobs.json"

    @property
    def logs(self) -> Path:
        return self.folder / "logs"

    def script(self, order: int, name: str) -> Path:
        return self.folder / f"{order:02d}-{name}.sbatch"

    @property
    def measure(self) -> Path:
        """`--measure`'s scratch folder: its run directory and the units' logs."""
        return self.folder / "measure"

    @property
    def measurements(self) -> Path:
        return self.folder / "measure.json"

    def is_own(self) -> bool:
        """Whether the folder holds what `harness slurm plan` writes (so it may write there again)."""
        return self.submit.is_file() or self.measure.is_dir()


@dataclass(frozen=True)
class RunLayout:
    """Every path of one run directory."""

    root: Path

    @property
    def recipe(self) -> Path:
        return self.root / "recipe.yaml"

    @property
    def log(self) -> Path:
        return self.root / "harness.log"

    @property
    def results(self) -> Path:
        return self.root / "results.json"

    @property
    def report(self) -> ReportFiles:
        return ReportFiles(self.root / "report")

    @property
    def slurm(self) -> SlurmFiles:
        return SlurmFiles(self.root / "slurm")

    def unlearn(self, method: str) -> UnlearnFiles:
        return UnlearnFiles(self.root / "unlearn" / method)

    def attack(self, method: str, attack: str) -> AttackFiles:
        return AttackFiles(self.root / "attacks" / method / attack)

    def images(self, model: ModelRef, suite: str) -> GenerationFiles:
        return GenerationFiles(self.root / "images" / model.method / model.attack_folder / suite)

    def metrics(self, model: ModelRef, suite: str) -> Path:
        return self.root / "metrics" / model.method / model.attack_folder / f"{suite}.json"

    def model_tensors(self, model: ModelRef) -> list[Path]:
        """The tensor files applied, in order, on top of the base model to make `model` (a token
        attack's curve point changes words, not tensors: its tensors are the final ones)."""
        if model.method == PRETRAINED:
            return []
        files = [self.unlearn(model.method).tensors]
        if model.attack != NO_ATTACK:
            attack = self.attack(model.method, model.attack)
            weights_at_step = model.step is not None and not attack.token_snapshot(model.step).is_file()
            files.append(attack.snapshot(model.step) if weights_at_step else attack.tensors)
        return files

    def scored(self) -> dict[tuple[ModelRef, str], Path]:
        """Every metrics file present: (model, suite) -> path."""
        found = {}
        for path in sorted((self.root / "metrics").glob("*/*/*.json")):
            found[(ModelRef.parse(f"{path.parent.parent.name}/{path.parent.name}"), path.stem)] = path
        return found


def is_run_dir(path: Path) -> bool:
    """Whether `path` looks like a run directory (a recipe copy, results, or the SLURM scripts
    `harness slurm plan` writes there before the first job runs)."""
    layout = RunLayout(path)
    return (layout.recipe.is_file() or layout.results.is_file() or (path / "metrics").is_dir()
            or layout.slurm.is_own())


def require_run_dir(path: Path) -> RunLayout:
    """The layout of an existing run directory, else a HarnessError naming it."""
    if not path.is_dir():
        raise HarnessError(f"{path}: run directory not found")
    if not is_run_dir(path):
        raise HarnessError(f"{path}: not a run directory (no recipe.yaml, results.json or metrics/)")
    return RunLayout(path)
