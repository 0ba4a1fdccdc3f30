"""Running the app: uvicorn on a socket, then the scheduler drained.

On SIGINT/SIGTERM (or :meth:`Server.stop`) uvicorn stops accepting connections and waits for the open requests,
streams included, to finish (its graceful shutdown); then the scheduler finishes whatever is still queued and stops.

Connections cannot be held open for nothing: a connection closes when it has not sent a whole request (headers and
body together, so an upload must arrive within it too: 1 MiB in 10 s is 100 KiB/s) within ``request_timeout_s`` of
opening or of its previous answer (so neither a silent socket nor one that trickles a header line at a time stays),
and uvicorn closes one idle between requests after ``keep_alive_s``. Once a request is in, its answer (a stream
included) is never cut, whatever the connection's keep-alive or HTTP version.
"""

from __future__ import annotations

import signal
import socket
import threading
from typing import Any

from ..errors import ServerBindError
from .app import DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_TOKENS_LIMIT, create_app
from .cli import DEFAULT_KEEP_ALIVE_S, DEFAULT_REQUEST_TIMEOUT_S
from .service import Service


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one); :class:`ServerBindError` when it cannot be."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as error:
        raise ServerBindError(f"Cannot listen on {host}:{port}: {error.strerror or error}.") from None
    return sock


class Server:
    """``service`` over HTTP on ``sock`` (see :func:`bind`); :meth:`run` blocks until stopped, then drains."""

    def __init__(
        self,
        service: Service,
        sock: socket.socket,
        *,
        api_key: str | None = None,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT,
        log_level: str = "info",
        access_log: bool = True,
        docs: bool = False,
        request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
        keep_alive_s: float = DEFAULT_KEEP_ALIVE_S,
    ) -> None:
        import uvicorn

        self.service, self.sock = service, sock
        self.app = create_app(
            service,
            api_key=api_key,
            max_request_bytes=max_request_bytes,
            max_tokens_limit=max_tokens_limit,
            docs=docs,
        )
        config = uvicorn.Config(
            self.app,
            log_level=log_level,
            access_log=access_log,
            timeout_graceful_shutdown=None,
            timeout_keep_alive=keep_alive_s,  # type: ignore[arg-type]  # a float works: it goes to call_later
            http=_request_timeout_protocol(request_timeout_s),
        )
        self._uvicorn = uvicorn.Server(config)

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    @property
    def started(self) -> bool:
        return bool(self._uvicorn.started)

    def run(self) -> None:
        """Serve until SIGINT/SIGTERM (main thread) or :meth:`stop`; then finish every accepted request.

        A second SIGINT forces the exit (uvicorn's rule): the requests still running are then cancelled.
        """
        previous = _hold_signals()
        try:
            self._uvicorn.run(sockets=[self.sock])
        finally:
            self.service.shutdown(drain=not self._uvicorn.force_exit)
            for number, handler in previous.items():
                signal.signal(number, handler)

    def stop(self) -> None:
        """Begin the graceful shutdown (from any thread)."""
        self._uvicorn.should_exit = True


def _hold_signals() -> dict[int, Any]:
    """Make SIGINT and SIGTERM no-ops until restored: uvicorn handles them while it serves, then sends them again to
    the handlers it found, which would kill the process (SIGTERM) or raise KeyboardInterrupt (SIGINT) after a clean
    shutdown. Only the main thread can set signal handlers; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {number: signal.signal(number, lambda *_: None) for number in (signal.SIGINT, signal.SIGTERM)}


def _request_timeout_protocol(timeout_s: float) -> type[Any]:
    """uvicorn's h11 protocol, closing a connection that has not sent a whole request within ``timeout_s`` of
    opening or of its previous answer (uvicorn itself only times out connections idle after an answer)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    # The client has sent a whole request: DONE (keep-alive) or MUST_CLOSE ("Connection: close", HTTP/1.0).
    _REQUEST_IN = (h11.DONE, h11.MUST_CLOSE)

    class RequestTimeoutProtocol(H11Protocol):
        _deadline: Any = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def handle_events(self) -> None:
            super().handle_events()
            if self.conn.their_state in _REQUEST_IN:  # the whole request is in: the app has it now
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.conn.their_state not in _REQUEST_IN:
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(timeout_s, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.transport.close()

    return RequestTimeoutProtocol
