"""Connections cannot be held open for nothing: a socket that never sends a whole request (silent, or trickling
headers) is closed after the request timeout, an idle keep-alive connection after the keep-alive timeout, while a
request that is being answered (a stream held mid-generation) is never cut. No clock is read: the test waits for the
server to close the sockets, and holds the stream until it has."""

from __future__ import annotations

import json
import socket
from typing import Any

import httpx
from serving_testutils import PATIENCE_S, Gate, running, wait_for

BODY = {"model": "p0", "prompt": "hello world", "max_tokens": 6, "temperature": 0}
TIMEOUT_S = 3.0  # long enough for a client on a loaded machine to send its request, short enough to wait out


def _closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(PATIENCE_S)
    try:
        return sock.recv(1024) == b""  # EOF: the server closed it (a timed-out request gets no answer)
    except ConnectionResetError:
        return True


def test_silent_and_slow_header_sockets_are_closed_and_answers_are_not_cut(make_service: Any) -> None:
    gate = Gate()
    service = make_service(step_hook=gate)
    with running(service, request_timeout_s=TIMEOUT_S, keep_alive_s=TIMEOUT_S) as server:
        address = server.sock.getsockname()[:2]
        fresh = httpx.Limits(max_keepalive_connections=0)  # a new connection per request: none outlives its answer
        with httpx.Client(base_url=server.url, timeout=PATIENCE_S, limits=fresh) as http:
            gate.close()
            with http.stream("POST", "/v1/completions", json={**BODY, "stream": True}) as streamed:
                lines = streamed.iter_lines()
                assert next(lines).startswith("data: ")  # mid-generation, held by the gate
                silent = [socket.create_connection(address) for _ in range(20)]
                trickling = [socket.create_connection(address) for _ in range(20)]
                for sock in trickling:  # a request line and one header, then nothing more
                    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: test\r\n")
                partial_body = socket.create_connection(address)
                head = "POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                partial_body.sendall(f"{head}Content-Length: 1000\r\n\r\n{{".encode())
                try:
                    for sock in [*silent, *trickling, partial_body]:
                        assert _closed_by_server(sock)
                finally:
                    for sock in [*silent, *trickling, partial_body]:
                        sock.close()
                gate.open()  # the stream outlived every timeout: it still gets every token
                events = [line.removeprefix("data: ") for line in lines if line]
            assert events[-1] == "[DONE]" and json.loads(events[-2])["choices"][0]["finish_reason"] == "length"
            assert http.get("/health").json() == {"status": "ok"}

        # A keep-alive connection idle after its answer is closed too.
        idle = socket.create_connection(address)
        idle.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
        idle.settimeout(PATIENCE_S)
        assert idle.recv(4096).startswith(b"HTTP/1.1 200")
        wait_for(lambda: _closed_by_server(idle), "the idle connection to be closed")
        idle.close()


def _raw_stream(address: tuple[str, int], head: str) -> socket.socket:
    body = json.dumps({**BODY, "stream": True}).encode()
    sock = socket.create_connection(address)
    sock.sendall(f"{head}Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    sock.settimeout(PATIENCE_S)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_an_answer_on_a_closing_or_http_1_0_connection_outlives_the_request_timeout(make_service: Any) -> None:
    """h11 ends a "Connection: close" or HTTP/1.0 request in MUST_CLOSE, not DONE: the timeout must stop there too."""
    gate = Gate()
    service = make_service(step_hook=gate)
    with running(service, request_timeout_s=TIMEOUT_S) as server:
        address = server.sock.getsockname()[:2]
        gate.close()
        streams = [
            _raw_stream(address, "POST /v1/completions HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"),
            _raw_stream(address, "POST /v1/completions HTTP/1.0\r\nHost: t\r\n"),
        ]
        wait_for(lambda: (s := service.scheduler.stats()).running + s.queued == 2, "both requests to be in")
        silent = socket.create_connection(address)  # a witness that the timeout has passed
        assert _closed_by_server(silent)
        silent.close()
        gate.open()
        answers = []
        for sock in streams:
            with sock:
                answers.append(_read_all(sock))
        for answer in answers:
            assert answer.startswith(b"HTTP/1.1 200") and b'"finish_reason":"length"' in answer, answer
            assert b"data: [DONE]" in answer, answer
