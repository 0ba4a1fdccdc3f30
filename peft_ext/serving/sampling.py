"""Choosing a row's next token from its logits: greedy, or seeded temperature / nucleus sampling per request.

Each request owns its ``torch.Generator``, so a seeded request draws the same tokens whatever else is in the batch.
"""

from __future__ import annotations

import os
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

    def __post_init__(self) -> None:
        if type(self.max_tokens) is not int or self.max_tokens < 1:
            raise InvalidRequestError(f"max_tokens must be a positive integer, got {self.max_tokens!r}.")
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
    """One generated token, its log-probability and (when asked) the top alternatives."""

    id: int
    logprob: float
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
    top: tuple[tuple[int, float], ...] = ()
    if params.logprobs:
        values, ids = logprobs.topk(params.logprobs)
        top = tuple((int(i), float(v)) for i, v in zip(ids, values, strict=True))
    return Token(token, float(logprobs[token]), top)
