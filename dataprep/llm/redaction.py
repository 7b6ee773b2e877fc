"""Keeping API keys out of logs, errors and stats, without touching other libraries' logging.

Live clients register their key here; :func:`redact` masks every registered key in a string.
Masking is scoped to loggers this package owns or configures:

* the ``dataprep.llm.*`` module loggers get a :class:`RedactingFilter` through
  :func:`get_logger` (a filter on a logger sees only records created on that exact logger, so
  every module logger gets its own);
* :func:`sdk_debug_logging` turns on the openai SDK's and its HTTP stack's debug output through a
  handler of ours that carries the filter, and stops those loggers from propagating meanwhile,
  so their records reach no handler that does not mask.

The process-wide logging record factory is left alone: replacing it changed every record of
every library in the process, which is not this package's business.

Example:
    >>> redact("Incorrect API key provided: sk-abcdefgh12345", ["sk-abcdefgh12345"])
    'Incorrect API key provided: ***'
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TextIO

__all__ = ["MASK", "RedactingFilter", "get_logger", "redact", "sdk_debug_logging"]

# Keys shorter than this are placeholders ("EMPTY" for vLLM, "ollama"); masking every
# occurrence of such a short string would mangle logs without protecting anything.
MIN_SECRET_LEN = 8
MASK = "***"
# The loggers the openai SDK and its HTTP stack write to (children included); openai 3.x ships
# its own forks of httpx/httpcore that log as httpx2/httpcore2.
SDK_LOGGERS = ("openai", "httpx", "httpcore", "httpx2", "httpcore2")

_secrets: Counter[str] = Counter()
_lock = threading.Lock()


def redact(text: str, secrets: Iterable[str] | None = None) -> str:
    """Replace every occurrence of each secret (default: the keys of live clients) with ``***``.

    Example:
        >>> redact("key=sk-abcdefgh1234 end", ["sk-abcdefgh1234"])
        'key=*** end'
    """
    if secrets is None:
        with _lock:
            secrets = list(_secrets)
    for secret in secrets:
        if secret and len(secret) >= MIN_SECRET_LEN and secret in text:
            text = text.replace(secret, MASK)
    return text


def register_secret(secret: str | None) -> None:
    """Start masking ``secret`` (reference-counted: one call per live client)."""
    if secret and len(secret) >= MIN_SECRET_LEN:
        with _lock:
            _secrets[secret] += 1


def unregister_secret(secret: str | None) -> None:
    """Undo one :func:`register_secret`."""
    if secret and len(secret) >= MIN_SECRET_LEN:
        with _lock:
            _secrets[secret] -= 1
            if _secrets[secret] <= 0:
                del _secrets[secret]


class RedactingFilter(logging.Filter):
    """A logging filter that masks the live clients' API keys in a record's message and traceback.

    Example:
        >>> handler = logging.StreamHandler()
        >>> handler.addFilter(RedactingFilter())
    """

    def filter(self, record: logging.LogRecord) -> bool:
        with _lock:
            secrets = list(_secrets)
        if not secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a badly formatted record is the logging module's problem, not ours
            return True
        clean = redact(message, secrets)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            rendered = logging.Formatter().formatException(record.exc_info)
            masked = redact(rendered, secrets)
            if masked != rendered:
                # Formatters reuse a pre-set exc_text instead of rendering the traceback again.
                record.exc_text = masked
        return True


_FILTER = RedactingFilter()


def get_logger(name: str) -> logging.Logger:
    """The logger ``name`` with the redacting filter attached (once).

    >>> get_logger("dataprep.llm.example").filters[-1].__class__.__name__
    'RedactingFilter'
    """
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger


@contextmanager
def sdk_debug_logging(stream: TextIO | None = None,
                      level: int = logging.DEBUG) -> Iterator[logging.Handler]:
    """Show the openai SDK's and its HTTP stack's debug output, with keys masked.

    The output goes to ``stream`` (default stderr) through one handler of ours; while it is on,
    those loggers do not propagate, so no other handler sees an unmasked record from them.

    Example:
        >>> with sdk_debug_logging():  # doctest: +SKIP
        ...     client.complete_many_sync(requests)
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_FILTER)
    saved = []
    for name in SDK_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, logger.propagate))
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
    try:
        yield handler
    finally:
        for logger, old_level, old_propagate in saved:
            logger.removeHandler(handler)
            logger.setLevel(old_level)
            logger.propagate = old_propagate
