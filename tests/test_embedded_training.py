"""Slow: a text-initialised soft prompt trained on the embedded default model for a few steps; the loss falls."""

from __future__ import annotations

import json
from importlib.resources import files

import pytest
from peft import PeftModel, get_peft_model

from peft_ext import SoftPromptConfig
from peft_ext.training import train_soft_prompts

pytestmark = pytest.mark.slow


def test_text_init_prompt_learns_quotes(tmp_path):
    from peft_ext.base_models import load_base_model

    base, tokenizer, info = load_base_model()
    assert info.hidden_size == 576
    quotes = json.loads(files("inspiring_quotes").joinpath("quotes_list.json").read_text(encoding="utf-8"))
    texts = [f"Quote: {item['quote']}" for item in quotes[:8]]
    config = SoftPromptConfig(
        task_type="CAUSAL_LM",
        init="text",
        init_text="Share an inspiring quote:",
        tokenizer=tokenizer,
        text_length_policy="exact",
    )
    model = get_peft_model(base, config)
    result = train_soft_prompts(
        model,
        tokenizer,
        texts,
        tmp_path / "run",
        max_steps=8,
        batch_size=8,
        learning_rate=0.05,
        max_length=48,
        show_progress=False,
    )
    # Same fixed batch every step (8 texts, batch 8): the loss on it must fall.
    assert result.losses[-1] < result.losses[0] - 0.05, result.losses
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter")
    inputs = tokenizer(["Quote:"], return_tensors="pt")
    assert reloaded.generate(**inputs, max_new_tokens=4, do_sample=False).shape[1] == inputs["input_ids"].shape[1] + 4
