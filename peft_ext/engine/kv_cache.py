"""Keys/values of soft prompts, computed once per prompt and reused by every request that uses it.

A prompt's keys/values depend only on the prompt (causal attention, prompt at positions 0..n-1), so they can be
computed alone and stacked into any batch. They are 7-48x larger than the prompt itself, so the cache is bounded in
bytes and evicts the least recently used prompt. A deep prompt's keys/values are given, not computed (no model run):
its entry is a view of the loaded prompt, counted in bytes like any entry (the memory its keys/values take), which
evicting frees only once the prompt itself is unloaded.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..integration import output_cache

LayerKV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values of shape [1, heads, n, head_dim]

DEFAULT_MAX_BYTES = 256 * 2**20


@dataclass(frozen=True)
class KVCacheStats:
    entries: int
    bytes: int
    max_bytes: int
    hits: int
    misses: int
    evictions: int


def compute_prompt_kv(model: Any, prompt: torch.Tensor) -> LayerKV:
    """Run the prompt alone at positions 0..n-1 and keep its per-layer keys/values."""
    device = model.get_input_embeddings().weight.device
    dtype = model.get_input_embeddings().weight.dtype
    embeds = prompt.detach().to(device=device, dtype=dtype)[None]
    positions = torch.arange(prompt.shape[0], device=device)[None]
    with torch.no_grad():
        output = model(inputs_embeds=embeds, position_ids=positions, use_cache=True)
    return [(layer.keys, layer.values) for layer in output_cache(output).layers]


def model_kv_shapes(model: Any) -> list[tuple[int, int]]:
    """Per layer of ``model``: the (key/value heads, head size) of the keys/values it keeps, read from one token."""
    device = model.get_input_embeddings().weight.device
    with torch.no_grad():
        output = model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device), use_cache=True)
    return [(int(layer.keys.shape[1]), int(layer.keys.shape[3])) for layer in output_cache(output).layers]


def kv_bytes(kv: LayerKV) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)


class PromptKVCache:
    """Least-recently-used store of prompt keys/values, bounded by ``max_bytes``; safe to share across threads.

    Entries are found by a caller-chosen key that must change whenever the prompt does (e.g. name + load count).
    A key of ``None`` computes without storing.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, LayerKV] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._hits = self._misses = self._evictions = 0

    def peek(self, key: Hashable | None) -> LayerKV | None:
        """The prompt's cached keys/values, or None; not counted as a use (hits, misses and recency stay)."""
        if key is None:
            return None
        with self._lock:
            return self._entries.get(key)

    def get(self, key: Hashable | None, produce: Callable[[], LayerKV]) -> LayerKV:
        """The prompt's keys/values: cached under ``key``, else ``produce()`` (called only then)."""
        if key is not None:
            with self._lock:
                found = self._entries.get(key)
                if found is not None:
                    self._entries.move_to_end(key)
                    self._hits += 1
                    return found
                self._misses += 1
        kv = produce()
        if key is not None:
            self._store(key, kv)
        return kv

    def _store(self, key: Hashable, kv: LayerKV) -> None:
        size = kv_bytes(kv)
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._entries:
                return
            self._evict_to(self.max_bytes - size)
            self._entries[key] = kv
            self._bytes += size

    def _evict_to(self, max_bytes: int) -> None:
        while self._entries and self._bytes > max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= kv_bytes(evicted)
            self._evictions += 1

    def discard(self, matches: Any) -> None:
        """Drop every entry whose key satisfies ``matches(key)`` (e.g. all keys of a removed adapter)."""
        with self._lock:
            for key in [k for k in self._entries if matches(k)]:
                self._bytes -= kv_bytes(self._entries.pop(key))

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def set_max_bytes(self, max_bytes: int) -> None:
        """Change the bound; entries beyond it are evicted at once."""
        with self._lock:
            self.max_bytes = max_bytes
            self._evict_to(max_bytes)

    def stats(self) -> KVCacheStats:
        with self._lock:
            return KVCacheStats(
                len(self._entries), self._bytes, self.max_bytes, self._hits, self._misses, self._evictions
            )


def _stack_right_aligned(tensors: Sequence[torch.Tensor], length: int) -> torch.Tensor:
    """Stack ``[1, heads, n_i, dim]`` tensors into ``[batch, heads, length, dim]``, zero-filled on the left."""
    return torch.cat([torch.nn.functional.pad(t, (0, 0, length - t.shape[2], 0)) for t in tensors])


def batch_cache(model: Any, per_row: Sequence[LayerKV | None], longest: int) -> Any:
    """Stack per-prompt keys/values, right-aligned like the prompts, into one ``DynamicCache`` for the batch."""
    from transformers import DynamicCache

    template = next(kv for kv in per_row if kv is not None)
    cache = DynamicCache(config=model.config)
    for layer, (template_keys, _) in enumerate(template):
        empty = template_keys[:, :, :0]
        keys = [empty if kv is None else kv[layer][0] for kv in per_row]
        values = [empty if kv is None else kv[layer][1] for kv in per_row]
        cache.update(_stack_right_aligned(keys, longest), _stack_right_aligned(values, longest), layer)
    return cache
