"""SoftPromptConfig strategies: inits, length policies, anchors, and a named error for each bad input."""

from __future__ import annotations

import json

import pytest
import torch
from peft import get_peft_model
from tiny_models import make_model

from peft_ext import SoftPromptConfig
from peft_ext.errors import (
    EmptyInitTextError,
    HiddenSizeMismatchError,
    InitTextLengthError,
    InvalidConfigError,
    MissingLabelWordsError,
    NonFiniteTensorError,
    TokenizerNotAvailableError,
    UnknownStrategyError,
)

TEXT = "i want you to act as a coach"  # 8 words, one token each in the tiny tokenizer


def _prompt_of(config):
    model = get_peft_model(make_model(), config)
    return model, model.prompt_encoder["default"].prompt().detach()


def _embeddings(model, ids):
    return model.get_base_model().get_input_embeddings().weight.detach()[torch.tensor(ids)]


def _text_config(tokenizer, **kwargs):
    return SoftPromptConfig(task_type="CAUSAL_LM", init="text", init_text=TEXT, tokenizer=tokenizer, **kwargs)


def test_text_init_uses_text_embeddings(tiny_tokenizer):
    model, prompt = _prompt_of(_text_config(tiny_tokenizer, num_virtual_tokens=8))
    ids = tiny_tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    torch.testing.assert_close(prompt, _embeddings(model, ids))


@pytest.mark.parametrize(
    ("policy", "length", "expected"),
    [
        ("repeat", 11, lambda ids: (ids * 2)[:11]),
        ("truncate", 5, lambda ids: ids[:5]),
        ("exact", None, lambda ids: ids),
        ("exact", 3, lambda ids: ids),
    ],
)
def test_length_policies(tiny_tokenizer, policy, length, expected):
    config = _text_config(tiny_tokenizer, num_virtual_tokens=length, text_length_policy=policy)
    ids = tiny_tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert config.init_token_ids == expected(ids)
    assert config.num_virtual_tokens == len(expected(ids))


def test_pad_policy_fills_with_seeded_vocab(tiny_tokenizer):
    first = _text_config(tiny_tokenizer, num_virtual_tokens=12, text_length_policy="pad", init_seed=3)
    again = _text_config(tiny_tokenizer, num_virtual_tokens=12, text_length_policy="pad", init_seed=3)
    ids = tiny_tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert first.init_token_ids[:8] == ids and len(first.init_token_ids) == 12
    assert first.init_token_ids == again.init_token_ids


def test_length_mismatch_without_policy_is_never_silent(tiny_tokenizer):
    with pytest.raises(InitTextLengthError, match="text_length_policy"):
        _text_config(tiny_tokenizer, num_virtual_tokens=5)
    with pytest.raises(InitTextLengthError, match="only lengthens"):
        _text_config(tiny_tokenizer, num_virtual_tokens=5, text_length_policy="pad")
    with pytest.raises(InitTextLengthError, match="only shortens"):
        _text_config(tiny_tokenizer, num_virtual_tokens=12, text_length_policy="truncate")


def test_text_init_from_local_tokenizer_folder(tiny_tokenizer, tmp_path):
    tiny_tokenizer.save_pretrained(tmp_path)
    config = _text_config(str(tmp_path), num_virtual_tokens=8)
    assert config.tokenizer_name_or_path == str(tmp_path)
    assert config.init_token_ids == tiny_tokenizer(TEXT, add_special_tokens=False)["input_ids"]


def test_missing_tokenizer_folder_is_not_fetched(tmp_path):
    with pytest.raises(TokenizerNotAvailableError, match="never downloads"):
        _text_config("some-org/some-model", num_virtual_tokens=8)


def test_text_init_without_tokenizer():
    with pytest.raises(TokenizerNotAvailableError):
        _prompt_of(SoftPromptConfig(task_type="CAUSAL_LM", init="text", init_text=TEXT, num_virtual_tokens=8))


def test_empty_text(tiny_tokenizer):
    with pytest.raises(EmptyInitTextError):
        _text_config(tiny_tokenizer, num_virtual_tokens=8).__class__(
            task_type="CAUSAL_LM", init="text", init_text="   ", tokenizer=tiny_tokenizer, num_virtual_tokens=3
        )


def test_vocab_init_records_its_ids():
    model, prompt = _prompt_of(SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=6, init="vocab", init_seed=1))
    ids = model.peft_config["default"].init_token_ids
    assert len(ids) == 6
    torch.testing.assert_close(prompt, _embeddings(model, ids))


def test_random_init_is_at_embedding_scale():
    model, prompt = _prompt_of(SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=50, init_seed=0))
    scale = model.get_base_model().get_input_embeddings().weight.std()
    assert 0.5 < float(prompt.std() / scale) < 2.0


def test_labels_init_averages_sub_tokens(tiny_tokenizer):
    config = SoftPromptConfig(
        task_type="CAUSAL_LM",
        init="labels",
        label_words=["positive", "bad good"],
        tokenizer=tiny_tokenizer,
        num_virtual_tokens=4,
        init_seed=0,
    )
    model, prompt = _prompt_of(config)
    ids = [tiny_tokenizer(w, add_special_tokens=False)["input_ids"] for w in ["positive", "bad good"]]
    torch.testing.assert_close(prompt[0], _embeddings(model, ids[0]).mean(0))
    torch.testing.assert_close(prompt[1], _embeddings(model, ids[1]).mean(0))
    assert prompt.shape == (4, 32)


def test_labels_init_fills_from_the_data_s_frequent_tokens(tiny_tokenizer, monkeypatch):
    monkeypatch.setattr("peft_ext.soft_prompt.strategies.FREQUENT_POOL", 2)
    texts = ["coach coach act act i", "coach act want"]
    config = SoftPromptConfig(
        task_type="CAUSAL_LM",
        init="labels",
        label_words=["good", "bad"],
        init_texts=texts,
        tokenizer=tiny_tokenizer,
        num_virtual_tokens=4,
        init_seed=0,
    )
    frequent = tiny_tokenizer("coach act", add_special_tokens=False)["input_ids"]
    assert sorted(config.init_token_ids) == sorted(frequent)  # the fill: the 2 most frequent, not the vocabulary
    model, prompt = _prompt_of(config)
    torch.testing.assert_close(prompt[2:], _embeddings(model, config.init_token_ids))


def test_labels_errors(tiny_tokenizer):
    with pytest.raises(InvalidConfigError, match="label_words"):
        _prompt_of(SoftPromptConfig(task_type="CAUSAL_LM", init="labels", num_virtual_tokens=3))
    with pytest.raises(MissingLabelWordsError, match="tokenises to no tokens"):
        SoftPromptConfig(
            task_type="CAUSAL_LM",
            init="labels",
            label_words=["good", ""],
            tokenizer=tiny_tokenizer,
            num_virtual_tokens=3,
        )


def _frequent_config(tokenizer, texts, **kwargs):
    return SoftPromptConfig(task_type="CAUSAL_LM", init="frequent", init_texts=texts, tokenizer=tokenizer, **kwargs)


def test_frequent_init_draws_the_data_s_most_frequent_tokens(tiny_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setattr("peft_ext.soft_prompt.strategies.FREQUENT_POOL", 3)
    texts = ["good good bad coach i", "good bad coach want", "good bad coach act", "good bad"]
    config = _frequent_config(tiny_tokenizer, texts, num_virtual_tokens=3, init_seed=0)
    frequent = tiny_tokenizer("good bad coach", add_special_tokens=False)["input_ids"]
    assert sorted(config.init_token_ids) == sorted(frequent)  # the 3 most frequent, each once
    assert config.init_texts is None and config.to_dict()["init_texts"] is None  # the data is never saved
    again = _frequent_config(tiny_tokenizer, texts, num_virtual_tokens=3, init_seed=0)
    assert again.init_token_ids == config.init_token_ids  # seeded
    model, prompt = _prompt_of(config)
    torch.testing.assert_close(prompt, _embeddings(model, config.init_token_ids))
    model.save_pretrained(tmp_path)  # reloads from the recorded ids, without the texts or a tokenizer
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["init"] == "frequent" and saved["init_token_ids"] == config.init_token_ids


def test_frequent_init_cycles_a_small_vocabulary(tiny_tokenizer):
    config = _frequent_config(tiny_tokenizer, ["good bad"], num_virtual_tokens=5, init_seed=0)
    ids = tiny_tokenizer("good bad", add_special_tokens=False)["input_ids"]
    assert sorted(set(config.init_token_ids)) == sorted(ids) and len(config.init_token_ids) == 5


def test_frequent_errors(tiny_tokenizer):
    with pytest.raises(EmptyInitTextError, match="init_texts"):
        _frequent_config(tiny_tokenizer, None, num_virtual_tokens=3)
    with pytest.raises(EmptyInitTextError, match="no tokens"):
        _frequent_config(tiny_tokenizer, ["", ""], num_virtual_tokens=3)
    with pytest.raises(InitTextLengthError, match="num_virtual_tokens"):
        _frequent_config(tiny_tokenizer, ["good"])
    with pytest.raises(InvalidConfigError, match="init_texts"):
        _prompt_of(SoftPromptConfig(task_type="CAUSAL_LM", init="frequent", num_virtual_tokens=3))
    with pytest.raises(TokenizerNotAvailableError, match="tokenizer"):
        _prompt_of(SoftPromptConfig(task_type="CAUSAL_LM", init="frequent", init_texts=["good"], num_virtual_tokens=3))


def test_adapter_init_transfers_a_prompt(tmp_path):
    source = get_peft_model(make_model(), SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=5, init_seed=4))
    source.save_pretrained(tmp_path)
    config = SoftPromptConfig(task_type="CAUSAL_LM", init="adapter", init_adapter=str(tmp_path))
    assert config.num_virtual_tokens == 5
    _, prompt = _prompt_of(config)
    torch.testing.assert_close(prompt, source.prompt_encoder["default"].prompt().detach())


def test_adapter_init_refuses_other_width(tmp_path):
    wide = torch.nn.Embedding(64, 48)
    source = get_peft_model(make_model(), SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=5))
    source.save_pretrained(tmp_path)
    from safetensors.torch import save_file

    save_file({"prompt_embeddings": wide.weight.detach()[:5].clone()}, tmp_path / "adapter_model.safetensors")
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**config, "token_dim": 48}))  # consistent, 48 wide
    with pytest.raises(HiddenSizeMismatchError, match="48"):
        _prompt_of(SoftPromptConfig(task_type="CAUSAL_LM", init="adapter", init_adapter=str(tmp_path)))
    save_file({"prompt_embeddings": torch.full((5, 32), float("nan"))}, tmp_path / "adapter_model.safetensors")
    with pytest.raises(NonFiniteTensorError):
        _prompt_of(SoftPromptConfig(task_type="CAUSAL_LM", init="adapter", init_adapter=str(tmp_path)))


@pytest.mark.parametrize("reparameterization", ["direct", "mlp", "lstm", "residual"])
def test_anchor_tokens_stay_fixed(tiny_tokenizer, reparameterization):
    config = _text_config(
        tiny_tokenizer, num_virtual_tokens=8, num_anchor_tokens=3, reparameterization=reparameterization
    )
    model = get_peft_model(make_model(), config)
    encoder = model.prompt_encoder["default"]
    anchors = encoder.anchor_values.clone()
    ids = torch.tensor([[5, 6, 7]])
    optimizer = torch.optim.SGD(encoder.parameters(), lr=1.0)
    before = encoder.prompt().detach().clone()
    for _ in range(2):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = encoder.prompt().detach()
    torch.testing.assert_close(after[:3], anchors)
    torch.testing.assert_close(anchors, _embeddings(model, config.init_token_ids[:3]))
    assert (after[3:] - before[3:]).abs().max() > 1e-4


def test_residual_starts_at_its_init(tiny_tokenizer):
    model, prompt = _prompt_of(_text_config(tiny_tokenizer, num_virtual_tokens=8, reparameterization="residual"))
    torch.testing.assert_close(prompt, _embeddings(model, model.peft_config["default"].init_token_ids))


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"init": "zeros"}, UnknownStrategyError),
        ({"reparameterization": "transformer"}, UnknownStrategyError),
        ({"text_length_policy": "stretch"}, UnknownStrategyError),
        ({"num_anchor_tokens": -1}, InvalidConfigError),
        ({"num_anchor_tokens": 9}, InvalidConfigError),
        ({"num_virtual_tokens": 0}, InvalidConfigError),
        ({"num_virtual_tokens": None}, InvalidConfigError),
        ({"init": "adapter"}, InvalidConfigError),
    ],
)
def test_bad_fields_raise_named_errors(kwargs, error):
    arguments = {"task_type": "CAUSAL_LM", "num_virtual_tokens": 8, **kwargs}
    with pytest.raises(error):
        _prompt_of(SoftPromptConfig(**arguments))  # at construction, or at the latest when a model is built


def test_configs_construct_as_peft_constructs_them():
    # PEFT builds every config class with no arguments (PeftConfig.from_peft_type, PEFT's test_from_peft_type) and
    # fills fields in later; what an init still lacks is reported when a model is built.
    from peft import PeftConfig, PeftType

    config = PeftConfig.from_peft_type(peft_type=PeftType.SOFT_PROMPT)
    assert isinstance(config, SoftPromptConfig) and config.peft_type == PeftType.SOFT_PROMPT
    assert isinstance(SoftPromptConfig(), SoftPromptConfig)
    with pytest.raises(InvalidConfigError, match="num_virtual_tokens is required"):
        _prompt_of(SoftPromptConfig(task_type="CAUSAL_LM"))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"init": "random"},
        {"init": "vocab"},
        {"init": "labels", "label_words": ["good", "bad"]},
        {"init": "text", "init_text": "be kind", "text_length_policy": "pad"},
    ],
)
def test_unseeded_inits_follow_the_global_seed(tiny_tokenizer, kwargs):
    def prompt_with_global_seed(seed: int) -> torch.Tensor:
        model = make_model()  # seeds torch itself; the seed under test is set after it
        torch.manual_seed(seed)
        config = SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=6, tokenizer=tiny_tokenizer, **kwargs)
        return get_peft_model(model, config).prompt_encoder["default"].prompt().detach().clone()

    first, again, other = prompt_with_global_seed(0), prompt_with_global_seed(0), prompt_with_global_seed(1)
    torch.testing.assert_close(again, first, atol=0, rtol=0)
    assert not torch.equal(other, first)

    def prompt_with_init_seed(global_seed: int) -> torch.Tensor:
        model = make_model()
        torch.manual_seed(global_seed)
        config = SoftPromptConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=6, tokenizer=tiny_tokenizer, init_seed=7, **kwargs
        )
        return get_peft_model(model, config).prompt_encoder["default"].prompt().detach().clone()

    torch.testing.assert_close(prompt_with_init_seed(0), prompt_with_init_seed(1), atol=0, rtol=0)
