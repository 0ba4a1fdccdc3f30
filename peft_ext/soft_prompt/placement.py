"""Where a soft prompt's virtual tokens live (``SoftPromptConfig.placement``), and what that changes.

* ``input``: ``[n, hidden]`` vectors before the input embeddings; the frozen model computes their keys/values.
* ``deep``: keys and values of ``n`` virtual tokens in every layer (prefix tuning, P-tuning v2), trained directly and
  stored as ``[n, num_layers * 2 * kv_heads * head_dim]`` in PEFT's PREFIX_TUNING layout (:class:`DeepPrompt`).

A deep prompt starts where the input-level prompt of the same init would be: its values are the keys/values the frozen
model computes for that init's ``[n, hidden]`` vectors at positions 0..n-1. Keys are stored as the layers keep them in
their cache (on RoPE models rotated for positions 0..n-1), so they enter a batch's cache unchanged and the text after
them starts at position n, exactly as it does after an input-level prompt.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Any

import torch

from ..adapter_files import DeepPrompt, check_kv_layout, kv_layout
from ..engine import PromptEngine
from ..engine.kv_cache import compute_prompt_kv
from ..errors import GradientCheckpointingError
from ..integration import activation_checkpointing

if TYPE_CHECKING:
    from .config import SoftPromptConfig


class Placement(StrEnum):
    """Where the virtual tokens live (``SoftPromptConfig.placement``)."""

    INPUT = "input"
    DEEP = "deep"


def deep_values(model: Any, embeddings: torch.Tensor) -> torch.Tensor:
    """The deep prompt that starts exactly where the input-level prompt ``embeddings`` is: its keys/values in
    ``model`` (run in eval mode: no dropout), as ``[n, num_layers * 2 * kv_heads * head_dim]`` float32."""
    training = model.training
    model.eval()
    try:
        return DeepPrompt.from_layer_kv(compute_prompt_kv(model, embeddings)).values.float()
    finally:
        model.train(training)


def refuse_checkpointing(model: Any) -> None:
    """Deep prompts enter as a key/value cache, which layers under gradient checkpointing drop while training."""
    if activation_checkpointing(model):
        raise GradientCheckpointingError(
            "A deep prompt (placement='deep') does not work with gradient checkpointing: checkpointed layers drop the "
            "key/value cache it enters as (PEFT's PREFIX_TUNING refuses it alike). Turn it off "
            "(model.gradient_checkpointing_disable(), or gradient_checkpointing=False in TrainingArguments), or use "
            "placement='input'."
        )


def fill_deep_layout(config: SoftPromptConfig, model: Any) -> None:
    """Record the model's key/value layout in a deep config (layers, key/value heads, head size), or refuse a
    saved one that differs with :class:`~peft_ext.errors.KVShapeMismatchError`."""
    shapes = PromptEngine.of(model).kv_shapes()
    layout = kv_layout(shapes, f"A deep prompt on {type(model).__name__}")
    if config.inference_mode or config.num_key_value_heads is not None:
        saved = (config.num_layers, config.num_key_value_heads, config.head_dim)
        check_kv_layout(saved, shapes, "The deep prompt")  # type: ignore[arg-type]
    config.num_layers, config.num_key_value_heads, config.head_dim = layout
