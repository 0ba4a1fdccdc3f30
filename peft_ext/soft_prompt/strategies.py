"""Initial values of a soft prompt: one small unit per ``SoftPromptConfig.init`` and per text length policy.

Each init strategy owns what it needs: ``resolve`` fills in token ids when the config is built with a tokenizer (so
``adapter_config.json`` records them and the prompt module never loads a tokenizer), ``check`` names what is still
missing when a model is built, and ``values`` makes the ``[num_tokens, hidden]`` float32 tensor from the base
model's input embeddings (``deep_values``: the keys/values the model computes for them, so that a deep prompt starts
exactly where the input-level prompt of the same init is). Unseeded draws follow the global seed
(``torch.manual_seed``), as PEFT's own inits do.
"""

from __future__ import annotations

import collections
import itertools
import os
from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..adapter_files import (
    AdapterFiles,
    DeepPrompt,
    PromptKind,
    check_deep_prompt,
    check_prompt_tensor,
    read_adapter_folder,
)
from ..engine import PromptEngine
from ..errors import (
    DeepPromptNotSupportedError,
    EmptyInitTextError,
    InitTextLengthError,
    InvalidConfigError,
    MissingLabelWordsError,
    TokenizerNotAvailableError,
)
from .placement import deep_values

if TYPE_CHECKING:
    from .config import SoftPromptConfig


class Init(StrEnum):
    """How the virtual tokens start (``SoftPromptConfig.init``)."""

    RANDOM = "random"
    VOCAB = "vocab"
    TEXT = "text"
    LABELS = "labels"
    ADAPTER = "adapter"
    FREQUENT = "frequent"


class LengthPolicy(StrEnum):
    """How an init text is fitted to ``num_virtual_tokens`` (``SoftPromptConfig.text_length_policy``)."""

    REPEAT = "repeat"
    TRUNCATE = "truncate"
    PAD = "pad"
    EXACT = "exact"


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
    """A private generator seeded by ``init_seed``; unset, draws follow the global seed."""
    return None if config.init_seed is None else torch.Generator().manual_seed(config.init_seed)


def _sample_vocab_ids(config: SoftPromptConfig, vocab_size: int, count: int) -> list[int]:
    return torch.randint(0, vocab_size, (count,), generator=_generator(config)).tolist()


def _embed(word_embeddings: nn.Embedding, ids: list[int]) -> torch.Tensor:
    vocab_size = word_embeddings.weight.shape[0]
    if any(i < 0 or i >= vocab_size for i in ids):
        raise TokenizerNotAvailableError(
            f"Init token ids fall outside the model's vocabulary of {vocab_size}: was the tokenizer for this model?"
        )
    index = torch.tensor(ids, dtype=torch.long, device=word_embeddings.weight.device)
    return word_embeddings.weight.detach()[index].float().cpu().clone()


# --- length policies: (text ids, wanted length, config, vocabulary size) -> ids of the wanted length ----------------


def _repeat(ids: list[int], wanted: int, config: SoftPromptConfig, vocab_size: int) -> list[int] | None:
    return list(itertools.islice(itertools.cycle(ids), wanted))


def _truncate(ids: list[int], wanted: int, config: SoftPromptConfig, vocab_size: int) -> list[int] | None:
    return ids[:wanted] if len(ids) > wanted else None  # only shortens


def _pad(ids: list[int], wanted: int, config: SoftPromptConfig, vocab_size: int) -> list[int] | None:
    return ids + _sample_vocab_ids(config, vocab_size, wanted - len(ids)) if len(ids) < wanted else None


def _exact(ids: list[int], wanted: int, config: SoftPromptConfig, vocab_size: int) -> list[int] | None:
    return ids


FIT_TEXT: dict[LengthPolicy, Callable[[list[int], int, SoftPromptConfig, int], list[int] | None]] = {
    LengthPolicy.REPEAT: _repeat,
    LengthPolicy.TRUNCATE: _truncate,
    LengthPolicy.PAD: _pad,
    LengthPolicy.EXACT: _exact,
}


# --- init strategies ---------------------------------------------------------------------------------------------


class InitStrategy:
    """One init: what it fills in from a tokenizer, what it needs, and the values it makes."""

    def resolve(self, config: SoftPromptConfig, tokenizer: Any) -> None:
        """With the tokenizer given to the config: record the token ids this init uses."""

    def complete(self, config: SoftPromptConfig) -> None:
        """Fill in what can be known without a model (e.g. the length of a transferred prompt)."""

    def check(self, config: SoftPromptConfig) -> None:
        """When a model is built: raise a named error for anything this init still lacks."""

    def values(self, config: SoftPromptConfig, word_embeddings: nn.Embedding, num_tokens: int) -> torch.Tensor:
        raise NotImplementedError

    def deep_values(
        self, config: SoftPromptConfig, word_embeddings: nn.Embedding, model: Any, num_tokens: int
    ) -> torch.Tensor:
        """A deep prompt's start: the keys/values ``model`` computes for this init's input-level prompt."""
        return deep_values(model, self.values(config, word_embeddings, num_tokens))


class RandomInit(InitStrategy):
    """Noise at the scale of real token embeddings (unit-variance noise, nn.Embedding's default, is far off-scale)."""

    def values(self, config: SoftPromptConfig, word_embeddings: nn.Embedding, num_tokens: int) -> torch.Tensor:
        std = float(word_embeddings.weight.detach().float().std())
        hidden = word_embeddings.weight.shape[1]
        return torch.randn(num_tokens, hidden, generator=_generator(config)) * std


class VocabInit(InitStrategy):
    """Embeddings of tokens sampled from the vocabulary; the ids drawn are recorded in ``init_token_ids``."""

    def values(self, config: SoftPromptConfig, word_embeddings: nn.Embedding, num_tokens: int) -> torch.Tensor:
        if config.init_token_ids is None:
            config.init_token_ids = _sample_vocab_ids(config, word_embeddings.weight.shape[0], num_tokens)
        return _embed(word_embeddings, config.init_token_ids)


class _RecordedIdsInit(InitStrategy):
    """An init whose ``resolve`` records the token ids it starts from in ``init_token_ids`` (text, frequent)."""

    def values(self, config: SoftPromptConfig, word_embeddings: nn.Embedding, num_tokens: int) -> torch.Tensor:
        assert config.init_token_ids is not None  # check() refuses the init without them
        return _embed(word_embeddings, config.init_token_ids)


class TextInit(_RecordedIdsInit):
    """Embeddings of ``init_text``, fitted to the prompt length by the explicit ``text_length_policy``."""

    def resolve(self, config: SoftPromptConfig, tokenizer: Any) -> None:
        if config.init_token_ids is not None:
            return
        if not config.init_text:
            raise EmptyInitTextError("init='text' needs a non-empty init_text.")
        ids = list(tokenizer(config.init_text, add_special_tokens=config.add_special_tokens)["input_ids"])
        if not ids:
            raise EmptyInitTextError(f"init_text {config.init_text!r} tokenises to no tokens; use a longer text.")
        policy = config.text_length_policy
        wanted = len(ids) if policy == LengthPolicy.EXACT else config.num_virtual_tokens
        if wanted is None:
            raise InitTextLengthError("num_virtual_tokens is unset; give it, or use text_length_policy='exact'.")
        if len(ids) != wanted:
            if policy is None:
                raise InitTextLengthError(
                    f"init_text is {len(ids)} tokens but num_virtual_tokens={wanted}. Set text_length_policy to "
                    "'repeat', 'truncate', 'pad' or 'exact' to say how to fit it."
                )
            fitted = FIT_TEXT[LengthPolicy(policy)](ids, wanted, config, len(tokenizer))
            if fitted is None:
                raise InitTextLengthError(
                    f"text_length_policy={LengthPolicy(policy).value!r} cannot fit {len(ids)} text tokens into "
                    f"num_virtual_tokens={wanted}: 'truncate' only shortens and 'pad' only lengthens; use 'repeat' or "
                    "'exact' instead."
                )
            ids = fitted
        config.init_token_ids, config.num_virtual_tokens = ids, wanted

    def check(self, config: SoftPromptConfig) -> None:
        if config.init_token_ids is not None:
            return
        if not config.init_text:
            raise InvalidConfigError("init='text' needs init_text (the text whose embeddings start the prompt).")
        raise TokenizerNotAvailableError(
            "init='text' needs a tokenizer: pass tokenizer=<tokenizer object or local folder> to SoftPromptConfig."
        )


FREQUENT_POOL = 256  # the init draws from this many of the training texts' most frequent tokens


def _frequent_ids(config: SoftPromptConfig, tokenizer: Any, count: int) -> list[int]:
    """``count`` ids drawn from the ``FREQUENT_POOL`` tokens most frequent in ``init_texts`` (cycled if fewer)."""
    assert config.init_texts  # the callers check
    counts = collections.Counter(
        token for text in config.init_texts for token in tokenizer(text, add_special_tokens=False)["input_ids"]
    )
    common = [token for token, _ in counts.most_common(FREQUENT_POOL)]
    if not common:
        raise EmptyInitTextError("init_texts tokenise to no tokens; pass the non-empty training texts.")
    drawn = [common[i] for i in torch.randperm(len(common), generator=_generator(config)).tolist()]
    return list(itertools.islice(itertools.cycle(drawn), count))


class FrequentInit(_RecordedIdsInit):
    """Embeddings of tokens drawn from those most frequent in the training texts (``init_texts``): the prompt starts
    in the region of embedding space the task's own text occupies. Measured in ``benchmarks/quality.py``."""

    def resolve(self, config: SoftPromptConfig, tokenizer: Any) -> None:
        if config.init_token_ids is not None:
            return
        if not config.init_texts:
            raise EmptyInitTextError("init='frequent' needs init_texts: the training texts whose tokens start it.")
        if config.num_virtual_tokens is None:
            raise InitTextLengthError("init='frequent' needs num_virtual_tokens.")
        config.init_token_ids = _frequent_ids(config, tokenizer, config.num_virtual_tokens)

    def check(self, config: SoftPromptConfig) -> None:
        if config.init_token_ids is not None:
            return
        if not config.init_texts:
            raise InvalidConfigError("init='frequent' needs init_texts (the training texts) and a tokenizer.")
        raise TokenizerNotAvailableError(
            "init='frequent' needs a tokenizer: pass tokenizer=<tokenizer object or local folder> to SoftPromptConfig."
        )


class LabelsInit(InitStrategy):
    """One virtual token per class-label word (its sub-token embeddings averaged), as Lester et al. (2021); the rest
    drawn from the tokens most frequent in ``init_texts`` when given (their fill from common vocabulary), else sampled
    from the whole vocabulary. The fill's ids are recorded in ``init_token_ids``."""

    def resolve(self, config: SoftPromptConfig, tokenizer: Any) -> None:
        if config.label_token_ids is not None:
            return
        if not config.label_words:
            raise MissingLabelWordsError("init='labels' needs label_words, e.g. label_words=['positive', 'negative'].")
        result = []
        for word in config.label_words:
            ids = list(tokenizer(word, add_special_tokens=False)["input_ids"])
            if not ids:
                raise MissingLabelWordsError(
                    f"Label word {word!r} tokenises to no tokens; remove it or fix its spelling."
                )
            result.append(ids)
        if config.num_virtual_tokens is not None and len(result) > config.num_virtual_tokens:
            raise InitTextLengthError(
                f"{len(result)} label words do not fit num_virtual_tokens={config.num_virtual_tokens}; "
                "raise num_virtual_tokens or pass fewer labels."
            )
        config.label_token_ids = result
        if config.init_texts and config.num_virtual_tokens is not None and config.init_token_ids is None:
            config.init_token_ids = _frequent_ids(config, tokenizer, config.num_virtual_tokens - len(result))

    def check(self, config: SoftPromptConfig) -> None:
        if config.label_token_ids is not None:
            return
        if not config.label_words:
            raise InvalidConfigError("init='labels' needs label_words, e.g. label_words=['positive', 'negative'].")
        raise TokenizerNotAvailableError(
            "init='labels' needs a tokenizer: pass tokenizer=<tokenizer or local folder> to SoftPromptConfig."
        )

    def values(self, config: SoftPromptConfig, word_embeddings: nn.Embedding, num_tokens: int) -> torch.Tensor:
        assert config.label_token_ids is not None  # check() refuses a labels init without them
        labels = [_embed(word_embeddings, ids).mean(dim=0) for ids in config.label_token_ids]
        rest = num_tokens - len(labels)
        if not rest:
            return torch.stack(labels)
        if config.init_token_ids is None:
            config.init_token_ids = _sample_vocab_ids(config, word_embeddings.weight.shape[0], rest)
        return torch.cat([torch.stack(labels), _embed(word_embeddings, config.init_token_ids)])


class AdapterInit(InitStrategy):
    """The prompt of an existing soft-prompt adapter folder (transfer between tasks, SPoT). A deep prompt starts
    from a deep adapter's keys/values as they are, or from an input-level adapter's keys/values in the model."""

    def complete(self, config: SoftPromptConfig) -> None:
        if config.init_adapter and config.num_virtual_tokens is None:
            config.num_virtual_tokens = self._read(config, config.num_virtual_tokens).num_virtual_tokens

    def check(self, config: SoftPromptConfig) -> None:
        if not config.init_adapter:
            raise InvalidConfigError("init='adapter' needs init_adapter=<folder of a saved soft-prompt adapter>.")

    def values(self, config: SoftPromptConfig, word_embeddings: nn.Embedding, num_tokens: int) -> torch.Tensor:
        adapter = self._read(config, num_tokens)
        if adapter.kind is PromptKind.DEEP:
            raise DeepPromptNotSupportedError(
                f"The adapter at {config.init_adapter} is a deep prompt (keys/values in every layer); it can start a "
                "deep prompt (placement='deep') but not an input-level one."
            )
        check_prompt_tensor(adapter.prompt, word_embeddings.weight.shape[1], f"the adapter at {config.init_adapter}")
        return adapter.prompt.float().clone()

    def deep_values(
        self, config: SoftPromptConfig, word_embeddings: nn.Embedding, model: Any, num_tokens: int
    ) -> torch.Tensor:
        adapter = self._read(config, num_tokens)
        if adapter.kind is PromptKind.INPUT:
            return super().deep_values(config, word_embeddings, model, num_tokens)
        deep = adapter.loaded()
        assert isinstance(deep, DeepPrompt)
        check_deep_prompt(deep, PromptEngine.of(model).kv_shapes(), f"The adapter at {config.init_adapter}")
        return deep.values.float().clone()

    @staticmethod
    def _read(config: SoftPromptConfig, num_tokens: int | None) -> AdapterFiles:
        assert config.init_adapter is not None
        adapter = read_adapter_folder(config.init_adapter, deep=True)
        if num_tokens is not None and adapter.num_virtual_tokens != num_tokens:
            raise InitTextLengthError(
                f"The adapter at {config.init_adapter} has {adapter.num_virtual_tokens} virtual tokens but "
                f"num_virtual_tokens={num_tokens}; leave num_virtual_tokens unset to take its length."
            )
        return adapter


INIT_STRATEGIES: dict[Init, InitStrategy] = {
    Init.RANDOM: RandomInit(),
    Init.VOCAB: VocabInit(),
    Init.TEXT: TextInit(),
    Init.LABELS: LabelsInit(),
    Init.ADAPTER: AdapterInit(),
    Init.FREQUENT: FrequentInit(),
}
