"""Training through transformers' Trainer, one prompt or several in one mixed-batch run."""

from __future__ import annotations

import torch
from peft import get_peft_model
from tiny_models import make_model

from peft_ext import SoftPromptConfig
from peft_ext.training import train_soft_prompts

COACH = ["i want you to act as a coach", "be kind always", "you should smile"] * 4
QUOTES = ["there are two nice things", "dream a great dream", "hello world quote"] * 4


def _two_prompt_model():
    model = get_peft_model(
        make_model(), SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, init_seed=0), "coach"
    )
    model.add_adapter("quotes", SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=6, init_seed=1))
    return model


def test_each_row_updates_only_its_own_prompt():
    model = _two_prompt_model()
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    for encoder in model.prompt_encoder.values():
        encoder.requires_grad_(True)
    model(input_ids=ids, labels=ids, adapter_names=["coach", "coach"]).loss.backward()
    assert model.prompt_encoder["coach"].embedding.weight.grad.abs().sum() > 0
    assert model.prompt_encoder["quotes"].embedding.weight.grad is None
    model.zero_grad()
    model(input_ids=ids, labels=ids, adapter_names=["coach", "quotes"]).loss.backward()
    for name in ("coach", "quotes"):
        assert model.prompt_encoder[name].embedding.weight.grad.abs().sum() > 0


def test_mixed_batch_trainer_run_trains_both_prompts(tiny_tokenizer, tmp_path):
    model = _two_prompt_model()
    base_before = {k: v.clone() for k, v in model.get_base_model().state_dict().items()}
    prompts_before = {n: e.prompt().detach().clone() for n, e in model.prompt_encoder.items()}
    result = train_soft_prompts(
        model,
        tiny_tokenizer,
        {"coach": COACH, "quotes": QUOTES},
        tmp_path,
        max_steps=6,
        batch_size=4,
        learning_rate=0.1,
        show_progress=False,
    )
    assert result.steps == 6 and len(result.losses) == 6
    assert result.losses[-1] < result.losses[0]
    for name, before in prompts_before.items():
        assert (model.prompt_encoder[name].prompt().detach() - before).abs().max() > 1e-3, name
    for key, value in model.get_base_model().state_dict().items():
        assert torch.equal(value, base_before[key]), key


def test_interrupted_run_resumes_from_last_checkpoint(tiny_tokenizer, tmp_path):
    def fresh():
        return get_peft_model(
            make_model(),
            SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, init_seed=0, reparameterization="mlp"),
        )

    arguments = {"batch_size": 4, "learning_rate": 0.1, "show_progress": False, "save_steps": 2}
    straight = fresh()
    train_soft_prompts(straight, tiny_tokenizer, COACH, tmp_path / "straight", max_steps=6, **arguments)

    interrupted = fresh()
    train_soft_prompts(interrupted, tiny_tokenizer, COACH, tmp_path / "run", max_steps=4, **arguments)
    assert (tmp_path / "run" / "checkpoint-4").is_dir()
    resumed = fresh()  # a new process would start like this: fresh init, then resume
    result = train_soft_prompts(
        resumed, tiny_tokenizer, COACH, tmp_path / "run", max_steps=6, resume_from_checkpoint=True, **arguments
    )
    assert result.steps == 6
    torch.testing.assert_close(
        resumed.prompt_encoder["default"].prompt(), straight.prompt_encoder["default"].prompt(), atol=1e-4, rtol=0
    )
