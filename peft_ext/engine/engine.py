"""``PromptEngine``: forward and generate for a frozen model with a prompt per row, each prompt computed once.

A row names a :class:`Prompt`: a cache key and a way to make its keys/values for the model. An input-level prompt
computes an ``[n, hidden]`` tensor of input embeddings, whose keys/values the model computes; a deep prompt gives its
per-layer keys/values directly (no model run, no prefill). The callers (PEFT's ``adapter_names``,
``MultiPromptModel``, a server) only say which prompt each row uses; the engine computes every distinct prompt once
per call, and for inference reuses each prompt's keys/values from the model's one ``PromptKVCache`` (making them only
on a miss). Under causal attention that is exact: a prompt's keys/values at positions 0..n-1 depend on nothing else.
Where prompts enter as input embeddings (``forward``, ``generate(reuse_kv=False)``), deep prompts still enter as a
block of keys/values before them: each row is ``[its deep prompt's keys/values][its input-level prompt][its text]``.

Keys: ``(name, serial, versions)``. ``serial`` is unique to one loaded prompt (``next_serial()``, never reused), and
``versions`` are the ``_version`` counters of its tensors, which every in-place update (an optimizer step,
``load_state_dict``) bumps, so a changed prompt never meets stale keys/values.
"""

from __future__ import annotations

import functools
import itertools
import threading
import weakref
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from ..errors import DeepPromptInputError, GradientCheckpointingError, InvalidRequestError, UnsupportedModelError
from ..integration import activation_checkpointing, cache_argument
from .kv_cache import DEFAULT_MAX_BYTES, LayerKV, PromptKVCache, batch_cache, compute_prompt_kv, model_kv_shapes
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
    """One prompt a call's rows can use: its KV-cache key (None: never cached) and how to make it.

    An input-level prompt is ``Prompt(key, compute)``: ``compute()`` gives its ``[n, hidden]`` input embeddings, whose
    keys/values the model computes. A deep prompt (:meth:`deep`) has ``keys_values()``, its per-layer keys/values
    ``[1, heads, n, head_dim]`` as the layers keep them, and no input embeddings (``compute()`` raises
    :class:`DeepPromptInputError`).
    """

    key: Hashable | None
    compute: Callable[[], torch.Tensor]
    keys_values: Callable[[], LayerKV] | None = None

    @classmethod
    def deep(cls, key: Hashable | None, keys_values: Callable[[], LayerKV]) -> Prompt:
        return cls(key, _no_input_embeddings, keys_values)

    @property
    def is_deep(self) -> bool:
        return self.keys_values is not None

    def layer_kv(self, model: Any) -> LayerKV:
        """Its keys/values in ``model``: given (deep), or computed by running its input embeddings at 0..n-1."""
        if self.keys_values is not None:
            return self.keys_values()
        return compute_prompt_kv(model, self.compute())

    def num_tokens(self) -> int:
        """How many positions it takes before the text."""
        if self.keys_values is not None:
            return int(self.keys_values()[0][0].shape[2])
        return int(self.compute().shape[0])


def _no_input_embeddings() -> torch.Tensor:
    raise DeepPromptInputError(
        "A deep prompt has keys/values in every layer and no input embeddings: it enters as keys/values "
        "(Prompt.layer_kv); its length is Prompt.num_tokens()."
    )


Rows = Sequence[Prompt | None]


class PromptEngine:
    """Runs ``model`` (a frozen transformers model) with a prompt per row. One per model: :meth:`of`."""

    def __init__(self, model: Any, kv_cache_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._model = weakref.ref(model)  # the engine of a model must not keep the model alive (see ``of``)
        self.kv_cache = PromptKVCache(kv_cache_bytes)
        self.is_encoder_decoder = is_encoder_decoder(model)
        self._kv_shapes: list[tuple[int, int]] | None = None

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

    def kv_shapes(self) -> list[tuple[int, int]]:
        """Per layer of the model: the (key/value heads, head size) of its keys/values (what a deep prompt must fit),
        read once from a one-token run."""
        if self._kv_shapes is None:
            self._kv_shapes = model_kv_shapes(self.model)
        return self._kv_shapes

    # --- prompts -------------------------------------------------------------------------------------------------

    @staticmethod
    def prompts(rows: Rows) -> list[torch.Tensor | None]:
        """Every row's prompt tensor, each distinct prompt computed once."""
        distinct = {id(p): p for p in rows if p is not None}
        computed = {key: p.compute() for key, p in distinct.items()}
        return [None if p is None else computed[id(p)] for p in rows]

    @staticmethod
    def _split(rows: Rows) -> tuple[Rows, Rows]:
        """The rows' deep prompts and their input-level prompts (None where a row has none of that kind)."""
        return [p if p is not None and p.is_deep else None for p in rows], [
            p if p is not None and not p.is_deep else None for p in rows
        ]

    def _kv_block(self, rows: Rows, device: torch.device, cached: bool = True) -> tuple[Any, torch.Tensor, int]:
        """The batch's cache holding each row's prompt keys/values (right-aligned), its mask, and its length.

        ``cached``: through the model's prompt KV cache (inference); otherwise made afresh (differentiable)."""
        batch = len(rows)
        if not any(p is not None for p in rows):
            return None, torch.zeros(batch, 0, dtype=torch.long, device=device), 0
        if self.is_encoder_decoder:
            name = type(self.model).__name__
            if any(p is not None and p.is_deep for p in rows):
                raise UnsupportedModelError(
                    f"{name} is an encoder-decoder model; deep prompts (keys/values in every layer) are served on "
                    "decoder-only models."
                )
            raise UnsupportedModelError(
                f"{name} is an encoder-decoder model: its bidirectional encoder cannot reuse prompt keys/values; use "
                "reuse_kv=False (recomputation)."
            )
        model = self.model
        distinct = {id(p): p for p in rows if p is not None}
        kvs: dict[int, LayerKV] = {
            key: self.kv_cache.get(p.key, functools.partial(p.layer_kv, model)) if cached else p.layer_kv(model)
            for key, p in distinct.items()
        }
        per_row = [None if p is None else kvs[id(p)] for p in rows]
        mask, longest = prefix_mask([0 if kv is None else kv[0][0].shape[2] for kv in per_row], device)
        return (batch_cache(model, per_row, longest) if longest else None), mask, longest

    def prompt_length(self, prompt: Prompt | None) -> int:
        """How many key/value columns ``prompt`` takes before the text (0 for none); its cached keys/values tell
        without counting as a use of the cache."""
        if prompt is None:
            return 0
        cached = self.kv_cache.peek(prompt.key)
        return prompt.num_tokens() if cached is None else int(cached[0][0].shape[2])

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
        """The model with the input-level prompts in its input embeddings (differentiable: the training path).

        Logits cover the input-level prompt block too, as PEFT's do: the text's logits start at the longest input-level
        prompt's length. Deep prompts enter as a block of keys/values before it (made afresh, differentiable); as in
        PEFT's prefix tuning, nothing predicts a deep row's first text token (its prompt has no logits), so that
        label is not scored, nor a bare row's (as when it runs alone). On an encoder-decoder model the prompts go
        before the encoder's input and ``labels`` stay the decoder's.
        """
        model = self.model
        if inputs_embeds is None:
            inputs_embeds = model.get_input_embeddings()(input_ids)
        kwargs.pop("position_ids", None)  # replaced: positions count from each row's prompt
        deep, shallow = self._split(rows)
        if model.training and any(p is not None for p in deep) and activation_checkpointing(model):
            raise GradientCheckpointingError(
                "Deep prompts enter as a key/value cache, which layers under gradient checkpointing drop while "
                "training; turn gradient checkpointing off (model.gradient_checkpointing_disable()) to train them."
            )
        cache, deep_mask, deep_length = self._kv_block(deep, inputs_embeds.device, cached=False)
        prompts = self.prompts(shallow)
        if self.is_encoder_decoder:
            batch = prepend_prompts(prompts, inputs_embeds, attention_mask)
            return model(
                inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask, labels=labels, **kwargs
            )
        batch = prepend_prompts(prompts, inputs_embeds, attention_mask, labels)
        embeds, mask, labels = batch.inputs_embeds, batch.attention_mask, batch.labels
        if cache is not None:
            kwargs[cache_argument(model)] = cache
        if labels is not None:
            # A row without an input-level prompt (bare, or deep) has no position before its first text token when it
            # runs alone; in a batch that position would be filler or padding, so that token is not scored.
            labels = _unscored_first_tokens(labels, mask, [p is None for p in shallow])
        # Every row's masked slots move in front of its prompt (so the one-step label shift meets the text); the
        # logits are put back in the caller's layout.
        order = holes_first(mask)
        if order is not None:
            embeds = embeds.gather(1, order[..., None].expand(-1, -1, embeds.shape[-1]))
            mask = mask.gather(1, order)
            labels = None if labels is None else labels.gather(1, order)
        output = model(
            inputs_embeds=embeds,
            attention_mask=torch.cat([deep_mask, mask], dim=1),
            position_ids=positions_from_mask(torch.cat([deep_mask, mask], dim=1))[:, deep_length:],
            labels=labels,
            **kwargs,
        )
        if order is not None:
            restore = order.argsort(dim=1)
            output.logits = output.logits.gather(1, restore[..., None].expand(-1, -1, output.logits.shape[-1]))
        return output

    @torch.no_grad()
    def cached_forward(
        self, rows: Rows, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any
    ) -> Any:
        """Inference forward reusing each prompt's cached keys/values; logits cover the text tokens only."""
        cache, block_mask, _ = self._kv_block(rows, input_ids.device)
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
        ``return_dict_in_generate``; an encoder-decoder's decoder tokens). As there, ``max_length`` counts the text and
        the new tokens, and ``stopping_criteria`` see the text and the new tokens: never the prompt.

        With ``reuse_kv`` the prompts enter as a pre-filled cache (prefill runs on the text only); without, the
        input-level prompts enter as input embeddings (deep prompts still as a cache block before them). Both give
        the same tokens. Encoder-decoder models always recompute, and take input-level prompts only.
        """
        model = self.model
        if len(rows) != input_ids.shape[0]:
            raise InvalidRequestError(f"Got {len(rows)} prompts for {input_ids.shape[0]} rows; give one per row.")
        if not self.is_encoder_decoder:  # an encoder-decoder's max_length counts decoder tokens only
            _max_length_as_new_tokens(generate_kwargs, input_ids.shape[1])
        text_mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        if model.generation_config.pad_token_id is None and "pad_token_id" not in generate_kwargs:
            eos = model.generation_config.eos_token_id
            generate_kwargs["pad_token_id"] = eos[0] if isinstance(eos, list) else eos
        recompute = not reuse_kv or self.is_encoder_decoder
        deep, shallow = self._split(rows) if recompute else (rows, [None] * len(rows))
        cache, block_mask, cache_length = self._kv_block(deep, input_ids.device, cached=reuse_kv)
        if self.is_encoder_decoder:
            batch = prepend_prompts(self.prompts(shallow), model.get_input_embeddings()(input_ids), text_mask)
            return model.generate(
                inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask, **generate_kwargs
            )
        if cache is not None:
            generate_kwargs[cache_argument(model)] = cache
        if reuse_kv:
            _stop_on_the_callers_ids(generate_kwargs, cache_length)
            ids = torch.cat([filler_ids(input_ids, text_mask, cache_length), input_ids], dim=1)
            mask = torch.cat([block_mask, text_mask.long()], dim=1)
            return _without_prefix(model.generate(input_ids=ids, attention_mask=mask, **generate_kwargs), cache_length)
        # The input-level prompts as embeddings after the deep prompts' cache block; generate reads the embeddings of
        # the positions the cache does not hold, so the block's own columns are zeros it never uses.
        batch = prepend_prompts(self.prompts(shallow), model.get_input_embeddings()(input_ids), text_mask)
        longest = cache_length + batch.prefix_length
        _stop_on_the_callers_ids(generate_kwargs, longest)
        block = batch.inputs_embeds.new_zeros(input_ids.shape[0], cache_length, batch.inputs_embeds.shape[-1])
        ids = torch.cat([filler_ids(input_ids, text_mask, longest), input_ids], dim=1)
        output = model.generate(
            input_ids=ids,
            inputs_embeds=torch.cat([block, batch.inputs_embeds], dim=1),
            attention_mask=torch.cat([block_mask, batch.attention_mask], dim=1),
            **generate_kwargs,
        )
        return _without_prefix(output, longest)


def _max_length_as_new_tokens(generate_kwargs: dict[str, Any], text_length: int) -> None:
    """``max_length`` counts the caller's text and the new tokens, as in plain ``generate``, never the prompt block's
    stand-in ids: turned into ``max_new_tokens`` (which wins when both are given, as in transformers)."""
    max_length = generate_kwargs.pop("max_length", None)
    if max_length is None or generate_kwargs.get("max_new_tokens") is not None:
        return
    if max_length <= text_length:
        raise InvalidRequestError(
            f"max_length={max_length} leaves no room for new tokens after the {text_length} input tokens; it counts "
            "the input and the new tokens (or pass max_new_tokens)."
        )
    generate_kwargs["max_new_tokens"] = max_length - text_length


class _CallersIds(StoppingCriteria):
    """A stopping criterion shown the ids as plain ``generate`` shows them: the caller's text and the new tokens,
    without the prompt block's stand-in ids in front (criteria that skip the input by its length, such as
    lm-evaluation-harness's stop sequences, would otherwise read the end of the input as generated)."""

    def __init__(self, criterion: Any, prefix: int) -> None:
        self.criterion, self.prefix = criterion, prefix

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> Any:
        return self.criterion(input_ids[:, self.prefix :], scores, **kwargs)


def _stop_on_the_callers_ids(generate_kwargs: dict[str, Any], prefix: int) -> None:
    criteria = generate_kwargs.get("stopping_criteria")
    if criteria and prefix:
        generate_kwargs["stopping_criteria"] = StoppingCriteriaList(_CallersIds(c, prefix) for c in criteria)


def _unscored_first_tokens(labels: torch.Tensor, mask: torch.Tensor, rows: Sequence[bool]) -> torch.Tensor:
    """``labels`` with the first attended token of each chosen row set to -100 (not scored)."""
    if not any(rows):  # every row has an input-level prompt: labels as given, no copy on the training step
        return labels
    first = mask.long().argmax(dim=1)
    chosen = torch.tensor(list(rows), device=labels.device)
    labels = labels.clone()
    labels[chosen, first[chosen]] = -100
    return labels


def _without_prefix(output: Any, longest: int) -> Any:
    """``generate``'s result without the prompt block's stand-in ids: a tensor, or a ``GenerateOutput`` whose
    ``sequences`` start at the caller's text (per-step ``scores``/``logits`` cover new tokens only already)."""
    if isinstance(output, torch.Tensor):
        return output[:, longest:]
    output.sequences = output.sequences[:, longest:]
    return output
