"""prompt_embeds for vLLM: [soft prompt; embedded text], which the base model runs exactly as PEFT runs the adapter.

The last test serves the tensor with real vLLM and runs only where ``vllm`` is importable.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from peft import PeftModel, get_peft_model
from tiny_models import make_model
from transformers import LlamaConfig, LlamaForCausalLM

from peft_ext import SoftPromptConfig, adapter_prompt, export_prompt_tuning
from peft_ext.errors import (
    AdapterNotFoundError,
    HiddenSizeMismatchError,
    InvalidAdapterError,
    InvalidPromptTensorError,
    InvalidRequestError,
    NonFiniteTensorError,
    PeftExtError,
    UnsupportedModelError,
)
from peft_ext.vllm import embeds_prompt, prompt_embeds

TEXT = "there are two nice things that should matter to you"


def _prompted(base: torch.nn.Module) -> PeftModel:
    model = get_peft_model(base, SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, init_seed=0))
    model.add_adapter("quotes", SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=6, init_seed=1))
    return model.eval()


def _ids(tokenizer) -> list[int]:
    return tokenizer(TEXT)["input_ids"]


def _positions_kwargs(model: torch.nn.Module, length: int) -> dict[str, torch.Tensor]:
    """Positions 0..length-1, for the models whose forward takes them (Bloom's ALiBi counts from the mask)."""
    if "position_ids" in inspect.signature(model.forward).parameters:
        return {"position_ids": torch.arange(length)[None]}
    return {}


def test_is_the_prompt_then_the_embedded_text(tiny_tokenizer):
    model = _prompted(make_model())
    ids = _ids(tiny_tokenizer)
    embeds = prompt_embeds(model, model, ids)
    embedding = model.get_input_embeddings()
    assert embeds.shape == (4 + len(ids), 32)
    assert embeds.dtype == embedding.weight.dtype and embeds.device == embedding.weight.device
    assert not embeds.requires_grad and embeds.is_contiguous()
    torch.testing.assert_close(embeds[:4], adapter_prompt(model, "default"), atol=0, rtol=0)
    torch.testing.assert_close(embeds[4:], embedding(torch.tensor(ids)), atol=0, rtol=0)
    quotes = prompt_embeds(model, model, ids, adapter_name="quotes")
    assert quotes.shape == (6 + len(ids), 32)
    torch.testing.assert_close(quotes[:6], adapter_prompt(model, "quotes"), atol=0, rtol=0)
    assert embeds_prompt(model, model, ids, adapter_name="quotes").keys() == {"prompt_embeds"}
    torch.testing.assert_close(embeds_prompt(model, model, ids, adapter_name="quotes")["prompt_embeds"], quotes)


def test_every_way_of_naming_the_embeddings_prompt_and_ids_agrees(tiny_tokenizer, tmp_path):
    base = make_model()
    model = _prompted(base)
    ids = _ids(tiny_tokenizer)
    expected = prompt_embeds(model, model, ids)
    prompt = adapter_prompt(model, "default").detach()
    model.save_pretrained(tmp_path / "adapter")
    stock = export_prompt_tuning(tmp_path / "adapter", tmp_path / "stock")
    embedding = base.get_input_embeddings()
    for embeddings in (model, base, embedding, embedding.weight):
        for source in (prompt, tmp_path / "adapter", str(tmp_path / "adapter"), stock, model):
            for token_ids in (
                ids,
                tuple(ids),
                np.array(ids),
                torch.tensor(ids),
                torch.tensor([ids], dtype=torch.int32),
            ):
                torch.testing.assert_close(prompt_embeds(embeddings, source, token_ids), expected, atol=0, rtol=0)
    torch.testing.assert_close(prompt_embeds(base, prompt, []), prompt)  # no text: the prompt alone


def test_base_model_on_prompt_embeds_gives_peft_logits_and_tokens(family, tiny_tokenizer):
    model = _prompted(make_model(family))
    base = model.get_base_model()
    ids = torch.tensor([_ids(tiny_tokenizer)])
    for name in ("default", "quotes"):
        embeds = prompt_embeds(base, model, ids, adapter_name=name)
        with torch.no_grad():
            direct = base(inputs_embeds=embeds[None], **_positions_kwargs(base, embeds.shape[0])).logits
            peft = model(input_ids=ids, adapter_names=[name]).logits
        torch.testing.assert_close(direct, peft, atol=1e-5, rtol=1e-5)  # PEFT's logits cover the prompt block too
        greedy = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
        served = base.generate(inputs_embeds=embeds[None], attention_mask=torch.ones(1, embeds.shape[0]), **greedy)
        assert torch.equal(served, model.generate(input_ids=ids, adapter_names=[name], **greedy)[:, ids.shape[1] :])


def test_dtype_follows_the_embeddings_or_the_override(tiny_tokenizer):
    model = _prompted(make_model())
    ids = _ids(tiny_tokenizer)
    assert prompt_embeds(model, model, ids, dtype=torch.bfloat16).dtype == torch.bfloat16
    half = make_model().to(torch.bfloat16)
    fp32_prompt = adapter_prompt(model, "default").detach()
    embeds = prompt_embeds(half, fp32_prompt, ids)
    assert embeds.dtype == torch.bfloat16
    torch.testing.assert_close(embeds[:4], fp32_prompt.to(torch.bfloat16), atol=0, rtol=0)


def test_bad_inputs_raise_named_errors(tiny_tokenizer, tmp_path):
    model = _prompted(make_model())
    ids = _ids(tiny_tokenizer)
    cases = [
        (HiddenSizeMismatchError, "16 wide", (model, torch.zeros(4, 16), ids), {}),
        (InvalidPromptTensorError, "shape", (model, torch.zeros(32), ids), {}),
        (InvalidPromptTensorError, "dtype", (model, torch.zeros(4, 32, dtype=torch.long), ids), {}),
        (NonFiniteTensorError, "NaN", (model, torch.full((4, 32), float("nan")), ids), {}),
        (InvalidRequestError, r"\[0, 64\)", (model, model, [5, 64]), {}),
        (InvalidRequestError, r"\[0, 64\)", (model, model, [-1]), {}),
        (InvalidRequestError, "one request", (model, model, torch.tensor([[5, 6], [7, 8]])), {}),
        (InvalidRequestError, "one request", (model, model, [5.0, 6.0]), {}),
        (InvalidRequestError, "one request", (model, model, torch.tensor([5.0])), {}),
        (InvalidRequestError, "one request", (model, model, TEXT), {}),
        (InvalidRequestError, "one request", (model, model, 5), {}),
        (InvalidRequestError, "embedding matrix", (torch.zeros(64, 32, dtype=torch.long), model, ids), {}),
        (InvalidRequestError, "Cannot embed", (object(), model, ids), {}),
        (AdapterNotFoundError, "missing", (model, model, ids), {"adapter_name": "missing"}),
        (InvalidRequestError, "no soft prompt", (model, model, ids), {"adapter_name": "__base__"}),
        (InvalidAdapterError, "adapter_config.json", (model, tmp_path, ids), {}),
        (InvalidAdapterError, "Cannot read", (model, 3.5, ids), {}),
    ]
    for error, message, args, kwargs in cases:
        with pytest.raises(error, match=message):
            prompt_embeds(*args, **kwargs)
        assert issubclass(error, PeftExtError)


def test_refuses_lora_adapters_and_encoder_decoder_models(tmp_path, tiny_tokenizer):
    from peft import LoraConfig
    from transformers import T5Config, T5ForConditionalGeneration

    lora = get_peft_model(make_model(), LoraConfig(task_type="CAUSAL_LM", target_modules=["q_proj"], r=2))
    lora.save_pretrained(tmp_path / "lora")
    with pytest.raises(InvalidAdapterError, match="LORA"):
        prompt_embeds(make_model(), tmp_path / "lora", _ids(tiny_tokenizer))
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=64, d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16))
    with pytest.raises(UnsupportedModelError, match="encoder-decoder"):
        prompt_embeds(t5, torch.zeros(4, 32), _ids(tiny_tokenizer))


# --- real vLLM ------------------------------------------------------------------------------------------------------


def _vllm_sized_llama() -> LlamaForCausalLM:
    """A tiny Llama with 64-wide attention heads (the head sizes vLLM's attention kernels take)."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        initializer_range=0.2,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval()


def _greedy(model: torch.nn.Module, embeds: torch.Tensor, steps: int) -> list[int]:
    """Greedy tokens of ``model`` from input embeddings, not stopping at EOS (like vLLM with ``ignore_eos``)."""
    tokens: list[int] = []
    with torch.no_grad():
        for _ in range(steps):
            token = int(model(inputs_embeds=embeds[None]).logits[0, -1].argmax())
            tokens.append(token)
            embeds = torch.cat([embeds, model.get_input_embeddings()(torch.tensor([token]))])
    return tokens


def test_vllm_serves_soft_prompts_as_peft_does(tmp_path, tiny_tokenizer):
    """Two soft prompts (4 and 6 tokens) in one vLLM batch: greedy tokens equal the base model's on the same input."""
    vllm = pytest.importorskip("vllm")
    base = _vllm_sized_llama()
    model = _prompted(base)
    model.save_pretrained(tmp_path / "adapters")  # "default" in the folder, "quotes" in its subfolder
    base.save_pretrained(tmp_path / "base")
    tiny_tokenizer.save_pretrained(tmp_path / "base")
    ids = _ids(tiny_tokenizer)
    requests = [embeds_prompt(base, tmp_path / "adapters", ids), embeds_prompt(base, tmp_path / "adapters/quotes", ids)]
    expected = [_greedy(base, request["prompt_embeds"], 6) for request in requests]
    with torch.no_grad():  # the first token is what PEFT's own forward with each adapter predicts
        for name, tokens in zip(("default", "quotes"), expected, strict=True):
            assert tokens[0] == int(model(input_ids=torch.tensor([ids]), adapter_names=[name]).logits[0, -1].argmax())
    assert _greedy(base, base.get_input_embeddings()(torch.tensor(ids)), 6) not in expected  # the prompts matter

    llm = vllm.LLM(
        model=str(tmp_path / "base"),
        enable_prompt_embeds=True,
        dtype="float32",
        enforce_eager=True,
        max_model_len=64,
        gpu_memory_utilization=0.2,
        seed=0,
    )
    outputs = llm.generate(requests, vllm.SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True))
    assert [list(output.outputs[0].token_ids) for output in outputs] == expected
