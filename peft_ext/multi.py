"""``MultiPromptModel``: many soft prompts served on one frozen base model, a different one per row.

Prompts are plain ``[n, hidden]`` tensors keyed by name (a prompt is a few KB; the base model is hundreds of MB).
Every call goes through ``peft_ext.prompting``, the same path as ``PeftModel(..., adapter_names=...)``, with each
prompt's keys/values computed once and kept in a bounded ``PromptKVCache``.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from ._peft_integration import BASE_ADAPTER
from .errors import AdapterNotFoundError, InvalidConfigError, InvalidRequestError
from .kv_cache import DEFAULT_MAX_BYTES, KVCacheStats, PromptKVCache
from .prompting import cached_forward, forward_with_prompts, generate_with_prompts, is_encoder_decoder
from .sources import check_prompt_tensor, load_soft_prompt


@dataclass
class _Loaded:
    prompt: torch.Tensor
    version: int  # part of the KV-cache key: a re-added name never reuses the old prompt's keys/values
    folder: str | None  # where an evicted prompt can be reloaded from


class MultiPromptModel:
    """One frozen causal LM serving many named soft prompts, a different one per row of a batch.

    ``capacity`` bounds how many prompts stay loaded (least recently used are evicted; those added from a folder
    reload on their next use). ``kv_cache_bytes`` bounds the memory of cached prompt keys/values. Encoder-decoder
    models (T5 family) are served too, recomputing the prompts: their encoder is bidirectional.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        *,
        capacity: int | None = None,
        kv_cache_bytes: int = DEFAULT_MAX_BYTES,
        reuse_kv: bool = True,
    ) -> None:
        if capacity is not None and capacity < 1:
            raise InvalidConfigError(f"capacity must be at least 1 (or None for no limit), got {capacity}.")
        self.model = model.eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.tokenizer = tokenizer
        if tokenizer is not None and tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token  # batching texts needs a pad token; EOS is the usual choice
        self.capacity = capacity
        self.is_encoder_decoder = is_encoder_decoder(model)
        self.reuse_kv = reuse_kv and not self.is_encoder_decoder
        self.kv_cache = PromptKVCache(kv_cache_bytes)
        embeddings = model.get_input_embeddings().weight
        self._hidden_size, self._device, self._dtype = embeddings.shape[1], embeddings.device, embeddings.dtype
        self._prompts: OrderedDict[str, _Loaded] = OrderedDict()
        self._evicted: dict[str, str] = {}  # name -> folder, for prompts that can come back
        self._versions = 0
        self._lock = threading.RLock()
        self._selected = threading.local()

    # --- managing prompts ------------------------------------------------------------------------------------------

    def add(self, name: str, source: Any, *, adapter_name: str | None = None) -> None:
        """Load a prompt from an adapter folder, a ``PeftModel`` (its ``adapter_name`` adapter, by default the active
        one) or a ``[n, hidden]`` tensor."""
        if not isinstance(name, str) or not name or name == BASE_ADAPTER:
            raise InvalidConfigError(
                f"Invalid prompt name {name!r}: use a non-empty string other than {BASE_ADAPTER!r}."
            )
        prompt = load_soft_prompt(source, adapter_name)
        folder = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
        check_prompt_tensor(prompt, self._hidden_size, f"Soft prompt {name!r}")
        prompt = prompt.detach().to(device=self._device, dtype=self._dtype).contiguous()
        with self._lock:
            self._discard(name)
            self._versions += 1
            self._prompts[name] = _Loaded(prompt, self._versions, folder)
            self._evict_over_capacity()

    def remove(self, name: str) -> None:
        with self._lock:
            if name not in self._prompts and name not in self._evicted:
                raise AdapterNotFoundError(f"No soft prompt named {name!r}; loaded: {self.names}.")
            self._discard(name)

    def _discard(self, name: str) -> None:
        loaded = self._prompts.pop(name, None)
        self._evicted.pop(name, None)
        if loaded is not None:
            self.kv_cache.discard(lambda key: key == (name, loaded.version))

    def _evict_over_capacity(self) -> None:
        while self.capacity is not None and len(self._prompts) > self.capacity:
            name, loaded = self._prompts.popitem(last=False)
            self.kv_cache.discard(lambda key, n=name, v=loaded.version: key == (n, v))
            if loaded.folder is not None:
                self._evicted[name] = loaded.folder

    @property
    def names(self) -> list[str]:
        with self._lock:
            return list(self._prompts)

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._prompts or name in self._evicted

    def __len__(self) -> int:
        return len(self._prompts)

    def prompt(self, name: str) -> torch.Tensor:
        return self._get(name).prompt

    def _get(self, name: str) -> _Loaded:
        with self._lock:
            loaded = self._prompts.get(name)
            if loaded is not None:
                self._prompts.move_to_end(name)
                return loaded
            if name in self._evicted:
                self.add(name, self._evicted[name])
                return self._prompts[name]
        raise AdapterNotFoundError(f"No soft prompt named {name!r}; loaded: {self.names}.")

    def kv_cache_stats(self) -> KVCacheStats:
        return self.kv_cache.stats()

    # --- selecting prompts per request -------------------------------------------------------------------------------

    @contextmanager
    def using(self, name: str | None) -> Iterator[None]:
        """Make ``name`` the prompt of calls in this thread that pass no ``adapters`` (other threads unaffected)."""
        previous = getattr(self._selected, "name", None)
        self._selected.name = name
        try:
            yield
        finally:
            self._selected.name = previous

    def _rows(self, adapters: Sequence[str | None] | str | None, batch: int) -> tuple[list[Any], list[Any]]:
        if adapters is None or isinstance(adapters, str):
            adapters = [adapters if isinstance(adapters, str) else getattr(self._selected, "name", None)] * batch
        if len(adapters) != batch:
            raise InvalidRequestError(f"adapters needs one name per row ({batch} rows), got {len(adapters)}.")
        prompts: list[torch.Tensor | None] = []
        keys: list[Any] = []
        for name in adapters:
            if name is None or name == BASE_ADAPTER:
                prompts.append(None)
                keys.append(None)
            else:
                loaded = self._get(name)
                prompts.append(loaded.prompt)
                keys.append((name, loaded.version))
        return prompts, keys

    def _encode(self, inputs: Any, attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, bool]:
        if isinstance(inputs, str) or (isinstance(inputs, Sequence) and inputs and isinstance(inputs[0], str)):
            if self.tokenizer is None:
                raise InvalidRequestError("Texts need a tokenizer: pass tokenizer= to MultiPromptModel, or give ids.")
            texts = [inputs] if isinstance(inputs, str) else list(inputs)
            # A decoder appends on the right, so pad left; an encoder's relative positions need the text right after
            # the prompt, so pad right. Per call: the caller's tokenizer is left as it is.
            side = "right" if self.is_encoder_decoder else "left"
            encoded = self.tokenizer(texts, return_tensors="pt", padding=True, padding_side=side)
            return encoded["input_ids"].to(self._device), encoded["attention_mask"].to(self._device), True
        input_ids = torch.as_tensor(inputs, device=self._device)
        input_ids = input_ids[None] if input_ids.dim() == 1 else input_ids
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(self._device)
        return input_ids, mask, False

    # --- running ------------------------------------------------------------------------------------------------------

    def __call__(
        self,
        inputs: Any,
        adapters: Sequence[str | None] | str | None = None,
        attention_mask: torch.Tensor | None = None,
        **model_kwargs: Any,
    ) -> torch.Tensor:
        """Logits of every row with its own prompt: ``[batch, text length, vocab]`` for the text tokens of a
        decoder-only model; an encoder-decoder's decoder logits (pass ``decoder_input_ids``)."""
        input_ids, mask, _ = self._encode(inputs, attention_mask)
        prompts, keys = self._rows(adapters, input_ids.shape[0])
        if self.reuse_kv:
            output = cached_forward(self.model, prompts, input_ids, mask, keys, self.kv_cache, **model_kwargs)
            return output.logits
        with torch.no_grad():
            logits = forward_with_prompts(self.model, prompts, input_ids, mask, **model_kwargs).logits
        return logits if self.is_encoder_decoder else logits[:, -input_ids.shape[1] :]

    def generate(
        self,
        inputs: Any,
        adapters: Sequence[str | None] | str | None = None,
        attention_mask: torch.Tensor | None = None,
        **generate_kwargs: Any,
    ) -> Any:
        """Generate for every row with its own prompt.

        Texts in, new texts out (``list[str]``); token ids in, ``[batch, text + new tokens]`` ids out.
        """
        input_ids, mask, from_text = self._encode(inputs, attention_mask)
        prompts, keys = self._rows(adapters, input_ids.shape[0])
        output = generate_with_prompts(
            self.model,
            prompts,
            input_ids,
            mask,
            keys=keys,
            kv_cache=self.kv_cache,
            reuse_kv=self.reuse_kv,
            **generate_kwargs,
        )
        if not from_text:
            return output
        new_tokens = output if self.is_encoder_decoder else output[:, input_ids.shape[1] :]
        return self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
