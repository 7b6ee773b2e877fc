"""Test helpers for hostile input: a hang guard and a local server that records every hit."""

from __future__ import annotations

import contextlib
import http.server
import signal
import threading
from collections.abc import Iterator


class Hang(Exception):
    """Raised in the test's main thread when the guarded block ran past its bound."""


@contextlib.contextmanager
def hang_guard(seconds: float) -> Iterator[None]:
    """Fail (instead of hanging the suite) if the block runs longer than ``seconds``.

    A hang guard, not a speed assertion: the bound is generous (tens of seconds for work that
    takes milliseconds) and only catches "never returns"."""
    def _raise(signum: int, frame: object) -> None:
        raise Hang(f"still running after {seconds} s: a hang")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class RecordingServer:
    """An HTTP server on 127.0.0.1 that records every request path and never answers (a client
    that connects would hang on it; the hang guard turns that into a failure)."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                server.hits.append(self.path)
                threading.Event().wait(3600)  # never answer

            def log_message(self, *args: object) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def verify_request(self, request: object, client_address: object) -> bool:
                # Every accepted connection counts, even one that never sends a request.
                server.connections += 1
                return True

        self.connections = 0
        self._httpd = Server(("127.0.0.1", 0), Handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> RecordingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
