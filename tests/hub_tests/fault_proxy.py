"""An HTTP proxy in front of the local Hub server that breaks transfers on purpose, downloads as well as uploads.

``HfStore(endpoint=proxy.url)`` talks to the proxy, which forwards every request to the upstream server
(``FakeHub``) unless a :class:`ProxyFault` matches it:

- ``status``: answer this HTTP status without forwarding (``after=True``: forward first, so the request takes effect,
  then answer the status: a lost response);
- ``stall``: sleep ``delay`` seconds before answering (longer than the client's timeout = a stalled Hub);
- ``truncate``: forward, then send the full ``Content-Length`` but only half the body and close the connection;
- ``corrupt``: forward, then send a body of the right length with its bytes changed (a bad transfer that no length
  check catches).

``proxy.log`` records ``(method, path, what happened)`` for every request.
"""

from __future__ import annotations

import http.client
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from urllib.parse import unquote, urlsplit

from local_http import QuietHTTPServer

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


@dataclass
class ProxyFault:
    method: str
    path: str  # regex searched in the unquoted path
    kind: str = "status"  # status | stall | truncate | corrupt
    status: int = 500
    delay: float = 0.0
    after: bool = False
    count: int = 1


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname or "127.0.0.1", parts.port or 80
        self.faults: list[ProxyFault] = []
        self.log: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()
        self._httpd: QuietHTTPServer | None = None

    def start(self) -> str:
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._httpd = QuietHTTPServer(Handler)
        return self._httpd.serve_in_background()

    @property
    def url(self) -> str:
        assert self._httpd is not None
        return self._httpd.url

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.stop()

    def take(self, method: str, path: str) -> ProxyFault | None:
        with self.lock:
            for fault in self.faults:
                if fault.count > 0 and fault.method == method and re.search(fault.path, path):
                    fault.count -= 1
                    return fault
        return None

    def served(self, kind: str) -> int:
        return sum(what == kind for _, _, what in self.log)


class _Handler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = unquote(urlsplit(self.path).path)
        fault = self.owner.take(method, path)
        what = fault.kind if fault is not None else "forwarded"
        with self.owner.lock:
            self.owner.log.append((method, path, what))
        if fault is not None and fault.kind == "stall":
            time.sleep(fault.delay)
        if fault is not None and fault.kind == "status" and not fault.after:
            return self._reply(fault.status, {"Content-Type": "application/json"}, b'{"error": "injected by proxy"}')
        status, headers, data = self._forward(method, body)
        if fault is None or fault.kind == "stall":
            return self._reply(status, headers, data)
        if fault.kind == "status":  # after=True: the upstream did it, the answer is lost
            return self._reply(fault.status, {"Content-Type": "application/json"}, b'{"error": "injected after"}')
        if fault.kind == "corrupt":
            return self._reply(status, headers, bytes(b ^ 0x5A for b in data))
        # truncate: promise the whole body, send half, hang up
        self.send_response(status)
        for key, value in headers.items():
            if key.lower() != "content-length":
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
        self.close_connection = True

    def _forward(self, method: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.owner.upstream_host, self.owner.upstream_port, timeout=30)
        try:
            return self._exchange(conn, method, body)
        except OSError as error:  # the upstream is down: answer as a real proxy would
            return 502, {"Content-Type": "application/json"}, f'{{"error": "proxy: {error}"}}'.encode()
        finally:
            conn.close()

    def _exchange(
        self, conn: http.client.HTTPConnection, method: str, body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP and k.lower() != "host"}
        conn.request(method, self.path, body=body or None, headers=headers)
        response = conn.getresponse()
        data = response.read()
        dropped = _HOP_BY_HOP if method == "HEAD" else _HOP_BY_HOP | {"content-length"}  # HEAD: keep the size
        kept = {k: v for k, v in response.getheaders() if k.lower() not in dropped}
        return response.status, kept, data

    def _reply(self, status: int, headers: dict[str, str], data: bytes) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        if not any(k.lower() == "content-length" for k in headers):
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
