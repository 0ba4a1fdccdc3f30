"""Continuous batching on the engine: rows join and leave a running batch at any decoding step.

A :class:`DecodeBatch` holds the keys/values of every running row as one left-padded batch cache. :meth:`join`
prefills a new row alone (its prompt's keys/values come from the model's prompt KV cache, then its text runs, as
``PromptEngine.generate`` does for one row) and merges the row in; :meth:`step` feeds every row its next token in one
forward; :meth:`leave` drops rows. Rows never see each other: padding is masked and positions count from each row's
own prompt, so each row's logits are those of the same request run alone.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import InvalidRequestError, UnsupportedModelError
from ..integration import cache_argument, output_cache
from .engine import Prompt, PromptEngine
from .kv_cache import LayerKV


class DecodeBatch:
    """The running rows of one model, each known by a caller-chosen id. Not thread-safe: one scheduler drives it."""

    def __init__(self, engine: PromptEngine) -> None:
        if engine.is_encoder_decoder:
            raise UnsupportedModelError("Continuous batching serves decoder-only models (the prompt KV is reused).")
        self.engine = engine
        self.ids: list[Hashable] = []  # row order of the batch
        self._layers: LayerKV = []  # per layer: keys, values [rows, heads, length, head_dim], left-padded
        self._mask = torch.zeros(0, 0, dtype=torch.long)  # [rows, length]: 1 where a row has a key/value

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def length(self) -> int:
        """Columns of the batch cache (the longest row, padding included)."""
        return int(self._mask.shape[1])

    @torch.no_grad()
    def join(
        self, row_id: Hashable, prompt: Prompt | None, input_ids: Sequence[int], every_position: bool = False
    ) -> torch.Tensor:
        """Prefill a row (``prompt`` before ``input_ids``) and add it; return its next-token logits ``[vocab]``, or
        with ``every_position`` the logits after each input token ``[len(input_ids), vocab]`` (the last one predicts
        the next token)."""
        if row_id in self.ids:
            raise InvalidRequestError(f"Row {row_id!r} is already running.")
        output = self._prefill(prompt, input_ids, use_cache=True)
        self._merge(row_id, [(layer.keys, layer.values) for layer in output_cache(output).layers])
        return output.logits[0] if every_position else output.logits[0, -1]

    @torch.no_grad()
    def score(self, prompt: Prompt | None, input_ids: Sequence[int]) -> torch.Tensor:
        """The logits after each input token ``[len(input_ids), vocab]`` of a row run alone that does not join (it has
        nothing to generate): what :meth:`join` with ``every_position`` gives, without keeping its keys/values."""
        return self._prefill(prompt, input_ids, use_cache=False).logits[0]

    def _prefill(self, prompt: Prompt | None, input_ids: Sequence[int], use_cache: bool) -> Any:
        if not input_ids:
            raise InvalidRequestError("A row needs at least one input token.")
        device = self.engine.model.get_input_embeddings().weight.device
        ids = torch.tensor([list(input_ids)], dtype=torch.long, device=device)
        return self.engine.cached_forward([prompt], ids, use_cache=use_cache)

    @torch.no_grad()
    def step(self, tokens: Sequence[int]) -> torch.Tensor:
        """Feed each row (in :attr:`ids` order) its next token; return next-token logits ``[rows, vocab]``."""
        if len(tokens) != len(self.ids) or not self.ids:
            raise InvalidRequestError(f"step needs one token per running row ({len(self.ids)}), got {len(tokens)}.")
        model = self.engine.model
        device = self._mask.device
        mask = torch.cat([self._mask, torch.ones(len(self.ids), 1, dtype=torch.long, device=device)], dim=1)
        positions = mask.sum(dim=1, keepdim=True) - 1  # each row counts from its own prompt
        cache = _dynamic_cache(model, self._layers)
        output = model(
            input_ids=torch.tensor(list(tokens), dtype=torch.long, device=device)[:, None],
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{cache_argument(model): cache},
        )
        self._layers, self._mask = [(layer.keys, layer.values) for layer in output_cache(output).layers], mask
        return output.logits[:, -1]

    def leave(self, row_ids: Sequence[Hashable]) -> None:
        """Drop rows; columns no remaining row uses are trimmed away."""
        gone = set(row_ids)
        keep = [i for i, row in enumerate(self.ids) if row not in gone]
        if len(keep) == len(self.ids):
            return
        self.ids = [self.ids[i] for i in keep]
        if not keep:
            self._layers, self._mask = [], self._mask[:0, :0]
            return
        index = torch.tensor(keep, device=self._mask.device)
        mask = self._mask.index_select(0, index)
        start = int(mask.any(dim=0).long().argmax())  # first column a remaining row uses
        self._mask = mask[:, start:]
        self._layers = [
            (k.index_select(0, index)[:, :, start:], v.index_select(0, index)[:, :, start:]) for k, v in self._layers
        ]

    def _merge(self, row_id: Hashable, layers: LayerKV) -> None:
        new_length = int(layers[0][0].shape[2])
        device = layers[0][0].device
        row_mask = torch.ones(1, new_length, dtype=torch.long, device=device)
        if not self.ids:
            self.ids, self._layers, self._mask = [row_id], layers, row_mask
            return
        length = max(self.length, new_length)
        merged = [
            (
                torch.cat([_left_pad(k, length), _left_pad(nk, length)]),
                torch.cat([_left_pad(v, length), _left_pad(nv, length)]),
            )
            for (k, v), (nk, nv) in zip(self._layers, layers, strict=True)
        ]
        mask = torch.cat([F.pad(self._mask, (length - self.length, 0)), F.pad(row_mask, (length - new_length, 0))])
        # Assigned together once everything is computed: a failure above leaves the batch as it was.
        self._layers, self._mask, self.ids = merged, mask, [*self.ids, row_id]


def _left_pad(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """``[rows, heads, n, dim]`` zero-padded on the left of the sequence axis to ``length``."""
    return F.pad(tensor, (0, 0, length - tensor.shape[2], 0))


def _dynamic_cache(model: Any, layers: LayerKV) -> Any:
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    for index, (keys, values) in enumerate(layers):
        cache.update(keys, values, index)
    return cache
