"""An OpenAI-compatible chat-completions server on 127.0.0.1 with scripted faults.

Tests and ``bench/bench_llm.py`` drive the real ``openai`` client against it, and it is handy for
rehearsing a pipeline offline (``python -m tests.support.fake_chat_server --latency 0.2`` from
the repository root). It lives under ``tests/`` so that it never ships in the wheel.

Answers are a deterministic function of the *first* user message, so a request that needed a
retry or a re-ask gets the same final answer as one that went through at once; that is what lets
the resume test compare an interrupted-then-resumed run with an uninterrupted one byte for byte.

Example:
    >>> from tests.support.fake_chat_server import FakeChatServer, Fault
    >>> plan = lambda info: Fault.server_error() if info.attempt == 0 else None
    >>> with FakeChatServer(faults=plan) as server:  # doctest: +SKIP
    ...     server.base_url  # 'http://127.0.0.1:40123/v1'
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

__all__ = [
    "FakeChatServer",
    "Fault",
    "FaultPlan",
    "LogEntry",
    "RequestInfo",
    "default_answer",
    "first_user_message",
]

# Every sleep the server does is capped so that a mistaken fault script cannot hang a test run.
MAX_DELAY_S = 30.0


@dataclass(frozen=True)
class Fault:
    """One scripted misbehaviour; build it with the class methods, e.g. ``Fault.rate_limited(1)``.

    Example:
        >>> Fault.rate_limited("2").headers
        (('Retry-After', '2'),)
    """

    kind: str
    """One of status, slow, malformed_body, content, drop."""
    status: int = 200
    """HTTP status for ``status`` faults."""
    headers: tuple[tuple[str, str], ...] = ()
    """Extra response headers, e.g. Retry-After."""
    body: str | None = None
    """Raw response body for ``status`` faults (an OpenAI-style error object when None)."""
    delay_s: float = 0.0
    """Seconds to wait before answering (``slow``)."""
    assistant_text: str | None = None
    """Assistant message content for ``content`` faults (the HTTP exchange itself succeeds)."""
    label: str = ""
    """Outcome name written to the request log."""

    @classmethod
    def rate_limited(cls, retry_after: str | float | None = "1") -> Fault:
        """HTTP 429; ``retry_after`` is seconds or an HTTP-date, None sends no header."""
        headers = () if retry_after is None else (("Retry-After", str(retry_after)),)
        return cls("status", status=429, headers=headers, label="rate_limited")

    @classmethod
    def server_error(cls, status: int = 500) -> Fault:
        """HTTP 5xx with an OpenAI-style error body."""
        return cls("status", status=status, label=f"http_{status}")

    @classmethod
    def http_error(cls, status: int, message: str = "bad request") -> Fault:
        """Any HTTP error status with ``message`` in the OpenAI error envelope."""
        body = json.dumps({"error": {"message": message, "type": "invalid_request_error"}})
        return cls("status", status=status, body=body, label=f"http_{status}")

    @classmethod
    def slow(cls, delay_s: float) -> Fault:
        """Answer normally, but only after ``delay_s`` seconds (past the client timeout)."""
        return cls("slow", delay_s=min(delay_s, MAX_DELAY_S), label="slow")

    @classmethod
    def hold(cls, delay_s: float = MAX_DELAY_S) -> Fault:
        """Hold the request open (answering only after ``delay_s`` or at server stop); the log
        marks it ``held``, never ``ok``. Models requests in flight when a run is killed."""
        return cls("slow", delay_s=min(delay_s, MAX_DELAY_S), label="held")

    @classmethod
    def malformed_body(cls) -> Fault:
        """HTTP 200 whose body is not JSON although the content type says it is."""
        return cls("malformed_body", label="malformed_body")

    @classmethod
    def content(cls, text: str, label: str = "bad_content") -> Fault:
        """HTTP 200 with a well-formed completion whose assistant message is ``text``."""
        return cls("content", assistant_text=text, label=label)

    @classmethod
    def non_json(cls) -> Fault:
        """A chatty answer that contains no JSON object at all."""
        return cls.content("好的，以下是改写后的内容：没有 JSON。", label="non_json")

    @classmethod
    def off_schema(cls) -> Fault:
        """Valid JSON that matches no sensible schema."""
        return cls.content('{"unexpected": 1}', label="off_schema")

    @classmethod
    def drop(cls) -> Fault:
        """Close the connection without sending any response."""
        return cls("drop", label="dropped")


@dataclass(frozen=True)
class RequestInfo:
    """What a fault plan sees about one incoming request."""

    seq: int
    """0-based arrival number over the server's lifetime."""
    path: str
    """Request path, e.g. /v1/chat/completions."""
    body: dict[str, Any]
    """Decoded JSON body."""
    body_hash: str
    """sha256 of the canonical JSON body; equal bodies mean an identical request."""
    attempt: int
    """How many times this exact body arrived before (0 on the first arrival)."""
    first_user: str
    """Content of the first user message (what the default answer is derived from)."""
    item_attempt: int = 0
    """How many earlier requests had the same first user message: re-asks of one item have
    different bodies (so ``attempt`` restarts at 0) but share this count."""


@dataclass
class LogEntry:
    """One request as the server saw it; ``outcome`` is ``ok`` or the fault's label."""

    seq: int
    path: str
    body_hash: str
    attempt: int
    first_user: str
    item_attempt: int = 0
    outcome: str = "pending"
    status: int = 0
    started: float = 0.0
    finished: float = 0.0


FaultPlan = Callable[[RequestInfo], "Fault | None"] | Mapping[int, Fault]
"""Either a function of the request or a mapping from arrival number (``seq``) to a fault."""


def canonical_hash(obj: Any) -> str:
    """sha256 hex of ``obj`` as canonical JSON (sorted keys, no spaces, UTF-8).

    Example:
        >>> canonical_hash({"b": 1, "a": 2}) == canonical_hash({"a": 2, "b": 1})
        True
    """
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def first_user_message(body: Mapping[str, Any]) -> str:
    """The content of the first ``user`` message of a chat request body ("" if none)."""
    for message in body.get("messages") or []:
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
    return ""


def default_answer(body: Mapping[str, Any]) -> str:
    """Deterministic answer: the first user message reversed, as JSON when JSON was asked for.

    JSON is "asked for" when ``response_format`` is a json type or a system message says JSON, so
    servers without json mode (``LLMConfig.json_mode=False``) are rehearsed as well.

    Example:
        >>> default_answer({"messages": [{"role": "user", "content": "你好"}]})
        '好你'
        >>> default_answer({"messages": [{"role": "user", "content": "ab"}],
        ...                 "response_format": {"type": "json_object"}})
        '{"text": "ba", "source_chars": 2}'
    """
    user = first_user_message(body)
    fmt = body.get("response_format")
    wants_json = isinstance(fmt, dict) and str(fmt.get("type", "")).startswith("json")
    if not wants_json:
        wants_json = any(
            isinstance(m, dict) and m.get("role") == "system" and "JSON" in str(m.get("content"))
            for m in body.get("messages") or []
        )
    if wants_json:
        return json.dumps({"text": user[::-1], "source_chars": len(user)}, ensure_ascii=False)
    return user[::-1]


def _count_tokens(text: str) -> int:
    # A fixed, easily hand-computed count (one token per two characters, at least one) keeps the
    # usage figures in tests predictable; it does not pretend to be a real tokenizer.
    return max(1, (len(text) + 1) // 2)


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 keeps connections alive, as real endpoints do; every response has Content-Length.
    protocol_version = "HTTP/1.1"
    # Idle keep-alive connections end after this many seconds so that no handler thread outlives
    # a test for long.
    timeout = 5.0
    # Headers and body go out as two writes; with Nagle on, the second waits for the client's
    # delayed ACK (~40 ms), which would swamp the latency the bench injects.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("fake server: " + format, *args)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            model = {"id": "fake-model", "object": "model", "owned_by": "dataprep"}
            self._send_json(200, {"object": "list", "data": [model]})
        else:
            self._send_error_json(404, f"unknown path {self.path}")

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        owner = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.path.split("?")[0].rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._send_error_json(404, f"unknown path {self.path}; use /v1/chat/completions")
            return
        try:
            body = json.loads(raw or b"null")
            if not isinstance(body, dict):
                raise ValueError("body is not a JSON object")
        except ValueError as exc:
            self._send_error_json(400, f"request body is not a JSON object: {exc}")
            return
        entry, info = owner._register(self.path, body)
        try:
            self._answer(owner, entry, info)
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            # The client gave up (timeout) or went away (killed run); nothing left to send.
            entry.outcome = entry.outcome if entry.outcome != "pending" else "client_gone"
            self.close_connection = True
        finally:
            entry.finished = time.monotonic()
            owner._finish(entry)

    def _answer(self, owner: FakeChatServer, entry: LogEntry, info: RequestInfo) -> None:
        if owner.api_key is not None:
            auth = self.headers.get("Authorization", "")
            if auth != f"Bearer {owner.api_key}":
                # Real providers echo a shortened key in this message; the client must redact it.
                shown = auth.removeprefix("Bearer ")
                entry.outcome, entry.status = "unauthorized", 401
                self._send_error_json(401, f"Incorrect API key provided: {shown}.")
                return
        fault = owner._fault_for(info)
        owner._sleep(owner.latency_s)
        if fault is None:
            self._send_completion(owner, info, owner.answer(info.body))
            entry.outcome, entry.status = "ok", 200
            return
        entry.outcome = fault.label or fault.kind
        if fault.kind == "drop":
            # Shut the socket down without a byte of response: the client sees the peer vanish.
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault.kind == "slow":
            owner._sleep(fault.delay_s)
            self._send_completion(owner, info, owner.answer(info.body))
            entry.status = 200
            return
        if fault.kind == "malformed_body":
            payload = b'{"id": "chatcmpl-broken", "choices": [{"message": '
            self._send_raw(200, payload, "application/json")
            entry.status = 200
            return
        if fault.kind == "content":
            self._send_completion(owner, info, fault.assistant_text or "")
            entry.status = 200
            return
        if fault.kind == "status":
            body = fault.body
            if body is None:
                body = json.dumps(
                    {"error": {"message": f"injected HTTP {fault.status}", "type": "server_error"}}
                )
            self._send_raw(fault.status, body.encode("utf-8"), "application/json", fault.headers)
            entry.status = fault.status
            return
        raise ValueError(f"unknown fault kind {fault.kind!r}")

    def _send_completion(self, owner: FakeChatServer, info: RequestInfo, text: str) -> None:
        prompt_chars = "".join(
            str(m.get("content", ""))
            for m in info.body.get("messages") or []
            if isinstance(m, dict)
        )
        payload: dict[str, Any] = {
            "id": f"chatcmpl-fake-{info.seq}",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": info.body.get("model", "fake-model"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
        }
        if owner.include_usage:
            prompt, completion = _count_tokens(prompt_chars), _count_tokens(text)
            payload["usage"] = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
        self._send_json(200, payload)

    def _send_error_json(self, status: int, message: str) -> None:
        self._send_json(status, {"error": {"message": message, "type": "invalid_request_error"}})

    def _send_json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self._send_raw(status, data, "application/json")

    def _send_raw(
        self,
        status: int,
        data: bytes,
        content_type: str,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Do not join handler threads on close: a thread may be sleeping in a "slow" fault.
    block_on_close = False
    # The default backlog of 5 makes the kernel drop SYNs when 64 clients connect at once, and a
    # dropped SYN costs a 1 s retransmit: the bench would measure the backlog, not the client.
    request_queue_size = 256
    allow_reuse_address = True
    owner: FakeChatServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver would print the traceback to stderr; a library logs instead. The usual
        # cause is a fault plan that raised; the client then sees a dropped connection.
        log.exception("fake server: error while handling a request from %s", client_address)


class FakeChatServer:
    """OpenAI-compatible ``POST /v1/chat/completions`` on 127.0.0.1, port chosen by the OS.

    Args:
        faults: a fault plan (function of :class:`RequestInfo`, or ``{seq: Fault}``); None = none.
        latency_s: added to every response, to model a remote model's think time.
        answer: body -> assistant text; defaults to :func:`default_answer`.
        include_usage: send the ``usage`` block (turn off to rehearse servers that omit it).
        api_key: when set, requests without ``Authorization: Bearer <api_key>`` get a 401.

    Example:
        >>> with FakeChatServer(latency_s=0.01) as server:  # doctest: +SKIP
        ...     client = openai.OpenAI(base_url=server.base_url, api_key="x")
        ...     server.outcomes()  # Counter({'ok': 1}) after one call
    """

    def __init__(
        self,
        *,
        faults: FaultPlan | None = None,
        latency_s: float = 0.0,
        answer: Callable[[dict[str, Any]], str] | None = None,
        include_usage: bool = True,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if latency_s < 0 or latency_s > MAX_DELAY_S:
            raise ValueError(f"latency_s must be between 0 and {MAX_DELAY_S}, got {latency_s}")
        self.faults = faults
        self.latency_s = latency_s
        self.answer = answer or default_answer
        self.include_usage = include_usage
        self.api_key = api_key
        self._host, self._port = host, port
        self._lock = threading.Lock()
        self._log: list[LogEntry] = []
        self._seen: Counter[str] = Counter()
        self._seen_users: Counter[str] = Counter()
        self._stop = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> FakeChatServer:
        """Bind and serve in a daemon thread; returns self."""
        if self._httpd is not None:
            return self
        self._stop.clear()
        httpd = _Server((self._host, self._port), _Handler)
        httpd.owner = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; wakes handlers sleeping in a fault so they end promptly."""
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd, self._thread = None, None

    def __enter__(self) -> FakeChatServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (the server must be started)."""
        if self._httpd is None:
            raise RuntimeError("FakeChatServer is not started; use it as a context manager")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """What to give ``openai.AsyncOpenAI(base_url=...)`` or ``LLMConfig.base_url``."""
        return f"http://{self._host}:{self.port}/v1"

    # -- request log ---------------------------------------------------------------------------
    @property
    def log(self) -> list[LogEntry]:
        """A copy of every request received so far, in arrival order."""
        with self._lock:
            return [LogEntry(**vars(e)) for e in self._log]

    def outcomes(self) -> Counter[str]:
        """How many requests ended in each outcome (``ok``, a fault label, ``pending``...)."""
        with self._lock:
            return Counter(e.outcome for e in self._log)

    def ok_hashes(self) -> set[str]:
        """Body hashes of the requests answered with a normal, well-formed completion."""
        with self._lock:
            return {e.body_hash for e in self._log if e.outcome == "ok"}

    def clear_log(self) -> None:
        """Forget the log and the attempt counts."""
        with self._lock:
            self._log.clear()
            self._seen.clear()
            self._seen_users.clear()

    def wait_until(self, predicate: Callable[[FakeChatServer], bool], timeout_s: float) -> bool:
        """Poll ``predicate(self)`` every 10 ms for at most ``timeout_s``; True if it held."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.01)
        return predicate(self)

    # -- used by the handler -------------------------------------------------------------------
    def _register(self, path: str, body: dict[str, Any]) -> tuple[LogEntry, RequestInfo]:
        body_hash = canonical_hash(body)
        user = first_user_message(body)
        with self._lock:
            seq = len(self._log)
            attempt = self._seen[body_hash]
            self._seen[body_hash] += 1
            item_attempt = self._seen_users[user]
            self._seen_users[user] += 1
            entry = LogEntry(
                seq, path, body_hash, attempt, user, item_attempt, started=time.monotonic()
            )
            self._log.append(entry)
        return entry, RequestInfo(seq, path, body, body_hash, attempt, user, item_attempt)

    def _finish(self, entry: LogEntry) -> None:
        with self._lock:
            if entry.outcome == "pending":
                entry.outcome = "aborted"

    def _fault_for(self, info: RequestInfo) -> Fault | None:
        plan = self.faults
        if plan is None:
            return None
        if isinstance(plan, Mapping):
            return plan.get(info.seq)
        return plan(info)

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._stop.wait(min(seconds, MAX_DELAY_S))


def main(argv: list[str] | None = None) -> None:
    """Serve until Ctrl-C: ``python -m tests.support.fake_chat_server --port 8765 --latency 0.2``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added per response")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with FakeChatServer(host=args.host, port=args.port, latency_s=args.latency) as server:
        log.info("fake chat-completions server at %s (Ctrl-C to stop)", server.base_url)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            log.info("stopped after %d requests", len(server.log))


if __name__ == "__main__":
    main()
