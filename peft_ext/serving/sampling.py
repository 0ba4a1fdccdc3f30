"""Choosing a row's next token from its logits: greedy, or seeded temperature / nucleus sampling per request.

Each request owns its ``torch.Generator``, so a seeded request draws the same tokens whatever else is in the batch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import InvalidRequestError

# Below this temperature sampling is greedy: dividing the logits by it would overflow float32 (as vLLM does).
MIN_TEMPERATURE = 1e-5
# torch.Generator.manual_seed takes any integer in this range (negative seeds are taken modulo 2**64).
SEED_MIN, SEED_MAX = -(1 << 63), (1 << 64) - 1


@dataclass(frozen=True)
class SamplingParams:
    """What a request asks of decoding (OpenAI's names): ``temperature`` 0 (or below :data:`MIN_TEMPERATURE`) is
    greedy; ``seed`` is any integer :class:`torch.Generator` takes, from -2**63 to 2**64 - 1."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    logprobs: int | None = None  # how many top alternatives to report per token (None: no logprobs)
    stop_token_ids: frozenset[int] = frozenset()
    prompt_logprobs: bool = False  # also score the input's own tokens (OpenAI's echo); then max_tokens may be 0

    def __post_init__(self) -> None:
        least = 0 if self.prompt_logprobs else 1
        if type(self.max_tokens) is not int or self.max_tokens < least:
            raise InvalidRequestError(
                f"max_tokens must be an integer of at least {least}, got {self.max_tokens!r}"
                + ("." if self.prompt_logprobs else " (0 only when the prompt is echoed with its logprobs).")
            )
        if not 0.0 <= self.temperature <= 2.0:
            raise InvalidRequestError(f"temperature must be between 0 and 2, got {self.temperature!r}.")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidRequestError(f"top_p must be in (0, 1], got {self.top_p!r}.")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise InvalidRequestError(f"logprobs must be between 0 and 20, got {self.logprobs!r}.")
        if self.seed is not None and not SEED_MIN <= self.seed <= SEED_MAX:
            raise InvalidRequestError(f"seed must be an integer from {SEED_MIN} to {SEED_MAX}, got {self.seed!r}.")

    def generator(self) -> torch.Generator | None:
        """The request's own random stream (None for greedy): from ``seed``, else from the OS."""
        if self.temperature == 0.0:
            return None
        seed = self.seed if self.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
        return torch.Generator().manual_seed(seed)


@dataclass(frozen=True)
class Token:
    """One token, its log-probability and (when asked) the top alternatives. An input's first token has neither (None
    and no alternatives): nothing before it predicts it."""

    id: int
    logprob: float | None
    top_logprobs: tuple[tuple[int, float], ...] = ()


def choose(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> Token:
    """The next token for one row's ``[vocab]`` logits."""
    logits = logits.float().cpu()
    logprobs = torch.log_softmax(logits, dim=-1)
    if generator is None or params.temperature < MIN_TEMPERATURE:
        token = int(logits.argmax())
    else:
        probs = torch.softmax(logits / params.temperature, dim=-1)
        if params.top_p < 1.0:
            ordered, order = probs.sort(descending=True)
            outside = ordered.cumsum(0) - ordered >= params.top_p  # keep the smallest set reaching top_p
            outside[0] = False  # and at least the likeliest token, however small top_p is
            ordered[outside] = 0.0
            probs = torch.zeros_like(probs).scatter(0, order, ordered)
        token = int(torch.multinomial(probs, 1, generator=generator))
    return Token(token, float(logprobs[token]), _top(logprobs, params.logprobs))


def score(logits: torch.Tensor, input_ids: Sequence[int], params: SamplingParams) -> list[Token]:
    """An input's own tokens with their log-probabilities, from its ``[len(input_ids), vocab]`` logits (position
    ``i`` predicts token ``i + 1``): the first token has none, as OpenAI's and vLLM's echoed prompts do."""
    logprobs = torch.log_softmax(logits[: len(input_ids) - 1].float().cpu(), dim=-1)
    targets = torch.tensor(list(input_ids[1:]), dtype=torch.long)
    chosen = logprobs.gather(1, targets[:, None])[:, 0].tolist() if len(targets) else []
    tokens = [Token(int(input_ids[0]), None)]
    for row, (token, logprob) in enumerate(zip(targets.tolist(), chosen, strict=True)):
        tokens.append(Token(token, float(logprob), _top(logprobs[row], params.logprobs)))
    return tokens


def _top(logprobs: torch.Tensor, count: int | None) -> tuple[tuple[int, float], ...]:
    if not count:
        return ()
    values, ids = logprobs.topk(count)
    return tuple((int(i), float(v)) for i, v in zip(ids, values, strict=True))
