"""Prompts with k prefix positions given as embedding vectors: the text encoder's conditioning of
"prefix + prompt" through a forward hook on its input embeddings, so any CLIP-style text encoder
works without a change to the pipeline. UnlearnDiff and P4D optimise such a prefix per prompt,
AdvUnlearn's inner attack a continuous one (`harness.attack.prompt`, `harness.unlearn.advunlearn`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from harness.errors import HarnessError
from harness.train.tokens import real_word_ids


class PrefixEncoder:
    """The text encoder's conditioning for `k` prefix positions (given as embeddings) before each
    prompt, and the prefix's words as text."""

    def __init__(self, pipeline: Any, k: int) -> None:
        self.tokenizer, self.encoder, self.k = pipeline.tokenizer, pipeline.text_encoder, k
        self.embedding = self.encoder.get_input_embeddings()
        self.word_ids = torch.tensor(real_word_ids(self.tokenizer), dtype=torch.long)

    @property
    def vocabulary_size(self) -> int:
        """How many words a prefix position chooses from."""
        return len(self.word_ids)

    def ids(self, prompts: list[str]) -> torch.Tensor:
        """Token ids of each prompt with `k` placeholder slots after the start token; a prompt
        that leaves no room for them is a keyed error (`k`)."""
        length = self.tokenizer.model_max_length
        rows = []
        for prompt in prompts:
            ids = self.tokenizer(prompt, truncation=True, max_length=length).input_ids
            if len(ids) + self.k > length:
                raise HarnessError(f"{self.k} prefix tokens do not fit before '{prompt}' ({len(ids)} of the "
                                   f"encoder's {length} tokens); choose k <= {max(length - len(ids), 0)}", key="k")
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else ids[-1]
            row = [ids[0], *([ids[0]] * self.k), *ids[1:]]
            rows.append(row + [pad] * (length - len(row)))
        return torch.tensor(rows, dtype=torch.long)

    def word_table(self) -> torch.Tensor:
        """The input embeddings of the words (rows in the order of the choices' indices)."""
        return self.embedding.weight.detach()[self.word_ids.to(self.embedding.weight.device)]

    def prefix_embeddings(self, one_hot: torch.Tensor) -> torch.Tensor:
        """The embeddings of (relaxed) one-hot rows over the words."""
        weight = self.word_table()
        return one_hot.to(weight.dtype) @ weight

    def encode(self, ids: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """The conditioning of `ids` (from `ids()`) with the slots' embeddings replaced by `prefix`
        (n, k, dim)."""
        with self._slots(prefix):
            return self.encoder(ids.to(self.embedding.weight.device))[0]

    def words(self, choices: torch.Tensor) -> list[str]:
        """The prefix text of each row of chosen words (n, k; indices into the words)."""
        return [self.tokenizer.decode(self.word_ids[row.cpu()].tolist()).strip() for row in choices]

    @contextmanager
    def _slots(self, prefix: torch.Tensor) -> Iterator[None]:
        def replace(_module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
            return torch.cat([output[:, :1], prefix.to(output.dtype), output[:, 1 + self.k:]], dim=1)

        handle = self.embedding.register_forward_hook(replace)
        try:
            yield
        finally:
            handle.remove()
