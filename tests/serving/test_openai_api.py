"""The server through the official ``openai`` client: completions and chat, whole and streamed, prompts by name and
by store version constraint, /v1/models, stop strings, seeded sampling, and THE EXACTNESS TEST: concurrent requests
over 8 prompts give, token for token, what each request gives alone through ``MultiPromptModel.generate``."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from serving_testutils import PROMPT_NAMES, REPO, Gate, reference, running, spy_on_submit, wait_for, words

from peft_ext.serving.server import Server
from peft_ext.serving.service import Service

COACH = f"{REPO}:coach"
TEXTS = [
    "the coach motivate you",
    "i want you to act as a good coach",
    "hello world",
    "be kind always smile there are two nice things",
]


GATE = Gate()  # the module's service holds its decoding steps while this is closed


@pytest.fixture(scope="module")
def service(make_service: Any) -> Service:
    return make_service(step_hook=GATE)


@pytest.fixture(scope="module")
def server(service: Service) -> Iterator[Server]:
    with running(service) as server:
        yield server


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def test_completions_whole_and_streamed(service: Service, client: openai.OpenAI) -> None:
    ids = service.encode_text(TEXTS[0])
    expected, reason = reference(service, "p1", ids, 10)
    whole = client.completions.create(model="p1", prompt=TEXTS[0], max_tokens=10, temperature=0)
    choice = whole.choices[0]
    assert (whole.object, whole.model, choice.index) == ("text_completion", "p1", 0)
    assert choice.text.split() == words(service.tokenizer, expected) and choice.finish_reason == reason
    assert whole.usage is not None and whole.usage.prompt_tokens == len(ids)
    assert whole.usage.completion_tokens == len(expected) + (reason == "stop")  # an EOS counts, as OpenAI's does
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens

    ranked = client.completions.create(model="p1", prompt=TEXTS[0], max_tokens=10, temperature=0, logprobs=2)
    logprobs = ranked.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens == [service.token_text(i) for i in expected]
    for chosen, value, top in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, strict=True):
        assert len(top) == 2 and max(top.values()) == value == top[chosen] < 0  # greedy: the likeliest token
    for token, offset in zip(logprobs.tokens, logprobs.text_offset, strict=True):  # where each word's text starts
        assert ranked.choices[0].text[offset:].startswith(f" {token}")

    chunks = list(client.completions.create(model="p1", prompt=TEXTS[0], max_tokens=10, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == choice.text
    assert [c.choices[0].finish_reason for c in chunks] == [None] * (len(chunks) - 1) + [reason]
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].object == "text_completion"


def test_chat_by_version_constraint_whole_and_streamed(service: Service, client: openai.OpenAI) -> None:
    messages: Any = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hello world"}]
    chat = client.chat.completions.create(model=f"{COACH}@^1.0", messages=messages, max_tokens=8, temperature=0)
    assert chat.model == f"{COACH}@1.1.0" and chat.object == "chat.completion"  # ^1.0: the newest 1.x
    ids = service.encode_chat(messages)
    expected, reason = reference(service, f"{COACH}@1.1.0", ids, 8)
    message = chat.choices[0].message
    assert message.role == "assistant" and message.content is not None
    assert message.content.split() == words(service.tokenizer, expected) and chat.choices[0].finish_reason == reason
    assert chat.usage is not None and chat.usage.prompt_tokens == len(ids)

    chunks = list(
        client.chat.completions.create(
            model=f"{COACH}@^1.0",
            messages=messages,
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].object == "chat.completion.chunk"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == reason
    assert chunks[-1].choices == [] and chunks[-1].usage == chat.usage  # include_usage: a last chunk with usage

    both = client.chat.completions.create(
        model=f"{COACH}@^1.0", messages=messages, max_tokens=8, temperature=0, n=2, stream=True
    )
    texts: dict[int, str] = {}
    for chunk in both:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
    assert texts == {0: message.content, 1: message.content}  # n=2 streamed, interleaved by index

    pinned = client.chat.completions.create(model=f"{COACH}@~1.0", messages=messages, max_tokens=8, temperature=0)
    assert pinned.model == f"{COACH}@1.0.0"  # ~1.0: 1.0.x only
    older, _ = reference(service, f"{COACH}@1.0.0", ids, 8)
    assert (pinned.choices[0].message.content or "").split() == words(service.tokenizer, older)


def test_models_lists_the_base_and_every_prompt_with_its_version(client: openai.OpenAI) -> None:
    client.completions.create(model=f"{COACH}@1.0.0", prompt="hello", max_tokens=1)
    listed = {model.id: model.to_dict() for model in client.models.list().data}
    assert {"tiny", *PROMPT_NAMES, f"{COACH}@1.0.0"} <= set(listed)
    assert listed["tiny"]["parent"] is None and listed["p0"]["parent"] == "tiny"
    assert listed[f"{COACH}@1.0.0"]["version"] == "1.0.0" and listed["p0"].get("version") is None
    assert all(card["object"] == "model" and card["owned_by"] for card in listed.values())


def _ids(service: Service, tokens: list[str]) -> list[int]:
    return [int(service.tokenizer.convert_tokens_to_ids(token)) for token in tokens]


def _ask(client: openai.OpenAI, service: Service, kind: str, model: str, text: str, max_tokens: int) -> Any:
    """One request of ``kind``; returns its token ids (read from the logprobs), finish reason and text."""
    common: Any = {"model": model, "max_tokens": max_tokens, "temperature": 0}
    if kind.startswith("completion"):
        if kind == "completion":
            choice = client.completions.create(prompt=text, logprobs=0, **common).choices[0]
            return _ids(service, choice.logprobs.tokens), choice.finish_reason, choice.text
        tokens, reason, pieces = [], None, []
        for chunk in client.completions.create(prompt=text, logprobs=0, stream=True, **common):
            tokens += chunk.choices[0].logprobs.tokens if chunk.choices[0].logprobs else []
            pieces.append(chunk.choices[0].text)
            reason = chunk.choices[0].finish_reason or reason
        return _ids(service, tokens), reason, "".join(pieces)
    messages: Any = [{"role": "user", "content": text}]
    if kind == "chat":
        choice = client.chat.completions.create(messages=messages, logprobs=True, **common).choices[0]
        return _ids(service, [t.token for t in choice.logprobs.content]), choice.finish_reason, choice.message.content
    tokens, reason, pieces = [], None, []
    for chunk in client.chat.completions.create(messages=messages, logprobs=True, stream=True, **common):
        delta = chunk.choices[0]
        tokens += [t.token for t in delta.logprobs.content] if delta.logprobs else []
        pieces.append(delta.delta.content or "")
        reason = delta.finish_reason or reason
    return _ids(service, tokens), reason, "".join(pieces)


def test_concurrent_requests_equal_each_request_alone(service: Service, client: openai.OpenAI) -> None:
    """THE EXACTNESS TEST: 32 clients at once over 8 prompts (one pulled from the store by constraint), completions
    and chat, whole and streamed, different lengths, temperature 0: each one's tokens are those of the same request
    run alone through ``MultiPromptModel.generate``."""
    models = [*PROMPT_NAMES, f"{COACH}@^1.0"]
    kinds = ["completion", "completion-stream", "chat", "chat-stream"]
    requests = [(kinds[(i + i // 8) % 4], models[i % 8], TEXTS[(i // 8) % 4], 6 + (i % 7) * 2) for i in range(32)]
    expected = []
    for kind, model, text, max_tokens in requests:
        ids = (
            service.encode_text(text)
            if kind.startswith("completion")
            else service.encode_chat([{"role": "user", "content": text}])
        )
        expected.append(reference(service, model, ids, max_tokens))

    # Hold decoding until every request is in, so that they are batched together, joining and leaving mid-way.
    gate = GATE
    gate.close()
    finished = service.scheduler.stats().requests_finished
    try:
        with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
            futures = [pool.submit(_ask, client, service, *request) for request in requests]
            wait_for(
                lambda: (
                    (s := service.scheduler.stats()).queued + s.running + s.requests_finished - finished
                    == len(requests)
                ),
                "all 32 requests to be in",
            )
            gate.open()
            answers = [future.result() for future in futures]
    finally:
        gate.open()
    for request, (tokens, reason), (got, got_reason, text) in zip(requests, expected, answers, strict=True):
        assert (got, got_reason) == (tokens, reason), request
        assert text.split() == words(service.tokenizer, tokens), request


def test_seeded_sampling_is_reproducible_per_request(service: Service, client: openai.OpenAI) -> None:
    def sample(seed: int, n: int = 1) -> list[list[str]]:
        answer = client.completions.create(
            model="p3", prompt=TEXTS[1], max_tokens=12, temperature=1.0, seed=seed, n=n, logprobs=0
        )
        return [c.logprobs.tokens for c in sorted(answer.choices, key=lambda c: c.index)]

    alone = sample(11)
    # The same seed amid other traffic: the request owns its random stream, whatever shares its batch.
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        noise = [pool.submit(sample, 100 + i) for i in range(4)]
        busy = pool.submit(sample, 11)
        assert busy.result() == alone
        others = [future.result()[0] for future in noise]
    assert all(other != alone[0] for other in others)  # other seeds draw other tokens
    # n choices use seeds seed, seed + 1, ...: choice j is the single request with seed + j.
    assert sample(11, n=3) == [alone[0], sample(12)[0], sample(13)[0]]


def test_stop_strings_cut_the_text_and_end_the_generation(
    service: Service, client: openai.OpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    common: Any = {"model": "p3", "prompt": TEXTS[1], "temperature": 0, "max_tokens": 40}
    full = client.completions.create(logprobs=0, **common).choices[0]
    tokens = full.logprobs.tokens
    assert len(tokens) >= 6, "the reference answer is too short to hold a stop string"
    stop_at = next(i for i in range(2, len(tokens)) if tokens[i] not in tokens[:i])  # first time this word appears
    stop = tokens[stop_at]
    cut = full.text[: full.text.index(f" {stop}")]

    generations = spy_on_submit(service, monkeypatch)
    answer = client.completions.create(stop=["never said", f" {stop}"], **common)
    assert answer.choices[0].text == cut and answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None and answer.usage.completion_tokens == stop_at + 1
    # The row left the batch at the token that completed the stop string: no token decoded beyond it.
    assert generations[-1].finish_reason == "stop" and len(generations[-1].tokens) == stop_at + 1

    chunks = list(client.completions.create(stop=f" {stop}", stream=True, **common))
    assert "".join(c.choices[0].text for c in chunks) == cut and chunks[-1].choices[0].finish_reason == "stop"
    assert len(generations[-1].tokens) == stop_at + 1
