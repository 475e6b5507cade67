"""The world's text side: a word-level tokenizer built locally and a tiny CLIP text encoder.

The vocabulary is the words of the world's prompts plus CLIP-style start/end tokens, a padding
token and an unknown token; lower-casing and whitespace/punctuation splitting come first, so any
prompt tokenizes (unknown words become `<unk>`).
"""

from __future__ import annotations

from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from tokenizers.processors import TemplateProcessing
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

from harness.worlds.digits.data import vocabulary

BOS, EOS, PAD, UNK = "<|startoftext|>", "<|endoftext|>", "<pad>", "<unk>"
MAX_LENGTH = 16
TEXT_WIDTH = 64


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The world's tokenizer: `<|startoftext|> words... <|endoftext|>`, padded to 16 tokens."""
    vocab = {token: i for i, token in enumerate([PAD, BOS, EOS, UNK, *vocabulary()])}
    core = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=MAX_LENGTH,
    )


def build_text_encoder(tokenizer: PreTrainedTokenizerFast) -> CLIPTextModel:
    """A randomly initialised two-layer CLIP text transformer, 64 wide (the UNet's context width)."""
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_WIDTH,
        intermediate_size=2 * TEXT_WIDTH,
        projection_dim=TEXT_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=MAX_LENGTH,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return CLIPTextModel(config)
