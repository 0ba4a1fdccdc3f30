"""PEFT sees SOFT_PROMPT as one of its own: get_peft_model, save, from_pretrained, load_adapter, resume."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftConfig, PeftModel, PeftType, PromptTuningConfig, get_peft_model, set_peft_model_state_dict
from peft.utils import load_peft_weights
from tiny_models import make_model

import peft_ext
from peft_ext import SoftPromptConfig
from peft_ext.errors import HiddenSizeMismatchError, InvalidAdapterError, UnsupportedModelError

IDS = torch.tensor([[5, 6, 7, 8, 9]])
REPARAMETERIZATIONS = ["direct", "mlp", "lstm", "residual"]


def _train_a_step(model, steps: int = 2) -> None:
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    for _ in range(steps):
        loss = model(input_ids=IDS, labels=IDS).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def test_registers_a_real_peft_type():
    assert PeftType("SOFT_PROMPT") is PeftType.SOFT_PROMPT
    assert "SOFT_PROMPT" in list(PeftType)
    peft_ext.register()  # idempotent
    assert list(PeftType).count(PeftType.SOFT_PROMPT) == 1


@pytest.mark.parametrize("anchors", [0, 2])
@pytest.mark.parametrize("reparameterization", REPARAMETERIZATIONS)
def test_save_reload_gives_identical_logits(family, reparameterization, anchors, tmp_path):
    config = SoftPromptConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=4,
        init="vocab",
        init_seed=0,
        reparameterization=reparameterization,
        num_anchor_tokens=anchors,
    )
    model = get_peft_model(make_model(family), config)
    _train_a_step(model)
    with torch.no_grad():
        before = model(input_ids=IDS).logits
    model.save_pretrained(tmp_path)
    assert PeftConfig.from_pretrained(tmp_path).peft_type == "SOFT_PROMPT"
    loaded = PeftModel.from_pretrained(make_model(family), tmp_path).eval()
    # The reloaded model holds exactly the saved tensors (encoder and anchors included), as PEFT's own methods do.
    saved_state, loaded_state = model.state_dict(), loaded.state_dict()
    assert saved_state.keys() == loaded_state.keys()
    for key, value in saved_state.items():
        torch.testing.assert_close(loaded_state[key], value, atol=0, rtol=0, msg=key)
    with torch.no_grad():
        after = loaded(input_ids=IDS).logits
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)


@pytest.mark.parametrize("reparameterization", ["mlp", "lstm", "residual"])
def test_resume_continues_with_encoder_weights(reparameterization, tmp_path):
    config = SoftPromptConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=4, init="vocab", init_seed=0, reparameterization=reparameterization
    )
    model = get_peft_model(make_model(), config)
    _train_a_step(model)
    model.save_pretrained(tmp_path)
    saved = load_peft_weights(str(tmp_path), device="cpu")
    assert any(key.startswith("soft_prompt_training.encoder.") for key in saved)

    # PEFT's documented resume path, and from_pretrained(is_trainable=True), which stock PEFT refuses for prompts.
    fresh_config = SoftPromptConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=4, init="vocab", init_seed=99, reparameterization=reparameterization
    )
    resumed = get_peft_model(make_model(), fresh_config)
    set_peft_model_state_dict(resumed, saved)
    trainable = PeftModel.from_pretrained(make_model(), tmp_path, is_trainable=True)
    for candidate in (resumed, trainable):
        for name, value in model.prompt_encoder["default"].encoder.state_dict().items():
            torch.testing.assert_close(candidate.prompt_encoder["default"].encoder.state_dict()[name], value)
        assert any(p.requires_grad for p in candidate.prompt_encoder.parameters())
        # one more step from the resumed state equals one more step from the original
    _train_a_step(model, steps=1)
    _train_a_step(resumed, steps=1)
    torch.testing.assert_close(
        resumed.prompt_encoder["default"].prompt(), model.prompt_encoder["default"].prompt(), atol=1e-3, rtol=0
    )


def test_stock_saved_mlp_prompt_cannot_resume(tmp_path):
    config = SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, reparameterization="mlp")
    model = get_peft_model(make_model(), config)
    weights = {"prompt_embeddings": model.prompt_encoder["default"].prompt().detach()}
    with pytest.raises(InvalidAdapterError, match="encoder weights"):
        set_peft_model_state_dict(model, weights)


def test_load_adapter_with_subfolder(tmp_path):
    model = get_peft_model(make_model(), SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=3, init_seed=1))
    model.add_adapter("coach", SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=6, init_seed=2))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "coach" / "adapter_model.safetensors").exists()
    loaded = PeftModel.from_pretrained(make_model(), tmp_path)
    loaded.load_adapter(str(tmp_path), adapter_name="coach", subfolder="coach")
    torch.testing.assert_close(
        loaded.prompt_encoder["coach"].embedding.weight, model.prompt_encoder["coach"].prompt().detach()
    )


def test_config_json_records_token_ids_and_no_tokenizer_object(tiny_tokenizer, tmp_path):
    config = SoftPromptConfig(
        task_type="CAUSAL_LM",
        init="text",
        init_text="be kind always",
        tokenizer=tiny_tokenizer,
        text_length_policy="exact",
    )
    get_peft_model(make_model(), config).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["init_token_ids"] == tiny_tokenizer("be kind always", add_special_tokens=False)["input_ids"]
    assert saved["tokenizer"] is None and saved["num_virtual_tokens"] == 3


def test_prompt_width_must_match_base(tmp_path):
    with pytest.raises(HiddenSizeMismatchError, match="hidden size"):
        get_peft_model(make_model(), SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=3, token_dim=48))


def test_unsupported_task_type():
    with pytest.raises(UnsupportedModelError, match="CAUSAL_LM"):
        get_peft_model(make_model(), SoftPromptConfig(task_type="SEQ_CLS", num_virtual_tokens=3))


def test_stock_prompt_tuning_unchanged_by_registration():
    # PEFT's own method must behave exactly as without peft_ext: compare with PEFT's original forward.
    from peft import PeftModelForCausalLM

    model = get_peft_model(make_model(), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)).eval()
    original = PeftModelForCausalLM.forward.__peft_ext_original__
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=IDS).logits, original(model, input_ids=IDS).logits, atol=0, rtol=0)


def test_untested_peft_version_is_refused_with_the_fix(monkeypatch):
    from peft_ext import integration
    from peft_ext.errors import UnsupportedPeftVersionError

    monkeypatch.setattr(integration, "_installed", None)
    monkeypatch.setattr(integration.peft, "__version__", "0.30.0")
    with pytest.raises(
        UnsupportedPeftVersionError, match=r"peft 0.30.0 is installed.*pip install \"peft<0.22,>=0.21.0\""
    ):
        peft_ext.register()
