"""The recipe: the whole of one experiment in one YAML file, validated on load, and its sections.

Sections: `model` (hub id, local path or `zoo:NAME`), `concept`, `methods` (the matrix's rows:
unlearning methods with params and an optional defense), `attacks` (its columns beside the
implicit `none`: attacks with params), `generation`, `score`, `suites` and `fidelity`. Every
key is checked: a typo is an error naming the file and the key. The sections are the settings
the stages take (a method's and an attack's own params are theirs to check).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from annotated_types import Ge, Gt, Lt, MultipleOf

from harness.config import check_bounds, load_yaml, parse_dataclass
from harness.errors import HarnessError, in_file, keyed
from harness.layout import PRETRAINED_MODEL, ModelRef, check_label
from harness.resources import find_recipe

SD_FFN_LAYERS = ["*transformer_blocks.0.ff.net.2.weight"]
"""ConceptPrune's target: the second feed-forward linear of every transformer block 0
(16 layers in the SD-v1.x UNet; the same names in the miniature world)."""
Fidelity = Literal["paper", "reference-code"]

DEFAULT_CLIP = "openai/clip-vit-base-patch32"
NUDENET_LABELS = (
    "BUTTOCKS_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_BREAST_EXPOSED",
    "ANUS_EXPOSED",
    "FEET_EXPOSED",
    "ARMPITS_EXPOSED",
    "BELLY_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
)
"""The nine exposed labels the paper's evaluation counts (PROTOCOL.md section 4)."""
DEFAULT_THRESHOLD = 0.5


@dataclass
class ConceptSettings:
    """What is erased: a target concept (or several at once) and its kind (which prompt templates apply)."""

    target: str | list[str]
    """the concept, or a list of concepts erased together (pruning methods unite their masks)"""
    kind: str
    """object, artist, nudity, or a world's kind (digit)"""
    anchor: str | None = None
    """A concept to map the target onto (AC's anchor, e.g. "a photo of a digit"); methods that need one say so."""
    data_dir: str | None = None
    """Folder of the prompt word lists (things.txt, humans.txt, common_scenes.txt); `--data-dir`
    overrides it and $HARNESS_DATA_DIR stands in when both are unset."""

    def __post_init__(self) -> None:
        targets = self.targets
        if not targets or any(not t.strip() for t in targets):
            raise ValueError("target: empty")
        if len(set(targets)) != len(targets):
            raise ValueError(f"target: {targets} names a concept twice")

    @property
    def targets(self) -> list[str]:
        """The erased concepts, one or several."""
        return [self.target] if isinstance(self.target, str) else list(self.target)

    @property
    def several(self) -> bool:
        """Whether several concepts are erased at once."""
        return len(self.targets) > 1

    @property
    def label(self) -> str:
        """The concepts for tables and titles: `seven` or `seven + three`."""
        return " + ".join(self.targets)

    def each(self) -> list[ConceptSettings]:
        """One single-target concept per target, in order."""
        return [dataclasses.replace(self, target=t) for t in self.targets]


@dataclass
class DefenseSettings:
    """Gaussian obfuscation: pruned weights get N(0, sigma^2) draws instead of zeros."""

    sigma: Annotated[float, Gt(0)]
    """standard deviation sigma_M of the draws"""
    seed: int = 0

    def __post_init__(self) -> None:
        check_bounds(self)


@dataclass
class MethodSettings:
    """One unlearning method of the matrix: a registered name or `package.module:function`, its
    params, the layers it may change and an optional defense."""

    method: str
    name: str | None = None
    """The row's label (default: the method's name, with the defense's sigma when defended)."""
    params: dict[str, Any] = field(default_factory=dict)
    layers: list[str] | None = None
    """Glob patterns over UNet parameter names: the weights the method may change (default: the
    method's `default_layers`, else SD_FFN_LAYERS)."""
    defense: DefenseSettings | None = None

    def __post_init__(self) -> None:
        if self.layers is not None and not self.layers:
            raise ValueError("layers must name at least one glob pattern")
        if self.name is None:
            base = self.method.rpartition(":")[2].replace("_", "-")
            self.name = base + (f"-sigma{self.defense.sigma:g}" if self.defense else "")
        check_label(self.name, "name")


@dataclass
class AttackEntry:
    """One attack of the matrix: a registered name (nms, quant4, ...) or `package.module:function`,
    and its params."""

    attack: str
    name: str | None = None
    """The column's label (default: the attack's name)."""
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name is None:
            self.name = self.attack.rpartition(":")[2].replace("_", "-")
        check_label(self.name, "name")


@dataclass
class GenerationSettings:
    """How every image is sampled; unlearning methods that sample use the same settings."""

    steps: Annotated[int, Ge(1)] = 50
    """sampling steps"""
    guidance: Annotated[float, Ge(0)] = 7.5
    """classifier-free guidance scale"""
    height: Annotated[int, Ge(8), MultipleOf(8)] | None = None
    """image height in pixels (none: the model's own)"""
    width: Annotated[int, Ge(8), MultipleOf(8)] | None = None
    """image width in pixels (none: the model's own)"""
    seed_policy: Literal["row", "fixed"] = "row"
    """row: each prompt's own seed; fixed: fixed_seed for every prompt"""
    fixed_seed: Annotated[int, Ge(0)] = 0
    """the seed of every prompt under seed_policy fixed"""
    batch_size: Annotated[int, Ge(1)] = 8
    """prompts per pipeline call"""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """auto: float16 on GPUs (the protocol's), float32 elsewhere"""
    shard_size: Annotated[int, Ge(1)] = 100
    """prompts per WebDataset shard (shard i is one SLURM array task)"""
    scheduler: str | None = "PNDMScheduler"
    """diffusers scheduler class (none: the model's own)"""
    guidance_policy: Literal["fixed", "row"] = "fixed"
    """fixed: `guidance` for every prompt; row: a suite row's own guidance where it has one."""

    def __post_init__(self) -> None:
        check_bounds(self)

    def pipeline_kwargs(self, prompts: list[str], seeds: list[int], guidance: float | None = None,
                        generator_device: str = "cpu") -> dict[str, Any]:
        """Keyword arguments of a pipeline call with these settings: prompt i starts from a
        generator seeded `seeds[i]`, on the CPU so that an image depends neither on its batch nor on
        the device (another `generator_device` draws as code that seeds that device does);
        images come back as `pt` tensors."""
        import torch

        kwargs: dict[str, Any] = {
            "prompt": prompts,
            "num_inference_steps": self.steps,
            "guidance_scale": self.guidance if guidance is None else guidance,
            "generator": [torch.Generator(generator_device).manual_seed(seed) for seed in seeds],
            "output_type": "pt",
        }
        if self.height is not None:
            kwargs["height"] = self.height
        if self.width is not None:
            kwargs["width"] = self.width
        return kwargs


@dataclass
class ScoreSettings:
    """How each metric is computed."""

    batch_size: Annotated[int, Ge(1)] = 32
    """images per metric batch"""
    classifier: str = "auto"
    """resnet50, a world's classifier (digits) or package.module:factory; auto: the suite's own"""
    classifier_weights: str | None = None
    """local classifier weights: a resnet50 state dict, or a world folder"""
    clip_model: str = DEFAULT_CLIP
    """transformers CLIP id or folder, or open_clip:ARCH[:TAG]"""
    clip_weights: str | None = None
    """local CLIP weights: a transformers folder or an open_clip checkpoint"""
    fid_reference: str | None = None
    """a world's reference set (digits-heldout), or a folder of real images or of image shards; none: the suite's own"""
    fid_features: str = "auto"
    """inception or classifier; auto: the suite's own"""
    fid_weights: str | None = None
    """Inception weights file for torchmetrics' FID"""
    nudenet_labels: list[str] = field(default_factory=lambda: list(NUDENET_LABELS))
    """NudeNet labels to count (repeatable)"""
    nudenet_threshold: Annotated[float, Ge(0), Lt(1)] = DEFAULT_THRESHOLD
    """NudeNet detection score threshold"""
    nudenet_model: str | None = None
    """NudeNet onnx model (default: the bundled 320n)"""

    def __post_init__(self) -> None:
        check_bounds(self)
        if self.fid_features not in ("auto", "inception", "classifier"):
            raise ValueError(f"fid_features: unknown '{self.fid_features}' (choose from auto, inception, classifier)")

    def resolved(self, defaults: dict[str, Any]) -> ScoreSettings:
        """The settings with every `auto` and unset reference taken from a suite's `defaults`."""
        return dataclasses.replace(
            self,
            classifier=defaults.get("classifier", "resnet50") if self.classifier == "auto" else self.classifier,
            fid_features=defaults.get("fid_features", "inception") if self.fid_features == "auto" else self.fid_features,
            fid_reference=self.fid_reference or defaults.get("fid_reference"),
        )


OLD_FORM = {
    "unlearn": "the one method is now an entry of 'methods' (method, params, layers, defense)",
    "attack": "revival settings are now the params of each entry of 'attacks'",
    "variants": "each variant is now an entry of 'attacks' (attack: nms | average | sample | quant4 | ideal-..., params)",
}
"""Keys of the recipe form before the matrix, and where their content went."""


@dataclass
class Recipe:
    """One experiment: methods x attacks x suites on one base model."""

    name: str
    model: str
    concept: ConceptSettings | None = None
    methods: list[MethodSettings] = field(default_factory=list)
    attacks: list[AttackEntry] = field(default_factory=list)
    """Attacks run against every method (the attack `none`, the unlearned model as it is, is always there)."""
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    score: ScoreSettings = field(default_factory=ScoreSettings)
    suites: list[str] | None = None
    """The prompt suites every model is generated and scored on (the benchmark needs at least one)."""
    fidelity: Fidelity = "paper"
    """paper: the paper's definitions; reference-code: the authors' published code's behaviour."""
    source: str = field(default="", metadata={"flag": False})
    """The file the recipe was read from (set on load)."""

    def __post_init__(self) -> None:
        if self.suites is not None and not self.suites:
            raise ValueError("suites: list at least one prompt suite (or leave the key out)")
        for what, labels in (("methods", [m.name for m in self.methods]), ("attacks", [a.name for a in self.attacks])):
            repeated = sorted({n for n in labels if labels.count(n) > 1})
            if repeated:
                raise ValueError(f"{what}: name '{repeated[0]}' is used twice (give each entry its own 'name')")
        if self.methods and self.concept is None:
            raise ValueError("methods need a 'concept' section (what is erased)")

    def models(self) -> list[ModelRef]:
        """Every model of the matrix: the pretrained one, each method's unlearned model, and each
        method's model after each attack."""
        return [PRETRAINED_MODEL, *(ModelRef(m.name) for m in self.methods),
                *(ModelRef(m.name, a.name) for m in self.methods for a in self.attacks)]

    def method(self, name: str | None) -> tuple[int, MethodSettings]:
        """The index and entry of the method labelled `name` (None: the recipe's only method)."""
        return self._pick(self.methods, "method", name)

    def attack(self, name: str | None) -> tuple[int, AttackEntry]:
        """The index and entry of the attack labelled `name` (None: the recipe's only attack)."""
        return self._pick(self.attacks, "attack", name)

    def _pick(self, entries: list[Any], kind: str, name: str | None) -> tuple[int, Any]:
        if not entries:
            raise HarnessError(f"{self.source}: {kind}s: the recipe lists no {kind}")
        if name is None:
            if len(entries) > 1:
                raise HarnessError(f"--{kind}: the recipe lists {len(entries)} {kind}s; "
                                   f"name one of {', '.join(e.name for e in entries)}")
            return 0, entries[0]
        for index, entry in enumerate(entries):
            if entry.name == name:
                return index, entry
        raise HarnessError(f"{self.source}: {kind}s: no {kind} named '{name}' (have: {', '.join(e.name for e in entries)})")


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file (a path, or the name of a shipped recipe)."""
    path = find_recipe(str(path))
    data = load_yaml(path)
    for key, moved in OLD_FORM.items():
        if key in data:
            raise HarnessError(f"{path}: '{key}' is the recipe form before the matrix: {moved} (README: Recipes)")
    if "source" in data:
        raise HarnessError(f"{path}: unknown key 'source'")
    from harness.world import ZOO_PREFIX, check_concept_kind, world_named

    with in_file(path):
        recipe = parse_dataclass(Recipe, data)
        recipe.source = str(path)
        if recipe.model.startswith(ZOO_PREFIX):
            with keyed("model"):
                world_named(recipe.model.removeprefix(ZOO_PREFIX))
        if recipe.concept is not None:
            with keyed("concept.kind"):
                check_concept_kind(recipe.concept.kind)
        check_entries(recipe)
    return recipe


def check_entries(recipe: Recipe) -> None:
    """Every method and attack resolves to a declared plug-in and its params parse, before any
    work; several targets need a pruning method. Errors are keyed at the entry."""
    from harness.registry import resolve

    for index, entry in enumerate(recipe.methods):
        with keyed(f"methods[{index}]"):
            with keyed("method"):
                plugin = resolve("method", entry.method)
            with keyed("params"):
                plugin.parse(entry.params)
            if recipe.concept is not None and recipe.concept.several and not plugin.prunes:
                raise HarnessError(f"{entry.method} erases one concept at a time; concept.target lists "
                                   f"{len(recipe.concept.targets)} (only pruning methods unite masks)", key="method")
    for index, entry in enumerate(recipe.attacks):
        with keyed(f"attacks[{index}]"):
            with keyed("attack"):
                plugin = resolve("attack", entry.attack)
            with keyed("params"):
                plugin.parse(entry.params)
