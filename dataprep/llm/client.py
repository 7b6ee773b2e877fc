"""Async chat-completions client for augmentation stages: retries, re-asks, cache, budget.

Talks to any OpenAI-compatible endpoint (OpenAI, DeepSeek, GLM, a local vLLM or Ollama) through
the official ``openai`` package. One call runs many requests with bounded concurrency and returns
one :class:`LLMResult` per request; a failed request never raises, it comes back ``ok=False``
with a snake_case ``reason`` so the calling stage can keep the record and say why.

Example:
    >>> config = LLMConfig(model="glm-4-flash", base_url="https://open.bigmodel.cn/api/paas/v4",
    ...                    api_key_env="ZHIPUAI_API_KEY", cache_dir="work/llm_cache")
    >>> schema = {"type": "object", "required": ["text"],
    ...           "properties": {"text": {"type": "string"}}}
    >>> requests = [LLMRequest("r1", [{"role": "user", "content": "改写：今天天气很好"}],
    ...                        schema=schema)]
    >>> with LLMClient(config) as client:  # doctest: +SKIP
    ...     [result] = client.complete_many_sync(requests)
    ...     result.ok, result.parsed["text"], client.stats["cost"]
"""

from __future__ import annotations

import asyncio
import email.utils
import inspect
import ipaddress
import json
import logging
import math
import os
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import jsonschema
import jsonschema.exceptions
import openai
from openai.resources.chat.completions import AsyncCompletions

from dataprep.llm.budget import (
    DEFAULT_CHARS_PER_TOKEN,
    BudgetMeter,
    DryRunEstimate,
    Usage,
    estimate_dry_run,
    estimate_prompt_tokens,
    estimate_tokens,
)
from dataprep.llm.cache import CachedAnswer, ResponseCache, cache_key

__all__ = [
    "REASONS",
    "LLMClient",
    "LLMConfig",
    "LLMRequest",
    "LLMResult",
    "MissingAPIKeyError",
    "OutputRejected",
    "RedactingFilter",
    "backoff_delay",
    "extract_json",
    "parse_retry_after",
    "redact",
]

log = logging.getLogger(__name__)

# Every reason an item can fail with; stages copy these into their exclusion records.
REASONS: dict[str, str] = {
    "llm_rate_limited_exhausted": "HTTP 429 on every attempt (retries exhausted)",
    "llm_server_error_exhausted": "HTTP 5xx on every attempt",
    "llm_timeout_exhausted": "no answer within timeout_s on every attempt",
    "llm_connection_exhausted": "connection failed or was dropped on every attempt",
    "llm_bad_response_exhausted": "the HTTP body was not a chat completion on every attempt",
    "llm_http_4xx": "HTTP 4xx other than 429 (bad request, auth, not found); never retried",
    "llm_malformed_json": "no JSON object in the answer, after all re-asks",
    "llm_off_schema": "the JSON answer does not match the schema, after all re-asks",
    "llm_invalid_output": "the validator rejected the answer, after all re-asks",
    "llm_empty_output": "the answer was empty, after all re-asks",
    "llm_budget_exhausted": "the cost/token/request budget was reached before this request",
    "llm_dry_run": "dry run: nothing was sent",
}

# Retry causes, in the order stats list them.
RETRY_CAUSES = ("rate_limited", "server_error", "timeout", "connection", "bad_response")

# Parameters that do not change what the model answers; they are kept out of the cache key so
# that, e.g., tagging requests with a different ``user`` does not throw the cache away.
NON_OUTPUT_PARAMS = frozenset(
    {
        "user",
        "metadata",
        "store",
        "safety_identifier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "service_tier",
        "stream_options",
    }
)
# Parameters a request may not set: the client owns them.
RESERVED_PARAMS = frozenset(
    {"model", "messages", "stream", "n", "timeout", "extra_headers", "extra_query", "extra_body"}
)
# Keyword arguments ``chat.completions.create`` accepts; anything else (vLLM's ``top_k``,
# Ollama's ``num_ctx``...) is sent through ``extra_body`` so the SDK does not reject it.
_CREATE_KWARGS = frozenset(inspect.signature(AsyncCompletions.create).parameters) - {
    "self",
    *RESERVED_PARAMS,
}

# Keys shorter than this are placeholders ("EMPTY" for vLLM, "ollama"); masking every
# occurrence of such a short string would mangle logs without protecting anything.
_MIN_SECRET_LEN = 8
_MASK = "***"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)


# --------------------------------------------------------------------------------------------
# Secret hygiene
# --------------------------------------------------------------------------------------------
_secrets: Counter[str] = Counter()
_secrets_lock = threading.Lock()
_factory_installed = False


def redact(text: str, secrets: Iterable[str] | None = None) -> str:
    """Replace every occurrence of each secret (default: the keys of live clients) with ``***``.

    Example:
        >>> redact("Incorrect API key provided: sk-abcdefgh12345", ["sk-abcdefgh12345"])
        'Incorrect API key provided: ***'
    """
    if secrets is None:
        with _secrets_lock:
            secrets = list(_secrets)
    for secret in secrets:
        if secret and len(secret) >= _MIN_SECRET_LEN and secret in text:
            text = text.replace(secret, _MASK)
    return text


def _redact_record(record: logging.LogRecord) -> None:
    with _secrets_lock:
        secrets = list(_secrets)
    if not secrets:
        return
    try:
        message = record.getMessage()
    except Exception:  # a badly formatted record is the logging module's problem, not ours
        return
    clean = redact(message, secrets)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and record.exc_info[1] is not None:
        rendered = logging.Formatter().formatException(record.exc_info)
        if redact(rendered, secrets) != rendered:
            # Formatters reuse a pre-set exc_text instead of rendering the traceback again.
            record.exc_text = redact(rendered, secrets)


class RedactingFilter(logging.Filter):
    """A logging filter that masks the live clients' API keys; attach it to your own handlers.

    The client already masks keys in every record created anywhere in the process (see
    :func:`_install_record_factory`); this filter is for handlers that receive records built by
    other means (e.g. from a queue or another process).

    Example:
        >>> handler = logging.StreamHandler()
        >>> handler.addFilter(RedactingFilter())
    """

    def filter(self, record: logging.LogRecord) -> bool:
        _redact_record(record)
        return True


def _install_record_factory() -> None:
    # A filter on a logger only sees records created on that exact logger, not on children such
    # as "openai._base_client" or "httpcore2.http11"; the record factory sees every record in the
    # process, so it is the one hook that makes "the key never appears in a log" hold.
    global _factory_installed
    with _secrets_lock:
        if _factory_installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            if _secrets:
                _redact_record(record)
            return record

        logging.setLogRecordFactory(factory)
        _factory_installed = True


def _register_secret(secret: str | None) -> None:
    if secret and len(secret) >= _MIN_SECRET_LEN:
        _install_record_factory()
        with _secrets_lock:
            _secrets[secret] += 1


def _unregister_secret(secret: str | None) -> None:
    if secret and len(secret) >= _MIN_SECRET_LEN:
        with _secrets_lock:
            _secrets[secret] -= 1
            if _secrets[secret] <= 0:
                del _secrets[secret]


# --------------------------------------------------------------------------------------------
# Config, request, result
# --------------------------------------------------------------------------------------------
@dataclass
class LLMConfig:
    """Settings of the LLM client; the API key itself is never stored here.

    Example:
        >>> LLMConfig(model="deepseek-chat", base_url="https://api.deepseek.com/v1",
        ...           api_key_env="DEEPSEEK_API_KEY").max_concurrency
        8
    """

    model: str = ""
    """Model name the endpoint serves, e.g. gpt-4o-mini, deepseek-chat, glm-4-flash, qwen2.5:7b."""
    base_url: str | None = None
    """Endpoint up to /v1; None uses $OPENAI_BASE_URL, then https://api.openai.com/v1."""
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the API key (the key is read at client start)."""
    timeout_s: float = 60.0
    """Seconds one HTTP request may take before it counts as a timeout."""
    max_retries: int = 5
    """Retries per request on 429, 5xx, timeouts, connection errors and unreadable bodies."""
    backoff_base_s: float = 0.5
    """First backoff ceiling; retry k waits uniform(0, min(backoff_max_s, base * 2**k))."""
    backoff_max_s: float = 30.0
    """Largest backoff ceiling."""
    retry_after_max_s: float = 120.0
    """Longest server-requested Retry-After wait honoured; longer ones are cut to this."""
    jitter_seed: int | None = None
    """Seed for the backoff jitter (reproducible waits in tests); None seeds from the OS."""
    max_concurrency: int = 8
    """Requests in flight at once."""
    temperature: float | None = 0.7
    """Sampling temperature; None leaves it to the server."""
    top_p: float | None = None
    """Nucleus sampling; None leaves it to the server."""
    max_tokens: int | None = 1024
    """Completion token limit per request; None leaves it to the server."""
    seed: int | None = None
    """Sampling seed for servers that honour it; also part of the cache key."""
    extra_params: dict[str, Any] = field(default_factory=dict)
    """Other sampling parameters sent with every request (stop, frequency_penalty, top_k...)."""
    json_mode: bool = True
    """Send response_format json_object for requests with a schema; False for servers without it."""
    schema_in_prompt: bool = True
    """Append a request's JSON Schema to its system message so the model knows the target shape."""
    max_reasks: int = 2
    """Times a rejected answer is sent back with a correction before the item fails."""
    cache_dir: str | Path | None = None
    """Folder of the persistent answer cache; None disables caching (and resuming)."""
    price_per_1k_prompt: float = 0.0
    """Price per 1000 prompt tokens, in your currency."""
    price_per_1k_completion: float = 0.0
    """Price per 1000 completion tokens, in your currency."""
    budget_max_cost: float | None = None
    """Stop starting requests once this cost is reached; None = no cost cap."""
    budget_max_tokens: int | None = None
    """Stop starting requests once this many tokens were used; None = no token cap."""
    budget_max_requests: int | None = None
    """Send at most this many HTTP requests (retries and re-asks count); None = no cap."""
    dry_run: bool = False
    """Estimate requests, tokens and cost without sending anything."""
    expected_completion_tokens: int | None = None
    """Completion length the dry run assumes per request; None uses max_tokens (an upper bound)."""
    chars_per_token: float = DEFAULT_CHARS_PER_TOKEN
    """Characters per token for estimates when a server omits usage (1.5 suits Chinese)."""

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError(
                "LLMConfig.model is empty; set it to the model name your endpoint serves, "
                "e.g. 'gpt-4o-mini', 'deepseek-chat', 'glm-4-flash' or 'qwen2.5:7b'"
            )
        if not _ENV_NAME.match(self.api_key_env) or self.api_key_env.startswith("sk-"):
            # Never echo the value: it is most likely the key itself pasted in the wrong field.
            raise ValueError(
                "LLMConfig.api_key_env must be the NAME of an environment variable (such as "
                "OPENAI_API_KEY), not the key; put the key in that variable instead"
            )
        if self.base_url is not None and urlparse(self.base_url).scheme not in ("http", "https"):
            raise ValueError(
                f"LLMConfig.base_url {self.base_url!r} is not an http(s) URL; use e.g. "
                "'https://api.deepseek.com/v1' or 'http://127.0.0.1:8000/v1' for a local vLLM"
            )
        for name in ("timeout_s", "backoff_base_s", "chars_per_token"):
            if not getattr(self, name) > 0:
                raise ValueError(f"LLMConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.backoff_max_s < self.backoff_base_s:
            raise ValueError(
                f"LLMConfig.backoff_max_s ({self.backoff_max_s}) is below backoff_base_s "
                f"({self.backoff_base_s}); raise backoff_max_s or lower backoff_base_s"
            )
        if self.retry_after_max_s < 0:
            raise ValueError("LLMConfig.retry_after_max_s must be >= 0")
        for name in ("max_retries", "max_reasks"):
            if getattr(self, name) < 0:
                raise ValueError(
                    f"LLMConfig.{name} must be >= 0 (0 disables), got {getattr(self, name)}"
                )
        if self.max_concurrency < 1:
            raise ValueError(
                f"LLMConfig.max_concurrency must be >= 1, got {self.max_concurrency}; "
                "use 1 to send requests one at a time"
            )
        if self.temperature is not None and not 0 <= self.temperature <= 2:
            raise ValueError(f"LLMConfig.temperature must be in [0, 2], got {self.temperature}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"LLMConfig.max_tokens must be >= 1 or None, got {self.max_tokens}")
        if self.price_per_1k_prompt < 0 or self.price_per_1k_completion < 0:
            raise ValueError("LLMConfig prices must be >= 0")
        for name in ("budget_max_cost", "budget_max_tokens", "budget_max_requests"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"LLMConfig.{name} must be > 0 or None (no cap), got {value}")
        if (
            self.budget_max_cost is not None
            and self.price_per_1k_prompt == 0
            and self.price_per_1k_completion == 0
        ):
            raise ValueError(
                "LLMConfig.budget_max_cost is set but both prices are 0, so the cap can never be "
                "reached; set price_per_1k_prompt/price_per_1k_completion, or cap "
                "budget_max_tokens instead"
            )
        if self.dry_run and self.expected_completion_tokens is None and self.max_tokens is None:
            raise ValueError(
                "a dry run needs a completion length to estimate cost; set max_tokens or "
                "expected_completion_tokens"
            )
        if self.expected_completion_tokens is not None and self.expected_completion_tokens < 0:
            raise ValueError("LLMConfig.expected_completion_tokens must be >= 0")
        bad = sorted(RESERVED_PARAMS & set(self.extra_params))
        if bad:
            raise ValueError(
                f"LLMConfig.extra_params may not set {bad}; the client sets these itself"
            )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> LLMConfig:
        """Build from a config-file section, naming unknown keys and the available ones.

        Example:
            >>> LLMConfig.from_mapping({"model": "m", "max_concurrency": 4}).max_concurrency
            4
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown llm config key(s) {unknown}; available: {sorted(known)}")
        return cls(**dict(data))


Validator = Callable[[Any], Any]
"""Gets the answer (parsed JSON when the request has a schema, else the text); returns the
value to keep (None keeps its input) or raises :class:`OutputRejected` (or ValueError,
LookupError, TypeError: reason ``llm_invalid_output``) to have the model re-asked."""


class OutputRejected(ValueError):
    """Raised by a validator: ``feedback`` is shown to the model in the re-ask.

    Example:
        >>> raise OutputRejected("the rewrite must differ from the original")  # doctest: +SKIP
    """

    def __init__(self, feedback: str, reason: str = "llm_invalid_output") -> None:
        super().__init__(feedback)
        self.feedback = feedback
        self.reason = reason


class MissingAPIKeyError(ValueError):
    """The environment variable named by ``LLMConfig.api_key_env`` is not set."""


@dataclass(frozen=True)
class LLMRequest:
    """One chat request; ``id`` ties the result back to the record it came from.

    Example:
        >>> LLMRequest("rec-1", [{"role": "user", "content": "你好"}], params={"temperature": 0})
        ... # doctest: +ELLIPSIS
        LLMRequest(id='rec-1', ...)
    """

    id: str
    """Unique within one call."""
    messages: Sequence[Mapping[str, Any]]
    """OpenAI chat messages (role + content)."""
    params: Mapping[str, Any] = field(default_factory=dict)
    """Per-request sampling overrides (None removes a config default)."""
    schema: Mapping[str, Any] | None = None
    """JSON Schema the answer must match; turns on JSON extraction and json mode."""
    validator: Validator | None = None
    """Per-request validator; overrides the one given to complete_many."""

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"LLMRequest.id must be a non-empty string, got {self.id!r}")
        if not self.messages:
            raise ValueError(f"request {self.id}: messages is empty; give at least one message")
        for i, message in enumerate(self.messages):
            if not isinstance(message, Mapping) or "role" not in message:
                raise ValueError(
                    f"request {self.id}: messages[{i}] must be a dict with 'role' and 'content', "
                    f"got {message!r}"
                )
        bad = sorted(RESERVED_PARAMS & set(self.params))
        if bad:
            raise ValueError(f"request {self.id}: params may not set {bad}; the client sets them")
        if self.schema is not None:
            try:
                jsonschema.validators.validator_for(self.schema).check_schema(self.schema)
            except jsonschema.exceptions.SchemaError as exc:
                raise ValueError(
                    f"request {self.id}: schema is not a valid JSON Schema: {exc.message}"
                ) from None


@dataclass
class LLMResult:
    """The outcome of one request: an answer (``ok``) or a reason it has none."""

    id: str
    """The request id."""
    ok: bool
    """True when a validated answer is available."""
    text: str | None = None
    """The accepted assistant text."""
    parsed: Any = None
    """The validated value (parsed JSON, or what the validator returned); None for plain text."""
    reason: str | None = None
    """snake_case failure reason (see REASONS); None when ok."""
    detail: str = ""
    """Human-readable explanation of the failure (API keys masked)."""
    usage: Usage = field(default_factory=Usage)
    """Tokens this item consumed (for a cache hit: what the cached answer cost originally)."""
    from_cache: bool = False
    """Served from the on-disk cache without a request."""
    attempts: int = 0
    """HTTP requests sent for this item (retries and re-asks included)."""
    reasks: int = 0
    """Re-asks after rejected answers."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        data = asdict(self)
        data["usage"] = self.usage.to_dict()
        return data

    def output_dict(self) -> dict[str, Any]:
        """The reproducible part (id, ok, text, parsed, reason): equal across reruns."""
        return {
            "id": self.id,
            "ok": self.ok,
            "text": self.text,
            "parsed": self.parsed,
            "reason": self.reason,
        }


# --------------------------------------------------------------------------------------------
# Helpers: retry timing, JSON extraction
# --------------------------------------------------------------------------------------------
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
        >>> parse_retry_after({"retry-after": "2"})
        2.0
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


def extract_json(text: str) -> Any:
    """The JSON value in an answer: the whole text, a ```json fenced block, or the first
    ``{...}`` object inside prose. Raises ValueError when there is none.

    Example:
        >>> extract_json('好的：\\n```json\\n{"text": "你好"}\\n```')
        {'text': '你好'}
        >>> extract_json('结果是 {"a": 1} 。')
        {'a': 1}
    """
    stripped = text.strip()
    try:
        return json.loads(stripped)
    except ValueError:
        pass
    for block in _FENCE.findall(text):
        try:
            return json.loads(block.strip())
        except ValueError:
            continue
    decoder = json.JSONDecoder()
    for match in re.finditer(r"[{\[]", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        return value
    raise ValueError("no JSON value found in the answer")


def _is_loopback(url: str | None) -> bool:
    host = urlparse(url).hostname if url else None
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _ItemFailed(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class _BadResponse(Exception):
    pass


@dataclass
class _ItemState:
    attempts: int = 0
    reasks: int = 0
    usage: Usage = field(default_factory=Usage)


@dataclass(frozen=True)
class _Prepared:
    request: LLMRequest
    messages: list[dict[str, Any]]
    params: dict[str, Any]
    key: str


# --------------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------------
class LLMClient:
    """Runs chat requests with bounded concurrency, retries, re-asks, a cache and a budget.

    The API key is read from ``os.environ[config.api_key_env]`` here (or passed as ``api_key``),
    kept private, masked in ``repr`` and in every log record, and never written anywhere. For a
    loopback ``base_url`` (local vLLM, Ollama, the fake server) a missing key is fine.

    One client may run several ``complete_many`` calls one after another (stats accumulate);
    run concurrent calls from one event loop only, not from several threads at once.

    Example:
        >>> with LLMClient(LLMConfig(model="m", base_url="http://127.0.0.1:8000/v1")) as client:
        ...     client.stats["requests_sent"]  # doctest: +SKIP
        0
    """

    def __init__(self, config: LLMConfig, *, api_key: str | None = None) -> None:
        self.config = config
        self.base_url = config.base_url or os.environ.get("OPENAI_BASE_URL") or None
        if api_key is None:
            api_key = os.environ.get(config.api_key_env) or None
        if api_key is None and not config.dry_run:
            if not _is_loopback(self.base_url):
                raise MissingAPIKeyError(
                    f"environment variable {config.api_key_env} is not set; export it with your "
                    f"API key, set LLMConfig.api_key_env to the variable that holds the key, or "
                    f"use dry_run=True to estimate without calling"
                )
            api_key = "EMPTY"  # local servers ignore the key, but the SDK insists on one
        self._api_key = api_key
        _register_secret(api_key)
        self.cache: ResponseCache | None = (
            ResponseCache(config.cache_dir) if config.cache_dir else None
        )
        self.meter = BudgetMeter(
            price_per_1k_prompt=config.price_per_1k_prompt,
            price_per_1k_completion=config.price_per_1k_completion,
            max_cost=config.budget_max_cost,
            max_tokens=config.budget_max_tokens,
            max_requests=config.budget_max_requests,
        )
        self._rng = random.Random(config.jitter_seed)
        self._items = 0
        self._items_ok = 0
        self._cache_hits = 0
        self._cache_writes = 0
        self._requests_sent = 0
        self._responses = 0
        self._retries: Counter[str] = Counter({cause: 0 for cause in RETRY_CAUSES})
        self._reasks: Counter[str] = Counter()
        self._failures: Counter[str] = Counter()
        self._dry_run: DryRunEstimate | None = None
        self._closed = False

    # -- lifecycle -----------------------------------------------------------------------------
    def close(self) -> None:
        """Close the cache and forget the key (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self.cache is not None:
            self.cache.close()
        _unregister_secret(self._api_key)

    def __enter__(self) -> LLMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> LLMClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        key = "unset" if self._api_key is None else _MASK
        return f"LLMClient(model={self.config.model!r}, base_url={self.base_url!r}, api_key={key})"

    # -- stats ---------------------------------------------------------------------------------
    @property
    def stats(self) -> dict[str, Any]:
        """JSON-ready counters for the run manifest; cumulative over calls.

        ``items == items_ok + sum(failures.values())`` and ``requests_sent`` counts every HTTP
        request (first tries, retries and re-asks). Tokens and cost cover sent requests only.
        """
        budget = self.meter.snapshot()
        return {
            "model": self.config.model,
            "base_url": redact(self.base_url) if self.base_url else None,
            "items": self._items,
            "items_ok": self._items_ok,
            "items_failed": sum(self._failures.values()),
            "cache_hits": self._cache_hits,
            "cache_writes": self._cache_writes,
            "requests_sent": self._requests_sent,
            "responses": self._responses,
            "retries": dict(self._retries),
            "retries_total": sum(self._retries.values()),
            "reasks": dict(sorted(self._reasks.items())),
            "reasks_total": sum(self._reasks.values()),
            "failures": dict(sorted(self._failures.items())),
            "prompt_tokens": budget["prompt_tokens"],
            "completion_tokens": budget["completion_tokens"],
            "total_tokens": budget["total_tokens"],
            "responses_with_estimated_usage": budget["responses_with_estimated_usage"],
            "cost": budget["cost"],
            "budget": {"limits": budget["limits"], "exhausted": budget["exhausted"]},
            "dry_run": None if self._dry_run is None else self._dry_run.to_dict(),
        }

    # -- preparing requests --------------------------------------------------------------------
    def _coerce(self, request: LLMRequest | Mapping[str, Any]) -> LLMRequest:
        if isinstance(request, LLMRequest):
            return request
        if isinstance(request, Mapping):
            return LLMRequest(**dict(request))
        raise TypeError(f"expected LLMRequest or dict, got {type(request).__name__}")

    def _prepare(self, request: LLMRequest) -> _Prepared:
        config = self.config
        params: dict[str, Any] = {
            "temperature": config.temperature,
            "top_p": config.top_p,
            "max_tokens": config.max_tokens,
            "seed": config.seed,
            **config.extra_params,
            **request.params,
        }
        if request.schema is not None and config.json_mode and "response_format" not in params:
            params["response_format"] = {"type": "json_object"}
        params = {k: v for k, v in params.items() if v is not None}
        messages = [dict(m) for m in request.messages]
        if request.schema is not None and config.schema_in_prompt:
            hint = (
                "Reply with a single JSON object that conforms to this JSON Schema:\n"
                + json.dumps(request.schema, ensure_ascii=False, sort_keys=True)
            )
            if messages[0].get("role") == "system" and isinstance(messages[0].get("content"), str):
                messages[0]["content"] = f"{messages[0]['content']}\n\n{hint}"
            else:
                messages.insert(0, {"role": "system", "content": hint})
        output_params = {k: v for k, v in params.items() if k not in NON_OUTPUT_PARAMS}
        key = cache_key(config.model, messages, output_params, request.schema)
        return _Prepared(request, messages, params, key)

    def _prepare_all(self, requests: Iterable[LLMRequest | Mapping[str, Any]]) -> list[_Prepared]:
        prepared = [self._prepare(self._coerce(r)) for r in requests]
        seen: set[str] = set()
        for item in prepared:
            if item.request.id in seen:
                raise ValueError(
                    f"duplicate request id {item.request.id!r}; ids must be unique within one "
                    "call (use the record id, plus a suffix per variant)"
                )
            seen.add(item.request.id)
        return prepared

    # -- dry run -------------------------------------------------------------------------------
    def estimate(self, requests: Iterable[LLMRequest | Mapping[str, Any]]) -> DryRunEstimate:
        """Estimate requests, tokens and cost without any HTTP call; cached items are free.

        Example:
            >>> client.estimate(requests).cost  # doctest: +SKIP
            0.42
        """
        config = self.config
        prepared = self._prepare_all(requests)

        def completion_tokens(item: _Prepared) -> int:
            if config.expected_completion_tokens is not None:
                return config.expected_completion_tokens
            return int(item.params.get("max_tokens") or 0)

        return estimate_dry_run(
            (
                (p.messages, self.cache is not None and p.key in self.cache, completion_tokens(p))
                for p in prepared
            ),
            meter=self.meter,
            max_reasks=config.max_reasks,
            chars_per_token=config.chars_per_token,
        )

    # -- running -------------------------------------------------------------------------------
    def complete_many_sync(
        self,
        requests: Iterable[LLMRequest | Mapping[str, Any]],
        *,
        validator: Validator | None = None,
        on_result: Callable[[LLMResult], None] | None = None,
    ) -> list[LLMResult]:
        """:meth:`complete_many` for synchronous pipeline stages (runs its own event loop).

        Example:
            >>> results = client.complete_many_sync(requests)  # doctest: +SKIP
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(
                self.complete_many(requests, validator=validator, on_result=on_result)
            )
        raise RuntimeError(
            "complete_many_sync() was called inside a running event loop; "
            "use 'await client.complete_many(...)' there instead"
        )

    async def complete_many(
        self,
        requests: Iterable[LLMRequest | Mapping[str, Any]],
        *,
        validator: Validator | None = None,
        on_result: Callable[[LLMResult], None] | None = None,
    ) -> list[LLMResult]:
        """Run every request; one :class:`LLMResult` per request, in input order.

        At most ``config.max_concurrency`` requests are in flight. Each finished item is passed
        to ``on_result`` as soon as it is done (to stream results out), and a successful answer
        is in the cache before that call, so an interrupted run loses nothing already answered.
        Cancelling (Ctrl-C) stops the in-flight requests and leaves the cache consistent. An
        exception raised by ``on_result``, or by ``validator`` other than ValueError, LookupError
        or TypeError (which count as rejections), is a bug in the caller: it stops the run.

        Example:
            >>> results = await client.complete_many(requests, validator=check)  # doctest: +SKIP
            >>> [r.reason for r in results if not r.ok]  # doctest: +SKIP
            ['llm_off_schema']
        """
        if self._closed:
            raise RuntimeError("this LLMClient is closed; create a new one")
        prepared = self._prepare_all(requests)
        self._items += len(prepared)
        if self.config.dry_run:
            return self._dry_run_results(prepared, on_result)
        results: list[LLMResult | None] = [None] * len(prepared)
        key_locks: dict[str, asyncio.Lock] = {}
        queue = iter(enumerate(prepared))

        async def worker(oa: openai.AsyncOpenAI) -> None:
            # A fixed pool of workers pulling from one iterator bounds concurrency like a
            # semaphore would, without creating one task per item for million-item runs.
            for index, item in queue:
                # Identical requests in one call (same cache key) are answered once: the second
                # waits for the first and then finds its answer in the cache.
                lock = key_locks.setdefault(item.key, asyncio.Lock())
                async with lock:
                    result = await self._run_item(oa, item, validator)
                results[index] = result
                self._count_result(result)
                if on_result is not None:
                    on_result(result)

        async with self._open() as oa:
            workers = [
                asyncio.ensure_future(worker(oa))
                for _ in range(min(self.config.max_concurrency, len(prepared)))
            ]
            try:
                await asyncio.gather(*workers)
            except BaseException:
                for task in workers:
                    task.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
                raise
        self._log_summary()
        return [r for r in results if r is not None]

    def _open(self) -> openai.AsyncOpenAI:
        # A fresh SDK client per call: its connection pool belongs to the event loop that runs
        # the call, and the sync wrapper starts a new loop each time.
        return openai.AsyncOpenAI(
            api_key=self._api_key,
            base_url=self.base_url,
            timeout=self.config.timeout_s,
            max_retries=0,  # retries are ours: counted by cause, with Retry-After and jitter
        )

    def _dry_run_results(
        self, prepared: list[_Prepared], on_result: Callable[[LLMResult], None] | None
    ) -> list[LLMResult]:
        estimate = self.estimate([p.request for p in prepared])
        self._dry_run = estimate
        log.info(
            "dry run: %d items, %d cached, %d requests, ~%d tokens, ~%.4f cost",
            estimate.items,
            estimate.cached,
            estimate.requests,
            estimate.total_tokens,
            estimate.cost,
        )
        results = []
        for item in prepared:
            result = LLMResult(
                item.request.id, False, reason="llm_dry_run", detail="dry run: nothing was sent"
            )
            self._count_result(result)
            if on_result is not None:
                on_result(result)
            results.append(result)
        return results

    def _count_result(self, result: LLMResult) -> None:
        if result.ok:
            self._items_ok += 1
        else:
            self._failures[result.reason or "unknown"] += 1

    def _log_summary(self) -> None:
        stats = self.stats
        log.info(
            "llm: %d items, %d ok, %d cache hits, %d requests, %d retries, %d re-asks, "
            "%d tokens, cost %.4f; failures %s",
            stats["items"],
            stats["items_ok"],
            stats["cache_hits"],
            stats["requests_sent"],
            stats["retries_total"],
            stats["reasks_total"],
            stats["total_tokens"],
            stats["cost"],
            stats["failures"],
        )

    async def _run_item(
        self, oa: openai.AsyncOpenAI, item: _Prepared, validator: Validator | None
    ) -> LLMResult:
        request = item.request
        check = request.validator or validator
        hit = self._from_cache(item, check)
        if hit is not None:
            return hit
        state = _ItemState()
        conversation = list(item.messages)
        try:
            while True:
                text, usage = await self._send(oa, request.id, conversation, item.params, state)
                state.usage = state.usage + usage
                try:
                    parsed = self._validate(text, request.schema, check)
                except OutputRejected as rejected:
                    if state.reasks >= self.config.max_reasks:
                        raise _ItemFailed(
                            rejected.reason,
                            f"{rejected.feedback} (after {state.reasks} re-asks)",
                        ) from None
                    state.reasks += 1
                    self._reasks[rejected.reason] += 1
                    log.debug(
                        "request %s: re-ask %d (%s)", request.id, state.reasks, rejected.reason
                    )
                    conversation = [
                        *conversation,
                        {"role": "assistant", "content": text},
                        {"role": "user", "content": _correction(rejected, request.schema)},
                    ]
                    continue
                break
        except _ItemFailed as failed:
            log.info("request %s failed: %s (%s)", request.id, failed.reason, redact(failed.detail))
            return LLMResult(
                request.id,
                False,
                reason=failed.reason,
                detail=redact(failed.detail),
                usage=state.usage,
                attempts=state.attempts,
                reasks=state.reasks,
            )
        if self.cache is not None:
            # Written before the result is handed out, so whatever the caller has seen is
            # guaranteed to be on disk if the run dies right after.
            self.cache.put(
                item.key,
                CachedAnswer(
                    text,
                    state.usage.prompt_tokens,
                    state.usage.completion_tokens,
                    self.config.model,
                ),
            )
            self._cache_writes += 1
        return LLMResult(
            request.id,
            True,
            text=text,
            parsed=parsed,
            usage=state.usage,
            attempts=state.attempts,
            reasks=state.reasks,
        )

    def _from_cache(self, item: _Prepared, check: Validator | None) -> LLMResult | None:
        if self.cache is None:
            return None
        cached = self.cache.get(item.key)
        if cached is None:
            return None
        try:
            # Validated again on every hit: a stricter validator than the one in force when the
            # answer was stored must not let an old answer through.
            parsed = self._validate(cached.text, item.request.schema, check)
        except OutputRejected as rejected:
            log.info(
                "request %s: cached answer no longer passes validation (%s); asking again",
                item.request.id,
                rejected.reason,
            )
            return None
        self._cache_hits += 1
        return LLMResult(
            item.request.id,
            True,
            text=cached.text,
            parsed=parsed,
            usage=Usage(cached.prompt_tokens, cached.completion_tokens),
            from_cache=True,
        )

    async def _send(
        self,
        oa: openai.AsyncOpenAI,
        request_id: str,
        messages: list[dict[str, Any]],
        params: dict[str, Any],
        state: _ItemState,
    ) -> tuple[str, Usage]:
        config = self.config
        kwargs = {k: v for k, v in params.items() if k in _CREATE_KWARGS}
        extra_body = {k: v for k, v in params.items() if k not in _CREATE_KWARGS}
        if extra_body:
            kwargs["extra_body"] = extra_body
        for retry in range(config.max_retries + 1):
            if not self.meter.try_start():
                raise _ItemFailed(
                    "llm_budget_exhausted",
                    f"budget cap on {self.meter.exhausted()} reached before this request",
                )
            state.attempts += 1
            self._requests_sent += 1
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
                else:
                    raise _ItemFailed("llm_http_4xx", detail) from None
                wait_hint = parse_retry_after(exc.response.headers)
            except (openai.APIError, _BadResponse, ValueError) as exc:
                # ValueError: the SDK could not decode the body (JSONDecodeError) or build a
                # ChatCompletion from it (pydantic ValidationError).
                cause, detail = "bad_response", f"unreadable response: {type(exc).__name__}: {exc}"
            else:
                self._responses += 1
                self.meter.record(usage)
                return text, usage
            if retry == config.max_retries:
                raise _ItemFailed(
                    f"llm_{cause}_exhausted", f"{detail} (after {config.max_retries} retries)"
                )
            self._retries[cause] += 1
            delay = self._retry_delay(retry, wait_hint)
            log.debug(
                "request %s: %s, retry %d in %.2fs", request_id, redact(detail), retry + 1, delay
            )
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the retry loop returns or raises")

    def _retry_delay(self, retry: int, wait_hint: float | None) -> float:
        config = self.config
        if wait_hint is not None:
            # The server knows when capacity frees up; a little jitter on top keeps all the
            # requests told "retry in 2s" from arriving in the same millisecond.
            jitter = self._rng.uniform(0.0, min(config.backoff_base_s, 1.0))
            return min(wait_hint, config.retry_after_max_s) + jitter
        return backoff_delay(retry, config.backoff_base_s, config.backoff_max_s, self._rng)

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

    def _validate(
        self, text: str, schema: Mapping[str, Any] | None, check: Validator | None
    ) -> Any:
        if not text.strip():
            raise OutputRejected("the answer was empty", "llm_empty_output")
        value: Any = text
        if schema is not None:
            try:
                value = extract_json(text)
            except ValueError:
                raise OutputRejected(
                    "the answer contained no parseable JSON object", "llm_malformed_json"
                ) from None
            cls = jsonschema.validators.validator_for(schema)
            error = jsonschema.exceptions.best_match(cls(schema).iter_errors(value))
            if error is not None:
                where = error.json_path
                raise OutputRejected(
                    f"the JSON does not match the schema at {where}: {error.message}",
                    "llm_off_schema",
                )
        if check is not None:
            try:
                returned = check(value)
            except OutputRejected:
                raise
            except (ValueError, LookupError, TypeError) as exc:
                # KeyError/IndexError/TypeError in a validator almost always mean the answer had
                # an unexpected shape (a list where a dict was expected...): a bad answer, not a
                # bug, so it is re-asked like any rejection.
                raise OutputRejected(f"{type(exc).__name__}: {exc}") from None
            if returned is not None:
                value = returned
        elif schema is None:
            return None
        return value


def _correction(rejected: OutputRejected, schema: Mapping[str, Any] | None) -> str:
    feedback = rejected.feedback if len(rejected.feedback) <= 500 else rejected.feedback[:500] + "…"
    shape = " as a single JSON object that matches the schema" if schema is not None else ""
    return (
        f"Your previous answer was rejected: {feedback}. "
        f"Answer the original request again, replying with only the corrected answer{shape}."
    )
