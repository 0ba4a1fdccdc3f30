"""Bad requests get OpenAI's error shape and the right status, never a 500, and the server stays up and healthy:
malformed bodies, wrong types, unknown models, a prompt for another base model, a missing API key, a full queue
(429 with Retry-After), an over-long body (413) and a server shutting down (503)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serving_testutils import REPO, Gate, running, wait_for

from peft_ext.serving.server import Server

OK = {"model": "p0", "prompt": "hello world", "max_tokens": 2, "temperature": 0}
CHAT_OK = {"model": "p0", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2, "temperature": 0}
API_KEY = "sk-test-0123456789abcdef"


@pytest.fixture(scope="module")
def server(make_service: Any) -> Iterator[Server]:
    with running(make_service()) as server:
        yield server


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=300) as client:
        yield client


def assert_openai_error(
    response: httpx.Response, status: int, code: str | None = None, param: str | None = None
) -> str:
    """The response is OpenAI's error shape with this status (and code, param when given); returns the message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    error = body["error"]
    assert isinstance(error["message"], str) and error["message"] and isinstance(error["type"], str)
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    return str(error["message"])


def assert_healthy(http: httpx.Client) -> None:
    assert http.get("/health").json() == {"status": "ok"}
    answer = http.post("/v1/completions", json=OK)
    assert answer.status_code == 200 and answer.json()["choices"][0]["finish_reason"] == "length"


def _with(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**base, **changes}


BAD_COMPLETIONS: list[tuple[Any, int, str | None, str | None]] = [
    # body, status, code, param
    (b"{", 400, "invalid_value", None),
    (b"\xff\xfe{}", 400, None, None),
    (b"[]", 400, "invalid_value", None),
    (b'"text"', 400, "invalid_value", None),
    ({"prompt": "hi"}, 400, "invalid_value", "model"),
    ({"model": "p0"}, 400, "invalid_value", "prompt"),
    (_with(OK, model=5), 400, "invalid_value", "model"),
    (_with(OK, prompt=5), 400, "invalid_value", "prompt"),
    (_with(OK, prompt=[]), 400, "invalid_value", "prompt"),
    (_with(OK, prompt=[5, "a"]), 400, "invalid_value", "prompt"),
    (_with(OK, prompt=[5, 64]), 400, None, None),  # a token id outside the vocabulary
    (_with(OK, prompt=[[5], [-1]]), 400, None, None),
    (_with(OK, prompt=""), 400, None, None),  # no input tokens
    (_with(OK, max_tokens="5"), 400, "invalid_value", "max_tokens"),
    (_with(OK, max_tokens=0), 400, "invalid_value", "max_tokens"),  # 0 only scores an echoed prompt
    (_with(OK, max_tokens=2.5), 400, "invalid_value", "max_tokens"),
    (_with(OK, max_tokens=True), 400, "invalid_value", "max_tokens"),
    (_with(OK, max_tokens=10**6), 400, None, None),  # over the server's limit
    (_with(OK, max_tokens=126), 400, "context_length_exceeded", None),
    (_with(OK, temperature=-0.5), 400, "invalid_value", "temperature"),
    (_with(OK, temperature=2.5), 400, "invalid_value", "temperature"),
    (_with(OK, temperature="hot"), 400, "invalid_value", "temperature"),
    (_with(OK, top_p=0), 400, "invalid_value", "top_p"),
    (_with(OK, top_p=1.5), 400, "invalid_value", "top_p"),
    (_with(OK, n=0), 400, "invalid_value", "n"),
    (_with(OK, n=129), 400, "invalid_value", "n"),
    (_with(OK, logprobs=21), 400, "invalid_value", "logprobs"),
    (_with(OK, logprobs="all"), 400, "invalid_value", "logprobs"),
    (_with(OK, stop=5), 400, "invalid_value", "stop"),
    (_with(OK, stop=["a"] * 17), 400, "invalid_value", "stop"),
    (_with(OK, seed=1.5), 400, "invalid_value", "seed"),
    (_with(OK, stream="yes"), 400, "invalid_value", "stream"),
    (_with(OK, stream_options={"include_usage": "yes"}), 400, "invalid_value", "stream_options.include_usage"),
    (_with(OK, echo=True, max_tokens=-1), 400, "invalid_value", "max_tokens"),
    (_with(OK, suffix="!"), 400, "unsupported_parameter", None),
    (_with(OK, best_of=3), 400, "unsupported_parameter", None),
    (_with(OK, presence_penalty=0.5), 400, "unsupported_parameter", None),
    (_with(OK, frequency_penalty=1), 400, "unsupported_parameter", None),
    (_with(OK, logit_bias={"5": 10}), 400, "unsupported_parameter", None),
    (_with(OK, model="nope"), 404, "model_not_found", "model"),
    (_with(OK, model=f"{REPO}:missing@1.0.0"), 404, "model_not_found", "model"),
    (_with(OK, model=f"{REPO}:coach@9.0.0"), 404, "model_not_found", "model"),
    (_with(OK, model=f"{REPO}:coach@^x"), 400, "invalid_model_reference", "model"),
    (_with(OK, model="No Such Repo:coach"), 400, "invalid_model_reference", "model"),
]
BAD_CHATS: list[tuple[Any, int, str | None, str | None]] = [
    ({"model": "p0"}, 400, "invalid_value", "messages"),
    (_with(CHAT_OK, messages=[]), 400, "invalid_value", "messages"),
    (_with(CHAT_OK, messages="hello"), 400, "invalid_value", "messages"),
    (_with(CHAT_OK, messages=[{"role": "robot", "content": "hi"}]), 400, "invalid_value", "messages.0.role"),
    (_with(CHAT_OK, messages=[{"role": "user", "content": 5}]), 400, "invalid_value", "messages.0.content"),
    (
        _with(CHAT_OK, messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
        400,
        "invalid_value",
        "messages.0.content",
    ),
    (_with(CHAT_OK, logprobs="yes"), 400, "invalid_value", "logprobs"),
    (_with(CHAT_OK, top_logprobs=3), 400, "unsupported_parameter", None),  # needs logprobs: true
    (_with(CHAT_OK, logprobs=True, top_logprobs=21), 400, "invalid_value", "top_logprobs"),
    (_with(CHAT_OK, max_completion_tokens=0), 400, "invalid_value", "max_completion_tokens"),
    (_with(CHAT_OK, tools=[{"type": "function", "function": {"name": "f"}}]), 400, "unsupported_parameter", None),
    (_with(CHAT_OK, response_format={"type": "json_object"}), 400, "unsupported_parameter", None),
    (_with(CHAT_OK, model="nope"), 404, "model_not_found", "model"),
]


def _post(http: httpx.Client, path: str, body: Any, **kwargs: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http.post(path, content=content, headers={"content-type": "application/json"}, **kwargs)


def test_bad_requests_get_openai_errors_and_the_server_stays_up(http: httpx.Client) -> None:
    for path, cases in (("/v1/completions", BAD_COMPLETIONS), ("/v1/chat/completions", BAD_CHATS)):
        for body, status, code, param in cases:
            assert_openai_error(_post(http, path, body), status, code, param)
            for streamed in ({**body, "stream": True},) if isinstance(body, dict) and "stream" not in body else ():
                assert_openai_error(_post(http, path, streamed), status, code, param)  # refused before streaming
    assert "context length is 128" in assert_openai_error(
        _post(http, "/v1/completions", _with(OK, max_tokens=126)), 400
    )
    assert_openai_error(http.get("/v1/completions"), 405, "method_not_allowed")
    assert_openai_error(http.post("/v1/nothing", json={}), 404, "not_found")
    assert_openai_error(http.post("/v1/completions", content=b"{}", headers={"content-type": "text/plain"}), 400)
    assert_healthy(http)


def test_unknown_fields_are_ignored_as_openai_does(http: httpx.Client) -> None:
    answer = _post(http, "/v1/completions", _with(OK, user="me", metadata={"a": 1}, some_future_field=[1, 2]))
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 2


def test_a_prompt_for_another_base_model_is_refused_with_the_reason(http: httpx.Client) -> None:
    message = assert_openai_error(
        _post(http, "/v1/completions", _with(OK, model=f"{REPO}:other@^1")), 400, "base_model_mismatch", "model"
    )
    assert "was trained on" in message and "embedding_sha256" in message
    assert_healthy(http)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
FIELDS = {
    "model": st.sampled_from(["p0", "tiny", "nope", f"{REPO}:coach@^1", f"{REPO}:x"]) | JSON,
    "prompt": st.text(alphabet="hello world coach ", max_size=20) | st.lists(st.integers(-2, 70), max_size=5) | JSON,
    "messages": st.lists(
        st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "bot"]), "content": st.text(max_size=10)}),
        max_size=2,
    )
    | JSON,
    "max_tokens": st.integers(-2, 140) | JSON,
    "temperature": st.floats(-1, 3) | JSON,
    "top_p": st.floats(-0.5, 1.5) | JSON,
    "n": st.integers(-1, 3) | JSON,
    "logprobs": st.integers(-1, 22) | st.booleans() | JSON,
    "top_logprobs": st.integers(-1, 22) | JSON,
    "stop": st.text(max_size=3) | st.lists(st.text(max_size=3), max_size=3) | JSON,
    "seed": st.integers(-5, 2**65) | JSON,
    "stream": st.booleans() | JSON,
}


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path=st.sampled_from(["/v1/completions", "/v1/chat/completions"]),
    body=st.fixed_dictionaries({}, optional=FIELDS) | JSON,
)
def test_no_request_body_gets_a_500(http: httpx.Client, path: str, body: Any) -> None:
    response = _post(http, path, body)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert_openai_error(response, response.status_code)
    assert http.get("/health").status_code == 200


def test_the_api_key_is_required_when_set(make_service: Any, caplog: pytest.LogCaptureFixture) -> None:
    with running(make_service(), api_key=API_KEY) as server, httpx.Client(base_url=server.url, timeout=300) as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
            response = http.post("/v1/completions", json=OK, headers=headers)
            assert_openai_error(response, 401, "invalid_api_key")
            assert response.headers["www-authenticate"] == "Bearer" and API_KEY not in response.text
        assert_openai_error(http.get("/v1/models"), 401, "invalid_api_key")
        assert http.get("/health").status_code == 200 and http.head("/health").status_code == 200
        for path in ("/metrics", "/docs", "/openapi.json"):  # prompt names and the API's shape are not public
            assert_openai_error(http.get(path), 401, "invalid_api_key")
        authorized = {"Authorization": f"Bearer {API_KEY}"}
        assert http.post("/v1/completions", json=OK, headers=authorized).status_code == 200
        assert http.get("/v1/models", headers=authorized).status_code == 200
        assert http.get("/metrics", headers=authorized).status_code == 200
        assert http.get("/docs", headers=authorized).status_code == 404  # off unless asked for
    assert API_KEY not in caplog.text


def test_the_docs_are_served_when_asked_for_behind_the_key(make_service: Any) -> None:
    with running(make_service(), api_key=API_KEY, docs=True) as server, httpx.Client(base_url=server.url) as http:
        assert_openai_error(http.get("/openapi.json"), 401, "invalid_api_key")
        authorized = {"Authorization": f"Bearer {API_KEY}"}
        assert http.get("/openapi.json", headers=authorized).json()["info"]["title"] == "peft-ext"
        assert http.get("/docs", headers=authorized).status_code == 200


def test_an_empty_api_key_or_one_with_whitespace_is_refused(make_service: Any) -> None:
    from peft_ext.errors import InvalidConfigError
    from peft_ext.serving.app import create_app

    for bad in ("", "  ", f"{API_KEY}\n", f" {API_KEY}"):
        with pytest.raises(InvalidConfigError, match="API key is empty or has whitespace"):
            create_app(make_service(), api_key=bad)


def test_the_bearer_scheme_is_case_insensitive(make_service: Any) -> None:
    with running(make_service(), api_key=API_KEY) as server, httpx.Client(base_url=server.url, timeout=300) as http:
        for scheme in ("Bearer", "bearer", "BEARER"):
            assert http.get("/v1/models", headers={"Authorization": f"{scheme} {API_KEY}"}).status_code == 200
        assert_openai_error(http.get("/v1/models", headers={"Authorization": f"Basic {API_KEY}"}), 401)


def test_a_full_queue_is_429_with_retry_after(make_service: Any) -> None:
    gate = Gate()
    service = make_service(max_running=1, max_queued=0, step_hook=gate)

    gate.close()
    with running(service) as server, httpx.Client(base_url=server.url, timeout=300) as http:
        try:
            with http.stream("POST", "/v1/completions", json=_with(OK, stream=True, max_tokens=3)) as first:
                lines = first.iter_lines()
                assert next(lines).startswith("data: ")  # the only slot is taken (and held by the gate)
                busy = http.post("/v1/completions", json=OK)
                assert_openai_error(busy, 429, "server_busy")
                assert int(busy.headers["retry-after"]) >= 1
                assert_openai_error(http.post("/v1/chat/completions", json=CHAT_OK), 429, "server_busy")
                assert http.get("/health").status_code == 200
                gate.open()
                rest = [line for line in lines if line]
            assert rest[-1] == "data: [DONE]" and json.loads(rest[-2][6:])["choices"][0]["finish_reason"] == "length"
        finally:
            gate.open()
        assert_healthy(http)


def test_an_over_long_body_is_413(make_service: Any) -> None:
    with running(make_service(), max_request_bytes=10_000) as server, httpx.Client(base_url=server.url) as http:
        huge = json.dumps(_with(OK, prompt="hello " * 50_000)).encode()
        assert_openai_error(_post(http, "/v1/completions", huge), 413, "request_too_large")

        def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            yield b'{"model": "p0", "prompt": "'
            yield from (b"hello " * 1000 for _ in range(20))
            yield b'"}'

        response = http.post("/v1/completions", content=chunked(), headers={"content-type": "application/json"})
        assert_openai_error(response, 413, "request_too_large")
        assert_healthy(http)


def test_a_model_failure_is_a_500_in_openai_shape_and_health_tells_the_truth(make_service: Any) -> None:
    """A decoding step that fails for a reason no request explains ends the requests (an error event once streaming,
    a 500 otherwise), and the server says so: /health is 503 with the reason, /metrics shows it, new requests 503."""
    gate = Gate()
    service = make_service(step_hook=gate)
    with running(service) as server, httpx.Client(base_url=server.url, timeout=300) as http:
        gate.close()
        with http.stream("POST", "/v1/completions", json=_with(OK, stream=True, max_tokens=20)) as streamed:
            assert streamed.status_code == 200
            lines = streamed.iter_lines()
            assert next(lines).startswith("data: ")  # running, held before its second step
            wait_for(gate.waiting.is_set, "the scheduler to be held")
            gate.fail(RuntimeError("the accelerator fell over"))
            gate.open()
            events = [line.removeprefix("data: ") for line in lines if line]
        assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == "generation_failed"
        assert "the accelerator fell over" in json.loads(events[-2])["error"]["message"]
        health = http.get("/health")
        assert health.status_code == 503 and "the accelerator fell over" in health.json()["reason"]
        assert http.head("/health").status_code == 503
        assert "peft_ext_healthy 0.0" in http.get("/metrics").text
        refused = http.post("/v1/completions", json=OK)
        assert_openai_error(refused, 503, "server_shutting_down")


def test_a_model_failure_of_a_whole_answer_is_a_500(make_service: Any) -> None:
    gate = Gate()
    service = make_service(step_hook=gate)
    with running(service) as server, httpx.Client(base_url=server.url, timeout=300) as http:
        gate.fail(RuntimeError("the accelerator fell over"))
        message = assert_openai_error(http.post("/v1/completions", json=_with(OK, max_tokens=5)), 500)
        assert "the accelerator fell over" in message and http.get("/health").status_code == 503


def test_a_server_shutting_down_is_503(make_service: Any) -> None:
    service = make_service()
    with running(service) as server, httpx.Client(base_url=server.url, timeout=300) as http:
        service.shutdown()
        response = http.post("/v1/completions", json=OK)
        assert_openai_error(response, 503, "server_shutting_down")
        assert int(response.headers["retry-after"]) >= 1
        assert http.get("/health").status_code == 503
        wait_for(lambda: not service.healthy(), "the scheduler to stop")
