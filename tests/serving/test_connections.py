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


def _closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(PATIENCE_S)
    try:
        return sock.recv(1024) == b""  # EOF: the server closed it (a timed-out request gets no answer)
    except ConnectionResetError:
        return True


def test_silent_and_slow_header_sockets_are_closed_and_answers_are_not_cut(make_service: Any) -> None:
    gate = Gate()
    service = make_service(step_hook=gate)
    with running(service, request_timeout_s=0.2, keep_alive_s=0.2) as server:
        address = server.sock.getsockname()[:2]
        with httpx.Client(base_url=server.url, timeout=PATIENCE_S) as http:
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
