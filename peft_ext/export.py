"""Export any soft prompt as a stock PEFT ``PROMPT_TUNING`` adapter, loadable without peft_ext."""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch
from peft import PeftModel, PromptTuningConfig, PromptTuningInit
from peft.utils import SAFETENSORS_WEIGHTS_NAME
from safetensors.torch import save_file

from .adapter_files import PROMPT_KEY, check_prompt_tensor, read_adapter_folder
from .integration import STOCK_PROMPT_GENERATE_BROKEN_SINCE, adapter_prompt, stock_prompt_generate_is_broken


def _source_prompt(source: Any, adapter_name: str) -> tuple[torch.Tensor, dict[str, Any]]:
    if isinstance(source, PeftModel):
        prompt = adapter_prompt(source, adapter_name)
        assert prompt is not None  # "default" or another adapter name, never the bare base model
        return prompt.detach().float().cpu(), source.peft_config[adapter_name].to_dict()
    adapter = read_adapter_folder(source)
    return adapter.prompt.float(), adapter.config


def export_prompt_tuning(source: Any, output_dir: str | os.PathLike, adapter_name: str = "default") -> str:
    """Write ``source`` (an adapter folder or a ``PeftModel``) as a stock PEFT prompt-tuning adapter.

    The result holds only the final prompt, so plain ``peft`` loads it in a process that never imported peft_ext
    and produces identical logits. Returns the output folder. Stock PEFT's prompt-tuning ``generate`` is wrong with
    transformers >= 5.24 (its ``forward`` is right): where that is installed, a warning says so and names the fix.
    """
    if stock_prompt_generate_is_broken():
        warnings.warn(
            f"Stock PEFT prompt-tuning generate is wrong with transformers>={STOCK_PROMPT_GENERATE_BROKEN_SINCE} "
            "(it repeats the virtual tokens at every step); forward is right. Users of the exported adapter should "
            "generate through peft_ext.use_exact_generate(model), keep SOFT_PROMPT, or pin transformers<5.24.",
            UserWarning,
            stacklevel=2,
        )
    prompt, config = _source_prompt(source, adapter_name)
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
    output = os.fspath(output_dir)
    os.makedirs(output, exist_ok=True)
    save_file({PROMPT_KEY: prompt.contiguous()}, os.path.join(output, SAFETENSORS_WEIGHTS_NAME), {"format": "pt"})
    stock.save_pretrained(output)
    return output
