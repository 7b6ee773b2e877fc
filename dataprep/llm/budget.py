"""Token usage and cost accounting, the budget cap, and dry-run estimates.

Token estimate (used when a server omits ``usage`` and for ``--dry-run``): ``ceil(chars / 1.5)``
plus 4 tokens of chat-format overhead per message. 1.5 characters per token is a middle value
for Chinese text under the tokenizers these endpoints use (ChatGLM3 averages ~1.5, GLM-4 and
DeepSeek ~1.4-1.8, cl100k-style tokenizers nearer 1.0); it is a planning figure, not a count, and
``LLMConfig.chars_per_token`` changes it. Estimated figures are flagged as such in the stats.

Example:
    >>> meter = BudgetMeter(price_per_1k_prompt=0.5, price_per_1k_completion=1.0, max_cost=1.0)
    >>> meter.record(Usage(prompt_tokens=1000, completion_tokens=500))
    >>> meter.cost, meter.exhausted()
    (1.0, 'cost')
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "DEFAULT_CHARS_PER_TOKEN",
    "MESSAGE_OVERHEAD_TOKENS",
    "BudgetMeter",
    "DryRunEstimate",
    "Usage",
    "estimate_dry_run",
    "estimate_prompt_tokens",
    "estimate_tokens",
]

DEFAULT_CHARS_PER_TOKEN = 1.5
# OpenAI documents ~3-4 tokens of role/separator framing per chat message; the ChatGLM3 format
# adds a role token and a newline. 4 keeps estimates on the safe (higher) side.
MESSAGE_OVERHEAD_TOKENS = 4


def estimate_tokens(text: str, chars_per_token: float = DEFAULT_CHARS_PER_TOKEN) -> int:
    """Rough token count of ``text``: ``ceil(len(text) / chars_per_token)``.

    Example:
        >>> estimate_tokens("今天天气很好")  # 6 characters / 1.5
        4
        >>> estimate_tokens("")
        0
    """
    if chars_per_token <= 0:
        raise ValueError(f"chars_per_token must be > 0, got {chars_per_token}")
    return math.ceil(len(text) / chars_per_token)


def estimate_prompt_tokens(
    messages: Sequence[Mapping[str, Any]], chars_per_token: float = DEFAULT_CHARS_PER_TOKEN
) -> int:
    """Estimated prompt tokens of a chat request: content estimate + per-message overhead.

    Example:
        >>> estimate_prompt_tokens([{"role": "user", "content": "今天天气很好"}])
        8
    """
    total = 0
    for message in messages:
        content = message.get("content")
        text = content if isinstance(content, str) else ("" if content is None else str(content))
        total += estimate_tokens(text, chars_per_token) + MESSAGE_OVERHEAD_TOKENS
    return total


@dataclass(frozen=True)
class Usage:
    """Tokens one request (or one item, summed over its requests) consumed."""

    prompt_tokens: int = 0
    """Input tokens."""
    completion_tokens: int = 0
    """Output tokens."""
    estimated: bool = False
    """True when any part came from :func:`estimate_tokens` instead of the server's ``usage``."""

    @property
    def total_tokens(self) -> int:
        """prompt + completion."""
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.estimated or other.estimated,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


class BudgetMeter:
    """Running totals of requests, tokens and cost, and the cap that stops new requests.

    The cap is checked before each request is *started*: requests already in flight finish and
    are counted, so tokens and cost can end above the cap by at most what the in-flight
    requests (``max_concurrency`` of them) consume. ``max_requests`` is exact because the slot
    is reserved before the request is sent.

    Example:
        >>> meter = BudgetMeter(max_requests=1)
        >>> meter.try_start(), meter.try_start()
        (True, False)
    """

    def __init__(
        self,
        *,
        price_per_1k_prompt: float = 0.0,
        price_per_1k_completion: float = 0.0,
        max_cost: float | None = None,
        max_tokens: int | None = None,
        max_requests: int | None = None,
    ) -> None:
        self.price_per_1k_prompt = price_per_1k_prompt
        self.price_per_1k_completion = price_per_1k_completion
        self.max_cost = max_cost
        self.max_tokens = max_tokens
        self.max_requests = max_requests
        self._lock = threading.Lock()
        self.requests_started = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.estimated_responses = 0

    def cost_of(self, usage: Usage) -> float:
        """Price of ``usage`` under the configured per-1k-token prices."""
        return (
            usage.prompt_tokens * self.price_per_1k_prompt
            + usage.completion_tokens * self.price_per_1k_completion
        ) / 1000.0

    @property
    def cost(self) -> float:
        """Cost so far, rounded to 1e-9 so that sums of prices compare cleanly."""
        usage = Usage(self.prompt_tokens, self.completion_tokens)
        return round(self.cost_of(usage), 9)

    @property
    def total_tokens(self) -> int:
        """Prompt + completion tokens so far."""
        return self.prompt_tokens + self.completion_tokens

    def exhausted(self) -> str | None:
        """Which limit is reached (``cost``, ``tokens``, ``requests``), or None."""
        with self._lock:
            return self._exhausted_locked()

    def _exhausted_locked(self) -> str | None:
        if self.max_cost is not None and self.cost >= self.max_cost:
            return "cost"
        if self.max_tokens is not None and self.total_tokens >= self.max_tokens:
            return "tokens"
        if self.max_requests is not None and self.requests_started >= self.max_requests:
            return "requests"
        return None

    def try_start(self) -> bool:
        """Reserve one request if no limit is reached; False means do not send it."""
        with self._lock:
            if self._exhausted_locked() is not None:
                return False
            self.requests_started += 1
            return True

    def record(self, usage: Usage) -> None:
        """Add the usage of a finished request."""
        with self._lock:
            self.prompt_tokens += usage.prompt_tokens
            self.completion_tokens += usage.completion_tokens
            if usage.estimated:
                self.estimated_responses += 1

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready totals and limits, for the run manifest."""
        with self._lock:
            return {
                "requests_started": self.requests_started,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens,
                "responses_with_estimated_usage": self.estimated_responses,
                "cost": self.cost,
                "limits": {
                    "max_cost": self.max_cost,
                    "max_tokens": self.max_tokens,
                    "max_requests": self.max_requests,
                },
                "exhausted": self._exhausted_locked(),
            }


@dataclass(frozen=True)
class DryRunEstimate:
    """What a run would cost, computed without any HTTP call."""

    items: int
    """Request items given."""
    cached: int
    """Items the cache would answer (no request, no cost)."""
    requests: int
    """Requests that would be sent, assuming no retry and no re-ask."""
    max_requests: int
    """Upper bound on requests if every item used all its re-asks (retries excluded)."""
    prompt_tokens: int
    """Estimated prompt tokens of the requests that would be sent."""
    completion_tokens: int
    """Estimated completion tokens (max_tokens or the configured expected length)."""
    cost: float
    """Estimated cost under the configured prices."""
    within_budget: bool
    """False when the estimate exceeds a configured cost, token or request cap."""

    @property
    def total_tokens(self) -> int:
        """prompt + completion."""
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (with total_tokens)."""
        return {**asdict(self), "total_tokens": self.total_tokens}


def estimate_dry_run(
    prompts: Iterable[tuple[Sequence[Mapping[str, Any]], bool, int]],
    *,
    meter: BudgetMeter,
    max_reasks: int = 0,
    chars_per_token: float = DEFAULT_CHARS_PER_TOKEN,
) -> DryRunEstimate:
    """Estimate requests, tokens and cost from ``(messages, is_cached, completion_tokens)``.

    ``completion_tokens`` is what one answer is expected to cost (``max_tokens`` as an upper
    bound, or a configured expected length). ``meter`` supplies prices and caps; it is not
    modified.

    Example:
        >>> meter = BudgetMeter(price_per_1k_prompt=1.0, price_per_1k_completion=2.0)
        >>> est = estimate_dry_run([([{"role": "user", "content": "你好"}], False, 100)],
        ...                        meter=meter)
        >>> est.requests, est.prompt_tokens, est.completion_tokens, est.cost
        (1, 6, 100, 0.206)
    """
    items = cached = prompt = completion = 0
    for messages, is_cached, completion_tokens in prompts:
        items += 1
        if is_cached:
            cached += 1
            continue
        prompt += estimate_prompt_tokens(messages, chars_per_token)
        completion += completion_tokens
    requests = items - cached
    cost = round(meter.cost_of(Usage(prompt, completion)), 9)
    within = not (
        (meter.max_cost is not None and cost > meter.max_cost)
        or (meter.max_tokens is not None and prompt + completion > meter.max_tokens)
        or (meter.max_requests is not None and requests > meter.max_requests)
    )
    return DryRunEstimate(
        items=items,
        cached=cached,
        requests=requests,
        max_requests=requests * (1 + max_reasks),
        prompt_tokens=prompt,
        completion_tokens=completion,
        cost=cost,
        within_budget=within,
    )
