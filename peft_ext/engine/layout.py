"""How a batch with a prompt per row is laid out, and the positions that make each row independent of the others.

Each row is ``[masked filler][its prompt][its text]``, prompts right-aligned to the longest one. Positions come from
the attention mask: the prompt sits at 0..n-1 and the text starts at n, whatever the padding (PEFT #1093).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InvalidRequestError, UnsupportedModelError

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


def prefix_mask(lengths: Sequence[int], device: torch.device) -> tuple[torch.Tensor, int]:
    """The ``[batch, longest]`` mask of a right-aligned block of prompts of these lengths, and that longest length."""
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
    block_mask, longest = prefix_mask([0 if p is None else p.shape[0] for p in prompts], device)
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


def holes_first(mask: torch.Tensor) -> torch.Tensor | None:
    """Per-row order moving masked slots to the front, or None when no row has a masked slot between attended ones.

    Only such holes (``[prompt][pads][text]``, from left-padded text) misalign the model's one-step label shift: the
    text's first token would be scored from a pad slot. Masked slots before the prompt or after the text are harmless,
    so right-padded training batches keep their layout and cost nothing extra.
    """
    attended_runs = (mask[:, 1:] > mask[:, :-1]).sum(dim=1) + mask[:, 0]
    if not bool((attended_runs > 1).any()):
        return None
    return torch.sort(mask, dim=1, stable=True).indices


def filler_ids(input_ids: torch.Tensor, text_mask: torch.Tensor, length: int) -> torch.Tensor:
    """Token ids standing in for the prompt block, which ``generate`` needs to count positions.

    Each row repeats its own first text token, so logits processors that look at the ids seen so far (repetition
    penalty, ...) see the same set of ids as when the request runs alone.
    """
    first = input_ids.gather(1, text_mask.long().argmax(dim=1, keepdim=True))
    return first.expand(-1, length)


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
