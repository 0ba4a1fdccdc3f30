"""The threaded HTTP server the local Hub server and the fault proxy run on, on 127.0.0.1.

An exception in a handler thread (a client that hung up, an upstream already stopped) is kept in ``errors``, not
printed: the tests read the process's stderr to check that a CLI error is one line, and a server's traceback landing
there on a busy machine would fail them for a reason that is not theirs.
"""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class QuietHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.errors: list[BaseException] = []

    def handle_error(self, request: object, client_address: object) -> None:
        error = sys.exc_info()[1]
        if error is not None:
            self.errors.append(error)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def serve_in_background(self) -> str:
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self.url

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
