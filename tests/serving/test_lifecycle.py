"""A request's life beyond its answer: a client that hangs up cancels its generation and frees its row, and a
graceful shutdown finishes the requests already accepted (running and queued) before the server exits."""

from __future__ import annotations

import concurrent.futures
import json
import logging
import socket
from typing import Any

import httpx
import pytest
from serving_testutils import Gate, running, spy_on_submit, wait_for

LONG = {"model": "p1", "prompt": "the coach motivate you", "max_tokens": 100, "temperature": 0}


def test_a_client_that_hangs_up_frees_its_row(make_service: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Gate()
    service = make_service(step_hook=gate)
    made = spy_on_submit(service, monkeypatch)

    try:
        with running(service) as server, httpx.Client(base_url=server.url, timeout=300) as http:
            # Streamed: the client reads the first token, then closes the connection mid-stream.
            gate.close()
            with http.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as response:
                assert next(response.iter_lines()).startswith("data: ")
            wait_for(lambda: made[0].cancelled, "the server to cancel the streamed generation")
            gate.open()
            wait_for(lambda: service.scheduler.stats().running == 0, "the row to leave the batch")
            assert made[0].finish_reason == "cancelled" and len(made[0].tokens) < LONG["max_tokens"]

            # Whole answer: the client sends its request and hangs up while it runs.
            gate.close()
            body = json.dumps(LONG).encode()
            head = "POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            with socket.create_connection(server.sock.getsockname()[:2]) as raw:
                raw.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
                wait_for(lambda: len(made) == 2 and made[1].tokens, "the second request to run")
            wait_for(lambda: made[1].cancelled, "the server to cancel the generation nobody waits for")
            gate.open()
            wait_for(lambda: service.scheduler.stats().running == 0, "the row to leave the batch")
            assert made[1].finish_reason == "cancelled" and len(made[1].tokens) < LONG["max_tokens"]
            assert http.get("/health").json() == {"status": "ok"}
    finally:
        gate.open()


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(record.getMessage())


def test_graceful_shutdown_finishes_accepted_requests(make_service: Any) -> None:
    gate = Gate()
    service = make_service(max_running=1, step_hook=gate)

    gate.close()
    uvicorn_log, messages = logging.getLogger("uvicorn.error"), _Messages()
    try:
        with running(service, log_level="info") as server, httpx.Client(base_url=server.url, timeout=300) as http:
            uvicorn_log.addHandler(messages)  # (after uvicorn set up its logging, which drops other handlers)
            with http.stream("POST", "/v1/completions", json={**LONG, "max_tokens": 20, "stream": True}) as streamed:
                lines = streamed.iter_lines()
                first = next(lines)  # running, held by the gate
                with concurrent.futures.ThreadPoolExecutor(1) as pool:
                    try:
                        queued = pool.submit(http.post, "/v1/completions", json={**LONG, "max_tokens": 5})
                        wait_for(lambda: service.scheduler.stats().queued == 1, "the second request to wait")
                        address = server.sock.getsockname()[:2]
                        server.stop()  # what SIGINT/SIGTERM do
                        wait_for(lambda: _refuses(address), "the server to stop accepting connections")
                        # Past the point where a server that does not wait would have cut the requests off:
                        wait_for(
                            lambda: any(m.startswith("Waiting for connections to close") for m in messages.seen),
                            "uvicorn to wait for the open requests",
                        )
                    finally:
                        gate.open()
                    rest = [line for line in lines if line]
                    waited = queued.result()
            server.thread.join(300)  # type: ignore[attr-defined]
            assert not server.thread.is_alive()  # type: ignore[attr-defined]
    finally:
        gate.open()
        uvicorn_log.removeHandler(messages)
    chunks = [json.loads(line.removeprefix("data: ")) for line in [first, *rest[:-1]]]
    assert rest[-1] == "data: [DONE]" and chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert len("".join(c["choices"][0]["text"] for c in chunks).split()) == 20  # every token arrived
    assert waited.status_code == 200 and waited.json()["choices"][0]["finish_reason"] == "length"
    assert not service.healthy()  # drained, then stopped


def _refuses(address: tuple[str, int]) -> bool:
    try:
        socket.create_connection(address, timeout=30).close()
    except ConnectionRefusedError:
        return True
    return False
