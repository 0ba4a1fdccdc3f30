"""Export any soft prompt as a stock PEFT ``PROMPT_TUNING`` adapter, loadable without peft_ext."""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import torch
from peft import PeftModel, PromptTuningConfig, PromptTuningInit
from safetensors.torch import save_file

from .errors import AdapterLoadError
from .sources import check_prompt_tensor, read_saved_prompt
from .transformers_compat import STOCK_PROMPT_GENERATE_BROKEN_SINCE, stock_prompt_generate_is_broken


def _source_prompt(source: Any, adapter_name: str) -> tuple[torch.Tensor, dict[str, Any]]:
    if isinstance(source, PeftModel):
        from ._peft_integration import adapter_prompt

        prompt = adapter_prompt(source, adapter_name)
        assert prompt is not None
        return prompt.detach().float().cpu(), source.peft_config[adapter_name].to_dict()
    folder = os.fspath(source)
    config_path = os.path.join(folder, "adapter_config.json")
    if not os.path.isfile(config_path):
        raise AdapterLoadError(f"No adapter_config.json in {folder}: not a PEFT adapter folder.")
    with open(config_path, encoding="utf-8") as file:
        config = json.load(file)
    return read_saved_prompt(folder).float(), config


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
    save_file(
        {"prompt_embeddings": prompt.contiguous()}, os.path.join(output, "adapter_model.safetensors"), {"format": "pt"}
    )
    stock.save_pretrained(output)
    return output
