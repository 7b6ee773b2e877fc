"""Persistent on-disk cache of LLM answers, keyed by a hash of the exact request.

Why sqlite3 (stdlib) and not an append-only JSONL file:

* every ``put`` is one committed transaction; in WAL mode a commit survives the process being
  killed (SIGKILL, Ctrl-C, OOM) at any instant, and a torn write is rolled back by sqlite on the
  next open instead of by our own "skip the broken last line" code;
* lookups use the primary-key index, so a resumed run over millions of items does not have to
  load the whole cache into memory first;
* two runs (processes) sharing one cache directory are serialised by sqlite's own locking
  (``busy_timeout``), which JSONL cannot offer without an extra lock file.

``synchronous=NORMAL`` with WAL means a commit is durable against a process crash but the last
few commits may be lost on *power* loss; losing them only costs re-asking those requests, never
a corrupt cache, which is the right trade for a cache.

Every chat completion the client receives is stored with its token usage, keyed by the exact
request that produced it (a re-ask's key covers the rejected answer and the correction too); the
client judges answers again on every replay. Request headers and the API key are never given to
this module, so they cannot end up on disk; the endpoint URL goes into the key only as part of
the hash.

A cache that cannot be used (not an sqlite file, a folder where the file should be, read-only,
locked by another process) raises :class:`CacheError`, one line that names the file and what to
do, instead of an sqlite traceback in the middle of a run.

Example:
    >>> key = cache_key("glm-4-flash", [{"role": "user", "content": "你好"}], {"temperature": 0})
    >>> with ResponseCache("/tmp/llm-cache") as cache:  # doctest: +SKIP
    ...     cache.put(key, CachedAnswer("您好", prompt_tokens=3, completion_tokens=2))
    ...     cache.get(key).text
    '您好'
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dataprep.errors import DataprepError

__all__ = [
    "CACHE_FILENAME",
    "CACHE_KEY_VERSION",
    "CacheError",
    "CachedAnswer",
    "ResponseCache",
    "cache_key",
    "count_answers",
]

CACHE_FILENAME = "llm_cache.sqlite3"
# Bump when the meaning of a key changes (e.g. what goes into it), so old entries stop matching
# instead of being served for requests they were never made for. 2: the endpoint joined the key.
CACHE_KEY_VERSION = 2
# Seconds to wait for another process's write lock before calling the cache locked.
DEFAULT_BUSY_TIMEOUT_S = 30.0


class CacheError(DataprepError):
    """The cache file cannot be opened, read or written; the message says which and what to do."""


def cache_key(
    model: str,
    messages: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
    schema: Mapping[str, Any] | None = None,
    endpoint: str | None = None,
) -> str:
    """sha256 hex of the canonical JSON of everything that determines the answer.

    ``endpoint`` is the base URL the request goes to: the same model name at two providers (or
    a local vLLM and the vendor's API) are different models, and must not share answers.

    ``params`` must hold only parameters that change the output (temperature, max_tokens,
    response_format, seed...); the client strips transport settings such as timeouts before
    calling this. Dict key order never matters; message order does.

    Example:
        >>> a = cache_key("m", [{"role": "user", "content": "x"}], {"temperature": 0, "top_p": 1})
        >>> a == cache_key("m", [{"content": "x", "role": "user"}], {"top_p": 1, "temperature": 0})
        True
        >>> a == cache_key("m", [{"role": "user", "content": "x"}], {"temperature": 1, "top_p": 1})
        False
    """
    payload = {
        "v": CACHE_KEY_VERSION,
        "model": model,
        "messages": list(messages),
        "params": dict(params),
        "schema": schema,
        "endpoint": endpoint,
    }
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CachedAnswer:
    """A validated answer as stored: the raw assistant text plus what it cost."""

    text: str
    """The assistant message that passed validation (parsed again on every hit)."""
    prompt_tokens: int = 0
    """Prompt tokens of the request(s) that produced it, re-asks included."""
    completion_tokens: int = 0
    """Completion tokens of the request(s) that produced it."""
    model: str = ""
    """Model that answered, for inspection."""
    created_at: float = 0.0
    """Unix time the entry was written."""


class ResponseCache:
    """sqlite-backed answer cache; safe to share between asyncio tasks and threads of a process.

    Args:
        directory: folder for ``llm_cache.sqlite3`` (created if missing).

    Example:
        >>> cache = ResponseCache(tmp_path)  # doctest: +SKIP
        >>> len(cache)  # doctest: +SKIP
        0
    """

    def __init__(self, directory: str | Path,
                 busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S) -> None:
        self.directory = Path(directory)
        self.path = self.directory / CACHE_FILENAME
        if self.directory.exists() and not self.directory.is_dir():
            raise CacheError(
                f"LLM cache_dir {self.directory} is a file; point llm.cache_dir at a folder "
                f"(the cache is stored as {CACHE_FILENAME} inside it)"
            )
        if self.path.is_dir():
            raise CacheError(
                f"LLM cache {self.path} is a folder, not a cache file; move it away or set "
                f"llm.cache_dir to another folder"
            )
        # One connection guarded by a lock: sqlite connections are not safe for concurrent use,
        # and the sync wrapper may run the event loop on a different thread than the creator.
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                self.path, timeout=busy_timeout_s, check_same_thread=False, isolation_level=None
            )
            with self._lock:
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=NORMAL")
                self._conn.execute(
                    "CREATE TABLE IF NOT EXISTS answers ("
                    " key TEXT PRIMARY KEY,"
                    " text TEXT NOT NULL,"
                    " prompt_tokens INTEGER NOT NULL,"
                    " completion_tokens INTEGER NOT NULL,"
                    " model TEXT NOT NULL,"
                    " created_at REAL NOT NULL)"
                )
                # Take the write lock once now: a read-only or locked cache is found before
                # the first answer is paid for, not when storing it.
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.execute("ROLLBACK")
        except (sqlite3.Error, OSError) as exc:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            raise self._error(exc) from None

    def _error(self, exc: BaseException) -> CacheError:
        text = str(exc)
        if isinstance(exc, sqlite3.DatabaseError) and "not a database" in text:
            hint = "it is not an sqlite file; delete it (answers will be asked again) or set " \
                   "llm.cache_dir to another folder"
        elif "locked" in text or "busy" in text:
            hint = "another process holds its lock (a second run on the same cache_dir?); " \
                   "wait for it to finish or set llm.cache_dir to another folder"
        elif "readonly" in text or "read-only" in text or isinstance(exc, PermissionError):
            hint = "it cannot be written; make the file and its folder writable or set " \
                   "llm.cache_dir to another folder"
        else:
            hint = "delete it (answers will be asked again) or set llm.cache_dir to another folder"
        return CacheError(f"LLM cache {self.path} is unusable ({text}): {hint}")

    def _execute(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        # Called with self._lock held.
        if self._conn is None:
            raise RuntimeError(f"the LLM cache at {self.path} is closed; open a new ResponseCache")
        try:
            return self._conn.execute(sql, args)
        except sqlite3.Error as exc:
            raise self._error(exc) from None

    def get(self, key: str) -> CachedAnswer | None:
        """The stored answer for ``key``, or None."""
        with self._lock:
            row = self._execute(
                "SELECT text, prompt_tokens, completion_tokens, model, created_at"
                " FROM answers WHERE key = ?",
                (key,),
            ).fetchone()
        return None if row is None else CachedAnswer(*row)

    def put(self, key: str, answer: CachedAnswer) -> None:
        """Store ``answer`` under ``key`` in its own committed transaction (last write wins)."""
        created = answer.created_at or time.time()
        with self._lock:
            # autocommit mode (isolation_level=None): this single statement is its own
            # transaction, durable once execute() returns.
            self._execute(
                "INSERT OR REPLACE INTO answers"
                " (key, text, prompt_tokens, completion_tokens, model, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    key,
                    answer.text,
                    int(answer.prompt_tokens),
                    int(answer.completion_tokens),
                    answer.model,
                    created,
                ),
            )

    def add(self, key: str, answer: CachedAnswer) -> CachedAnswer:
        """Store ``answer`` under ``key`` unless an answer is there already, and return the
        stored one. Several processes sharing the cache (the Ray engine's workers) may ask the
        same request at once; the first answer stored is the one every one of them uses, so the
        outputs and the cache agree whatever the server answered the others."""
        created = answer.created_at or time.time()
        with self._lock:
            self._execute(
                "INSERT OR IGNORE INTO answers"
                " (key, text, prompt_tokens, completion_tokens, model, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (key, answer.text, int(answer.prompt_tokens), int(answer.completion_tokens),
                 answer.model, created),
            )
            row = self._execute(
                "SELECT text, prompt_tokens, completion_tokens, model, created_at"
                " FROM answers WHERE key = ?",
                (key,),
            ).fetchone()
        return CachedAnswer(*row)

    def delete(self, key: str) -> None:
        """Forget ``key``."""
        with self._lock:
            self._execute("DELETE FROM answers WHERE key = ?", (key,))

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        with self._lock:
            return self._execute("SELECT 1 FROM answers WHERE key = ?", (key,)).fetchone() \
                is not None

    def __len__(self) -> int:
        with self._lock:
            return int(self._execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def integrity_ok(self) -> bool:
        """True when sqlite's ``PRAGMA integrity_check`` finds nothing wrong."""
        with self._lock:
            rows = self._execute("PRAGMA integrity_check").fetchall()
        return rows == [("ok",)]

    def close(self) -> None:
        """Close the connection (idempotent); WAL content is checkpointed by sqlite."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ResponseCache({str(self.directory)!r})"


def count_answers(directory: str | Path) -> int:
    """Answers stored in the cache under ``directory``, read without creating or locking it.

    Safe to call while another process is writing (e.g. to watch a running job's progress):
    the connection is read-only, and a cache that does not exist yet counts 0.

    >>> count_answers(tmp_path)  # doctest: +SKIP
    0
    """
    path = Path(directory) / CACHE_FILENAME
    if not path.exists():
        return 0
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return int(db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])
        finally:
            db.close()
    except sqlite3.OperationalError:  # the writer has not created the table yet
        return 0
