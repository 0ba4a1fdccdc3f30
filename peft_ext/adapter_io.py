"""Reading soft prompts: the one reader of adapter folders, and what makes a tensor a usable prompt.

A prompt is a ``[num_virtual_tokens, hidden]`` float tensor. It can be read from a saved PEFT prompt adapter
(``adapter_config.json`` + ``adapter_model.safetensors``, PEFT's own file names; pickles are refused), taken from a
``PeftModel``'s adapter, or given directly.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from peft.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME

from .errors import (
    AdapterLoadError,
    HiddenSizeMismatchError,
    InvalidPromptTensorError,
    InvalidRequestError,
    NonFiniteValueError,
)
from .integration import INPUT_PROMPT_TYPE_NAMES, active_adapter, adapter_prompt

PROMPT_KEY = "prompt_embeddings"  # the tensor PEFT saves for a prompt that enters as input embeddings


def read_saved_prompt(folder: str | os.PathLike) -> torch.Tensor:
    """The final prompt ``[num_virtual_tokens, hidden]`` of a saved PEFT prompt adapter (safetensors only)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = os.path.join(folder, SAFETENSORS_WEIGHTS_NAME)
    if not os.path.isfile(path):
        pickle = os.path.join(folder, WEIGHTS_NAME)
        hint = (
            f" It has only a pickle ({WEIGHTS_NAME}), which peft_ext refuses to load." if os.path.exists(pickle) else ""
        )
        raise AdapterLoadError(f"No {SAFETENSORS_WEIGHTS_NAME} in {folder}.{hint}")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as error:
        raise AdapterLoadError(f"{path} is not a readable safetensors file: {error}") from error
    if PROMPT_KEY not in tensors:
        raise AdapterLoadError(f"{path} holds no {PROMPT_KEY!r} tensor: it is not a prompt adapter.")
    return tensors[PROMPT_KEY]


def check_prompt_tensor(prompt: torch.Tensor, hidden_size: int, what: str) -> None:
    """Refuse a prompt that cannot be put before this model's embeddings."""
    if prompt.dim() != 2 or prompt.shape[0] < 1:
        raise InvalidPromptTensorError(
            f"{what} must be a [num_tokens, hidden] tensor, got shape {tuple(prompt.shape)}."
        )
    if prompt.shape[1] != hidden_size:
        raise HiddenSizeMismatchError(
            f"{what} is {prompt.shape[1]} wide but the base model's hidden size is {hidden_size}: "
            "it was trained for a different model."
        )
    if not prompt.is_floating_point():
        raise InvalidPromptTensorError(f"{what} has dtype {prompt.dtype}; a soft prompt is a floating-point tensor.")
    if not torch.isfinite(prompt).all():
        raise NonFiniteValueError(f"{what} contains NaN or Inf values.")


def read_adapter_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``adapter_config.json`` of an adapter folder, as a dict."""
    config_path = os.path.join(folder, CONFIG_NAME)
    if not os.path.isfile(config_path):
        raise AdapterLoadError(f"No {CONFIG_NAME} in {folder}: not a PEFT adapter folder.")
    try:
        with open(config_path, encoding="utf-8") as file:
            config = json.load(file)
    except (OSError, ValueError, RecursionError) as error:
        raise AdapterLoadError(f"{config_path} is not a readable adapter config: {error}") from error
    if not isinstance(config, dict):
        raise AdapterLoadError(f"{config_path} is not a readable adapter config: not a JSON object.")
    return config


def read_adapter_prompt(folder: str | os.PathLike[str]) -> torch.Tensor:
    """The prompt of a saved adapter folder, checked to be an input-prompt adapter by its ``adapter_config.json``."""
    peft_type = read_adapter_config(folder).get("peft_type")
    if peft_type not in INPUT_PROMPT_TYPE_NAMES:
        raise AdapterLoadError(
            f"The adapter in {folder} is {peft_type}; soft prompts are {', '.join(INPUT_PROMPT_TYPE_NAMES)} adapters."
        )
    return read_saved_prompt(folder)


def load_soft_prompt(source: Any, adapter_name: str | None = None) -> torch.Tensor:
    """A prompt from a ``[n, hidden]`` tensor, an adapter folder, or a ``PeftModel`` (its ``adapter_name`` adapter,
    by default the active one)."""
    if isinstance(source, torch.Tensor):
        return source
    if isinstance(source, (str, os.PathLike)):
        return read_adapter_prompt(source)
    if hasattr(source, "prompt_encoder"):  # a PeftModel
        name = adapter_name if adapter_name is not None else active_adapter(source)
        prompt = adapter_prompt(source, name)
        if prompt is None:
            raise InvalidRequestError(f"Adapter name {name!r} means no soft prompt; name a soft-prompt adapter.")
        return prompt
    raise AdapterLoadError(
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
