"""The vLLM bridge: a store reference becomes a Completions request whose ``prompt_embeds`` the base model runs to the
same tokens our own engine computes for that request; one tensor per prompt version, so vLLM's prefix cache hits.

vLLM itself cannot be installed here (CUDA-only wheels): the request is checked by decoding it as vLLM does
(base64 of ``torch.save`` bytes) and running the base model on the embeddings.
"""

from __future__ import annotations

import base64
import io

import pytest
import torch
from peft import get_peft_model
from tiny_models import make_model

import hub
from hub.errors import InvalidNameError
from hub.stores.local import LocalStore
from peft_ext import MultiPromptModel, SoftPromptConfig
from peft_ext.vllm import VllmPrompts, encode_prompt_embeds

REF = "org/prompts:coach@^1.0"


def _push(base: torch.nn.Module, store: LocalStore, tmp_path, seed: int) -> None:
    folder = tmp_path / f"adapter{seed}"
    prompted = get_peft_model(base, SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=5, init_seed=seed))
    prompted.save_pretrained(folder)
    hub.push(folder, "org/prompts", task="coach", store=store, base_model=base)


def _decode(request: dict) -> torch.Tensor:
    """What vLLM does with ``prompt_embeds``: base64, then ``torch.load`` (weights only)."""
    data = base64.b64decode(request["extra_body"]["prompt_embeds"])
    return torch.load(io.BytesIO(data), weights_only=True)


@pytest.fixture
def served(tmp_path):
    base = make_model()
    store = LocalStore(tmp_path / "store")
    _push(make_model(), store, tmp_path, seed=1)
    prompts = VllmPrompts(base, lambda ref: hub.pull(*hub.parse_reference(ref), base_model=base, store=store))
    return base, store, prompts


def test_the_request_runs_to_the_tokens_our_engine_computes(served):
    base, store, prompts = served
    ids = [1, 7, 9, 12, 30, 4]
    request = prompts.completion_request(REF, ids, model="base", max_tokens=6, temperature=0)
    assert (request["model"], request["prompt"], request["max_tokens"], request["temperature"]) == ("base", "", 6, 0)
    embeds = _decode(request)
    assert embeds.shape == (5 + len(ids), base.config.hidden_size)
    with torch.no_grad():
        bridged = base.generate(
            inputs_embeds=embeds[None],
            attention_mask=torch.ones(1, embeds.shape[0], dtype=torch.long),
            max_new_tokens=6,
            do_sample=False,
            pad_token_id=0,
        )[0].tolist()
    server = MultiPromptModel(base)
    server.add("coach", hub.pull("org/prompts", "coach", "1.0.0", store=store))
    ours = server.generate(torch.tensor([ids]), ["coach"], max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert bridged == ours[0, len(ids) :].tolist()


def test_one_tensor_per_version_so_the_prefix_bytes_repeat(served, tmp_path):
    base, store, prompts = served
    first, second = (
        _decode(prompts.completion_request(REF, [3, 4], model="b")),
        _decode(prompts.completion_request(REF, [5, 6, 7], model="b")),
    )
    assert prompts.prompt(REF) is prompts.prompt(REF)  # read once per version
    assert torch.equal(first[:5], second[:5]) and first[:5].numpy().tobytes() == second[:5].numpy().tobytes()
    _push(make_model(), store, tmp_path, seed=2)  # 1.0.1: the constraint now picks another version
    newer = _decode(prompts.completion_request(REF, [3, 4], model="b"))
    assert not torch.equal(newer[:5], first[:5]) and torch.equal(newer[5:], first[5:])


def test_params_and_extra_body_are_kept(served):
    _, _, prompts = served
    request = prompts.completion_request(REF, [3], model="b", seed=4, extra_body={"top_k": 2})
    assert request["seed"] == 4 and request["extra_body"]["top_k"] == 2 and "prompt_embeds" in request["extra_body"]


def test_encoding_is_vllms_torch_save_base64():
    tensor = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    decoded = torch.load(io.BytesIO(base64.b64decode(encode_prompt_embeds(tensor))), weights_only=True)
    assert torch.equal(decoded, tensor)


@pytest.mark.parametrize("bad", ["no-colon", "org/prompts:", ":coach", "../x:coach", "org/prompts:Bad Task"])
def test_a_bad_reference_is_a_named_error(bad):
    with pytest.raises(InvalidNameError):
        hub.parse_reference(bad)


def test_a_reference_parses_with_latest_by_default():
    assert hub.parse_reference("org/prompts:coach") == ("org/prompts", "coach", "latest")
    assert hub.parse_reference("org/prompts:coach@^1.2") == ("org/prompts", "coach", "^1.2")
