"""The contract of mixed batches: every row equals the same request run alone with its adapter."""

from __future__ import annotations

import pytest
import torch
from peft import PromptTuningConfig, get_peft_model
from tiny_models import make_model
from transformers import StoppingCriteria, StoppingCriteriaList

import peft_ext
from peft_ext import BASE_ADAPTER, SoftPromptConfig
from peft_ext.engine import Prompt, PromptEngine

LENGTHS = {"a": 3, "b": 7, "c": 5}


def _model_with_adapters(family: str, stock: bool = False):
    base = make_model(family)
    model = None
    for index, (name, length) in enumerate(LENGTHS.items()):
        if stock:
            config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=length)
        else:
            config = SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=length, init="vocab", init_seed=index)
        if model is None:
            model = get_peft_model(base, config, adapter_name=name)
        else:
            model.add_adapter(name, config)
    with torch.no_grad():  # distinct, clearly non-trivial prompts
        for index, name in enumerate(LENGTHS):
            weight = model.prompt_encoder[name].embedding.weight
            weight.copy_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(index)) * 0.5)
    return model.eval()


def _rows(model, names):
    """Uncached engine rows holding each named adapter's prompt (one object per distinct name)."""
    prompts = {name: Prompt(None, lambda name=name: peft_ext.adapter_prompt(model, name)) for name in set(names)}
    return [None if name in (None, BASE_ADAPTER) else prompts[name] for name in names]


def _batch():
    # Left padded, three texts of different lengths.
    input_ids = torch.tensor([[0, 0, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14], [0, 0, 0, 15, 16, 17]])
    mask = (input_ids != 0).long()
    return input_ids, mask


def _alone(input_ids, mask, row):
    keep = mask[row].bool()
    return input_ids[row][keep][None]


ROW_ADAPTERS = ["b", "a", BASE_ADAPTER]


@pytest.mark.parametrize("stock", [False, True], ids=["soft_prompt", "stock_prompt_tuning"])
def test_forward_rows_equal_alone(family, stock):
    model = _model_with_adapters(family, stock)
    input_ids, mask = _batch()
    with torch.no_grad():
        mixed = model(input_ids=input_ids, attention_mask=mask, adapter_names=ROW_ADAPTERS).logits
        for row, name in enumerate(ROW_ADAPTERS):
            alone_ids = _alone(input_ids, mask, row)
            alone = model(input_ids=alone_ids, adapter_names=[name]).logits
            text = alone_ids.shape[1]
            torch.testing.assert_close(mixed[row, -text:], alone[0, -text:], atol=1e-4, rtol=0)


def test_forward_with_adapters_differs_from_base(family):
    # Guards the test above against prompts that change nothing.
    model = _model_with_adapters(family)
    input_ids, mask = _batch()
    with torch.no_grad():
        prompted = model(input_ids=input_ids, attention_mask=mask, adapter_names=["a", "a", "a"]).logits
        bare = model(input_ids=input_ids, attention_mask=mask, adapter_names=[None] * 3).logits
    assert (prompted[:, -3:] - bare[:, -3:]).abs().max() > 1e-2


@pytest.mark.parametrize("reuse_kv", [True, False], ids=["kv_reuse", "recompute"])
@pytest.mark.parametrize("stock", [False, True], ids=["soft_prompt", "stock_prompt_tuning"])
def test_generate_rows_equal_alone(family, reuse_kv, stock):
    model = _model_with_adapters(family, stock)
    input_ids, mask = _batch()
    engine = PromptEngine(model.get_base_model())
    mixed = engine.generate(
        _rows(model, ROW_ADAPTERS),
        input_ids,
        mask,
        reuse_kv=reuse_kv,
        max_new_tokens=6,
        min_new_tokens=6,
        do_sample=False,
    )
    via_peft = model.generate(
        input_ids=input_ids, attention_mask=mask, adapter_names=ROW_ADAPTERS, max_new_tokens=6, min_new_tokens=6
    )
    assert torch.equal(mixed, via_peft)
    for row, name in enumerate(ROW_ADAPTERS):
        alone_ids = _alone(input_ids, mask, row)
        alone = model.generate(
            input_ids=alone_ids, adapter_names=[name], max_new_tokens=6, min_new_tokens=6, do_sample=False
        )
        assert torch.equal(mixed[row, -6:], alone[0, -6:]), (row, name)


def test_cached_forward_matches_recomputed(family):
    model = _model_with_adapters(family)
    input_ids, mask = _batch()
    base = model.get_base_model()
    rows = _rows(model, ROW_ADAPTERS)
    engine = PromptEngine(base)
    with torch.no_grad():
        recomputed = engine.forward(rows, input_ids, mask).logits
    cached = engine.cached_forward(rows, input_ids, mask).logits
    attended = mask.bool()  # outputs at padding positions are meaningless on either path
    torch.testing.assert_close(cached[attended], recomputed[:, -input_ids.shape[1] :][attended], atol=1e-4, rtol=0)


def test_generate_reuses_prompt_kv(family):
    model = _model_with_adapters(family)
    input_ids, mask = _batch()
    for _ in range(3):
        model.generate(input_ids=input_ids, attention_mask=mask, adapter_names=["a", "a", "b"], max_new_tokens=2)
    stats = PromptEngine.of(model.get_base_model()).kv_cache.stats()
    # One lookup per distinct prompt per call (not per row): 3 calls x 2 prompts, the first two computing.
    assert stats.entries == 2 and stats.misses == 2 and stats.hits == 4


def test_unknown_adapter_name_is_named_error():
    model = _model_with_adapters("llama")
    with pytest.raises(peft_ext.errors.AdapterNotFoundError, match="nope"):
        model(input_ids=torch.tensor([[5, 6]]), adapter_names=["nope"])


@pytest.mark.parametrize("reuse_kv", [True, False], ids=["kv_reuse", "recompute"])
def test_repetition_penalty_sees_the_same_ids_as_alone(family, reuse_kv):
    # Unpadded rows: the stand-in ids of the prompt block must not add ids the penalty would act on.
    model = _model_with_adapters(family)
    input_ids = torch.tensor([[5, 6, 7, 5], [9, 10, 9, 11], [15, 16, 17, 18]])
    kwargs = {"max_new_tokens": 8, "min_new_tokens": 8, "do_sample": False, "repetition_penalty": 3.0}
    engine = PromptEngine(model.get_base_model())
    mixed = engine.generate(_rows(model, ROW_ADAPTERS), input_ids, reuse_kv=reuse_kv, **kwargs)
    for row, name in enumerate(ROW_ADAPTERS):
        alone = model.generate(input_ids=input_ids[row : row + 1], adapter_names=[name], **kwargs)
        assert torch.equal(mixed[row], alone[0]), (row, name)


def test_prompt_stand_in_ids_add_no_new_ids():
    from peft_ext.engine.layout import filler_ids

    input_ids = torch.tensor([[0, 0, 7, 8], [9, 10, 11, 12]])
    filler = filler_ids(input_ids, (input_ids != 0).long(), 5)
    assert filler.shape == (2, 5)
    for row in range(2):
        text = input_ids[row][input_ids[row] != 0]
        assert set(filler[row].tolist()) <= set(text.tolist())


def test_bad_requests_are_named_errors():
    from peft_ext.errors import InvalidRequestError

    model = _model_with_adapters("llama")
    ids = torch.tensor([[5, 6], [7, 8]])
    with pytest.raises(InvalidRequestError, match="one name per row"):
        model(input_ids=ids, adapter_names=["a"])
    with pytest.raises(InvalidRequestError, match="one name per row"):
        model.generate(input_ids=ids, adapter_names="a", max_new_tokens=2)
    with pytest.raises(InvalidRequestError, match="max_length=2 leaves no room for new tokens after the 2 input"):
        model.generate(input_ids=ids, adapter_names=["a", "b"], max_length=2)


@pytest.mark.parametrize("reuse_kv", [True, False], ids=["kv_reuse", "recompute"])
def test_max_length_counts_the_text_and_the_new_tokens_as_in_plain_generate(family, reuse_kv):
    # lm-evaluation-harness generates with max_length = input length + new tokens; the prompt does not count.
    model = _model_with_adapters(family)
    input_ids, mask = _batch()
    engine = PromptEngine(model.get_base_model())
    rows = _rows(model, ROW_ADAPTERS)
    kwargs = {"reuse_kv": reuse_kv, "min_new_tokens": 5, "do_sample": False}
    by_length = engine.generate(rows, input_ids, mask, max_length=input_ids.shape[1] + 5, **kwargs)
    by_new_tokens = engine.generate(rows, input_ids, mask, max_new_tokens=5, **kwargs)
    assert by_length.shape == (3, input_ids.shape[1] + 5) and torch.equal(by_length, by_new_tokens)
    both = engine.generate(rows, input_ids, mask, max_length=input_ids.shape[1] + 1, max_new_tokens=5, **kwargs)
    assert torch.equal(both, by_new_tokens)  # max_new_tokens wins, as in transformers
    plain = model.get_base_model().generate(
        input_ids=input_ids, attention_mask=mask, max_length=input_ids.shape[1] + 5, min_new_tokens=5, do_sample=False
    )
    assert plain.shape == by_length.shape


class _Recording(StoppingCriteria):
    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        self.seen.append(input_ids.clone())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


@pytest.mark.parametrize("reuse_kv", [True, False], ids=["kv_reuse", "recompute"])
@pytest.mark.parametrize("rows", [ROW_ADAPTERS, ["deep", "a", BASE_ADAPTER]], ids=["input", "deep"])
def test_stopping_criteria_see_the_text_and_new_tokens_as_in_plain_generate(reuse_kv, rows):
    # Criteria that skip the input by its length (lm-evaluation-harness's stop sequences) must not read the prompt
    # block's stand-in ids, or the end of the input, as generated tokens.
    model = _model_with_adapters("llama")
    model.add_adapter("deep", SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, placement="deep"))
    input_ids, mask = _batch()
    recording = _Recording()
    output = model.generate(
        input_ids=input_ids,
        attention_mask=mask,
        adapter_names=rows,
        max_new_tokens=3,
        min_new_tokens=3,
        stopping_criteria=StoppingCriteriaList([recording]),
        reuse_kv=reuse_kv,
    )
    assert [seen.shape[1] for seen in recording.seen] == [input_ids.shape[1] + step for step in (1, 2, 3)]
    assert torch.equal(recording.seen[-1], output)
