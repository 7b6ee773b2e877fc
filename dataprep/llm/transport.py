"""One chat request over HTTP with the official ``openai`` client: retries, backoff, Retry-After,
and the stop after repeated authentication failures.

Retried (each counted by cause): HTTP 429 (``rate_limited``), 5xx (``server_error``), timeouts,
connection errors, and bodies that are not a chat completion (``bad_response``). A server's
``Retry-After`` (seconds or an HTTP-date) or ``retry-after-ms`` is honoured up to
:data:`RETRY_AFTER_MAX_S`; otherwise the wait is full-jitter exponential backoff. Any other 4xx
fails the item at once; 401/403 also count towards ``LLMConfig.max_auth_failures`` consecutive
auth failures, after which :class:`LLMAuthError` stops the run: a wrong key fails every request,
and sending thousands of them only to end with zero answers helps nobody.

Example:
    >>> parse_retry_after({"retry-after": "2"})
    2.0
"""

from __future__ import annotations

import asyncio
import email.utils
import inspect
import math
import random
import time
from collections import Counter
from collections.abc import Mapping
from datetime import timezone
from typing import Any

import openai
from openai.resources.chat.completions import AsyncCompletions

from dataprep.errors import DataprepError
from dataprep.llm.budget import BudgetMeter, Usage, estimate_prompt_tokens, estimate_tokens
from dataprep.llm.config import RESERVED_PARAMS, LLMConfig
from dataprep.llm.redaction import get_logger, redact

__all__ = [
    "RETRY_AFTER_MAX_S",
    "RETRY_CAUSES",
    "ItemFailed",
    "LLMAuthError",
    "Transport",
    "backoff_delay",
    "parse_retry_after",
]

log = get_logger(__name__)

# Retry causes, in the order stats list them.
RETRY_CAUSES = ("rate_limited", "server_error", "timeout", "connection", "bad_response")
# Longest server-requested wait honoured; a "Retry-After: 86400" must not park a run for a day.
RETRY_AFTER_MAX_S = 120.0
AUTH_STATUSES = (401, 403)
# Keyword arguments ``chat.completions.create`` accepts; anything else (vLLM's ``top_k``,
# Ollama's ``num_ctx``...) is sent through ``extra_body`` so the SDK does not reject it.
_CREATE_KWARGS = frozenset(inspect.signature(AsyncCompletions.create).parameters) - {
    "self",
    *RESERVED_PARAMS,
}


class LLMAuthError(DataprepError):
    """The endpoint refused the key on ``max_auth_failures`` requests in a row; the run stops."""


class ItemFailed(Exception):
    """One item cannot get an answer; ``reason`` is its snake_case failure reason."""

    def __init__(self, reason: str, detail: str, rejected_text: str | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.rejected_text = rejected_text


class _BadResponse(Exception):
    pass


def backoff_delay(retry: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform(0, min(max_s, base_s * 2**retry)).

    Full jitter (AWS architecture blog, "Exponential Backoff And Jitter") spreads the retries of
    many requests that failed together, instead of sending them back in synchronised waves.

    Example:
        >>> 0 <= backoff_delay(3, 0.5, 30.0, random.Random(0)) <= 4.0
        True
    """
    ceiling = min(max_s, base_s * (2 ** min(retry, 62)))
    return rng.uniform(0.0, ceiling)


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds the server asked to wait: ``retry-after-ms``, or ``Retry-After`` in seconds or
    as an HTTP-date; None when absent or unreadable.

    Example:
        >>> parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:05 GMT"},
        ...                   now=1445412480.0)  # 2015-10-21 07:28:00 UTC
        5.0
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    ms = lowered.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000.0
            if math.isfinite(value):
                return max(0.0, value)
        except ValueError:
            pass
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        value = float(raw)
        return max(0.0, value) if math.isfinite(value) else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


class Transport:
    """Sends one conversation until it gets a chat completion or runs out of retries.

    Shared by every item of a client; its counters (``requests_sent``, ``responses``,
    ``retries`` by cause) go into the client's stats.
    """

    def __init__(self, config: LLMConfig, meter: BudgetMeter) -> None:
        self.config = config
        self.meter = meter
        self.rng = random.Random(config.jitter_seed)
        self.requests_sent = 0
        self.responses = 0
        self.retries: Counter[str] = Counter({cause: 0 for cause in RETRY_CAUSES})
        self.auth_failures_in_a_row = 0

    def stats(self) -> dict[str, Any]:
        """Requests sent (retries and re-asks included), responses, retries by cause."""
        return {
            "requests_sent": self.requests_sent,
            "responses": self.responses,
            "retries": dict(self.retries),
            "retries_total": sum(self.retries.values()),
        }

    def open(self, api_key: str | None, base_url: str | None) -> openai.AsyncOpenAI:
        """A fresh SDK client: its connection pool belongs to the event loop of the call that
        uses it, and the sync wrapper starts a new loop each time."""
        return openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            timeout=self.config.timeout_s,
            max_retries=0,  # retries are ours: counted by cause, with Retry-After and jitter
        )

    async def send(
        self,
        oa: openai.AsyncOpenAI,
        request_id: str,
        messages: list[dict[str, Any]],
        params: dict[str, Any],
        state: Any,
    ) -> tuple[str, Usage]:
        """(assistant text, usage); raises :class:`ItemFailed` or :class:`LLMAuthError`.
        Every HTTP request sent is added to ``state.attempts``."""
        config = self.config
        kwargs = {k: v for k, v in params.items() if k in _CREATE_KWARGS}
        extra_body = {k: v for k, v in params.items() if k not in _CREATE_KWARGS}
        if extra_body:
            kwargs["extra_body"] = extra_body
        for retry in range(config.max_retries + 1):
            if not self.meter.try_start():
                raise ItemFailed(
                    "llm_budget_exhausted",
                    f"budget cap on {self.meter.exhausted()} reached before this request",
                )
            state.attempts += 1
            self.requests_sent += 1
            wait_hint: float | None = None
            try:
                completion = await oa.chat.completions.create(
                    model=config.model, messages=messages, **kwargs
                )
                text, usage = self._read(completion, messages)
            except openai.APITimeoutError:
                cause, detail = "timeout", f"no answer within {config.timeout_s}s"
            except openai.APIConnectionError as exc:
                cause, detail = "connection", f"connection error: {exc.__cause__ or exc}"
            except openai.APIStatusError as exc:
                status = exc.status_code
                detail = exc.message  # "Error code: 503 - <server message>"
                if status == 429:
                    cause = "rate_limited"
                elif status >= 500:
                    cause = "server_error"
                elif status in AUTH_STATUSES:
                    self._auth_failed(redact(detail))
                    raise ItemFailed("llm_auth_failed", detail) from None
                else:
                    raise ItemFailed("llm_http_4xx", detail) from None
                wait_hint = parse_retry_after(exc.response.headers)
            except (openai.APIError, _BadResponse, ValueError) as exc:
                # ValueError: the SDK could not decode the body (JSONDecodeError) or build a
                # ChatCompletion from it (pydantic ValidationError).
                cause, detail = "bad_response", f"unreadable response: {type(exc).__name__}: {exc}"
            else:
                self.responses += 1
                self.auth_failures_in_a_row = 0
                self.meter.record(usage)
                return text, usage
            if retry == config.max_retries:
                raise ItemFailed(
                    f"llm_{cause}_exhausted", f"{detail} (after {config.max_retries} retries)"
                )
            self.retries[cause] += 1
            delay = self._retry_delay(retry, wait_hint)
            log.debug(
                "request %s: %s, retry %d in %.2fs", request_id, redact(detail), retry + 1, delay
            )
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the retry loop returns or raises")

    def _auth_failed(self, detail: str) -> None:
        self.auth_failures_in_a_row += 1
        limit = self.config.max_auth_failures
        if self.auth_failures_in_a_row >= limit:
            raise LLMAuthError(
                f"the LLM endpoint refused authentication on {self.auth_failures_in_a_row} "
                f"requests in a row ({detail}); check the key in the variable named by "
                f"llm.api_key_env and llm.base_url (stopped after llm.max_auth_failures={limit})"
            )

    def _retry_delay(self, retry: int, wait_hint: float | None) -> float:
        config = self.config
        if wait_hint is not None:
            # The server knows when capacity frees up; a little jitter on top keeps all the
            # requests told "retry in 2s" from arriving in the same millisecond.
            jitter = self.rng.uniform(0.0, min(config.backoff_base_s, 1.0))
            return min(wait_hint, RETRY_AFTER_MAX_S) + jitter
        return backoff_delay(retry, config.backoff_base_s, config.backoff_max_s, self.rng)

    def _read(self, completion: Any, messages: list[dict[str, Any]]) -> tuple[str, Usage]:
        if isinstance(completion, str):
            # The SDK returns the raw text when the content type is not JSON.
            raise _BadResponse("the body is not JSON (content type is not application/json)")
        choices = getattr(completion, "choices", None)
        if not choices:
            raise _BadResponse("the completion has no choices")
        message = getattr(choices[0], "message", None)
        content = getattr(message, "content", None)
        text = content if isinstance(content, str) else ""
        usage = getattr(completion, "usage", None)
        prompt = getattr(usage, "prompt_tokens", None)
        output = getattr(usage, "completion_tokens", None)
        if isinstance(prompt, int) and isinstance(output, int):
            return text, Usage(prompt, output)
        ratio = self.config.chars_per_token
        return text, Usage(
            estimate_prompt_tokens(messages, ratio), estimate_tokens(text, ratio), estimated=True
        )
