"""Where a soft prompt comes from, and what makes a tensor a usable prompt for a model.

A prompt is a ``[num_virtual_tokens, hidden]`` float tensor. It can be read from a saved PEFT prompt adapter (through
the one folder reader, :mod:`.adapter_files`), taken from a ``PeftModel``'s adapter, or given directly.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from .adapter_files import read_adapter_folder
from .errors import (
    HiddenSizeMismatchError,
    InvalidRequestError,
    InvalidSourceError,
    NonFiniteTensorError,
    TensorDtypeError,
    TensorShapeError,
)
from .integration import active_adapter, adapter_prompt


def check_prompt_tensor(prompt: torch.Tensor, hidden_size: int, what: str) -> None:
    """Refuse a prompt that cannot be put before this model's embeddings."""
    if prompt.dim() != 2 or prompt.shape[0] < 1:
        raise TensorShapeError(f"{what} must be a [num_tokens, hidden] tensor, got shape {tuple(prompt.shape)}.")
    if prompt.shape[1] != hidden_size:
        raise HiddenSizeMismatchError(
            f"{what} is {prompt.shape[1]} wide but the base model's hidden size is {hidden_size}: "
            "it was trained for a different model."
        )
    if not prompt.is_floating_point():
        raise TensorDtypeError(f"{what} has dtype {prompt.dtype}; a soft prompt is a floating-point tensor.")
    if not torch.isfinite(prompt).all():
        raise NonFiniteTensorError(f"{what} contains NaN or Inf values.")


def load_soft_prompt(source: Any, adapter_name: str | None = None) -> torch.Tensor:
    """A prompt from a ``[n, hidden]`` tensor, an adapter folder, or a ``PeftModel`` (its ``adapter_name`` adapter,
    by default the active one)."""
    if isinstance(source, torch.Tensor):
        return source
    if isinstance(source, (str, os.PathLike)):
        return read_adapter_folder(source).prompt
    if hasattr(source, "prompt_encoder"):  # a PeftModel
        name = adapter_name if adapter_name is not None else active_adapter(source)
        prompt = adapter_prompt(source, name)
        if prompt is None:
            raise InvalidRequestError(f"Adapter name {name!r} means no soft prompt; name a soft-prompt adapter.")
        return prompt
    raise InvalidSourceError(
        f"Cannot read a soft prompt from {type(source).__name__}; give a [n, hidden] tensor, an adapter folder or a "
        "PeftModel (with adapter_name)."
    )


def pad_token_id(tokenizer: Any) -> int:
    """The id that pads a batch: the tokenizer's pad token, else its EOS (the usual choice for causal LMs)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise InvalidRequestError("The tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token.")
    return int(pad)


def pad_texts(tokenizer: Any, texts: list[str], left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of ``texts``, padded on the left (or right) without changing the tokenizer."""
    rows = [list(ids) for ids in tokenizer(texts)["input_ids"]]
    longest = max(len(ids) for ids in rows)
    input_ids = torch.full((len(rows), longest), pad_token_id(tokenizer), dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(rows):
        span = slice(longest - len(ids), longest) if left else slice(0, len(ids))
        input_ids[row, span] = torch.tensor(ids, dtype=torch.long)
        mask[row, span] = 1
    return input_ids, mask
