"""Tiny models of the three position schemes (Llama: RoPE, GPT-2: absolute, Bloom: ALiBi), built from configs.

Also the suite's rules for a busy machine and a moving dependency set: Hypothesis runs without deadlines or speed
health checks (a loaded 2-core machine is slow, not wrong), and a deprecation warning caused by a call in
``peft_ext`` or ``hub`` fails the test that triggered it (``deprecations.py``).
"""

from __future__ import annotations

import pytest
import torch
from deprecations import fail_on_our_deprecations
from hypothesis import HealthCheck, settings
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    BloomConfig,
    BloomForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

import peft_ext  # noqa: F401  (registers SOFT_PROMPT)

settings.register_profile(
    "peft-ext", deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.load_profile("peft-ext")


@pytest.fixture(autouse=True)
def _no_deprecated_calls_from_our_code() -> object:
    with fail_on_our_deprecations():
        yield


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


FAMILIES = {"llama": _llama, "gpt2": _gpt2, "bloom": _bloom}


def make_model(family: str = "llama", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = FAMILIES[family]()
    return model.eval()


@pytest.fixture(params=sorted(FAMILIES))
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "</s>": 1, "<s>": 2, "<unk>": 3}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    assert len(vocab) <= VOCAB_SIZE
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
