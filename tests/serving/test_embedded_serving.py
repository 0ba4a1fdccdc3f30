"""Slow: the embedded default model (SmolLM2-135M-Instruct) served over HTTP with its real chat template and byte-level
tokenizer: the chat is encoded as transformers encodes it, and the text answered is the reference tokens' text."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
import torch
from serving_testutils import running

from peft_ext.serving.server import Server
from peft_ext.serving.service import Service

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    from peft_ext.base_models import load_base_model

    model, tokenizer, _ = load_base_model(show_progress=False)
    service = Service(model, tokenizer, base_name="smollm2")
    service.add("coach", model.get_input_embeddings().weight[1000:1008].detach().clone())  # a vocabulary init
    yield service
    service.shutdown(drain=False)


@pytest.fixture(scope="module")
def server(service: Service) -> Iterator[Server]:
    with running(service) as server:
        yield server


def _reference_text(service: Service, ids: list[int], max_tokens: int) -> str:
    output = service.prompts.generate(torch.tensor([ids]), ["coach"], max_new_tokens=max_tokens, do_sample=False)
    new = output[0, len(ids) :].tolist()
    eos = service.tokenizer.eos_token_id
    return str(service.tokenizer.decode(new[: new.index(eos)] if eos in new else new, skip_special_tokens=True))


def test_chat_with_the_real_template(service: Service, server: Server) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    messages: Any = [{"role": "user", "content": "Give me one word of encouragement."}]
    ids = service.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"]
    assert service.encode_chat(messages) == list(ids)
    chat = client.chat.completions.create(model="coach", messages=messages, max_tokens=12, temperature=0)
    assert chat.choices[0].message.content == _reference_text(service, list(ids), 12)
    assert chat.usage is not None and chat.usage.prompt_tokens == len(ids)

    text = "The best advice I ever got was"
    streamed = client.completions.create(model="coach", prompt=text, max_tokens=12, temperature=0, stream=True)
    expected = _reference_text(service, service.encode_text(text), 12)
    assert "".join(chunk.choices[0].text for chunk in streamed) == expected
