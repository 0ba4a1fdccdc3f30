"""Deep prompts (keys/values in every layer) as a second kind of prompt in the one engine, starting with stock PEFT
PREFIX_TUNING adapters: read, checked against the model, and served exactly in batches that mix deep, input-level and
bare rows. The reference for a deep row is PEFT's own ``forward`` on that row alone (with transformers 5.24 stock
prefix-tuning ``generate`` ignores the prefix, so greedy decoding is done with PEFT's forward, one token at a time).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel, PrefixTuningConfig, get_peft_model
from safetensors.torch import load_file, save_file
from tiny_models import make_model

from peft_ext import MultiPromptModel
from peft_ext.adapter_files import DeepPrompt, PromptKind, read_adapter_folder
from peft_ext.engine import Prompt, PromptEngine
from peft_ext.engine.decode_batch import DecodeBatch
from peft_ext.errors import (
    DeepPromptInputError,
    DeepPromptNotSupportedError,
    InvalidAdapterConfigError,
    KVShapeMismatchError,
    NonFiniteTensorError,
    TensorShapeError,
    UnsupportedPeftTypeError,
)

FAMILIES = ["llama", "gpt2", "bloom", "qwen2"]  # RoPE, absolute positions, ALiBi, RoPE with GQA (1 KV head)
DEEP_TOKENS = 3
SHALLOW_TOKENS = 5  # a different length than the deep prompt's, so the two blocks do not line up
NEW_TOKENS = 5


def _prefix_model(model: torch.nn.Module, seed: int = 1, **config: object) -> PeftModel:
    """A stock PEFT prefix-tuning model whose prefix matters (random values of the size of the model's keys)."""
    peft_model = get_peft_model(
        model, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=DEEP_TOKENS, **config)
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in peft_model.prompt_encoder["default"].parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 1.5)
    return peft_model


def _save_prefix(folder: Path, family: str, model: torch.nn.Module | None = None, **config: object) -> Path:
    _prefix_model(model if model is not None else make_model(family), **config).save_pretrained(folder)
    return folder


def _variant(family: str, **changes: int) -> torch.nn.Module:
    """The family's tiny model with some config fields changed (another layer count, other heads)."""
    config = copy.deepcopy(make_model(family).config)
    for name, value in changes.items():
        setattr(config, name, value)
    if getattr(config, "layer_types", None) is not None:  # Qwen2 names each layer's attention
        config.layer_types = config.layer_types[:1] * config.num_hidden_layers
    torch.manual_seed(0)
    return type(make_model(family))(config).eval()


@pytest.fixture(params=FAMILIES)
def deep_family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def setup(deep_family: str, tmp_path: Path) -> tuple[MultiPromptModel, PeftModel, torch.nn.Module]:
    """A MultiPromptModel serving a stock prefix adapter ("deep") and an input-level prompt ("shallow"), PEFT's own
    model of the same adapter, and the plain base model (each its own copy of the same weights)."""
    folder = _save_prefix(tmp_path / "prefix", deep_family)
    served = MultiPromptModel(make_model(deep_family))
    served.add("deep", folder)
    hidden = served.model.get_input_embeddings().weight.shape[1]
    served.add("shallow", torch.randn(SHALLOW_TOKENS, hidden, generator=torch.Generator().manual_seed(7)))
    reference = PeftModel.from_pretrained(make_model(deep_family), folder).eval()
    return served, reference, make_model(deep_family)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Three left-padded rows of different lengths."""
    ids = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12], [0, 13, 14, 15, 16]])
    return ids, (ids != 0).long()


ADAPTERS = ["deep", "shallow", None]


def _peft_logits(reference: PeftModel, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return reference(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


def _peft_greedy(reference: PeftModel, ids: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy decoding with PEFT's forward, one token at a time (stock prefix-tuning generate ignores the prefix)."""
    for _ in range(steps):
        ids = torch.cat([ids, _peft_logits(reference, ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def _alone(ids: torch.Tensor, mask: torch.Tensor, row: int) -> torch.Tensor:
    return ids[row][mask[row].bool()][None]


# --- exactness in mixed batches ------------------------------------------------------------------------------------


def test_the_prefix_matters(setup):
    served, reference, base = setup
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        plain = base(input_ids=ids).logits
    assert (_peft_logits(reference, ids) - plain).abs().max() > 0.1


@pytest.mark.parametrize("reuse_kv", [True, False])
def test_mixed_batch_logits_equal_each_row_alone(setup, reuse_kv):
    served, reference, base = setup
    served.reuse_kv = reuse_kv
    ids, mask = _batch()
    logits = served(ids, ADAPTERS, attention_mask=mask)
    for row, name in enumerate(ADAPTERS):
        alone = _alone(ids, mask, row)
        text = logits[row, -alone.shape[1] :]
        if name == "deep":
            expected = _peft_logits(reference, alone)[0]
        elif name is None:
            with torch.no_grad():
                expected = base(input_ids=alone).logits[0]
        else:
            expected = served(alone, [name])[0]
        torch.testing.assert_close(text, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("reuse_kv", [True, False])
def test_mixed_batch_generate_equals_each_row_alone(setup, reuse_kv):
    served, reference, base = setup
    served.reuse_kv = reuse_kv
    ids, mask = _batch()
    tokens = served.generate(ids, ADAPTERS, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False)
    for row, name in enumerate(ADAPTERS):
        alone = _alone(ids, mask, row)
        if name == "deep":
            expected = _peft_greedy(reference, alone, NEW_TOKENS)
        elif name is None:
            expected = base.generate(alone, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=1)
        else:
            expected = served.generate(alone, [name], max_new_tokens=NEW_TOKENS, do_sample=False)
        assert torch.equal(tokens[row, -NEW_TOKENS:], expected[0, -NEW_TOKENS:]), (name, reuse_kv)


def test_continuous_batch_rows_joining_equal_each_alone(setup):
    """A deep row decodes alone, then an input-level row joins the running batch; each decodes as it would alone."""
    served, reference, _ = setup
    batch = DecodeBatch(served.engine)
    requests = {"deep": [5, 6, 7], "shallow": [13, 14, 15, 16]}
    generated: dict[str, list[int]] = {
        "deep": [int(batch.join("deep", served.row_prompt("deep"), requests["deep"]).argmax())]
    }
    for _ in range(2):
        generated["deep"].append(int(batch.step([generated["deep"][-1]])[0].argmax()))
    generated["shallow"] = [int(batch.join("shallow", served.row_prompt("shallow"), requests["shallow"]).argmax())]
    while len(generated["shallow"]) < NEW_TOKENS:
        step = batch.step([generated[row][-1] for row in batch.ids])
        for index, row in enumerate(batch.ids):
            generated[row].append(int(step[index].argmax()))
    deep_ids = torch.tensor([requests["deep"]])
    expected = _peft_greedy(reference, deep_ids, len(generated["deep"]))[0, deep_ids.shape[1] :]
    assert generated["deep"] == expected.tolist()
    shallow_ids = torch.tensor([requests["shallow"]])
    alone = served.generate(shallow_ids, ["shallow"], max_new_tokens=NEW_TOKENS, do_sample=False)
    assert generated["shallow"] == alone[0, -NEW_TOKENS:].tolist()


def test_deep_prompt_costs_no_prefill(setup):
    served, _, _ = setup
    runs: list[int] = []
    handle = served.model.register_forward_pre_hook(lambda *_: runs.append(1))
    try:
        served(torch.tensor([[5, 6, 7]]), ["deep"])
        assert len(runs) == 1  # the text only: the deep prompt's keys/values were given, not computed
        served(torch.tensor([[5, 6, 7]]), ["shallow"])
        assert len(runs) == 3  # an input-level prompt is run once (then cached) before its text
    finally:
        handle.remove()
    stats = served.kv_cache_stats()
    layers, (heads, head_dim) = len(served.engine.kv_shapes()), served.engine.kv_shapes()[0]
    deep_bytes = DEEP_TOKENS * layers * 2 * heads * head_dim * 4  # float32
    shallow_bytes = SHALLOW_TOKENS * layers * 2 * heads * head_dim * 4
    assert (stats.entries, stats.bytes) == (2, deep_bytes + shallow_bytes)


# --- where deep prompts come from, and refusals ---------------------------------------------------------------------


def test_a_peft_model_adapter_loads_like_its_folder(tmp_path):
    peft_model = _prefix_model(make_model("llama"))
    peft_model.save_pretrained(tmp_path)
    served = MultiPromptModel(make_model("llama"))
    served.add("from_model", peft_model)
    served.add("from_folder", tmp_path)
    ids = torch.tensor([[5, 6, 7]])
    torch.testing.assert_close(served(ids, ["from_model"]), served(ids, ["from_folder"]), atol=1e-6, rtol=0)


def test_a_projected_prefix_is_served_as_saved(tmp_path):
    """With ``prefix_projection`` PEFT saves the projected keys/values: served exactly, like any prefix."""
    _save_prefix(tmp_path, "llama", prefix_projection=True, encoder_hidden_size=16)
    reference = PeftModel.from_pretrained(make_model("llama"), tmp_path).eval()
    served = MultiPromptModel(make_model("llama"))
    served.add("deep", tmp_path)
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(served(ids, ["deep"])[0], _peft_logits(reference, ids)[0], atol=1e-4, rtol=0)


@pytest.mark.parametrize("change", ["layers", "heads"])
def test_a_prefix_for_another_model_shape_is_refused(deep_family, tmp_path, change):
    other = (
        _variant(deep_family, num_hidden_layers=3)
        if change == "layers"
        else _variant(
            deep_family, num_attention_heads=2, **({"head_dim": 16} if deep_family in ("llama", "qwen2") else {})
        )
    )
    folder = _save_prefix(tmp_path, deep_family, model=other)
    served = MultiPromptModel(make_model(deep_family))
    with pytest.raises(KVShapeMismatchError, match="made for another model") as refused:
        served.add("deep", folder)
    assert "Deep prompt 'deep'" in str(refused.value) and "deep" not in served


def test_reader_tells_the_kind_and_refuses_deep_unless_asked(tmp_path):
    folder = _save_prefix(tmp_path, "qwen2")
    adapter = read_adapter_folder(folder, deep=True)
    assert adapter.kind is PromptKind.DEEP and adapter.prompt.shape == (DEEP_TOKENS, 2 * 2 * 1 * 8)
    deep = adapter.loaded()
    assert isinstance(deep, DeepPrompt) and (deep.num_layers, deep.num_heads, deep.head_dim) == (2, 1, 8)
    with pytest.raises(DeepPromptNotSupportedError, match="input embeddings only"):
        read_adapter_folder(folder)
    assert issubclass(DeepPromptNotSupportedError, UnsupportedPeftTypeError)  # what callers caught before


def _edit(folder: Path, **changes: object) -> None:
    config = json.loads((folder / "adapter_config.json").read_text())
    config.update(changes)
    (folder / "adapter_config.json").write_text(json.dumps(config))


def test_reader_checks_a_prefix_against_its_config(tmp_path):
    folder = _save_prefix(tmp_path, "llama")
    _edit(folder, num_layers=3)
    with pytest.raises(TensorShapeError, match="num_layers"):
        read_adapter_folder(folder, deep=True)
    _edit(folder, num_layers=None)
    with pytest.raises(InvalidAdapterConfigError, match="num_layers"):
        read_adapter_folder(folder, deep=True)
    _edit(folder, num_layers=2, num_attention_heads=3)
    with pytest.raises(InvalidAdapterConfigError, match="multiple of num_attention_heads"):
        read_adapter_folder(folder, deep=True)
    _edit(folder, num_attention_heads=2)
    read_adapter_folder(folder, deep=True)
    weights = load_file(folder / "adapter_model.safetensors")
    weights["prompt_embeddings"][0, 0] = float("nan")
    save_file(weights, folder / "adapter_model.safetensors")
    with pytest.raises(NonFiniteTensorError):
        read_adapter_folder(folder, deep=True)


def test_hub_shares_deep_prompts_with_their_layout_checked(tmp_path):
    import hub
    from hub import LocalStore
    from peft_ext import SoftPromptConfig

    store = LocalStore(tmp_path / "store")
    model = make_model("llama")
    prefix = _save_prefix(tmp_path / "prefix", "llama")
    soft = get_peft_model(
        make_model("llama"), SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=DEEP_TOKENS, placement="deep")
    )
    with pytest.raises(KVShapeMismatchError, match="3 layers"):
        hub.push(prefix, "org/prompts", task="coach", store=store, base_model=_variant("llama", num_hidden_layers=3))
    assert hub.tasks("org/prompts", store=store) == []  # nothing written
    hub.push(prefix, "org/prompts", task="coach", store=store, base_model=model)
    hub.push(soft, "org/prompts", task="coach", store=store, base_model=model)
    for version, peft_type in (("1.0.0", "PREFIX_TUNING"), ("1.0.1", "SOFT_PROMPT")):
        manifest = hub.show("org/prompts", "coach", version, store=store).manifest
        assert manifest.adapter["kind"] == "deep" and manifest.adapter["peft_type"] == peft_type
        assert (manifest.adapter["num_layers"], manifest.adapter["num_key_value_heads"]) == (2, 2)
        folder = hub.pull("org/prompts", "coach", version, store=store, base_model=model)
        assert read_adapter_folder(folder, deep=True).kind is PromptKind.DEEP
    card = (store.root / "org" / "prompts" / "README.md").read_text()
    assert "| coach | 1.0.0 | deep |" in card and "| coach | 1.0.1 | deep |" in card
    result = hub.diff(prefix, hub.pull("org/prompts", "coach", "1.0.0", store=store), model=model)
    assert result.mean_cosine == pytest.approx(1.0)
    with pytest.raises(hub.errors.BaseModelMismatchError):
        hub.pull("org/prompts", "coach", "1.0.1", store=store, base_model=_variant("llama", num_hidden_layers=3))


def test_a_deep_prompt_has_no_input_embeddings(setup):
    served, _, _ = setup
    prompt = served.row_prompt("deep")
    assert prompt.is_deep and prompt.num_tokens() == DEEP_TOKENS
    with pytest.raises(DeepPromptInputError):
        prompt.compute()


# --- the training path ----------------------------------------------------------------------------------------------


def test_forward_with_labels_scores_a_deep_row_as_peft_does(deep_family, tmp_path):
    """PEFT's prefix-tuning loss cannot score a row's first text token (the prefix has no logits): neither can ours,
    and gradients reach the deep prompt's values."""
    folder = _save_prefix(tmp_path, deep_family)
    reference = PeftModel.from_pretrained(make_model(deep_family), folder).eval()
    served = MultiPromptModel(make_model(deep_family))
    served.add("deep", folder)
    loaded = served.prompt("deep")
    assert isinstance(loaded, DeepPrompt)
    values = loaded.values.clone().requires_grad_(True)
    trainable = DeepPrompt(values, loaded.num_layers, loaded.num_heads)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss
    engine = PromptEngine.of(served.model)
    output = engine.forward([Prompt.deep(None, trainable.layer_kv)], ids, torch.ones_like(ids), labels=ids)
    torch.testing.assert_close(output.loss, expected, atol=1e-5, rtol=0)
    output.loss.backward()
    assert values.grad is not None and values.grad.abs().sum() > 0


def test_forward_with_labels_in_a_mixed_batch_scores_each_row_as_alone(setup):
    """Labels of a deep row and of an input-level row, left-padded in one batch: each row's loss is its loss alone."""
    served, reference, _ = setup
    ids, mask = _batch()
    rows = [served.row_prompt("deep"), served.row_prompt("shallow")]
    ids, mask = ids[[0, 2]], mask[[0, 2]]
    labels = ids.masked_fill(mask == 0, -100)
    engine = served.engine
    with torch.no_grad():
        deep_alone = reference(input_ids=ids[:1, 2:], attention_mask=mask[:1, 2:], labels=ids[:1, 2:]).loss
        shallow_alone = engine.forward(rows[1:], ids[1:, 1:], mask[1:, 1:], labels=ids[1:, 1:]).loss
        only_deep = engine.forward(rows, ids, mask, labels=torch.stack([labels[0], torch.full_like(labels[1], -100)]))
        only_shallow = engine.forward(
            rows, ids, mask, labels=torch.stack([torch.full_like(labels[0], -100), labels[1]])
        )
    torch.testing.assert_close(only_deep.loss, deep_alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(only_shallow.loss, shallow_alone, atol=1e-5, rtol=0)
