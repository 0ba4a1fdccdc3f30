"""Continuous batching on the engine: rows join and leave a running batch at any decoding step.

A :class:`DecodeBatch` holds the keys/values of every running row in one batch cache, allocated with spare rows and
columns and written in place. Each row starts at column 0, as it would alone, and is followed by masked columns up to
the longest row: a decoding step writes each row's new key/value right after its own (the model sees views of the
columns in use, through a ``DynamicCache`` whose layers write in place) and copies nothing else; the mask and the
positions are updated in place too. So no row's keys/values ever move to make room for another, and attention meets
each row's keys/values at the same columns as alone: rows are bit-identical to the same request alone in bfloat16
too, where the attention kernels' block boundaries would otherwise shift with the padding.

:meth:`join` prefills a new row alone (its prompt's keys/values come from the model's prompt KV cache, then its text
runs, as ``PromptEngine.generate`` does for one row) and copies it into a free slot; :meth:`step` feeds every row its
next token in one forward; :meth:`leave` moves the last row into each leaving row's slot. Rows never see each other:
padding is masked and positions count from each row's own prompt.

Models whose cache layers are not plain ``DynamicLayer`` (sliding windows) run the same batch through a fresh
``DynamicCache`` per step (the new token at the longest row's column) and copy the new column back.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import DynamicCache, DynamicLayer

from ..errors import InvalidRequestError, UnsupportedModelError
from ..integration import cache_argument, output_cache
from .engine import Prompt, PromptEngine
from .kv_cache import LayerKV

SPARE_COLUMNS = 64  # columns allocated ahead: the buffers grow once per this many decoding steps
SPARE_ROWS = 8
CHUNK_TOKENS = 256  # input tokens of one row per prefill chunk (the server's default)


@dataclass(frozen=True)
class Joining:
    """A row to prefill: its id, its prompt (None: the bare model), its input tokens, and whether its logits after
    every input token are wanted (else only the last, which predicts its next token)."""

    row_id: Hashable
    prompt: Prompt | None
    input_ids: Sequence[int]
    every_position: bool = False


@dataclass
class _Partial:
    """A row's prefill so far: per layer its keys/values ``[heads, columns, head_dim]``, their columns, its input
    tokens done, and its logits kept so far."""

    layers: LayerKV
    columns: int
    done: int
    logits: list[torch.Tensor]


class DecodeBatch:
    """The running rows of one model, each known by a caller-chosen id. Not thread-safe: one scheduler drives it.

    ``in_place`` (default: whenever the model's cache layers allow it) writes each step's keys/values into the batch
    cache; False rebuilds a ``DynamicCache`` every step (what models with sliding-window layers get).
    """

    def __init__(self, engine: PromptEngine, in_place: bool | None = None) -> None:
        if engine.is_encoder_decoder:
            raise UnsupportedModelError("Continuous batching serves decoder-only models (the prompt KV is reused).")
        self.engine = engine
        self.in_place = _plain_layers(engine.model) if in_place is None else in_place
        self._math_attention = engine.model.get_input_embeddings().weight.dtype in (torch.bfloat16, torch.float16)
        self.ids: list[Hashable] = []  # row order of the batch: row i lives in slot i of the buffers
        self._keys: list[torch.Tensor] = []  # per layer: [row slots, heads, columns, head_dim], left-padded
        self._values: list[torch.Tensor] = []
        self._mask = torch.zeros(0, 0, dtype=torch.long)  # [row slots, columns]: 1 where a row has a key/value
        self._seen = torch.zeros(0, dtype=torch.long)  # per row slot: its keys/values (the next token's position)
        self._length = 0  # columns in use (the longest row, padding included); rows end at the same column
        self._cache: Any = None  # in place: the DynamicCache over the buffers, its layers writing in place
        self._partial: dict[Hashable, _Partial] = {}  # rows prefilled in part, not in the batch yet

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def length(self) -> int:
        """Columns of the batch cache in use (the longest row)."""
        return self._length

    @torch.no_grad()
    def join(
        self, row_id: Hashable, prompt: Prompt | None, input_ids: Sequence[int], every_position: bool = False
    ) -> torch.Tensor:
        """Prefill a row (``prompt`` before ``input_ids``) and add it; return its next-token logits ``[vocab]``, or
        with ``every_position`` the logits after each input token ``[len(input_ids), vocab]`` (the last one predicts
        the next token)."""
        return self.join_all([Joining(row_id, prompt, input_ids, every_position)])[0]

    @torch.no_grad()
    def join_all(self, rows: Sequence[Joining]) -> list[torch.Tensor]:
        """Prefill rows together and add them all, in order; return each one's logits as :meth:`join` does (see
        :meth:`prefill`, here in one chunk per row)."""
        logits = self.prefill(rows, chunk_tokens=max([1, *(len(row.input_ids) for row in rows)]))
        return [row_logits for row_logits in logits if row_logits is not None]

    @torch.no_grad()
    def prefill(self, rows: Sequence[Joining], chunk_tokens: int = CHUNK_TOKENS) -> list[torch.Tensor | None]:
        """Run the next chunk of each row's prefill, rows together: at most ``chunk_tokens`` of its input tokens,
        after the chunks earlier calls ran. A row whose input is then done joins the batch (in order) and gets its
        logits as :meth:`join` gives them; the others get None: call again with them (same ``chunk_tokens``), or
        :meth:`forget` them.

        Rows whose keys/values so far take the same number of columns run in one forward, each from column 0 with its
        chunk followed by masked padding: the columns it has alone, so it computes what it would alone (a row's chunks
        start at fixed multiples of ``chunk_tokens`` of its own input). If a forward fails, no row advances or joins
        (run them one at a time to find which one fails)."""
        ids = [row.row_id for row in rows]
        if len(set(ids)) < len(ids) or any(row_id in self.ids for row_id in ids):
            raise InvalidRequestError(f"A row is already running, or repeats another's id: {ids!r}.")
        if chunk_tokens < 1:
            raise InvalidRequestError(f"chunk_tokens must be at least 1, got {chunk_tokens}.")
        groups: dict[tuple[int, bool], list[int]] = {}  # (columns so far, first chunk): the rows of one forward
        for index, row in enumerate(rows):
            if not row.input_ids:
                raise InvalidRequestError("A row needs at least one input token.")
            partial = self._partial.get(row.row_id)
            columns = self.engine.prompt_length(row.prompt) if partial is None else partial.columns
            groups.setdefault((columns, partial is None), []).append(index)
        advanced: dict[int, _Partial] = {}
        for members in groups.values():
            group = [rows[i] for i in members]
            for index, partial in zip(members, self._forward_chunks(group, chunk_tokens), strict=True):
                advanced[index] = partial
        results: list[torch.Tensor | None] = []
        for index, row in enumerate(rows):  # nothing above changed the batch: now it does, all or nothing failed
            partial = advanced[index]
            if partial.done < len(row.input_ids):
                self._partial[row.row_id] = partial
                results.append(None)
                continue
            self._partial.pop(row.row_id, None)
            self._merge(row.row_id, partial.layers)
            results.append(torch.cat(partial.logits) if row.every_position else partial.logits[-1])
        return results

    def forget(self, row_ids: Sequence[Hashable]) -> None:
        """Drop what :meth:`prefill` kept of rows whose input is not done (rows that will not join)."""
        for row_id in row_ids:
            self._partial.pop(row_id, None)

    @property
    def prefilling(self) -> list[Hashable]:
        """Rows prefilled in part (see :meth:`prefill`)."""
        return list(self._partial)

    @torch.no_grad()
    def score(self, prompt: Prompt | None, input_ids: Sequence[int]) -> torch.Tensor:
        """The logits after each input token ``[len(input_ids), vocab]`` of a row run alone that does not join (it has
        nothing to generate): what :meth:`join` with ``every_position`` gives, without keeping its keys/values."""
        if not input_ids:
            raise InvalidRequestError("A row needs at least one input token.")
        row = Joining(None, prompt, input_ids, every_position=True)
        (partial,) = self._forward_chunks([row], len(input_ids), use_cache=False)
        return partial.logits[0]

    def _forward_chunks(self, rows: Sequence[Joining], chunk_tokens: int, use_cache: bool = True) -> list[_Partial]:
        """One forward of the next chunk of rows whose keys/values so far take the same columns, chunks
        right-padded: each row's state after it. The model computes logits only at the positions some row keeps (the
        chunk's last token where it ends the input; all of them with ``every_position``)."""
        model = self.engine.model
        device = model.get_input_embeddings().weight.device
        before = [self._partial.get(row.row_id) for row in rows]
        done = [0 if partial is None else partial.done for partial in before]
        chunks = [list(row.input_ids[start : start + chunk_tokens]) for row, start in zip(rows, done, strict=True)]
        longest = max(len(chunk) for chunk in chunks)
        ids = torch.zeros(len(rows), longest, dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        for i, chunk in enumerate(chunks):
            ids[i, : len(chunk)] = torch.tensor(chunk, dtype=torch.long)
            mask[i, : len(chunk)] = 1
        last = [len(chunk) - 1 for chunk in chunks]
        options: dict[str, Any] = {"use_cache": use_cache}
        if not any(row.every_position for row in rows) and _keeps_logits(model):
            options["logits_to_keep"] = torch.tensor(sorted(set(last)), device=device)
            kept = [sorted(set(last)).index(position) for position in last]
        else:
            kept = last
        with self._attention_kernels():
            if before[0] is None:  # the first chunks: after each row's prompt keys/values
                output = self.engine.cached_forward([row.prompt for row in rows], ids, attention_mask=mask, **options)
            else:  # later chunks: after each row's own keys/values so far
                output = model(
                    input_ids=ids,
                    attention_mask=torch.cat([mask.new_ones(len(rows), before[0].columns), mask], dim=1),
                    position_ids=before[0].columns + torch.arange(longest, device=device)[None].expand(len(rows), -1),
                    **{cache_argument(model): _cache(model, [partial.layers for partial in before if partial])},
                    **options,
                )
        layers = _layers(output) if use_cache else []
        states = []
        for i, (row, partial, chunk) in enumerate(zip(rows, before, chunks, strict=True)):
            columns = (self.engine.prompt_length(row.prompt) if partial is None else partial.columns) + len(chunk)
            logits = output.logits[i, : len(chunk)] if row.every_position else output.logits[i, kept[i]]
            earlier = [] if partial is None or not row.every_position else partial.logits
            row_layers = [(k[i, :, :columns], v[i, :, :columns]) for k, v in layers]
            states.append(_Partial(row_layers, columns, done[i] + len(chunk), [*earlier, logits]))
        return states

    @torch.no_grad()
    def step(self, tokens: Sequence[int]) -> torch.Tensor:
        """Feed each row (in :attr:`ids` order) its next token; return next-token logits ``[rows, vocab]``."""
        rows, length = len(self.ids), self._length
        if len(tokens) != rows or not rows:
            raise InvalidRequestError(f"step needs one token per running row ({rows}), got {len(tokens)}.")
        model = self.engine.model
        self._reserve(rows, length + 1)
        device = self._mask.device
        slots, columns = torch.arange(rows, device=device), self._seen[:rows].clone()  # each row writes after its own
        if self.in_place:
            self._mask[slots, columns] = 1
            mask = self._mask[:rows, : length + 1]
        else:  # the model appends the new token at column `length` for every row
            mask = torch.cat([self._mask[:rows, :length], self._mask.new_ones(rows, 1)], dim=1)
        try:
            with self._attention_kernels():
                output = model(
                    input_ids=torch.tensor(list(tokens), dtype=torch.long, device=device)[:, None],
                    attention_mask=mask,
                    position_ids=columns[:, None],
                    use_cache=True,
                    **{cache_argument(model): self._step_cache(rows, length, slots, columns)},
                )
            if not self.in_place:
                for layer, (keys, values) in enumerate(_layers(output)):
                    self._keys[layer][slots, :, columns] = keys[:, :, -1]
                    self._values[layer][slots, :, columns] = values[:, :, -1]
                self._mask[slots, columns] = 1
        except BaseException:
            self._mask[slots, columns] = 0  # the batch stays as it was (those columns are written again next time)
            raise
        self._seen[:rows] += 1
        self._length = int(self._seen[:rows].max())
        return output.logits[:, -1]

    def leave(self, row_ids: Sequence[Hashable]) -> None:
        """Drop rows: the last row moves into each leaving row's slot."""
        gone = set(row_ids)
        for slot in sorted((i for i, row in enumerate(self.ids) if row in gone), reverse=True):
            last = len(self.ids) - 1
            if slot != last:
                for buffer in (*self._keys, *self._values, self._mask, self._seen):
                    buffer[slot] = buffer[last]
                self.ids[slot] = self.ids[last]
            self.ids.pop()
        self._length = int(self._seen[: len(self.ids)].max()) if self.ids else 0

    def _attention_kernels(self) -> contextlib.AbstractContextManager[Any]:
        """In half precision, attention without blocking (PyTorch's math kernel): the flash kernel's blocks depend on
        the batch's length, so the masked columns after a shorter row would change its rounding; the math kernel's
        softmax and products meet a row's own columns alike whatever follows them. Full precision keeps the fastest
        kernel."""
        return sdpa_kernel(SDPBackend.MATH) if self._math_attention else contextlib.nullcontext()

    # --- the buffers -------------------------------------------------------------------------------------------------

    def _merge(self, row_id: Hashable, layers: LayerKV) -> None:
        """Copy a prefilled row (per layer its keys and values ``[heads, columns, head_dim]``) into the next free
        slot, from column 0 (what it holds alone)."""
        new_length = int(layers[0][0].shape[1])
        if not self._keys:  # the first row: its layers give the buffers' shapes, dtype and device
            self._keys = [k.new_zeros(0, k.shape[0], 0, k.shape[2]) for k, _ in layers]
            self._values = [v.new_zeros(0, v.shape[0], 0, v.shape[2]) for _, v in layers]
            device = layers[0][0].device
            self._mask, self._seen = self._mask.to(device), self._seen.to(device)
        slot = len(self.ids)
        self._reserve(slot + 1, max(self._length, new_length) + 1)
        for (keys, values), key_buffer, value_buffer in zip(layers, self._keys, self._values, strict=True):
            key_buffer[slot, :, :new_length] = keys
            value_buffer[slot, :, :new_length] = values
        self._mask[slot] = 0
        self._mask[slot, :new_length] = 1
        self._seen[slot] = new_length
        self.ids.append(row_id)
        self._length = max(self._length, new_length)

    def _reserve(self, rows: int, columns: int) -> None:
        """Room for ``rows`` rows of ``columns`` columns (new buffers with spare room when there is not)."""
        row_slots, capacity = self._mask.shape
        if rows <= row_slots and columns <= capacity:
            return
        row_slots, capacity = _capacity(rows, row_slots, SPARE_ROWS), _capacity(columns, capacity, SPARE_COLUMNS)
        used, width = len(self.ids), self._length

        def moved(buffer: torch.Tensor) -> torch.Tensor:
            fresh = buffer.new_zeros(row_slots, buffer.shape[1], capacity, buffer.shape[3])
            fresh[:used, :, :width] = buffer[:used, :, :width]
            return fresh

        mask = self._mask.new_zeros(row_slots, capacity)
        mask[:used, :width] = self._mask[:used, :width]
        seen = self._seen.new_zeros(row_slots)
        seen[:used] = self._seen[:used]
        self._keys = [moved(k) for k in self._keys]
        self._values = [moved(v) for v in self._values]
        self._mask, self._seen, self._cache = mask, seen, None

    def _step_cache(self, rows: int, length: int, slots: torch.Tensor, columns: torch.Tensor) -> Any:
        """The cache a decoding step runs with: the buffers' first ``rows`` rows and ``length`` columns."""
        model = self.engine.model
        if not self.in_place:
            cache = DynamicCache(config=model.config)
            for layer, (keys, values) in enumerate(zip(self._keys, self._values, strict=True)):
                cache.update(keys[:rows, :, :length], values[:rows, :, :length], layer)
            return cache
        if self._cache is None:
            self._cache = DynamicCache(config=model.config)
            self._cache.layers = [_InPlaceLayer(k, v) for k, v in zip(self._keys, self._values, strict=True)]
        for layer in self._cache.layers:
            layer.use(rows, length, slots, columns)
        return self._cache


class _InPlaceLayer(DynamicLayer):
    """A layer of the batch cache: its keys/values are views of the batch buffers, and the model's update writes each
    row's new key/value into the row's own next column instead of concatenating."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self._key_buffer, self._value_buffer = keys, values
        self.device, self.dtype = keys.device, keys.dtype
        self.is_initialized = True
        self._slots = self._columns = torch.zeros(0, dtype=torch.long)

    def use(self, rows: int, length: int, slots: torch.Tensor, columns: torch.Tensor) -> None:
        """Show the model ``rows`` rows of ``length`` columns; its next update writes row i at ``columns[i]``."""
        self.keys = self._key_buffer[:rows, :, :length]
        self.values = self._value_buffer[:rows, :, :length]
        self._slots, self._columns = slots, columns

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        assert self.keys is not None and key_states.shape[2] == 1, "a decoding step adds one token per row"
        rows, length = self.keys.shape[0], self.keys.shape[2]
        self._key_buffer[self._slots, :, self._columns] = key_states[:, :, 0]
        self._value_buffer[self._slots, :, self._columns] = value_states[:, :, 0]
        self.keys = self._key_buffer[:rows, :, : length + 1]
        self.values = self._value_buffer[:rows, :, : length + 1]
        return self.keys, self.values


def _plain_layers(model: Any) -> bool:
    """Whether every layer of the model's ``DynamicCache`` is a plain ``DynamicLayer`` (no sliding window)."""
    return all(type(layer) is DynamicLayer for layer in DynamicCache(config=model.config).layers)


def _cache(model: Any, rows: Sequence[LayerKV]) -> Any:
    """A ``DynamicCache`` holding these rows' keys/values (each row's of the same columns)."""
    cache = DynamicCache(config=model.config)
    for layer in range(len(rows[0])):
        keys = torch.stack([row[layer][0] for row in rows])
        values = torch.stack([row[layer][1] for row in rows])
        cache.update(keys, values, layer)
    return cache


def _keeps_logits(model: Any) -> bool:
    """Whether the model's forward computes logits at chosen positions only (transformers' ``logits_to_keep``)."""
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def _capacity(needed: int, current: int, spare: int) -> int:
    return current if needed <= current else needed + spare


def _layers(output: Any) -> LayerKV:
    return [(layer.keys, layer.values) for layer in output_cache(output).layers]
