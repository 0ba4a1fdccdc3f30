"""``MultiPromptModel``: many soft prompts served on one frozen base model, a different one per row.

Prompts are plain ``[n, hidden]`` tensors keyed by name (a prompt is a few KB; the base model is hundreds of MB), or
deep prompts (:class:`~peft_ext.adapter_files.DeepPrompt`: keys/values in every layer, e.g. a stock PEFT
PREFIX_TUNING adapter), which need no model run at all. Every call goes through the model's one
:class:`~peft_ext.engine.PromptEngine`, the same path as ``PeftModel(..., adapter_names=...)``, with each prompt's
keys/values made once and kept in its bounded cache; rows of both kinds and bare rows mix in one batch.
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

from .adapter_files import DeepPrompt, check_deep_prompt, check_prompt_tensor, load_prompt, pad_texts
from .engine import BASE_ADAPTER, Prompt, PromptEngine
from .engine.engine import next_serial, prompt_key
from .engine.kv_cache import KVCacheStats
from .errors import AdapterNotFoundError, InvalidConfigError, InvalidRequestError, UnsupportedModelError


@dataclass
class _Loaded:
    prompt: torch.Tensor | DeepPrompt
    serial: int  # part of the KV-cache key: a re-added name never reuses the old prompt's keys/values
    folder: str | None  # where an evicted prompt can be reloaded from

    def as_prompt(self, name: str) -> Prompt:
        prompt = self.prompt
        if isinstance(prompt, DeepPrompt):  # its keys/values are views of the loaded values: no model run
            return Prompt.deep(prompt_key(name, self.serial, [prompt.values]), prompt.layer_kv)
        return Prompt(prompt_key(name, self.serial, [prompt]), lambda: prompt)


class MultiPromptModel:
    """One frozen causal LM serving many named soft prompts, a different one per row of a batch.

    ``capacity`` bounds how many prompts stay loaded (least recently used are evicted; those added from a folder
    reload on their next use). Prompt keys/values are cached once per base model, in the cache its
    :class:`~peft_ext.engine.PromptEngine` shares with every ``MultiPromptModel`` and ``PeftModel`` on that model;
    ``kv_cache_bytes`` sets that shared cache's bound; ``None`` (the default) keeps the bound already set (the engine
    starts at :data:`DEFAULT_MAX_BYTES`), so a second server on the same model does not undo the first one's.
    Encoder-decoder models (T5 family) are served too, recomputing the prompts: their encoder is bidirectional.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        *,
        capacity: int | None = None,
        kv_cache_bytes: int | None = None,
        reuse_kv: bool = True,
    ) -> None:
        if capacity is not None and capacity < 1:
            raise InvalidConfigError(f"capacity must be at least 1 (or None for no limit), got {capacity}.")
        self.model = model.eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.tokenizer = tokenizer  # used as it is: padding is done here, the caller's tokenizer is never changed
        self.capacity = capacity
        self.engine = PromptEngine.of(model)
        if kv_cache_bytes is not None:
            self.engine.kv_cache.set_max_bytes(kv_cache_bytes)
        self.kv_cache = self.engine.kv_cache
        self.is_encoder_decoder = self.engine.is_encoder_decoder
        self.reuse_kv = reuse_kv and not self.is_encoder_decoder
        embeddings = model.get_input_embeddings().weight
        self._hidden_size, self._device, self._dtype = embeddings.shape[1], embeddings.device, embeddings.dtype
        self._prompts: OrderedDict[str, _Loaded] = OrderedDict()
        self._evicted: dict[str, str] = {}  # name -> folder, for prompts that can come back
        self._lock = threading.RLock()
        self._selected = threading.local()

    # --- managing prompts ------------------------------------------------------------------------------------------

    def add(self, name: str, source: Any, *, adapter_name: str | None = None) -> None:
        """Load a prompt from an adapter folder, a ``PeftModel`` (its ``adapter_name`` adapter, by default the active
        one), a ``[n, hidden]`` tensor or a :class:`~peft_ext.adapter_files.DeepPrompt`.

        A PREFIX_TUNING adapter (folder or ``PeftModel``) loads as a deep prompt, refused with
        :class:`~peft_ext.errors.KVShapeMismatchError` unless its layer count, key/value heads and head size are
        this model's.
        """
        if not isinstance(name, str) or not name or name == BASE_ADAPTER:
            raise InvalidConfigError(
                f"Invalid prompt name {name!r}: use a non-empty string other than {BASE_ADAPTER!r}."
            )
        loaded = load_prompt(source, adapter_name)
        folder = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
        prompt: torch.Tensor | DeepPrompt
        if isinstance(loaded, DeepPrompt):
            if self.is_encoder_decoder:
                raise UnsupportedModelError(
                    f"Deep prompt {name!r} cannot be served on {type(self.model).__name__}, an encoder-decoder model; "
                    "deep prompts are served on decoder-only models."
                )
            check_deep_prompt(loaded, self.engine.kv_shapes(), f"Deep prompt {name!r}")
            prompt = loaded.to(self._device, self._dtype)
        else:
            check_prompt_tensor(loaded, self._hidden_size, f"Soft prompt {name!r}")
            prompt = loaded.detach().to(device=self._device, dtype=self._dtype).contiguous()
        with self._lock:
            self._discard(name)
            self._prompts[name] = _Loaded(prompt, next_serial(), folder)
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
            self._forget(name, loaded)

    def _evict_over_capacity(self) -> None:
        while self.capacity is not None and len(self._prompts) > self.capacity:
            name, loaded = self._prompts.popitem(last=False)
            self._forget(name, loaded)
            if loaded.folder is not None:
                self._evicted[name] = loaded.folder

    def _forget(self, name: str, loaded: _Loaded) -> None:
        self.kv_cache.discard(lambda key: key[:2] == (name, loaded.serial))

    @property
    def names(self) -> list[str]:
        with self._lock:
            return list(self._prompts)

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._prompts or name in self._evicted

    def __len__(self) -> int:
        return len(self._prompts)

    def prompt(self, name: str) -> torch.Tensor | DeepPrompt:
        """The prompt loaded as ``name``: a ``[n, hidden]`` tensor, or a deep prompt (``add`` takes either back)."""
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

    def row_prompt(self, name: str) -> Prompt:
        """The engine's :class:`Prompt` for rows using ``name`` (its KV-cache key and tensor): what a server batches."""
        return self._get(name).as_prompt(name)

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

    def _rows(self, adapters: Sequence[str | None] | str | None, batch: int) -> list[Prompt | None]:
        if adapters is None or isinstance(adapters, str):
            adapters = [adapters if isinstance(adapters, str) else getattr(self._selected, "name", None)] * batch
        if len(adapters) != batch:
            raise InvalidRequestError(f"adapters needs one name per row ({batch} rows), got {len(adapters)}.")
        prompts = {
            name: self.row_prompt(name) for name in dict.fromkeys(adapters) if name is not None and name != BASE_ADAPTER
        }
        return [None if name is None or name == BASE_ADAPTER else prompts[name] for name in adapters]

    def _encode(self, inputs: Any, attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, bool]:
        if isinstance(inputs, str) or (isinstance(inputs, Sequence) and inputs and isinstance(inputs[0], str)):
            if self.tokenizer is None:
                raise InvalidRequestError("Texts need a tokenizer: pass tokenizer= to MultiPromptModel, or give ids.")
            texts = [inputs] if isinstance(inputs, str) else list(inputs)
            # A decoder appends on the right, so pad left; an encoder's relative positions need the text right after
            # the prompt, so pad right. Per call: the caller's tokenizer is left as it is.
            ids, mask = pad_texts(self.tokenizer, texts, left=not self.is_encoder_decoder)
            return ids.to(self._device), mask.to(self._device), True
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
        rows = self._rows(adapters, input_ids.shape[0])
        if self.reuse_kv:
            return self.engine.cached_forward(rows, input_ids, mask, **model_kwargs).logits
        with torch.no_grad():
            logits = self.engine.forward(rows, input_ids, mask, **model_kwargs).logits
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
        rows = self._rows(adapters, input_ids.shape[0])
        output = self.engine.generate(rows, input_ids, mask, reuse_kv=self.reuse_kv, **generate_kwargs)
        if not from_text:
            return output
        new_tokens = output if self.is_encoder_decoder else output[:, input_ids.shape[1] :]
        return self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
