"""The tiny models of the suite (Llama: RoPE, GPT-2: absolute positions, Bloom: ALiBi, Qwen2: RoPE with grouped-query
attention and biased projections), built from configs.

A plain module, imported by name (``from tiny_models import make_model``) by test modules and worker scripts alike;
tests/conftest.py builds its fixtures from it. Helpers are never imported from a conftest.py: pytest imports every
conftest.py under the one module name ``conftest`` (tests/hub_tests has its own), so ``from conftest import ...``
would get whichever was loaded last.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    BloomConfig,
    BloomForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

VOCAB_SIZE = 64
# Untrained models have near-uniform logits; a wide init (initializer_range) gives clear greedy winners.
WORDS = (
    "the a coach motivate you act as good great bad positive negative neutral there are two nice things that "
    "should matter to i want be kind always smile hello world quote dream".split()
)


def _llama() -> torch.nn.Module:
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        initializer_range=0.2,
    )
    return LlamaForCausalLM(config)


def _gpt2() -> torch.nn.Module:
    config = GPT2Config(
        vocab_size=VOCAB_SIZE,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=128,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        initializer_range=0.2,
    )
    return GPT2LMHeadModel(config)


def _bloom() -> torch.nn.Module:
    config = BloomConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        n_layer=2,
        n_head=4,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        initializer_range=0.2,
    )
    return BloomForCausalLM(config)


def _qwen2() -> torch.nn.Module:
    config = Qwen2Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,  # grouped-query attention: 4 query heads share one key/value head
        max_position_embeddings=128,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        initializer_range=0.2,
        tie_word_embeddings=False,
    )
    return Qwen2ForCausalLM(config)


FAMILIES = {"llama": _llama, "gpt2": _gpt2, "bloom": _bloom}  # the suite's ``family`` fixture runs over these
# Built on request only (make_model("qwen2")), so the suite's family-parametrized tests keep their size.
MORE_FAMILIES = {"qwen2": _qwen2}


def make_model(family: str = "llama", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = (FAMILIES | MORE_FAMILIES)[family]()
    return model.eval()


def make_tokenizer(extra_words: tuple[str, ...] = (), fill_vocab: bool = False) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ``WORDS`` and ``extra_words`` (ids below ``VOCAB_SIZE``), padding on the left;
    with ``fill_vocab`` every remaining id up to ``VOCAB_SIZE`` is a word too (``w<id>``), so any id decodes."""
    vocab = {"<pad>": 0, "</s>": 1, "<s>": 2, "<unk>": 3}
    for word in (*WORDS, *extra_words):
        vocab.setdefault(word, len(vocab))
    assert len(vocab) <= VOCAB_SIZE
    for index in range(len(vocab), VOCAB_SIZE if fill_vocab else 0):
        vocab[f"w{index}"] = index
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="</s>",
        bos_token="<s>",
        unk_token="<unk>",
        padding_side="left",
    )
