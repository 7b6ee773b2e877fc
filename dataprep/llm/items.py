"""What goes into the client and what comes out: :class:`LLMRequest`, :class:`LLMResult`, and
the failure reasons (:data:`REASONS`).

Example:
    >>> LLMRequest("rec-1", [{"role": "user", "content": "你好"}]).id
    'rec-1'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import jsonschema
import jsonschema.exceptions

from dataprep.llm.answers import Validator
from dataprep.llm.budget import Usage
from dataprep.llm.config import RESERVED_PARAMS

__all__ = ["REASONS", "LLMRequest", "LLMResult", "MissingAPIKeyError"]

# Every reason an item can fail with; stages copy these into their exclusion records. A
# validator may add its own (``OutputRejected.reason``, e.g. the augment slot check's).
REASONS: dict[str, str] = {
    "llm_rate_limited_exhausted": "HTTP 429 on every attempt (retries exhausted)",
    "llm_server_error_exhausted": "HTTP 5xx on every attempt",
    "llm_timeout_exhausted": "no answer within timeout_s on every attempt",
    "llm_connection_exhausted": "connection failed or was dropped on every attempt",
    "llm_bad_response_exhausted": "the HTTP body was not a chat completion on every attempt",
    "llm_auth_failed": "HTTP 401/403: the key was refused; never retried",
    "llm_http_4xx": "HTTP 4xx other than 401, 403 and 429 (bad request, not found); never retried",
    "llm_malformed_json": "no JSON object in the answer, after all re-asks",
    "llm_off_schema": "the JSON answer does not match the schema, after all re-asks",
    "llm_invalid_output": "the validator rejected the answer, after all re-asks",
    "llm_empty_output": "the answer was empty, after all re-asks",
    "llm_budget_exhausted": "the cost/token/request budget was reached before this request",
    "llm_dry_run": "dry run: nothing was sent",
}


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
    """Per-request validator (e.g. a check against this record's facts); overrides the one
    given to complete_many. Its rejections are re-asked like schema errors."""

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
    """snake_case failure reason (see REASONS, or a validator's own); None when ok."""
    detail: str = ""
    """Human-readable explanation of the failure (API keys masked)."""
    rejected_text: str | None = None
    """The last answer the checks rejected, kept as evidence when the item failed on it."""
    usage: Usage = field(default_factory=Usage)
    """Tokens this item consumed (for cached answers: what they cost originally)."""
    from_cache: bool = False
    """Every answer of this item came from the on-disk cache: no request was sent."""
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
