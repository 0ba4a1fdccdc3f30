"""SOFT_PROMPT honours PEFT's contract where PEFT's own methods do: generate's return types, disable_adapter, one
prompt computation per adapter per call, and (opt-in) exact generate for stock prompt tuning."""

from __future__ import annotations

import pytest
import torch
from peft import PromptEncoderConfig, PromptTuningConfig, get_peft_model
from tiny_models import make_model
from transformers.generation.utils import GenerateDecoderOnlyOutput

import peft_ext
from peft_ext import SoftPromptConfig
from peft_ext.errors import UnsupportedModelError

IDS = torch.tensor([[0, 0, 5, 6, 7], [9, 10, 11, 12, 13]])
MASK = (IDS != 0).long()
GREEDY = {"max_new_tokens": 4, "do_sample": False}


def _soft_prompt_model(family: str = "llama", reparameterization: str = "direct"):
    config = SoftPromptConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=4, init="vocab", init_seed=0, reparameterization=reparameterization
    )
    model = get_peft_model(make_model(family), config).eval()
    with torch.no_grad():  # a prompt that clearly changes the output
        model.prompt_encoder["default"].embedding.weight.mul_(8)
    return model


def test_generate_returns_what_transformers_returns(family):
    model = _soft_prompt_model(family)
    tokens = model.generate(input_ids=IDS, attention_mask=MASK, **GREEDY)
    output = model.generate(
        input_ids=IDS,
        attention_mask=MASK,
        return_dict_in_generate=True,
        output_scores=True,
        output_logits=True,
        **GREEDY,
    )
    assert isinstance(output, GenerateDecoderOnlyOutput)
    torch.testing.assert_close(output.sequences, tokens)  # sliced to the caller's text, like the tensor
    assert output.sequences.shape == (2, IDS.shape[1] + 4)
    assert len(output.scores) == len(output.logits) == 4
    for step, scores in enumerate(output.scores):
        assert scores.shape == (2, model.config.vocab_size)
        assert torch.equal(scores.argmax(-1), tokens[:, IDS.shape[1] + step])


def test_disable_adapter_gives_the_base_model(family):
    model = _soft_prompt_model(family)
    base = make_model(family)
    scored = {"pad_token_id": 0, "return_dict_in_generate": True, "output_scores": True, **GREEDY}

    def scores(output) -> torch.Tensor:
        return torch.stack(output.scores)

    with torch.no_grad():
        expected_logits = base(input_ids=IDS, attention_mask=MASK).logits
    expected = base.generate(input_ids=IDS, attention_mask=MASK, **scored)
    prompted = model.generate(input_ids=IDS, attention_mask=MASK, **scored)
    assert not torch.allclose(scores(prompted), scores(expected))  # the prompt matters: the checks below can fail
    with model.disable_adapter(), torch.no_grad():
        logits = model(input_ids=IDS, attention_mask=MASK).logits
        disabled = model.generate(input_ids=IDS, attention_mask=MASK, **scored)
        per_row = model.generate(input_ids=IDS, attention_mask=MASK, adapter_names=["default", "default"], **scored)
    torch.testing.assert_close(logits, expected_logits)
    for output in (disabled, per_row):
        assert torch.equal(output.sequences, expected.sequences)
        torch.testing.assert_close(scores(output), scores(expected))
    again = model.generate(input_ids=IDS, attention_mask=MASK, **scored)  # enabled again on leaving the block
    torch.testing.assert_close(scores(again), scores(prompted))


@pytest.mark.parametrize("call", ["forward", "generate"])
def test_each_adapter_prompt_is_computed_once_per_call(call):
    model = _soft_prompt_model(reparameterization="mlp")
    model.add_adapter("other", SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=3, reparameterization="mlp"))
    model.eval()
    runs = {"default": 0, "other": 0}
    for name in runs:
        model.prompt_encoder[name].encoder.register_forward_hook(
            lambda *_, name=name: runs.__setitem__(name, runs[name] + 1)
        )
    ids = torch.randint(4, 60, (8, 5))
    names = ["default", "other", "default", "default", None, "other", "default", "default"]
    with torch.no_grad():
        if call == "forward":
            model(input_ids=ids, adapter_names=names)
        else:
            model.generate(input_ids=ids, adapter_names=names, pad_token_id=0, **GREEDY)
    assert runs == {"default": 1, "other": 1}


def _greedy_with_forward(model, ids: torch.Tensor, steps: int) -> torch.Tensor:
    """The reference: PEFT's own forward (right for prompt tuning), decoded greedily one token at a time."""
    with torch.no_grad():
        for _ in range(steps):
            logits = model(input_ids=ids).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


@pytest.mark.parametrize(
    "config",
    [
        PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=6),
        PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=6, encoder_hidden_size=16),
    ],
    ids=["prompt_tuning", "p_tuning"],
)
def test_exact_generate_for_stock_prompt_adapters_matches_stock_forward(family, config):
    model = get_peft_model(make_model(family), config).eval()
    with torch.no_grad():
        model.prompt_encoder["default"].embedding.weight.mul_(8)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    expected = _greedy_with_forward(model, ids, steps=5)
    assert peft_ext.use_exact_generate(model) is model
    tokens = model.generate(input_ids=ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(tokens, expected)


def test_exact_generate_refuses_other_adapters():
    from peft import LoraConfig

    with pytest.raises(UnsupportedModelError, match="LORA"):
        peft_ext.use_exact_generate(get_peft_model(make_model(), LoraConfig(task_type="CAUSAL_LM")))
    with pytest.raises(UnsupportedModelError, match="PeftModelForCausalLM"):
        peft_ext.use_exact_generate(make_model())
