"""Export a soft prompt as a stock PEFT adapter, loadable without peft_ext: an input-level prompt as
``PROMPT_TUNING``, a deep prompt as ``PREFIX_TUNING`` (the same tensor: SOFT_PROMPT stores deep prompts in PEFT's
prefix layout)."""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch
from peft import PeftModel, PrefixTuningConfig, PromptTuningConfig, PromptTuningInit
from peft.utils import SAFETENSORS_WEIGHTS_NAME
from safetensors.torch import save_file

from .adapter_files import PROMPT_KEY, DeepPrompt, PromptKind, check_prompt_tensor, load_prompt, read_adapter_folder
from .errors import DeepPromptNotSupportedError
from .integration import STOCK_PROMPT_GENERATE_BROKEN_SINCE, stock_prompt_generate_is_broken


def _source(source: Any, adapter_name: str) -> tuple[torch.Tensor | DeepPrompt, dict[str, Any]]:
    if isinstance(source, PeftModel):
        return load_prompt(source, adapter_name), source.peft_config[adapter_name].to_dict()
    adapter = read_adapter_folder(source, deep=True)
    return adapter.loaded(), adapter.config


def _write(prompt: torch.Tensor, stock: Any, output_dir: str | os.PathLike) -> str:
    output = os.fspath(output_dir)
    os.makedirs(output, exist_ok=True)
    tensor = prompt.detach().float().cpu().contiguous()
    save_file({PROMPT_KEY: tensor}, os.path.join(output, SAFETENSORS_WEIGHTS_NAME), {"format": "pt"})
    stock.save_pretrained(output)
    return output


def _warn_broken_generate(method: str) -> None:
    if stock_prompt_generate_is_broken():
        warnings.warn(
            f"Stock PEFT {method} generate is wrong with transformers>={STOCK_PROMPT_GENERATE_BROKEN_SINCE}; its "
            "forward is right. Users of the exported adapter should generate through "
            "peft_ext.use_exact_generate(model), keep SOFT_PROMPT, or pin transformers<5.24.",
            UserWarning,
            stacklevel=3,
        )


def export_prompt_tuning(source: Any, output_dir: str | os.PathLike, adapter_name: str = "default") -> str:
    """Write ``source`` (an input-level adapter folder or a ``PeftModel``) as a stock PEFT prompt-tuning adapter.

    The result holds only the final prompt, so plain ``peft`` loads it in a process that never imported peft_ext
    and produces identical logits. Returns the output folder. Stock PEFT's prompt-tuning ``generate`` is wrong with
    transformers >= 5.24 (it repeats the virtual tokens at every step; its ``forward`` is right): where that is
    installed, a warning says so and names the fix. A deep prompt is refused: use :func:`export_prefix_tuning`.
    """
    prompt, config = _source(source, adapter_name)
    if isinstance(prompt, DeepPrompt):
        raise DeepPromptNotSupportedError(
            "This is a deep prompt (keys/values in every layer), which PROMPT_TUNING cannot hold; export it with "
            "export_prefix_tuning."
        )
    _warn_broken_generate("prompt-tuning")
    check_prompt_tensor(prompt, prompt.shape[1], "The prompt to export")
    stock = PromptTuningConfig(
        task_type=config.get("task_type"),
        num_virtual_tokens=prompt.shape[0],
        token_dim=prompt.shape[1],
        num_transformer_submodules=1,
        num_attention_heads=config.get("num_attention_heads"),
        num_layers=config.get("num_layers"),
        base_model_name_or_path=config.get("base_model_name_or_path"),
        revision=config.get("revision"),
        prompt_tuning_init=PromptTuningInit.RANDOM,
        inference_mode=True,
    )
    return _write(prompt, stock, output_dir)


def export_prefix_tuning(source: Any, output_dir: str | os.PathLike, adapter_name: str = "default") -> str:
    """Write a deep prompt (``placement='deep'`` adapter folder or ``PeftModel``) as a stock PEFT prefix-tuning
    adapter: the same values, which plain ``peft`` loads without peft_ext and runs with identical ``forward`` logits.

    Stock prefix-tuning ``generate`` ignores the prefix with transformers >= 5.24 (a warning says so where that is
    installed); ``peft_ext.use_exact_generate(model)`` serves it correctly. Returns the output folder.
    """
    prompt, config = _source(source, adapter_name)
    if not isinstance(prompt, DeepPrompt):
        raise DeepPromptNotSupportedError(
            f"This is an input-level prompt ({PromptKind.INPUT.value}); export_prefix_tuning takes deep prompts "
            "(placement='deep'). Export it with export_prompt_tuning."
        )
    _warn_broken_generate("prefix-tuning")
    kv_width = prompt.num_heads * prompt.head_dim
    stock = PrefixTuningConfig(
        task_type=config.get("task_type"),
        num_virtual_tokens=prompt.num_tokens,
        token_dim=kv_width,
        num_transformer_submodules=1,
        num_attention_heads=prompt.num_heads,
        num_layers=prompt.num_layers,
        encoder_hidden_size=kv_width,
        prefix_projection=False,
        base_model_name_or_path=config.get("base_model_name_or_path"),
        revision=config.get("revision"),
        inference_mode=True,
    )
    return _write(prompt.values, stock, output_dir)
