"""vLLM's tokenizer routes (``/tokenize``, ``/detokenize``, ``/tokenizer_info``), read by lm-evaluation-harness's own
``RemoteTokenizer`` (what ``tokenizer_backend=remote``/``auto`` uses): a client needs no local copy of the tokenizer."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from lm_eval.utils import RemoteTokenizer, check_remote_tokenizer_support
from serving_testutils import CHAT_TEMPLATE, make_serving_tokenizer, prompt_tensor, running
from tiny_models import make_model

from peft_ext.serving.server import Server
from peft_ext.serving.service import Service

TEXT = "the coach motivate you"
KEY = "sk-tokenizer-test"


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    service = Service(make_model("llama"), make_serving_tokenizer(), base_name="tiny")
    service.add("shallow", prompt_tensor(1))
    with running(service, api_key=KEY) as server:
        yield server


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=300, headers={"Authorization": f"Bearer {KEY}"}) as client:
        yield client


def test_lm_evals_remote_tokenizer_tokenizes_as_the_server(server: Server) -> None:
    tokenizer = make_serving_tokenizer()
    base_url = f"{server.url}/v1/completions"
    assert check_remote_tokenizer_support(base_url, auth_token=KEY)
    remote = RemoteTokenizer(base_url, auth_token=KEY)
    assert remote.encode(TEXT) == tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    ids = tokenizer(TEXT)["input_ids"]
    assert remote.decode(ids) == tokenizer.decode(ids)
    assert remote.eos_token == tokenizer.eos_token and remote.eos_token_id == tokenizer.eos_token_id
    chat = [{"role": "user", "content": "hello"}]
    assert remote.apply_chat_template(chat) == tokenizer.apply_chat_template(
        chat, add_generation_prompt=True, tokenize=False
    )


def test_tokenize_answers_as_vllm(http: httpx.Client) -> None:
    tokenizer = make_serving_tokenizer()
    ids = tokenizer(TEXT)["input_ids"]
    body = http.post("/tokenize", json={"model": "shallow", "prompt": TEXT, "return_token_strs": True}).json()
    assert body == {
        "count": len(ids),
        "max_model_len": 128,
        "tokens": ids,
        "token_strs": [tokenizer.decode([i]) for i in ids],
    }
    chat = [{"role": "user", "content": "hi"}]
    for add_generation_prompt in (True, False):
        got = http.post("/tokenize", json={"messages": chat, "add_generation_prompt": add_generation_prompt}).json()
        text = tokenizer.apply_chat_template(chat, add_generation_prompt=add_generation_prompt, tokenize=False)
        assert got["tokens"] == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert http.post("/detokenize", json={"tokens": ids}).json() == {"prompt": tokenizer.decode(ids)}
    info = http.get("/tokenizer_info").json()
    assert info["eos_token"] == tokenizer.eos_token and info["chat_template"] == CHAT_TEMPLATE
    assert info["model_max_length"] == 128


def test_tokenizer_routes_need_the_key_and_a_known_model(server: Server, http: httpx.Client) -> None:
    with httpx.Client(base_url=server.url, timeout=300) as anonymous:
        assert anonymous.get("/tokenizer_info").status_code == 401
        assert anonymous.post("/tokenize", json={"prompt": TEXT}).status_code == 401
    unknown = http.post("/tokenize", json={"model": "nope", "prompt": TEXT})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    both = http.post("/tokenize", json={"prompt": TEXT, "messages": [{"role": "user", "content": "x"}]})
    assert both.status_code == 400 and "not both" in both.json()["error"]["message"]
    outside = http.post("/detokenize", json={"tokens": [5, 10**6]})
    assert outside.status_code == 400 and "vocabulary" in outside.json()["error"]["message"]
