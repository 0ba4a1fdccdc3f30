"""``PromptEngine``: forward and generate for a frozen model with a prompt per row, each prompt computed once.

A row names a :class:`Prompt`: a cache key and a way to compute the ``[n, hidden]`` tensor. The callers (PEFT's
``adapter_names``, ``MultiPromptModel``, a server) only say which prompt each row uses; the engine computes every
distinct prompt once per call, and for inference reuses each prompt's keys/values from the model's one
``PromptKVCache`` (computing the prompt only on a miss). Under causal attention that is exact: a prompt's keys/values
at positions 0..n-1 depend on nothing else.

Keys: ``(name, serial, versions)``. ``serial`` is unique to one loaded prompt (``next_serial()``, never reused), and
``versions`` are the ``_version`` counters of its tensors, which every in-place update (an optimizer step,
``load_state_dict``) bumps, so a changed prompt never meets stale keys/values.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InvalidRequestError, UnsupportedModelError
from ..integration import cache_argument
from .kv_cache import DEFAULT_MAX_BYTES, LayerKV, PromptKVCache, batch_cache
from .layout import filler_ids, holes_first, is_encoder_decoder, positions_from_mask, prefix_mask, prepend_prompts

_SERIALS = itertools.count(1)
_ENGINES: weakref.WeakKeyDictionary[Any, PromptEngine] = weakref.WeakKeyDictionary()  # one per model, not copied
_ENGINES_LOCK = threading.Lock()


def next_serial() -> int:
    """A number no other loaded prompt has had in this process: part of a prompt's cache key."""
    return next(_SERIALS)


def prompt_key(name: str, serial: int, tensors: Sequence[torch.Tensor]) -> Hashable:
    return (name, serial, tuple(t._version for t in tensors))


@dataclass(frozen=True, eq=False)
class Prompt:
    """One prompt a call's rows can use: its KV-cache key (None: never cached) and how to compute it."""

    key: Hashable | None
    compute: Callable[[], torch.Tensor]


Rows = Sequence[Prompt | None]


class PromptEngine:
    """Runs ``model`` (a frozen transformers model) with a prompt per row. One per model: :meth:`of`."""

    def __init__(self, model: Any, kv_cache_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._model = weakref.ref(model)  # the engine of a model must not keep the model alive (see ``of``)
        self.kv_cache = PromptKVCache(kv_cache_bytes)
        self.is_encoder_decoder = is_encoder_decoder(model)

    @property
    def model(self) -> Any:
        model = self._model()
        assert model is not None, "the model of this engine was garbage-collected"
        return model

    @classmethod
    def of(cls, model: Any) -> PromptEngine:
        """The engine of ``model``, made on first use: every path serving this model shares its prompt KV cache."""
        with _ENGINES_LOCK:
            engine = _ENGINES.get(model)
            if engine is None:
                engine = _ENGINES[model] = cls(model)
            return engine

    # --- prompts -------------------------------------------------------------------------------------------------

    @staticmethod
    def prompts(rows: Rows) -> list[torch.Tensor | None]:
        """Every row's prompt tensor, each distinct prompt computed once."""
        distinct = {id(p): p for p in rows if p is not None}
        computed = {key: p.compute() for key, p in distinct.items()}
        return [None if p is None else computed[id(p)] for p in rows]

    def _prefix(self, rows: Rows, device: torch.device) -> tuple[Any, torch.Tensor, int]:
        """The batch's cache holding each row's prompt keys/values (right-aligned), its mask, and its length."""
        if self.is_encoder_decoder:
            raise UnsupportedModelError(
                f"{type(self.model).__name__} is an encoder-decoder model: its bidirectional encoder cannot reuse "
                "prompt keys/values; use reuse_kv=False (recomputation)."
            )
        distinct = {id(p): p for p in rows if p is not None}
        kvs: dict[int, LayerKV] = {key: self.kv_cache.get(self.model, p.key, p.compute) for key, p in distinct.items()}
        per_row = [None if p is None else kvs[id(p)] for p in rows]
        mask, longest = prefix_mask([0 if kv is None else kv[0][0].shape[2] for kv in per_row], device)
        return (batch_cache(self.model, per_row, longest) if longest else None), mask, longest

    # --- running -------------------------------------------------------------------------------------------------

    def forward(
        self,
        rows: Rows,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """The model with the prompts in its input embeddings (differentiable: the training path).

        Logits cover the prompt block too, as PEFT's do: the text's logits start at the longest prompt's length. On
        an encoder-decoder model the prompts go before the encoder's input and ``labels`` stay the decoder's.
        """
        model = self.model
        if inputs_embeds is None:
            inputs_embeds = model.get_input_embeddings()(input_ids)
        kwargs.pop("position_ids", None)  # replaced: positions count from each row's prompt
        prompts = self.prompts(rows)
        if self.is_encoder_decoder:
            batch = prepend_prompts(prompts, inputs_embeds, attention_mask)
            return model(
                inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask, labels=labels, **kwargs
            )
        batch = prepend_prompts(prompts, inputs_embeds, attention_mask, labels)
        order = holes_first(batch.attention_mask)
        if order is None:
            return model(
                inputs_embeds=batch.inputs_embeds,
                attention_mask=batch.attention_mask,
                position_ids=batch.position_ids,
                labels=batch.labels,
                **kwargs,
            )
        # Run with every row's masked slots moved in front of its prompt (so the one-step label shift meets the text),
        # then put the logits back in the caller's layout.
        mask = batch.attention_mask.gather(1, order)
        hidden = batch.inputs_embeds.shape[-1]
        output = model(
            inputs_embeds=batch.inputs_embeds.gather(1, order[..., None].expand(-1, -1, hidden)),
            attention_mask=mask,
            position_ids=positions_from_mask(mask),
            labels=None if batch.labels is None else batch.labels.gather(1, order),
            **kwargs,
        )
        restore = order.argsort(dim=1)
        output.logits = output.logits.gather(1, restore[..., None].expand(-1, -1, output.logits.shape[-1]))
        return output

    @torch.no_grad()
    def cached_forward(
        self, rows: Rows, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any
    ) -> Any:
        """Inference forward reusing each prompt's cached keys/values; logits cover the text tokens only."""
        cache, block_mask, _ = self._prefix(rows, input_ids.device)
        text_mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        mask = torch.cat([block_mask, text_mask.long()], dim=1)
        positions = positions_from_mask(mask)[:, block_mask.shape[1] :]
        if cache is not None:
            kwargs[cache_argument(self.model)] = cache
        return self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, **kwargs)

    @torch.no_grad()
    def generate(
        self,
        rows: Rows,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        reuse_kv: bool = True,
        **generate_kwargs: Any,
    ) -> Any:
        """``model.generate`` with a prompt per row; returns what plain ``generate`` returns for the same arguments
        (``[batch, text + new tokens]`` for a decoder-only model, a ``GenerateOutput`` with
        ``return_dict_in_generate``; an encoder-decoder's decoder tokens).

        With ``reuse_kv`` the prompts enter as a pre-filled cache (prefill runs on the text only); without, they
        enter as input embeddings. Both give the same tokens. Encoder-decoder models always recompute.
        """
        model = self.model
        if len(rows) != input_ids.shape[0]:
            raise InvalidRequestError(f"Got {len(rows)} prompts for {input_ids.shape[0]} rows; give one per row.")
        if "max_length" in generate_kwargs:
            raise InvalidRequestError(
                "Pass max_new_tokens, not max_length: the prompt's length would count against max_length."
            )
        text_mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        if model.generation_config.pad_token_id is None and "pad_token_id" not in generate_kwargs:
            eos = model.generation_config.eos_token_id
            generate_kwargs["pad_token_id"] = eos[0] if isinstance(eos, list) else eos
        if self.is_encoder_decoder:
            batch = prepend_prompts(self.prompts(rows), model.get_input_embeddings()(input_ids), text_mask)
            return model.generate(
                inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask, **generate_kwargs
            )
        if reuse_kv:
            cache, block_mask, longest = self._prefix(rows, input_ids.device)
            if cache is not None:
                generate_kwargs[cache_argument(model)] = cache
            ids = torch.cat([filler_ids(input_ids, text_mask, longest), input_ids], dim=1)
            mask = torch.cat([block_mask, text_mask.long()], dim=1)
            return _without_prefix(model.generate(input_ids=ids, attention_mask=mask, **generate_kwargs), longest)
        batch = prepend_prompts(self.prompts(rows), model.get_input_embeddings()(input_ids), text_mask)
        longest = batch.prefix_length
        ids = torch.cat([filler_ids(input_ids, text_mask, longest), input_ids], dim=1)
        output = model.generate(
            input_ids=ids, inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask, **generate_kwargs
        )
        return _without_prefix(output, longest)


def _without_prefix(output: Any, longest: int) -> Any:
    """``generate``'s result without the prompt block's stand-in ids: a tensor, or a ``GenerateOutput`` whose
    ``sequences`` start at the caller's text (per-step ``scores``/``logits`` cover new tokens only already)."""
    if isinstance(output, torch.Tensor):
        return output[:, longest:]
    output.sequences = output.sequences[:, longest:]
    return output
