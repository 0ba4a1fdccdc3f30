"""Running a frozen model with a (possibly different) soft prompt per row.

This is the one path every prompted forward and generate takes, whether it comes from a ``PeftModel`` or from
``MultiPromptModel``. Each row is laid out as ``[masked filler][its prompt][its text]``, prompts right-aligned to the
longest one, and positions come from the attention mask: the prompt sits at positions 0..n-1 and the text starts at
n, whatever the padding. So a row's output does not depend on its padding or on the other rows (PEFT #1093).

With a ``PromptKVCache`` the prompt part is not run at all: each prompt's keys/values, computed once alone at
positions 0..n-1, are stacked into the batch's cache. Under causal attention this is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from .errors import InvalidRequestError, UnsupportedModelError
from .kv_cache import LayerKV, PromptKVCache
from .transformers_compat import cache_argument

RowPrompts = Sequence[torch.Tensor | None]


@dataclass
class PromptedInputs:
    """Embeddings, mask, positions and labels of a batch with every row's prompt prepended."""

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor | None
    prefix_length: int


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, ... over the attended tokens of each row (masked slots get 0, which nothing reads)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def prefix_mask(prompts: RowPrompts, device: torch.device) -> tuple[torch.Tensor, int]:
    """The ``[batch, longest prompt]`` mask of the right-aligned prompt block, and that length."""
    lengths = [0 if p is None else p.shape[0] for p in prompts]
    longest = max(lengths, default=0)
    columns = torch.arange(longest, device=device)
    starts = torch.tensor([longest - n for n in lengths], device=device)
    return (columns[None, :] >= starts[:, None]).long(), longest


def prepend_prompts(
    prompts: RowPrompts,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
) -> PromptedInputs:
    """Lay out ``[filler][prompt_i][text_i]`` for every row; gradients flow into each row's own prompt only."""
    batch, _, hidden = inputs_embeds.shape
    if len(prompts) != batch:
        raise InvalidRequestError(
            f"Got {len(prompts)} prompts for a batch of {batch} rows; give one per row (None for none)."
        )
    device, dtype = inputs_embeds.device, inputs_embeds.dtype
    block_mask, longest = prefix_mask(prompts, device)
    rows = []
    for prompt in prompts:
        length = 0 if prompt is None else prompt.shape[0]
        filler = inputs_embeds.new_zeros(longest - length, hidden)
        rows.append(filler if prompt is None else torch.cat([filler, prompt.to(device=device, dtype=dtype)]))
    block = torch.stack(rows) if longest else inputs_embeds.new_zeros(batch, 0, hidden)
    text_mask = attention_mask if attention_mask is not None else inputs_embeds.new_ones(inputs_embeds.shape[:2])
    mask = torch.cat([block_mask, text_mask.long().to(device)], dim=1)
    if labels is not None:
        labels = torch.cat([labels.new_full((batch, longest), -100), labels], dim=1)
    return PromptedInputs(
        inputs_embeds=torch.cat([block, inputs_embeds], dim=1),
        attention_mask=mask,
        position_ids=positions_from_mask(mask),
        labels=labels,
        prefix_length=longest,
    )


def forward_with_prompts(
    model: Any,
    prompts: RowPrompts,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    **kwargs: Any,
) -> Any:
    """Run ``model`` with the prompts in the input embeddings (differentiable: the training path).

    Logits cover the prompt block too, as PEFT's do: the text's logits start at the longest prompt's length. On an
    encoder-decoder model the prompts go before the encoder's input and ``labels`` stay the decoder's.
    """
    if inputs_embeds is None:
        inputs_embeds = model.get_input_embeddings()(input_ids)
    kwargs.pop("position_ids", None)  # replaced: positions must count from each row's prompt
    if is_encoder_decoder(model):
        batch = prepend_prompts(prompts, inputs_embeds, attention_mask)
        return model(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask, labels=labels, **kwargs)
    batch = prepend_prompts(prompts, inputs_embeds, attention_mask, labels)
    order = _masked_first(batch.attention_mask)
    if order is None:
        return model(
            inputs_embeds=batch.inputs_embeds,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            labels=batch.labels,
            **kwargs,
        )
    # Padding inside a row ([filler][prompt][pads][text]) leaves logits right but misaligns the model's one-step label
    # shift: the text's first token would be scored from a pad slot. Run with every row's masked slots moved in
    # front of its prompt, then put the logits back in the caller's layout.
    mask = batch.attention_mask.gather(1, order)
    output = model(
        inputs_embeds=batch.inputs_embeds.gather(1, order[..., None].expand(-1, -1, batch.inputs_embeds.shape[-1])),
        attention_mask=mask,
        position_ids=positions_from_mask(mask),
        labels=None if batch.labels is None else batch.labels.gather(1, order),
        **kwargs,
    )
    restore = order.argsort(dim=1)
    output.logits = output.logits.gather(1, restore[..., None].expand(-1, -1, output.logits.shape[-1]))
    return output


def _masked_first(mask: torch.Tensor) -> torch.Tensor | None:
    """Per-row order moving masked slots to the front (attended ones keep their order), or None if they are."""
    order = torch.sort(mask, dim=1, stable=True).indices
    return None if torch.equal(mask.gather(1, order), mask) else order


def is_encoder_decoder(model: Any) -> bool:
    """Encoder-decoder models take prompts before the encoder input and cannot reuse prompt keys/values.

    Only relative-position encoders (the T5 family) are supported: with absolute positions the masked filler before
    a shorter prompt would shift the text's positions.
    """
    if not getattr(model.config, "is_encoder_decoder", False):
        return False
    if not hasattr(model.config, "relative_attention_num_buckets"):
        raise UnsupportedModelError(
            f"{type(model).__name__} is an encoder-decoder model with absolute positions; peft_ext serves soft "
            "prompts on decoder-only models and on relative-position encoder-decoders (T5 family)."
        )
    return True


def _require_decoder_only(model: Any) -> None:
    if is_encoder_decoder(model):
        raise UnsupportedModelError(
            f"{type(model).__name__} is an encoder-decoder model: its bidirectional encoder cannot reuse prompt "
            "keys/values; use reuse_kv=False (recomputation)."
        )


def _stack_right_aligned(tensors: list[torch.Tensor], length: int) -> torch.Tensor:
    """Stack ``[1, heads, n_i, dim]`` tensors into ``[batch, heads, length, dim]``, zero-filled on the left."""
    return torch.cat([torch.nn.functional.pad(t, (0, 0, length - t.shape[2], 0)) for t in tensors])


def batch_prompt_cache(model: Any, per_row: Sequence[LayerKV | None], longest: int) -> DynamicCache:
    """Stack per-prompt keys/values, right-aligned like the prompts, into one cache for the batch."""
    template = next(kv for kv in per_row if kv is not None)
    cache = DynamicCache(config=model.config)
    for layer, (template_keys, _) in enumerate(template):
        empty = template_keys[:, :, :0]
        keys = [empty if kv is None else kv[layer][0] for kv in per_row]
        values = [empty if kv is None else kv[layer][1] for kv in per_row]
        cache.update(_stack_right_aligned(keys, longest), _stack_right_aligned(values, longest), layer)
    return cache


def _cached_prefix(
    model: Any, prompts: RowPrompts, keys: Sequence[Any] | None, kv_cache: PromptKVCache | None, device: torch.device
) -> tuple[DynamicCache | None, torch.Tensor, int]:
    _require_decoder_only(model)
    mask, longest = prefix_mask(prompts, device)
    if not longest:
        return None, mask, 0
    store = kv_cache if kv_cache is not None else PromptKVCache(max_bytes=0)
    row_keys = keys if keys is not None else [None] * len(prompts)
    per_row = [None if p is None else store.get(model, k, p) for p, k in zip(prompts, row_keys, strict=True)]
    return batch_prompt_cache(model, per_row, longest), mask, longest


@torch.no_grad()
def cached_forward(
    model: Any,
    prompts: RowPrompts,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    keys: Sequence[Any] | None = None,
    kv_cache: PromptKVCache | None = None,
    **kwargs: Any,
) -> Any:
    """Inference forward reusing each prompt's cached keys/values; logits cover the text tokens only."""
    cache, block_mask, _ = _cached_prefix(model, prompts, keys, kv_cache, input_ids.device)
    text_mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    mask = torch.cat([block_mask, text_mask.long()], dim=1)
    positions = positions_from_mask(mask)[:, block_mask.shape[1] :]
    kwargs[cache_argument(model)] = cache
    return model(input_ids=input_ids, attention_mask=mask, position_ids=positions, **kwargs)


def _filler_ids(input_ids: torch.Tensor, text_mask: torch.Tensor, length: int) -> torch.Tensor:
    """Token ids standing in for the prompt block, which ``generate`` needs to count positions.

    Each row repeats its own first text token, so logits processors that look at the ids seen so far (repetition
    penalty, ...) see the same set of ids as when the request runs alone.
    """
    first = input_ids.gather(1, text_mask.long().argmax(dim=1, keepdim=True))
    return first.expand(-1, length)


@torch.no_grad()
def generate_with_prompts(
    model: Any,
    prompts: RowPrompts,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    keys: Sequence[Any] | None = None,
    kv_cache: PromptKVCache | None = None,
    reuse_kv: bool = True,
    **generate_kwargs: Any,
) -> Any:
    """``model.generate`` with a prompt per row; returns what plain ``generate`` returns for the same arguments (for a
    decoder-only model ``[batch, text + new tokens]``, or a ``GenerateOutput`` with ``return_dict_in_generate``; for
    an encoder-decoder the decoder's tokens).

    With ``reuse_kv`` the prompts enter as a pre-filled cache (prefill runs on the text only); without, they enter
    as input embeddings. Both give the same tokens. Encoder-decoder models always recompute.
    """
    text_mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    if "max_length" in generate_kwargs:
        raise InvalidRequestError(
            "Pass max_new_tokens, not max_length: the prompt's length would count against max_length."
        )
    if model.generation_config.pad_token_id is None and "pad_token_id" not in generate_kwargs:
        eos = model.generation_config.eos_token_id
        generate_kwargs["pad_token_id"] = eos[0] if isinstance(eos, list) else eos
    if is_encoder_decoder(model):
        batch = prepend_prompts(prompts, model.get_input_embeddings()(input_ids), text_mask)
        return model.generate(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask, **generate_kwargs)
    if reuse_kv:
        cache, block_mask, longest = _cached_prefix(model, prompts, keys, kv_cache, input_ids.device)
        ids = torch.cat([_filler_ids(input_ids, text_mask, longest), input_ids], dim=1)
        mask = torch.cat([block_mask, text_mask.long()], dim=1)
        generate_kwargs[cache_argument(model)] = cache
        output = model.generate(input_ids=ids, attention_mask=mask, **generate_kwargs)
        return _without_prefix(output, longest)
    batch = prepend_prompts(prompts, model.get_input_embeddings()(input_ids), text_mask)
    longest = batch.prefix_length
    ids = torch.cat([_filler_ids(input_ids, text_mask, longest), input_ids], dim=1)
    output = model.generate(
        input_ids=ids, inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask, **generate_kwargs
    )
    return _without_prefix(output, longest)


def _without_prefix(output: Any, longest: int) -> Any:
    """``generate``'s result with the prompt block's stand-in ids removed: a tensor, or a ``GenerateOutput`` whose
    ``sequences`` start at the caller's text (per-step ``scores``/``logits`` cover new tokens only already)."""
    if isinstance(output, torch.Tensor):
        return output[:, longest:]
    output.sequences = output.sequences[:, longest:]
    return output
