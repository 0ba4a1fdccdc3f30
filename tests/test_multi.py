"""MultiPromptModel: many prompts on one frozen base, exact per row, thread-safe selection, bounded memory."""

from __future__ import annotations

import threading

import pytest
import torch
from peft import get_peft_model
from tiny_models import make_model

from peft_ext import MultiPromptModel, SoftPromptConfig, export_prompt_tuning
from peft_ext.engine.kv_cache import DEFAULT_MAX_BYTES
from peft_ext.errors import (
    AdapterNotFoundError,
    CorruptAdapterError,
    HiddenSizeMismatchError,
    InvalidAdapterConfigError,
    InvalidAdapterError,
    NonFiniteTensorError,
    PickleRefusedError,
)

GENERATE = {"max_new_tokens": 5, "min_new_tokens": 5, "do_sample": False}


def _prompt(length: int, seed: int, hidden: int = 32) -> torch.Tensor:
    return torch.randn(length, hidden, generator=torch.Generator().manual_seed(seed)) * 0.5


@pytest.fixture
def served(family):
    server = MultiPromptModel(make_model(family))
    server.add("short", _prompt(2, 0))
    server.add("long", _prompt(9, 1))
    return server


def _batch():
    ids = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12], [0, 13, 14, 15, 16]])
    return ids, (ids != 0).long()


@pytest.mark.parametrize("reuse_kv", [True, False])
def test_rows_equal_requests_alone(served, reuse_kv):
    served.reuse_kv = reuse_kv
    ids, mask = _batch()
    adapters = ["long", None, "short"]
    logits = served(ids, adapters, attention_mask=mask)
    tokens = served.generate(ids, adapters, attention_mask=mask, **GENERATE)
    for row, name in enumerate(adapters):
        alone = ids[row][mask[row].bool()][None]
        torch.testing.assert_close(logits[row, -alone.shape[1] :], served(alone, [name])[0], atol=1e-4, rtol=0)
        assert torch.equal(tokens[row, -5:], served.generate(alone, [name], **GENERATE)[0, -5:])


def test_kv_is_computed_once_per_prompt(served):
    ids, mask = _batch()
    for _ in range(4):
        served.generate(ids, ["long", "long", "short"], attention_mask=mask, max_new_tokens=1)
    stats = served.kv_cache_stats()
    # One lookup per distinct prompt per call, not per row: 4 calls x 2 prompts, the first two computing.
    assert (stats.entries, stats.misses, stats.hits) == (2, 2, 6)
    assert 0 < stats.bytes <= stats.max_bytes


def test_kv_cache_is_bounded(family):
    server = MultiPromptModel(make_model(family))
    server.add("probe", _prompt(20, 99))
    server(torch.tensor([[5, 6]]), ["probe"])
    one_entry = server.kv_cache_stats().bytes
    server.kv_cache.max_bytes = int(2.5 * one_entry)
    for index in range(6):
        server.add(f"p{index}", _prompt(20, index))
        server(torch.tensor([[5, 6]]), [f"p{index}"])
    stats = server.kv_cache_stats()
    assert stats.bytes <= 2.5 * one_entry and stats.evictions > 0 and stats.entries == 2


def test_readding_a_name_drops_its_old_keys_values(served):
    ids = torch.tensor([[5, 6, 7]])
    before = served(ids, ["short"])
    served.add("short", _prompt(2, 42))
    assert (served(ids, ["short"]) - before).abs().max() > 1e-3


def test_add_from_folder_peft_model_and_export(tmp_path):
    base = make_model()
    peft_model = get_peft_model(base, SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, init_seed=0))
    peft_model.save_pretrained(tmp_path / "ours")
    export_prompt_tuning(tmp_path / "ours", tmp_path / "stock")
    server = MultiPromptModel(base)
    server.add("folder", tmp_path / "ours")
    server.add("stock", str(tmp_path / "stock"))
    server.add("model", peft_model)
    expected = peft_model.prompt_encoder["default"].prompt().detach()
    for name in ("folder", "stock", "model"):
        torch.testing.assert_close(server.prompt(name), expected)
    assert server.names == ["folder", "stock", "model"]
    server.remove("stock")
    assert "stock" not in server and len(server) == 2


def test_capacity_evicts_least_recently_used_and_reloads_from_folder(tmp_path):
    base = make_model()
    peft_model = get_peft_model(base, SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, init_seed=0))
    peft_model.save_pretrained(tmp_path)
    server = MultiPromptModel(base, capacity=2)
    server.add("disk", tmp_path)
    server.add("a", _prompt(3, 1))
    server(torch.tensor([[5]]), ["disk"])  # touch: "a" is now least recently used
    server.add("b", _prompt(3, 2))
    assert server.names == ["disk", "b"]
    with pytest.raises(AdapterNotFoundError, match="'a'"):
        server(torch.tensor([[5]]), ["a"])
    server.add("c", _prompt(3, 3))  # evicts "disk", which can come back from its folder
    assert "disk" not in server.names and "disk" in server
    server(torch.tensor([[5]]), ["disk"])
    assert "disk" in server.names and len(server) == 2


def test_refuses_bad_prompts(tmp_path):
    server = MultiPromptModel(make_model())
    with pytest.raises(HiddenSizeMismatchError, match="hidden size is 32"):
        server.add("wide", _prompt(3, 0, hidden=48))
    with pytest.raises(NonFiniteTensorError):
        server.add("nan", torch.full((3, 32), float("inf")))
    with pytest.raises(InvalidAdapterError, match="adapter_config.json"):
        server.add("empty", tmp_path)
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "SOFT_PROMPT"}')
    with pytest.raises(InvalidAdapterConfigError, match="num_virtual_tokens"):
        server.add("incomplete", tmp_path)
    SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=3, token_dim=32).save_pretrained(tmp_path)
    (tmp_path / "adapter_model.bin").write_bytes(b"not even a pickle")
    with pytest.raises(PickleRefusedError, match="allow_pickle"):
        server.add("pickle", tmp_path)
    (tmp_path / "adapter_model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CorruptAdapterError, match="safetensors"):
        server.add("corrupt", tmp_path)
    assert server.names == []


def test_texts_in_texts_out(tiny_tokenizer):
    server = MultiPromptModel(make_model(), tiny_tokenizer)
    server.add("coach", _prompt(4, 0))
    answers = server.generate(["be kind", "hello world quote"], ["coach", None], max_new_tokens=3)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def test_concurrent_requests_on_different_prompts(served):
    ids = torch.tensor([[5, 6, 7, 8]])
    expected = {name: served.generate(ids, [name], **GENERATE) for name in ("short", "long", None)}
    failures: list[str] = []

    def client(name, rounds=6):
        for _ in range(rounds):
            with served.using(name):
                got = served.generate(ids, **GENERATE)
            if not torch.equal(got, expected[name]):
                failures.append(str(name))

    threads = [threading.Thread(target=client, args=(name,)) for name in ("short", "long", None) * 3]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_bad_requests_are_named_errors(served):
    from peft_ext.errors import InvalidConfigError, InvalidRequestError

    with pytest.raises(InvalidRequestError, match="one name per row"):
        served(torch.tensor([[5, 6], [7, 8]]), ["short"])
    with pytest.raises(InvalidRequestError, match="tokenizer"):
        served.generate(["some text"], ["short"])
    with pytest.raises(InvalidConfigError, match="capacity"):
        MultiPromptModel(served.model, capacity=0)
    with pytest.raises(InvalidConfigError, match="name"):
        served.add("", _prompt(2, 0))


def _tiny_t5():
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    config = T5Config(
        vocab_size=64,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        initializer_factor=4.0,
    )
    return T5ForConditionalGeneration(config).eval()


def test_encoder_decoder_rows_equal_alone_by_recomputation():
    server = MultiPromptModel(_tiny_t5())
    assert not server.reuse_kv  # a bidirectional encoder cannot reuse prompt keys/values
    server.add("short", _prompt(2, 0))
    server.add("long", _prompt(6, 1))
    ids = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12], [13, 14, 0, 0, 0]])  # right padded
    mask = (ids != 0).long()
    adapters = ["long", "short", None]
    decoder = torch.tensor([[0, 20, 21]] * 3)
    logits = server(ids, adapters, attention_mask=mask, decoder_input_ids=decoder)
    tokens = server.generate(ids, adapters, attention_mask=mask, **GENERATE)
    for row, name in enumerate(adapters):
        alone = ids[row][mask[row].bool()][None]
        torch.testing.assert_close(
            logits[row], server(alone, [name], decoder_input_ids=decoder[:1])[0], atol=1e-4, rtol=0
        )
        assert torch.equal(tokens[row], server.generate(alone, [name], **GENERATE)[0])
    bare = server(ids, [None] * 3, attention_mask=mask, decoder_input_ids=decoder)
    assert (bare[0] - logits[0]).abs().max() > 1e-3  # the prompt does change the answer


def test_absolute_position_encoder_decoder_is_refused():
    from transformers import BartConfig, BartForConditionalGeneration

    from peft_ext.errors import UnsupportedModelError

    config = BartConfig(
        vocab_size=64,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=64,
    )
    with pytest.raises(UnsupportedModelError, match="absolute positions"):
        MultiPromptModel(BartForConditionalGeneration(config))


def test_the_callers_tokenizer_is_never_changed(tiny_tokenizer, tmp_path):
    """Batching texts needs a pad id; MultiPromptModel and training take EOS without setting the caller's pad token."""
    from peft_ext.training import train_soft_prompts

    tiny_tokenizer.pad_token = None
    assert tiny_tokenizer.pad_token_id is None
    server = MultiPromptModel(make_model(), tiny_tokenizer)
    server.add("coach", _prompt(3, 0))
    texts = ["be kind", "there are two nice things"]
    batched = server.generate(texts, ["coach", "coach"], **GENERATE)
    assert batched == [server.generate([text], ["coach"], **GENERATE)[0] for text in texts]  # padding was right
    model = get_peft_model(make_model(), SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=3, init_seed=0))
    train_soft_prompts(model, tiny_tokenizer, texts, tmp_path, max_steps=1, batch_size=2, show_progress=False)
    assert tiny_tokenizer.pad_token is None and tiny_tokenizer.padding_side == "left"


def test_servers_on_one_model_share_one_bounded_cache():
    model = make_model()
    first = MultiPromptModel(model, kv_cache_bytes=10_000)
    second = MultiPromptModel(model)  # no bound given: the first one's stays
    assert second.kv_cache is first.kv_cache and first.kv_cache.max_bytes == 10_000
    MultiPromptModel(model, kv_cache_bytes=20_000)
    assert first.kv_cache.max_bytes == 20_000
    assert MultiPromptModel(make_model()).kv_cache.max_bytes == DEFAULT_MAX_BYTES  # another model, its own cache
