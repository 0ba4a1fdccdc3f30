"""The service behind the HTTP layer, without HTTP: encoding (chat template), context limits, client token ids,
end of sequence, all-or-none submission of n choices, and one-shot generation."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from serving_testutils import (
    Gate,
    make_serving_tokenizer,
    prompt_tensor,
    reference,
    wait_for,
    words,
)
from tiny_models import make_model, make_tokenizer

from peft_ext.errors import ChatTemplateError, ContextLengthError, InvalidRequestError, ServerBusyError
from peft_ext.serving.sampling import SamplingParams
from peft_ext.serving.service import Service

TEXT = "i want you to act as a good coach"


@pytest.fixture(scope="module")
def service(make_service: Any) -> Service:
    return make_service()


def test_chat_messages_go_through_the_chat_template(service: Service) -> None:
    messages = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hello world"}]
    rendered = "<s> system be kind </s> <s> user hello world </s> <s> assistant "  # add_generation_prompt
    assert service.encode_chat(messages) == service.tokenizer(rendered, add_special_tokens=False)["input_ids"]
    no_template = Service(make_model("llama"), make_tokenizer(), base_name="plain")
    try:
        with pytest.raises(ChatTemplateError, match="no chat template"):
            no_template.encode_chat(messages)
    finally:
        no_template.shutdown()


def test_max_tokens_fits_the_context(service: Service) -> None:
    target = service.lookup("p5")  # 7 virtual tokens; the tiny Llama has 128 positions
    inputs = [service.encode_text(TEXT)]  # 9 tokens
    assert service.max_tokens(target, inputs, None, limit=4096) == 128 - 7 - 9  # all the room left
    assert service.max_tokens(target, inputs, None, limit=50) == 50
    assert service.max_tokens(target, inputs, 112, limit=4096) == 112
    with pytest.raises(ContextLengthError, match="maximum context length is 128 tokens; the request needs 129"):
        service.max_tokens(target, inputs, 113, limit=4096)
    with pytest.raises(InvalidRequestError, match="at most 100"):
        service.max_tokens(target, inputs, 101, limit=100)
    with pytest.raises(InvalidRequestError, match="no input tokens"):
        service.max_tokens(target, [service.encode_text("")], 5, limit=100)


def test_client_token_ids_must_be_in_the_vocabulary(service: Service) -> None:
    assert service.token_ids([0, 5, 63]) == [0, 5, 63]
    for wrong in (64, -1, 10**12):
        with pytest.raises(InvalidRequestError, match=f"Token id {wrong} is outside"):
            service.token_ids([5, wrong])


def test_an_end_of_sequence_token_ends_the_answer() -> None:
    """The tokenizer's EOS ends a generation (finish "stop"); it counts as generated but is not part of the text."""
    tokenizer = make_serving_tokenizer()
    tokenizer.eos_token = "assistant"  # a word the tiny model with prompt p1 says early (see test_openai_api)
    eos = tokenizer.eos_token_id
    service = Service(make_model("llama"), tokenizer, base_name="tiny")
    try:
        service.add("p1", prompt_tensor(1, length=3))
        for text in ("the coach motivate you", "be kind always smile there are two nice things"):
            ids = service.encode_text(text)
            output = service.prompts.generate(
                torch.tensor([ids]), ["p1"], max_new_tokens=20, do_sample=False, eos_token_id=[1, eos], pad_token_id=0
            )[0, len(ids) :].tolist()
            assert eos in output
            run = service.start(service.lookup("p1"), [ids], SamplingParams(max_tokens=20, temperature=0))
            [choice] = run.wait()
            expected = output[: output.index(eos)]
            assert [t.id for t in choice.tokens] == expected and choice.finish_reason == "stop"
            assert run.completion_tokens == len(expected) + 1 and "assistant" not in choice.text
    finally:
        service.shutdown()


def test_n_choices_are_queued_all_or_none(make_service: Any) -> None:
    gate = Gate()
    service = make_service(max_running=1, max_queued=1, step_hook=gate)
    gate.close()
    try:
        target, ids = service.lookup("p0"), service.encode_text(TEXT)
        busy = service.start(target, [ids], SamplingParams(max_tokens=3, temperature=0))
        wait_for(lambda: service.scheduler.stats().running == 1, "the first request to run")
        with pytest.raises(ServerBusyError, match="room for 1 more generations, this request needs 2"):
            service.start(target, [ids], SamplingParams(max_tokens=3), n=2)  # one would fit: none is queued
        assert service.scheduler.stats().queued == 0
        # More than the server can ever hold is the client's error, not a reason to retry.
        with pytest.raises(InvalidRequestError, match="at most 2"):
            service.start(target, [ids, ids], SamplingParams(max_tokens=3), n=2)
        assert service.scheduler.stats().queued == 0
    finally:
        gate.open()
    assert busy.wait()[0].finish_reason == "length"


def test_generate_is_one_shot_completion(service: Service) -> None:
    texts = [TEXT, "hello world"]
    choices = service.generate("p4", texts, SamplingParams(max_tokens=6, temperature=0))
    for text, choice in zip(texts, choices, strict=True):
        expected, reason = reference(service, "p4", service.encode_text(text), 6)
        assert choice.text.split() == words(service.tokenizer, expected) and choice.finish_reason == reason
