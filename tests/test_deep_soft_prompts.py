"""SOFT_PROMPT with ``placement='deep'``: trainable keys/values in every layer, with the whole contract of input-level
prompts. It starts exactly where the input-level prompt of the same init is, trains through PEFT, saves, reloads and
resumes, mixes with input-level and bare rows in one batch (every row equal to that row alone, on four families),
exports to a stock PREFIX_TUNING adapter that plain PEFT runs with the same logits, and is refused by name where a
base model has another key/value layout. The independent reference for a deep row is stock PEFT's own prefix-tuning
``forward`` on the exported adapter.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from peft import PeftModel, get_peft_model
from tiny_models import make_model

import peft_ext
from peft_ext import MultiPromptModel, SoftPromptConfig
from peft_ext.adapter_files import DeepPrompt, PromptKind, check_kv_layout, kv_layout, read_adapter_folder
from peft_ext.errors import (
    DeepPromptNotSupportedError,
    InvalidConfigError,
    KVShapeMismatchError,
    UnknownStrategyError,
)

FAMILIES = ["llama", "gpt2", "bloom", "qwen2"]  # RoPE, absolute positions, ALiBi, RoPE with GQA (1 KV head)
TOKENS = 4


def _config(placement: str = "deep", **changes: object) -> SoftPromptConfig:
    fields: dict[str, object] = {
        "task_type": "CAUSAL_LM",
        "num_virtual_tokens": TOKENS,
        "init": "vocab",
        "init_seed": 3,
        "placement": placement,
    }
    return SoftPromptConfig(**{**fields, **changes})


def _logits(model: torch.nn.Module, ids: torch.Tensor, **kwargs: object) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs).logits


def _greedy_with_forward(model: torch.nn.Module, ids: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy decoding one token at a time with the model's forward (stock prefix generate ignores the prefix)."""
    for _ in range(steps):
        ids = torch.cat([ids, _logits(model, ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def _other_layout(family: str, **changes: int) -> torch.nn.Module:
    config = copy.deepcopy(make_model(family).config)
    for name, value in changes.items():
        setattr(config, name, value)
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = config.layer_types[:1] * config.num_hidden_layers
    torch.manual_seed(0)
    return type(make_model(family))(config).eval()


@pytest.fixture(params=FAMILIES)
def deep_family(request: pytest.FixtureRequest) -> str:
    return request.param


# --- the config -------------------------------------------------------------------------------------------------


def test_placement_is_one_field_saved_as_a_string():
    assert _config("input").placement == "input" and not _config("input").is_deep
    assert _config().to_dict()["placement"] == "deep"
    with pytest.raises(UnknownStrategyError, match="'input', 'deep'"):
        _config("layers")
    with pytest.raises(InvalidConfigError, match="reparameterization='direct'"):
        _config(reparameterization="mlp")


def test_the_layout_is_filled_in_from_the_model(deep_family):
    model = get_peft_model(make_model(deep_family), _config())
    config = model.peft_config["default"]
    layers = len(peft_ext.PromptEngine.of(model.get_base_model()).kv_shapes())
    assert config.num_layers == layers == 2
    kv_heads = {"llama": 2, "gpt2": 4, "bloom": 4, "qwen2": 1}[deep_family]
    assert (config.num_key_value_heads, config.head_dim) == (kv_heads, 8)
    (trainable,) = [p for p in model.parameters() if p.requires_grad]
    assert trainable.shape == (TOKENS, layers * 2 * kv_heads * 8)


# --- where it starts ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("init", ["random", "vocab", "text", "labels", "frequent"])
def test_a_deep_prompt_starts_where_the_input_prompt_of_its_init_is(init, tiny_tokenizer):
    """Every init: the text's logits under the new deep prompt equal those under the input-level prompt."""
    fields: dict[str, object] = {"init": init, "tokenizer": tiny_tokenizer}
    if init == "text":
        fields.update(init_text="act as a good coach", text_length_policy="repeat")
    if init == "labels":
        fields.update(label_words=["positive", "negative"])
    if init == "frequent":
        fields.update(init_texts=["the coach motivate you", "be kind always smile"])
    shallow = get_peft_model(make_model("llama"), _config("input", **fields)).eval()
    deep = get_peft_model(make_model("llama"), _config(**fields)).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    expected = _logits(shallow, ids)[:, TOKENS:]
    torch.testing.assert_close(_logits(deep, ids), expected, atol=1e-5, rtol=0)
    assert (expected - _logits(make_model("llama"), ids)).abs().max() > 0.05  # the prompt matters


def test_the_start_is_computed_without_dropout_on_a_model_in_training_mode():
    """GPT-2 has dropout: the init's keys/values are the eval-mode ones, whatever mode the base model is in."""
    base = make_model("gpt2").train()
    deep = get_peft_model(base, _config()).eval()
    shallow = get_peft_model(make_model("gpt2"), _config("input")).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    torch.testing.assert_close(_logits(deep, ids), _logits(shallow, ids)[:, TOKENS:], atol=1e-5, rtol=0)


def test_the_adapter_init_takes_an_input_or_a_deep_adapter(tmp_path):
    ids = torch.tensor([[5, 6, 7, 8]])
    shallow = get_peft_model(make_model("llama"), _config("input", init_seed=11)).eval()
    shallow.save_pretrained(tmp_path / "shallow")
    from_shallow = get_peft_model(
        make_model("llama"), _config(init="adapter", init_adapter=str(tmp_path / "shallow"), num_virtual_tokens=None)
    ).eval()
    torch.testing.assert_close(_logits(from_shallow, ids), _logits(shallow, ids)[:, TOKENS:], atol=1e-5, rtol=0)
    from_shallow.save_pretrained(tmp_path / "deep")
    from_deep = get_peft_model(make_model("llama"), _config(init="adapter", init_adapter=str(tmp_path / "deep")))
    torch.testing.assert_close(
        from_deep.prompt_encoder["default"].prompt(), from_shallow.prompt_encoder["default"].prompt()
    )
    with pytest.raises(DeepPromptNotSupportedError, match="placement='deep'"):
        get_peft_model(make_model("llama"), _config("input", init="adapter", init_adapter=str(tmp_path / "deep")))
    with pytest.raises(KVShapeMismatchError, match="layers"):
        get_peft_model(
            _other_layout("llama", num_hidden_layers=3), _config(init="adapter", init_adapter=str(tmp_path / "deep"))
        )


# --- training, saving, resuming ----------------------------------------------------------------------------------


def test_training_reaches_only_the_deep_prompt_and_lowers_the_loss(deep_family):
    model = get_peft_model(make_model(deep_family), _config())
    frozen = {name: p.detach().clone() for name, p in model.get_base_model().named_parameters()}
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    losses = []
    for _ in range(8):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss))
    assert losses[-1] < losses[0] - 0.1
    for name, p in model.get_base_model().named_parameters():
        assert torch.equal(p, frozen[name]), name


def test_save_load_and_resume_keep_the_prompt_exactly(deep_family, tmp_path):
    model = get_peft_model(make_model(deep_family), _config())
    with torch.no_grad():
        model.prompt_encoder["default"].embedding.weight.mul_(1.5)
    model.eval().save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "SOFT_PROMPT" and saved["placement"] == "deep"
    ids = torch.tensor([[5, 6, 7, 8]])
    expected = _logits(model, ids)
    loaded = PeftModel.from_pretrained(make_model(deep_family), tmp_path).eval()
    torch.testing.assert_close(_logits(loaded, ids), expected, atol=0, rtol=0)
    resumed = PeftModel.from_pretrained(make_model(deep_family), tmp_path, is_trainable=True)
    assert [p.shape for p in resumed.parameters() if p.requires_grad] == [(TOKENS, saved_width(saved))]
    torch.testing.assert_close(_logits(resumed.eval(), ids), expected, atol=0, rtol=0)
    other = PeftModel.from_pretrained(make_model(deep_family), tmp_path, adapter_name="first").eval()
    other.load_adapter(tmp_path, adapter_name="second")
    torch.testing.assert_close(_logits(other, ids, adapter_names=["second"]), expected, atol=0, rtol=0)


def saved_width(config: dict) -> int:
    return config["num_layers"] * 2 * config["num_key_value_heads"] * config["head_dim"]


def test_a_deep_prompt_is_refused_on_a_model_with_another_layout(tmp_path):
    get_peft_model(make_model("llama"), _config()).save_pretrained(tmp_path)
    with pytest.raises(KVShapeMismatchError, match="3 layers"):
        PeftModel.from_pretrained(_other_layout("llama", num_hidden_layers=3), tmp_path)
    with pytest.raises(KVShapeMismatchError, match="key/value heads"):
        PeftModel.from_pretrained(_other_layout("llama", num_key_value_heads=4), tmp_path)
    with pytest.raises(KVShapeMismatchError):
        MultiPromptModel(_other_layout("llama", num_hidden_layers=3)).add("deep", tmp_path)


# --- one batch of deep, input-level and bare rows -------------------------------------------------------------------


@pytest.fixture
def three_kinds(deep_family, tmp_path):
    """A PeftModel with a deep and an input-level SOFT_PROMPT adapter, and stock PEFT running the deep one
    (exported to PREFIX_TUNING) as the independent reference."""
    model = get_peft_model(make_model(deep_family), _config(), adapter_name="deep")
    model.add_adapter("shallow", _config("input", num_virtual_tokens=TOKENS + 2, init_seed=5))
    model.eval()
    peft_ext.export_prefix_tuning(model, tmp_path / "prefix", adapter_name="deep")
    stock = PeftModel.from_pretrained(make_model(deep_family), tmp_path / "prefix").eval()
    return model, stock, make_model(deep_family)


NAMES = ["deep", "shallow", "__base__"]


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12], [0, 13, 14, 15, 16]])
    return ids, (ids != 0).long()


def _expected(three_kinds, name: str, alone: torch.Tensor) -> torch.Tensor:
    model, stock, base = three_kinds
    if name == "deep":
        return _logits(stock, alone)[0]
    if name == "shallow":
        return _logits(model, alone, adapter_names=["shallow"])[0, -alone.shape[1] :]
    return _logits(base, alone)[0]


def test_mixed_batch_logits_equal_each_row_alone(three_kinds):
    model, _, _ = three_kinds
    ids, mask = _batch()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, adapter_names=NAMES).logits
    for row, name in enumerate(NAMES):
        alone = ids[row][mask[row].bool()][None]
        torch.testing.assert_close(
            logits[row, -alone.shape[1] :], _expected(three_kinds, name, alone), atol=1e-4, rtol=0
        )


def test_mixed_batch_generate_equals_each_row_alone(three_kinds):
    model, stock, base = three_kinds
    ids, mask = _batch()
    steps = 5
    out = model.generate(
        input_ids=ids, attention_mask=mask, adapter_names=NAMES, max_new_tokens=steps, do_sample=False, pad_token_id=0
    )
    for row, name in enumerate(NAMES):
        alone = ids[row][mask[row].bool()][None]
        reference = stock if name == "deep" else base
        if name == "shallow":
            expected = model.generate(
                input_ids=alone, adapter_names=["shallow"], max_new_tokens=steps, do_sample=False, pad_token_id=0
            )
        else:
            expected = _greedy_with_forward(reference, alone, steps)
        assert out[row, -steps:].tolist() == expected[0, -steps:].tolist(), name


def test_multi_prompt_model_serves_a_saved_deep_prompt_like_the_peft_model(three_kinds, tmp_path):
    model, _, _ = three_kinds
    model.save_pretrained(tmp_path, selected_adapters=["deep"])
    adapter = read_adapter_folder(tmp_path / "deep", deep=True)
    assert adapter.kind is PromptKind.DEEP and isinstance(adapter.loaded(), DeepPrompt)
    served = MultiPromptModel(make_model(_family(model)))
    served.add("deep", tmp_path / "deep")
    ids, mask = _batch()
    expected = model.generate(
        input_ids=ids,
        attention_mask=mask,
        adapter_names=["deep"] * 3,
        max_new_tokens=4,
        do_sample=False,
        pad_token_id=0,
    )
    got = served.generate(ids, ["deep"] * 3, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert got[:, -4:].tolist() == expected[:, -4:].tolist()
    # no prefill: the deep prompt's entry is its values, counted in bytes
    assert served.kv_cache.stats().bytes == adapter.prompt.numel() * adapter.prompt.element_size()


def _family(model: PeftModel) -> str:
    return str(model.get_base_model().config.model_type)


# --- export and stock generate ------------------------------------------------------------------------------------


def test_export_to_prefix_tuning_runs_in_stock_peft_with_the_same_logits(three_kinds, tmp_path):
    model, stock, _ = three_kinds
    assert stock.peft_config["default"].peft_type == "PREFIX_TUNING"
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    torch.testing.assert_close(_logits(stock, ids), _logits(model, ids, adapter_names=["deep"]), atol=1e-5, rtol=0)
    with pytest.raises(DeepPromptNotSupportedError, match="export_prefix_tuning"):
        peft_ext.export_prompt_tuning(model, tmp_path / "no", adapter_name="deep")
    with pytest.raises(DeepPromptNotSupportedError, match="export_prompt_tuning"):
        peft_ext.export_prefix_tuning(model, tmp_path / "no", adapter_name="shallow")


def test_use_exact_generate_serves_stock_prefix_tuning_correctly(three_kinds):
    _, stock, base = three_kinds
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    expected = _greedy_with_forward(stock, ids, 5)
    peft_ext.use_exact_generate(stock)
    try:
        assert stock.generate(input_ids=ids, max_new_tokens=5, do_sample=False).tolist() == expected.tolist()
    finally:
        peft_ext.use_exact_generate(stock, False)


# --- readers that take input embeddings only --------------------------------------------------------------------


def test_the_vllm_bridge_refuses_a_deep_prompt_and_says_why(tmp_path):
    from peft_ext.vllm import prompt_embeds

    model = get_peft_model(make_model("llama"), _config())
    model.save_pretrained(tmp_path)
    for source in (tmp_path, model):
        with pytest.raises(DeepPromptNotSupportedError, match="vLLM takes a soft prompt only as input embeddings"):
            prompt_embeds(make_model("llama"), source, [5, 6])


def test_gradient_checkpointing_is_refused_by_name_as_peft_refuses_prefix_tuning(tmp_path):
    from peft_ext.errors import GradientCheckpointingError

    base = make_model("llama")
    base.gradient_checkpointing_enable()
    with pytest.raises(GradientCheckpointingError, match="gradient checkpointing"):
        get_peft_model(base, _config())
    model = get_peft_model(make_model("llama"), _config())
    model.save_pretrained(tmp_path)
    model.get_base_model().gradient_checkpointing_enable()
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(GradientCheckpointingError, match="gradient_checkpointing_disable"):
        model.train()(input_ids=ids, labels=ids)
    loaded = PeftModel.from_pretrained(base, tmp_path).eval()  # inference needs no cache-free training
    assert loaded(input_ids=ids).logits.shape == (1, 3, 64)


def test_a_mixed_batch_s_loss_is_the_loss_of_its_rows_alone(three_kinds):
    """With labels, each row is scored on the tokens it is scored on alone: a bare or deep row's first token has no
    position before it (in a batch, that position would be masked filler), an input-level row's first token is
    predicted by its prompt's last position."""
    model, _, _ = three_kinds
    ids, mask = _batch()
    labels = ids.masked_fill(mask == 0, -100)
    sums, counts = 0.0, 0
    with torch.no_grad():
        for row, name in enumerate(NAMES):
            alone = ids[row][mask[row].bool()][None]
            scored = alone.shape[1] - (0 if name == "shallow" else 1)
            sums += float(model(input_ids=alone, labels=alone, adapter_names=[name]).loss) * scored
            counts += scored
        batch = model(input_ids=ids, attention_mask=mask, labels=labels, adapter_names=NAMES).loss
    assert float(batch) == pytest.approx(sums / counts, abs=1e-5)


def test_a_model_whose_layers_differ_in_key_value_shape_takes_no_deep_prompt():
    """The layout is one (heads, head size) for every layer; a model mixing shapes is refused with what to do."""
    assert kv_layout([(2, 8)] * 3, "x") == (3, 2, 8)
    with pytest.raises(KVShapeMismatchError, match="placement='input'"):
        kv_layout([(2, 8), (2, 8), (1, 8)], "A deep prompt")
    with pytest.raises(KVShapeMismatchError, match="has 2 layers of 2 key/value heads"):
        check_kv_layout((2, 2, 8), [(2, 8)] * 3, "The deep prompt")
