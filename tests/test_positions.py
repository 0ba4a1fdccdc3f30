"""Correct positions under padding: a row's output does not depend on how much it was padded (PEFT #1093)."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model
from tiny_models import make_model

from peft_ext import SoftPromptConfig


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_padded_row_equals_row_alone(family, padding_side):
    model = get_peft_model(
        make_model(family), SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=5, init_seed=0)
    )
    model.eval()
    text = [5, 6, 7, 8]
    pads = [0, 0, 0]
    row = pads + text if padding_side == "left" else text + pads
    mask = [0] * 3 + [1] * 4 if padding_side == "left" else [1] * 4 + [0] * 3
    batch = torch.tensor([row, [9, 10, 11, 12, 13, 14, 15]])
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([text])).logits[0, -4:]
        padded = model(input_ids=batch, attention_mask=torch.tensor([mask, [1] * 7])).logits[0]
    text_logits = padded[-4:] if padding_side == "left" else padded[5:9]
    torch.testing.assert_close(text_logits, alone, atol=1e-4, rtol=0)


def test_left_padded_generate_equals_alone(family):
    model = get_peft_model(
        make_model(family), SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=5, init_seed=0)
    )
    model.eval()
    batch = torch.tensor([[0, 0, 0, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14, 15]])
    mask = (batch != 0).long()
    kwargs = {"max_new_tokens": 5, "min_new_tokens": 5, "do_sample": False}
    together = model.generate(input_ids=batch, attention_mask=mask, **kwargs)
    alone = model.generate(input_ids=torch.tensor([[5, 6, 7, 8]]), **kwargs)
    assert torch.equal(together[0, -5:], alone[0, -5:])


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_loss_of_a_padded_batch_is_the_token_mean_of_rows_alone(family, padding_side):
    # Every text token after the prompt is a target, the first one included, whatever the padding.
    model = get_peft_model(
        make_model(family), SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=3, init_seed=0)
    )
    model.eval()
    texts = [[5, 6, 7], [9, 10, 11, 12, 13, 14]]
    width = max(map(len, texts))
    rows = [([0] * (width - len(t)) + t) if padding_side == "left" else (t + [0] * (width - len(t))) for t in texts]
    ids = torch.tensor(rows)
    mask = (ids != 0).long()
    labels = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        batch_loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        alone = [model(input_ids=torch.tensor([t]), labels=torch.tensor([t])).loss * len(t) for t in texts]
    torch.testing.assert_close(batch_loss, sum(alone) / sum(map(len, texts)), atol=1e-5, rtol=0)
