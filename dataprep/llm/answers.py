"""Judging an answer and the re-ask loop: JSON extraction, schema check, the caller's validator.

An answer is rejected by raising :class:`OutputRejected` with a snake_case ``reason`` and a
``feedback`` sentence; :func:`ask_until_valid` then sends the conversation back with the rejected
answer and a correction (:func:`reask_messages`), at most ``max_reasks`` times per item.

Example:
    >>> schema = {"type": "object", "required": ["text"]}
    >>> check_answer('好的 {"text": "你好"}', schema, None)
    {'text': '你好'}
    >>> check_answer("没有 JSON", schema, None)
    Traceback (most recent call last):
    ...
    dataprep.llm.answers.OutputRejected: the answer contained no parseable JSON object
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import jsonschema
import jsonschema.exceptions

__all__ = [
    "OutputRejected",
    "ReasksExhausted",
    "Validator",
    "ask_until_valid",
    "check_answer",
    "extract_json",
    "reask_messages",
]

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)
# Longest feedback quoted back to the model; a validator's message is for a human and a model,
# not a place to paste the whole answer again.
MAX_FEEDBACK_CHARS = 500

Validator = Callable[[Any], Any]
"""Gets the answer (parsed JSON when the request has a schema, else the text); returns the
value to keep (None keeps its input) or raises :class:`OutputRejected` (or ValueError,
LookupError, TypeError: reason ``llm_invalid_output``) to have the model re-asked."""


class OutputRejected(ValueError):
    """Raised by a validator: ``feedback`` is shown to the model in the re-ask, ``reason`` is
    counted in the stats (re-asks by reason, and the failure reason once re-asks run out).

    Example:
        >>> OutputRejected("数字必须与原句一致", reason="slot_number_changed").reason
        'slot_number_changed'
    """

    def __init__(self, feedback: str, reason: str = "llm_invalid_output") -> None:
        super().__init__(feedback)
        self.feedback = feedback
        self.reason = reason


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


def check_answer(text: str, schema: Mapping[str, Any] | None, check: Validator | None) -> Any:
    """The value to keep from an answer (parsed JSON, or what ``check`` returned; None for plain
    text without a validator), or :class:`OutputRejected` saying why it cannot be kept."""
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
            raise OutputRejected(
                f"the JSON does not match the schema at {error.json_path}: {error.message}",
                "llm_off_schema",
            )
    if check is not None:
        try:
            returned = check(value)
        except OutputRejected:
            raise
        except (ValueError, LookupError, TypeError) as exc:
            # KeyError/IndexError/TypeError in a validator almost always mean the answer had an
            # unexpected shape (a list where a dict was expected...): a bad answer, not a bug,
            # so it is re-asked like any rejection.
            raise OutputRejected(f"{type(exc).__name__}: {exc}") from None
        if returned is not None:
            value = returned
    elif schema is None:
        return None
    return value


def reask_messages(
    conversation: Sequence[Mapping[str, Any]],
    answer: str,
    rejected: OutputRejected,
    schema: Mapping[str, Any] | None,
) -> list[dict[str, Any]]:
    """The conversation to send next: the rejected answer, then a correction that quotes the
    feedback and asks for the whole answer again.

    >>> msgs = reask_messages([{"role": "user", "content": "改写"}], "x", OutputRejected("太短"), None)
    >>> [m["role"] for m in msgs]
    ['user', 'assistant', 'user']
    """
    feedback = rejected.feedback
    if len(feedback) > MAX_FEEDBACK_CHARS:
        feedback = feedback[:MAX_FEEDBACK_CHARS] + "…"
    shape = " as a single JSON object that matches the schema" if schema is not None else ""
    correction = (
        f"Your previous answer was rejected: {feedback}. "
        f"Answer the original request again, replying with only the corrected answer{shape}."
    )
    return [
        *(dict(m) for m in conversation),
        {"role": "assistant", "content": answer},
        {"role": "user", "content": correction},
    ]


class ReasksExhausted(Exception):
    """The last answer was rejected and no re-ask is left; carries the rejection and the answer."""

    def __init__(self, rejected: OutputRejected, answer: str, reasks: int) -> None:
        super().__init__(f"{rejected.feedback} (after {reasks} re-asks)")
        self.rejected = rejected
        self.answer = answer
        self.reasks = reasks


async def ask_until_valid(
    messages: Sequence[Mapping[str, Any]],
    schema: Mapping[str, Any] | None,
    check: Validator | None,
    max_reasks: int,
    ask: Callable[[list[dict[str, Any]]], Awaitable[str]],
    on_reask: Callable[[OutputRejected], None] | None = None,
) -> tuple[str, Any, int]:
    """(accepted answer, kept value, re-asks): ``ask`` the conversation, judge the answer with
    :func:`check_answer`, and re-ask with the rejection until an answer passes; raises
    :class:`ReasksExhausted` once ``max_reasks`` re-asks were rejected too. Errors raised by
    ``ask`` (the transport's) pass through.

    >>> import asyncio
    >>> answers = iter(["不是 JSON", '{"text": "好"}'])
    >>> async def ask(conversation):
    ...     return next(answers)
    >>> asyncio.run(ask_until_valid([{"role": "user", "content": "x"}], {"type": "object"},
    ...                             None, 2, ask))
    ('{"text": "好"}', {'text': '好'}, 1)
    """
    conversation = [dict(m) for m in messages]
    reasks = 0
    while True:
        text = await ask(conversation)
        try:
            return text, check_answer(text, schema, check), reasks
        except OutputRejected as rejected:
            if reasks >= max_reasks:
                raise ReasksExhausted(rejected, text, reasks) from None
            reasks += 1
            if on_reask is not None:
                on_reask(rejected)
            conversation = reask_messages(conversation, text, rejected, schema)
