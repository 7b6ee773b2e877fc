"""What goes into the client and what comes out: :class:`LLMRequest` (and how it goes on the
wire, :func:`wire_request`), :class:`LLMResult`, and the failure reasons (:data:`REASONS`).

Example:
    >>> LLMRequest("rec-1", [{"role": "user", "content": "你好"}]).id
    'rec-1'
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import jsonschema
import jsonschema.exceptions

from dataprep.llm.answers import Validator
from dataprep.llm.budget import Usage
from dataprep.llm.config import RESERVED_PARAMS, LLMConfig

__all__ = ["REASONS", "LLMRequest", "LLMResult", "wire_request"]

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


def wire_request(config: LLMConfig, request: LLMRequest) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(messages, sampling parameters) as sent: config defaults under the request's overrides
    (None removes one), json mode and the schema hint for schema requests.

    >>> cfg = LLMConfig(model="m", temperature=0.2)
    >>> wire_request(cfg, LLMRequest("a", [{"role": "user", "content": "x"}]))[1]
    {'temperature': 0.2, 'max_tokens': 1024}
    """
    params: dict[str, Any] = {
        "temperature": config.temperature,
        "max_tokens": config.max_tokens,
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
    return messages, params
