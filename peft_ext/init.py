"""Initial values of a soft prompt: one small function per ``SoftPromptConfig.init`` strategy.

Tokenisation happens once, when the config is built (``text_token_ids``, ``label_token_ids``); the initializers
below only read token ids from the config and rows from the base model's input embeddings.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .errors import (
    EmptyInitTextError,
    InitTextLengthError,
    MissingLabelWordsError,
    TokenizerNotAvailableError,
)
from .sources import check_prompt_tensor, read_saved_prompt

if TYPE_CHECKING:
    from .config import SoftPromptConfig

LENGTH_POLICIES = ("repeat", "truncate", "pad", "exact")


def load_local_tokenizer(path: str) -> Any:
    """Load a tokenizer from a local folder only: a text init must never trigger a download."""
    from transformers import AutoTokenizer

    if not os.path.isdir(path):
        raise TokenizerNotAvailableError(
            f"Tokenizer folder {path!r} does not exist. Pass a tokenizer object or a local folder; "
            "peft_ext never downloads a tokenizer for an init."
        )
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def _generator(config: SoftPromptConfig) -> torch.Generator | None:
    """A private generator seeded by ``init_seed``; unset, draws follow the global seed (``torch.manual_seed``,
    ``transformers.set_seed``) as PEFT's own inits do, so a seeded script gives the same prompt every run."""
    return None if config.init_seed is None else torch.Generator().manual_seed(config.init_seed)


def _sample_vocab_ids(config: SoftPromptConfig, vocab_size: int, count: int) -> list[int]:
    return torch.randint(0, vocab_size, (count,), generator=_generator(config)).tolist()


def text_token_ids(config: SoftPromptConfig, tokenizer: Any) -> tuple[list[int], int]:
    """Token ids of ``config.init_text`` fitted to the prompt length by the explicit length policy.

    Returns the ids and the resulting number of virtual tokens (which only the 'exact' policy changes).
    """
    if not config.init_text:
        raise EmptyInitTextError("init='text' needs a non-empty init_text.")
    ids = list(tokenizer(config.init_text, add_special_tokens=config.add_special_tokens)["input_ids"])
    if not ids:
        raise EmptyInitTextError(f"init_text {config.init_text!r} tokenises to no tokens; use a longer text.")
    wanted, policy = config.num_virtual_tokens, config.text_length_policy
    if policy == "exact":
        return ids, len(ids)
    if wanted is None:
        raise InitTextLengthError("num_virtual_tokens is unset; give it, or use text_length_policy='exact'.")
    if len(ids) == wanted:
        return ids, wanted
    if policy is None:
        raise InitTextLengthError(
            f"init_text is {len(ids)} tokens but num_virtual_tokens={wanted}. Set text_length_policy to 'repeat', "
            "'truncate', 'pad' or 'exact' to say how to fit it."
        )
    if policy == "repeat":
        return list(itertools.islice(itertools.cycle(ids), wanted)), wanted
    if policy == "truncate" and len(ids) > wanted:
        return ids[:wanted], wanted
    if policy == "pad" and len(ids) < wanted:
        return ids + _sample_vocab_ids(config, len(tokenizer), wanted - len(ids)), wanted
    raise InitTextLengthError(
        f"text_length_policy={policy!r} cannot fit {len(ids)} text tokens into num_virtual_tokens={wanted}: "
        "'truncate' only shortens and 'pad' only lengthens; use 'repeat' or 'exact' instead."
    )


def label_token_ids(config: SoftPromptConfig, tokenizer: Any) -> list[list[int]]:
    """Sub-token ids of every label word, checked to be non-empty and to fit the prompt."""
    if not config.label_words:
        raise MissingLabelWordsError("init='labels' needs label_words, e.g. label_words=['positive', 'negative'].")
    result = []
    for word in config.label_words:
        ids = list(tokenizer(word, add_special_tokens=False)["input_ids"])
        if not ids:
            raise MissingLabelWordsError(f"Label word {word!r} tokenises to no tokens; remove it or fix its spelling.")
        result.append(ids)
    if config.num_virtual_tokens is not None and len(result) > config.num_virtual_tokens:
        raise InitTextLengthError(
            f"{len(result)} label words do not fit num_virtual_tokens={config.num_virtual_tokens}; "
            "raise num_virtual_tokens or pass fewer labels."
        )
    return result


# --- initializers: (config, word_embeddings, num_tokens) -> float32 tensor [num_tokens, hidden] -------------------


def _embed(word_embeddings: nn.Embedding, ids: list[int]) -> torch.Tensor:
    vocab_size = word_embeddings.weight.shape[0]
    if any(i < 0 or i >= vocab_size for i in ids):
        raise TokenizerNotAvailableError(
            f"Init token ids fall outside the model's vocabulary of {vocab_size}: was the tokenizer for this model?"
        )
    index = torch.tensor(ids, dtype=torch.long, device=word_embeddings.weight.device)
    return word_embeddings.weight.detach()[index].float().cpu().clone()


def random_init(config: SoftPromptConfig, word_embeddings: nn.Embedding, num_tokens: int) -> torch.Tensor:
    # Noise at the scale of real token embeddings: unit-variance noise (nn.Embedding's default) is far off-scale.
    std = float(word_embeddings.weight.detach().float().std())
    hidden = word_embeddings.weight.shape[1]
    return torch.randn(num_tokens, hidden, generator=_generator(config)) * std


def vocab_init(config: SoftPromptConfig, word_embeddings: nn.Embedding, num_tokens: int) -> torch.Tensor:
    if config.init_token_ids is None:
        config.init_token_ids = _sample_vocab_ids(config, word_embeddings.weight.shape[0], num_tokens)
    return _embed(word_embeddings, config.init_token_ids)


def text_init(config: SoftPromptConfig, word_embeddings: nn.Embedding, num_tokens: int) -> torch.Tensor:
    assert config.init_token_ids is not None  # SoftPromptConfig refuses a text init without them
    return _embed(word_embeddings, config.init_token_ids)


def labels_init(config: SoftPromptConfig, word_embeddings: nn.Embedding, num_tokens: int) -> torch.Tensor:
    assert config.label_token_ids is not None  # SoftPromptConfig refuses a labels init without them
    labels = [_embed(word_embeddings, ids).mean(dim=0) for ids in config.label_token_ids]
    rest = num_tokens - len(labels)
    fill = _embed(word_embeddings, _sample_vocab_ids(config, word_embeddings.weight.shape[0], rest)) if rest else None
    return torch.cat([torch.stack(labels), *([fill] if fill is not None else [])])


def adapter_init(config: SoftPromptConfig, word_embeddings: nn.Embedding, num_tokens: int) -> torch.Tensor:
    assert config.init_adapter is not None
    prompt = read_saved_prompt(config.init_adapter)
    check_prompt_tensor(prompt, word_embeddings.weight.shape[1], f"the adapter at {config.init_adapter}")
    if prompt.shape[0] != num_tokens:
        raise InitTextLengthError(
            f"The adapter at {config.init_adapter} has {prompt.shape[0]} virtual tokens but num_virtual_tokens="
            f"{num_tokens}; leave num_virtual_tokens unset to take its length."
        )
    return prompt.float().clone()


INITIALIZERS: dict[str, Callable[[SoftPromptConfig, nn.Embedding, int], torch.Tensor]] = {
    "random": random_init,
    "vocab": vocab_init,
    "text": text_init,
    "labels": labels_init,
    "adapter": adapter_init,
}
