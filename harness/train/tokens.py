"""Learned prompt tokens: new words of a pipeline's vocabulary whose input embeddings train
while every model weight stays frozen (textual inversion for CCE, the adversarial prefix of
UnlearnDiff), and the projection of embeddings onto the nearest real words.

The new rows of the text encoder's input-embedding matrix come from a trained parameter by a
parametrization (torch.nn.utils.parametrize), so the pipeline's own `encode_prompt` makes the
conditioning, as at generation. With `project` set, the forward pass uses each vector's nearest
real word (cosine similarity) and the gradient goes to the vector itself (straight-through,
the hard-prompt optimisation of PEZ and UnlearnDiff's `hard_prompt` attacker).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F
from torch.nn.utils import parametrize

from harness.errors import HarnessError
from harness.models.pipelines import add_tokens
from harness.train.denoise import denoising_loss
from harness.train.engine import FineTuneModule, Objective


class TokenRows(torch.nn.Module):
    """The parametrization E -> E with rows `rows` taken from `vectors` (or their nearest real
    words' rows, straight-through, when `project`)."""

    def __init__(self, rows: list[int], vectors: torch.nn.Parameter, candidates: torch.Tensor, project: bool) -> None:
        super().__init__()
        self.register_buffer("rows", torch.tensor(rows, dtype=torch.long))
        self.register_buffer("candidates", candidates)
        self.vectors = vectors
        self.project = project

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        vectors = self.vectors
        if self.project:
            nearest = weight.detach()[self.candidates[nearest_rows(vectors, weight.detach()[self.candidates])]]
            vectors = vectors + (nearest - vectors).detach()
        return weight.index_put((self.rows,), vectors.to(weight.dtype))


def nearest_rows(vectors: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """The index of each vector's most cosine-similar row of `table`."""
    return (F.normalize(vectors.detach().float(), dim=-1) @ F.normalize(table.float(), dim=-1).T).argmax(-1)


def real_word_ids(tokenizer: Any) -> list[int]:
    """The vocabulary's ids a prompt may use: every word but the special tokens."""
    special = set(tokenizer.all_special_ids)
    return [i for i in sorted(tokenizer.get_vocab().values()) if i not in special]


def attach_tokens(pipeline: Any, tokens: list[str], init: torch.Tensor, project: bool) -> TokenRows:
    """Add `tokens` to the pipeline's vocabulary with trainable input embeddings started at
    `init` (one row per token); returns the parametrization, whose `vectors` train."""
    tokenizer, encoder = pipeline.tokenizer, pipeline.text_encoder
    candidates = torch.tensor(real_word_ids(tokenizer), dtype=torch.long)
    add_tokens(pipeline, dict(zip(tokens, init.detach().float().cpu())))
    rows = [tokenizer.convert_tokens_to_ids(token) for token in tokens]
    embedding = encoder.get_input_embeddings()
    vectors = torch.nn.Parameter(init.detach().float().clone().to(embedding.weight.device))
    override = TokenRows(rows, vectors, candidates.to(embedding.weight.device), project)
    parametrize.register_parametrization(embedding, "weight", override)
    return override


def word_embedding(pipeline: Any, word: str) -> torch.Tensor:
    """The input embedding of a word that is one token of the vocabulary (errors are keyed)."""
    ids = pipeline.tokenizer(word, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise HarnessError(f"'{word}' is {len(ids)} tokens of the model's vocabulary, not one", key="")
    return pipeline.text_encoder.get_input_embeddings().weight[ids[0]].detach().float().cpu().clone()


def random_words(pipeline: Any, count: int, generator: torch.Generator) -> tuple[list[int], torch.Tensor]:
    """`count` real words drawn at random and their input embeddings."""
    ids = real_word_ids(pipeline.tokenizer)
    chosen = [ids[int(i)] for i in torch.randint(0, len(ids), (count,), generator=generator)]
    weight = pipeline.text_encoder.get_input_embeddings().weight
    return chosen, weight[chosen].detach().float().cpu().clone()


def projected_words(pipeline: Any, vectors: torch.Tensor) -> tuple[list[int], str]:
    """The nearest real word of each vector (the hard prompt) and the prompt text they make."""
    tokenizer = pipeline.tokenizer
    embedding = pipeline.text_encoder.get_input_embeddings()
    weight = embedding.parametrizations.weight.original if parametrize.is_parametrized(embedding, "weight") else embedding.weight
    candidates = torch.tensor(real_word_ids(tokenizer), dtype=torch.long)
    table = weight.detach().float().cpu()[candidates]
    ids = [int(candidates[i]) for i in nearest_rows(vectors.float().cpu(), table)]
    return ids, tokenizer.decode(ids).strip()


class TokenObjective(Objective):
    """The frozen model's denoising loss on `images`, with captions holding new tokens whose
    embeddings are all that trains (attached as the module's `extra["tokens"]`). Subclasses say
    which caption goes with which drawn image (`captions`)."""

    def __init__(self, images: torch.Tensor, tokens: list[str], init: torch.Tensor, batch_size: int,
                 project: bool) -> None:
        self.images, self.tokens, self.init = images, tokens, init
        self.batch_size, self.project = batch_size, project

    def attach(self, module: FineTuneModule) -> None:
        module.extra["tokens"] = attach_tokens(module.pipeline, self.tokens, self.init, self.project).vectors

    def prepare(self, module: FineTuneModule) -> None:
        self.images = self.images.to(module.device)

    def captions(self, index: list[int], generator: torch.Generator) -> list[str]:
        """The captions of the drawn images `index`."""
        raise NotImplementedError

    def loss(self, module: FineTuneModule, generator: torch.Generator) -> torch.Tensor:
        index = torch.randint(0, len(self.images), (self.batch_size,), generator=generator)
        captions = self.captions(index.tolist(), generator)
        condition, _ = module.pipeline.encode_prompt(captions, module.device, 1, False)
        return denoising_loss(module.unet, module.noise_scheduler, self.images[index.to(self.images.device)], condition,
                              generator)
