"""A ``PeftModel`` call through the engine: each row's adapter (``adapter_names``, default the active one) becomes
a :class:`Prompt` keyed by the adapter's name, its encoder's serial and its tensors' versions: input embeddings, or
(a deep SOFT_PROMPT, a PREFIX_TUNING adapter) keys/values in every layer."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch

from ..adapter_files import DeepPrompt
from ..engine.kv_cache import LayerKV
from ..errors import InvalidRequestError
from ..integration import (
    BASE_ADAPTER,
    active_adapter,
    adapter_deep_values,
    adapter_prompt,
    adapter_tensors,
    check_adapter,
    is_deep_prompt,
)
from .engine import Prompt, PromptEngine, next_serial, prompt_key


def _serial(module: torch.nn.Module) -> int:
    serial = module.__dict__.get("_peft_ext_serial")
    if serial is None:
        serial = module.__dict__["_peft_ext_serial"] = next_serial()
    return serial


def rows(model: Any, adapter_names: Sequence[str | None] | None, batch: int) -> list[Prompt | None]:
    """One :class:`Prompt` per row (None for the bare base model), one object per distinct adapter."""
    if adapter_names is None:
        adapter_names = [active_adapter(model)] * batch
    elif isinstance(adapter_names, str) or len(adapter_names) != batch:
        raise InvalidRequestError(f"adapter_names needs one name per row ({batch} rows), got {adapter_names!r}.")
    prompts: dict[str, Prompt] = {}
    for name in dict.fromkeys(n for n in adapter_names if n is not None and n != BASE_ADAPTER):
        check_adapter(model, name)
        encoder = model.prompt_encoder[name]
        # In training mode (dropout in an encoder) a prompt is not deterministic, and never cached.
        key = None if model.training else prompt_key(name, _serial(encoder), adapter_tensors(model, name))
        if is_deep_prompt(model.peft_config[name]):
            prompts[name] = Prompt.deep(key, functools.partial(_deep_prompt, model, name))
        else:
            prompts[name] = Prompt(key, functools.partial(_prompt, model, name))
    return [None if n is None or n == BASE_ADAPTER else prompts[n] for n in adapter_names]


def forward(
    model: Any,
    adapter_names: Sequence[str | None] | None,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
    labels: torch.Tensor | None,
    **kwargs: Any,
) -> Any:
    batch = input_ids.shape[0] if input_ids is not None else inputs_embeds.shape[0]  # type: ignore[union-attr]
    engine = PromptEngine.of(model.get_base_model())
    return engine.forward(rows(model, adapter_names, batch), input_ids, attention_mask, inputs_embeds, labels, **kwargs)


def generate(
    model: Any,
    adapter_names: Sequence[str | None] | None,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    **generate_kwargs: Any,
) -> Any:
    if input_ids is None:
        raise InvalidRequestError("generate with soft prompts needs input_ids.")
    engine = PromptEngine.of(model.get_base_model())
    return engine.generate(rows(model, adapter_names, input_ids.shape[0]), input_ids, attention_mask, **generate_kwargs)


def _prompt(model: Any, name: str) -> torch.Tensor:
    prompt = adapter_prompt(model, name)
    assert prompt is not None  # rows() gives no Prompt to the bare base model
    return prompt


def _deep_prompt(model: Any, name: str) -> LayerKV:
    values, layers, heads = adapter_deep_values(model, name)
    dtype = model.get_base_model().get_input_embeddings().weight.dtype
    return DeepPrompt(values.to(dtype), layers, heads).layer_kv()
