"""UCE, Unified Concept Editing in Diffusion Models (Gandikota et al., WACV 2024), registered as `uce`.

A closed-form edit of every cross-attention key and value projection (`attn2.to_k`, `attn2.to_v`;
32 matrices in SD-v1.x), as the authors' current code does it (rohitgandikota/unified-concept-editing,
`trainscripts/uce_sd_erase.py` at 28c81ed: `UCE()` L12-93, defaults L105-107, guide L136-143;
METHODS.md section 1):

    W_new = [lamb W + s_e sum_i v*_i e_i^T + s_p sum_j (W p_j) p_j^T] [lamb I + s_e sum_i e_i e_i^T + s_p sum_j p_j p_j^T]^-1

with v*_i = W g_i, the original layer's output for erase concept i's guide. It minimises
s_e sum ||W e_i - W_old g_i||^2 + s_p sum ||W p_j - W_old p_j||^2 + lamb ||W - W_old||_F^2.
Each concept is one vector: the text encoder's final state at the prompt's last real token,
index attention_mask.sum() - 2 (the empty guide "" gives index 0, the start token), taken from
the pipeline's own `encode_prompt` (so the world's text encoder serves exactly as SD's does).

Defaults (the code's): erase_scale 1, preserve_scale 1, lamb 0.5; guide "art" for artists, else
"" (one guide for every erase concept, or one per concept); no preserve concepts. The erase
concepts default to the recipe concept's prompts (a world's prompts of the concept, else the
concept's name, as the authors' command line takes it). `expand_prompts` adds the code's
templates (art: "painting by/art by/artwork by/picture by X", "style of X"; otherwise "image
of/photo of/portrait of/picture of/painting of X") to each erase concept, with that concept's
guide; the code's loop (L155-190) zips erase with *preserve* concepts and also appends the erase
templates to the preserve list, which contradicts its own purpose: the harness expands erase
concepts only, as METHODS.md records the intent. The solve runs in float64 (the code inverts in
float32). A projection with a bias (SD's to_k/to_v have none) keeps it, and its targets are W g
without it: the bias is added to the edited output as to the original (the code's `module(t_emb)`
would count it twice).

Under the recipe's `fidelity: reference-code` the edit is the 2023 script's, the paper era's
(`train-scripts/train_erase.py` at bd5fb51, `edit_model` and its `__main__`; METHODS.md 1(f)),
which measurably differs in the miniature world (BENCHMARKS.md, "UCE in the world"):
- each erase concept is a slice of vectors, not one: from its last word token to the end of the
  padded sequence, aligned with its guide's slice from the guide's last word, both
  L - max(k_e, k_g) long (so the end-of-text and padding states are edited too);
- a guide "" (and the default guide, for every concept kind) is " ";
- the preserve concepts are "" plus the recipe's, every position of each;
- preserve_scale, when not given, is max(0.1, 1 / (1 + number of preserve concepts)).
Not reproduced: art with no preserve list preserving every other artist of the authors' CSV (not
shipped; give `preserve` instead), and the "tensor" technique (the script's default is "replace").

No images and no training: seconds on a CPU.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, Any

import torch
from annotated_types import Ge

from harness.config import check_bounds
from harness.errors import HarnessError
from harness.registry import method
from harness.unlearn.method import UnlearnContext, UnlearnResult
from harness.unlearn.training import concept_prompts

UCE_LAYERS = ["*attn2.to_k.weight", "*attn2.to_v.weight"]
"""Every cross-attention key and value projection (the code's `'attn2' in name and name.endswith(('to_k', 'to_v'))`)."""

EXPANSIONS = {
    "artist": ("painting by {}", "art by {}", "artwork by {}", "picture by {}", "style of {}"),
    "object": ("image of {}", "photo of {}", "portrait of {}", "picture of {}", "painting of {}"),
}
"""`expand_prompts` templates (the code's `art` and `object` concept types)."""


@dataclass
class UCEParams:
    """`params` of the `uce` method."""

    erase: list[str] | None = None
    """the concepts to erase (default: the recipe concept's prompts: a world's, else its name)"""
    guide: str | list[str] | None = None
    """what each erase concept is mapped to: one for all, or one per erase concept (default: "art" for artists, else "")"""
    preserve: list[str] | None = None
    """concepts whose outputs are kept (default: none)"""
    erase_scale: Annotated[float, Ge(0)] = 1.0
    preserve_scale: Annotated[float, Ge(0)] | None = None
    """default 1; under `fidelity: reference-code` max(0.1, 1 / (1 + number of preserve concepts))"""
    lamb: Annotated[float, Ge(0)] = 0.5
    """weight of staying close to the original weights"""
    expand_prompts: bool = False
    """add the authors' templates to every erase concept"""

    def __post_init__(self) -> None:
        check_bounds(self)
        if self.erase is not None:
            if not self.erase:
                raise HarnessError("names no concept to erase (omit it to erase the recipe's concept)", key="erase")
            if any(not e.strip() for e in self.erase):
                raise HarnessError("an erase concept is empty", key="erase")
        if isinstance(self.guide, list) and not self.guide:
            raise HarnessError("names no guide concept (omit it for the default)", key="guide")
        if self.preserve and any(not p.strip() for p in self.preserve):
            raise HarnessError("a preserve concept is empty", key="preserve")


def _same(a: str, b: str) -> bool:
    return a.strip().lower() == b.strip().lower()


def resolve_concepts(context: UnlearnContext, params: UCEParams) -> tuple[list[str], list[str], list[str]]:
    """The erase concepts, their guides (one each) and the preserve concepts, with the recipe's
    defaults (the 2023 script's under `fidelity: reference-code`) and `expand_prompts`; a preserve
    concept that is an erase concept is an error."""
    erase = list(params.erase) if params.erase is not None else concept_prompts(context, [])
    kind = context.concept.kind
    if params.guide is None:
        guides = [" " if reference_code(context) else "art" if kind == "artist" else ""] * len(erase)
    elif isinstance(params.guide, str):
        guides = [params.guide] * len(erase)
    elif len(params.guide) == 1:
        guides = list(params.guide) * len(erase)
    elif len(params.guide) == len(erase):
        guides = list(params.guide)
    else:
        raise HarnessError(f"lists {len(params.guide)} guide concepts for {len(erase)} erase concepts "
                           "(give one for all, or one per erase concept)", key="params.guide")
    if params.expand_prompts:
        templates = EXPANSIONS["artist" if kind == "artist" else "object"]
        for concept, guide in list(zip(erase, guides)):
            erase += [t.format(concept) for t in templates]
            guides += [guide] * len(templates)
    preserve = list(params.preserve or [])
    erased = [*erase, *context.concept.targets]
    for concept in preserve:
        clash = next((e for e in erased if _same(e, concept)), None)
        if clash is not None:
            raise HarnessError(f"'{concept}' is also erased ('{clash}'): a concept cannot be erased and preserved",
                               key="params.preserve")
    if reference_code(context):
        guides = [" " if g == "" else g for g in guides]
        preserve = ["", *preserve]
    return erase, guides, preserve


def reference_code(context: UnlearnContext) -> bool:
    """Whether the recipe asks for the 2023 script's edit (`fidelity: reference-code`)."""
    return context.fidelity == "reference-code"


@torch.no_grad()
def encoded(pipeline: Any, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, L, width) text-encoder states of `prompts` padded to the tokenizer's length, from the
    pipeline's own `encode_prompt`, in float64 on the CPU, and (N,) the index of each prompt's
    last real token (the code's `attention_mask.sum() - 2`; 0, the start token, for "")."""
    tokenizer = getattr(pipeline, "tokenizer", None)
    if tokenizer is None or not hasattr(pipeline, "encode_prompt"):
        raise HarnessError("uce needs a pipeline with a tokenizer and encode_prompt (its concepts are text)", key="method")
    embeddings, _ = pipeline.encode_prompt(prompts, pipeline.unet.device, 1, False)
    tokens = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    return embeddings.detach().cpu().double(), (tokens["attention_mask"].sum(dim=1) - 2).clamp(min=0)


def concept_vectors(pipeline: Any, prompts: list[str]) -> torch.Tensor:
    """(N, width): each prompt's text-encoder state at its last real token (the current code's
    one vector per concept)."""
    if not prompts:
        return torch.zeros(0, 0, dtype=torch.float64)
    embeddings, last = encoded(pipeline, prompts)
    return embeddings[torch.arange(len(prompts)), last]


def token_slices(pipeline: Any, erase: list[str], guides: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The 2023 script's erase and guide vectors: for each pair, the erase prompt's states from
    its last word token and the guide's from its own, aligned and cut to the same length
    L - max(k_e, k_g), stacked over pairs into (M, width) each."""
    embeddings, last = encoded(pipeline, [*erase, *guides])
    length = embeddings.shape[1]
    erased, guided = [], []
    for i in range(len(erase)):
        k_e, k_g = int(last[i]), int(last[len(erase) + i])
        farthest = max(k_e, k_g)
        erased.append(embeddings[i, k_e:length - (farthest - k_e)])
        guided.append(embeddings[len(erase) + i, k_g:length - (farthest - k_g)])
    return torch.cat(erased), torch.cat(guided)


def all_positions(pipeline: Any, prompts: list[str]) -> torch.Tensor:
    """(N * L, width): every position of each prompt (the 2023 script's preserve vectors)."""
    embeddings, _ = encoded(pipeline, prompts)
    return embeddings.reshape(-1, embeddings.shape[-1])


def edit_vectors(context: UnlearnContext, erase: list[str], guides: list[str],
                 preserve: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The erase, guide and preserve vectors of the closed form: one per concept (the current
    code), or the 2023 script's token slices and every preserve position (`reference-code`)."""
    pipeline = context.pipeline
    width = pipeline.unet.config.cross_attention_dim
    none = torch.zeros(0, width, dtype=torch.float64)
    if reference_code(context):
        e, g = token_slices(pipeline, erase, guides) if erase else (none, none)
        return e, g, all_positions(pipeline, preserve) if preserve else none
    prompts = list(dict.fromkeys([*erase, *guides, *preserve]))
    vectors = concept_vectors(pipeline, prompts)
    index = {p: i for i, p in enumerate(prompts)}

    def rows(chosen: list[str]) -> torch.Tensor:
        return vectors[[index[p] for p in chosen]] if chosen else none

    return rows(erase), rows(guides), rows(preserve)


def preserve_scale(context: UnlearnContext, params: UCEParams, preserve: list[str]) -> float:
    """The preserve scale given, else the code's default: 1, or the 2023 script's
    max(0.1, 1 / len(preserve)) (its preserve list always holds "")."""
    if params.preserve_scale is not None:
        return params.preserve_scale
    return max(0.1, 1 / len(preserve)) if reference_code(context) else 1.0


def uce_solve(weight: torch.Tensor, erase: torch.Tensor, guides: torch.Tensor, preserve: torch.Tensor,
              erase_scale: float, preserve_scale: float, lamb: float) -> torch.Tensor:
    """UCE's closed form for one projection `weight` (out, in), in float64: erase vectors `erase`
    (N, in) mapped to the original outputs of `guides` (N, in), preserve vectors `preserve` (M, in)
    kept (their original outputs as targets)."""
    w = weight.double()
    width = w.shape[1]
    eye = torch.eye(width, dtype=torch.float64)
    erase, guides = erase.double().reshape(-1, width), guides.double().reshape(-1, width)
    preserve = preserve.double().reshape(-1, width)
    targets_e = guides @ w.T      # v*_i = W g_i
    targets_p = preserve @ w.T    # W p_j
    left = lamb * w + erase_scale * targets_e.T @ erase + preserve_scale * targets_p.T @ preserve
    right = lamb * eye + erase_scale * erase.T @ erase + preserve_scale * preserve.T @ preserve
    try:
        return torch.linalg.solve(right, left.T).T  # left @ right^-1 (right is symmetric)
    except RuntimeError:  # torch.linalg.LinAlgError: singular
        raise HarnessError("the closed form is singular with lamb 0: raise lamb or add concepts",
                           key="params.lamb") from None


@method("uce", params=UCEParams, layers=UCE_LAYERS)
def uce(context: UnlearnContext, params: UCEParams) -> UnlearnResult:
    """Unified Concept Editing (harness.unlearn.method; see the module docstring)."""
    erase, guides, preserve = resolve_concepts(context, params)
    pipeline = context.pipeline
    modules = dict(pipeline.unet.named_modules())
    width = pipeline.unet.config.cross_attention_dim
    e, g, p = edit_vectors(context, erase, guides, preserve)
    scale = preserve_scale(context, params, preserve)
    masks, tensors = {}, {}
    for name in context.layers:
        module = modules.get(name.rpartition(".")[0])
        if (not name.endswith(".weight") or not isinstance(module, torch.nn.Linear)
                or module.in_features != width):
            raise HarnessError(f"'{name}' is not the weight of a linear layer that reads the text conditioning "
                               f"(uce edits {', '.join(UCE_LAYERS)})", key="layers")
        weight = module.weight.detach().cpu()
        new = uce_solve(weight, e, g, p, params.erase_scale, scale, params.lamb).to(weight.dtype)
        masks[name] = new != weight
        tensors[name] = new
    info = {
        "params": dataclasses.asdict(params),
        "erase": erase,
        "guide": guides,
        "preserve": preserve,
        "preserve_scale": scale,
        "vectors": {"erase": len(e), "preserve": len(p)},
        "fidelity": context.fidelity,
        "edited_layers": len(tensors),
    }
    return UnlearnResult(masks=masks, tensors=tensors, info=info)
