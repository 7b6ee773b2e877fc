"""Settings of the LLM client (:class:`LLMConfig`); the API key itself is never stored here.

Example:
    >>> LLMConfig(model="deepseek-chat", base_url="https://api.deepseek.com/v1",
    ...           api_key_env="DEEPSEEK_API_KEY").max_concurrency
    8
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from dataprep.llm.budget import DEFAULT_CHARS_PER_TOKEN

__all__ = [
    "NON_OUTPUT_PARAMS",
    "RESERVED_PARAMS",
    "LLMConfig",
    "MissingAPIKeyError",
    "is_loopback",
    "resolve_api_key",
]

# Parameters a request may not set: the client owns them.
RESERVED_PARAMS = frozenset(
    {"model", "messages", "stream", "n", "timeout", "extra_headers", "extra_query", "extra_body"}
)
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
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class LLMConfig:
    """What the client talks to, how hard it tries, what it may spend. One line per field below.

    Dropped in the split of the old client: ``top_p`` and ``seed`` (set them, like any sampling
    parameter, in ``extra_params``) and ``retry_after_max_s`` (now the constant
    ``transport.RETRY_AFTER_MAX_S``). The fields only tests set are kept for a reason given on
    the field (``jitter_seed``, ``json_mode``, ``schema_in_prompt``).

    Example:
        >>> LLMConfig.from_mapping({"model": "m", "max_concurrency": 4}).max_concurrency
        4
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
    max_auth_failures: int = 3
    """Stop the whole run after this many 401/403 answers in a row (a wrong key fails them all)."""
    jitter_seed: int | None = None
    """Seed for the backoff jitter (kept so tests get reproducible waits); None seeds from the OS."""
    max_concurrency: int = 8
    """Requests in flight at once."""
    temperature: float | None = 0.7
    """Sampling temperature; None leaves it to the server."""
    max_tokens: int | None = 1024
    """Completion token limit per request (also the dry run's upper bound); None: server's."""
    extra_params: dict[str, Any] = field(default_factory=dict)
    """Other sampling parameters sent with every request (top_p, seed, stop, vLLM's top_k...)."""
    json_mode: bool = True
    """Send response_format json_object for schema requests; False for servers that refuse it."""
    schema_in_prompt: bool = True
    """Append the JSON Schema to the system message; False when the prompt already shows it."""
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
        if self.max_auth_failures < 1:
            raise ValueError(
                f"LLMConfig.max_auth_failures must be >= 1, got {self.max_auth_failures}; "
                "1 stops at the first refused key"
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


def is_loopback(url: str | None) -> bool:
    """True for a base URL on this machine (a local vLLM, Ollama, a test server): no key needed.

    >>> is_loopback("http://127.0.0.1:8000/v1"), is_loopback("https://api.deepseek.com/v1")
    (True, False)
    """
    host = urlparse(url).hostname if url else None
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class MissingAPIKeyError(ValueError):
    """The environment variable named by ``LLMConfig.api_key_env`` is not set."""


def resolve_api_key(config: LLMConfig, base_url: str | None, api_key: str | None) -> str | None:
    """The key to send: ``api_key`` if given, else ``$<api_key_env>``; a placeholder for a
    loopback endpoint (local servers ignore it, the SDK insists on one); None for a dry run.

    >>> resolve_api_key(LLMConfig(model="m", api_key_env="NO_SUCH_VAR_X"), "http://127.0.0.1/v1", None)
    'EMPTY'
    """
    if api_key is None:
        api_key = os.environ.get(config.api_key_env) or None
    if api_key is None and not config.dry_run:
        if not is_loopback(base_url):
            raise MissingAPIKeyError(
                f"environment variable {config.api_key_env} is not set; export it with your "
                f"API key, set LLMConfig.api_key_env to the variable that holds the key, or "
                f"use dry_run=True to estimate without calling"
            )
        api_key = "EMPTY"
    return api_key
