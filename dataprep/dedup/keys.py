"""What a sample is, for matching: the fields that define it (:func:`sample_key`) and the tool
calls that must agree for two dialogs to be near duplicates (:func:`call_signature`)."""

from __future__ import annotations

import json
from typing import Any

from dataprep.errors import ConfigError
from dataprep.record import Conversation

FIELDS = ("auto", "user", "user+tools", "all", "source", "qa")


def _tool_call_text(name: str | None, parameters: dict[str, Any] | None) -> str:
    # Canonical JSON: the same call with its keys in another order is the same call.
    return f"{name}({json.dumps(parameters, sort_keys=True, ensure_ascii=False)})"


def sample_key(conv: Conversation, fields: str = "auto") -> str:
    """The text that defines a sample, used for matching (never written out).

    ``fields``: ``"user"`` (user turns), ``"user+tools"`` (user turns and tool calls: name plus
    canonical JSON parameters), ``"all"`` (user and assistant text and tool calls), ``"source"``
    (``meta["text"]``, the SPO source text, falling back to the user turns), ``"qa"``
    (``meta["question"]`` + ``meta["answer"]``, falling back to ``"all"``), ``"auto"`` (dialogs
    with tools -> ``user+tools``, records with ``meta["text"]`` -> ``source``, records with
    ``meta["question"]`` -> ``qa``, otherwise ``all``). Observations and assistant replies of a
    dialog are left out on purpose: two dialogs that ask for the same things with the same calls
    are the same training sample even when the hotel database answered differently.

    >>> from dataprep.record import Lineage, Message
    >>> c = Conversation(id="x", messages=[Message("user", "你好"), Message("assistant", "您好")],
    ...                  lineage=Lineage(source="a.jsonl", line=1, group_id="x"))
    >>> sample_key(c, "user"), sample_key(c)
    ('你好', '你好\\n您好')
    """
    if fields not in FIELDS:
        raise ConfigError(f"unknown dedup fields {fields!r}; choose one of {', '.join(FIELDS)}")
    if fields == "auto":
        if conv.tools or any(m.role == "tool" for m in conv.messages):
            fields = "user+tools"
        elif isinstance(conv.meta.get("text"), str):
            fields = "source"
        elif isinstance(conv.meta.get("question"), str):
            fields = "qa"
        else:
            fields = "all"
    if fields == "source":
        text = conv.meta.get("text")
        return text if isinstance(text, str) else "\n".join(conv.texts(("user",)))
    if fields == "qa":
        q, a = conv.meta.get("question"), conv.meta.get("answer", conv.meta.get("answers"))
        if isinstance(q, str):
            answer = "\n".join(a) if isinstance(a, list) else (a if isinstance(a, str) else "")
            return f"{q}\n{answer}"
        fields = "all"
    parts: list[str] = []
    for m in conv.messages:
        if m.role == "user" or (fields == "all" and m.role == "assistant"):
            parts.append(m.content or "")
        elif m.role == "tool" and fields in ("user+tools", "all"):
            parts.append(_tool_call_text(m.name, m.parameters))
    return "\n".join(parts)


def call_signature(conv: Conversation) -> str | None:
    """The tool calls of a dialog (names and canonical arguments), or None without calls: the
    guard that keeps two template twins asking for different things (``价格在500以内`` ->
    ``price_range_upper: 500`` vs ``600以内`` -> ``600``) from being near duplicates. Their texts
    differ by one character, but they teach different calls, and a dev copy of one is not a leak of
    the other.

    >>> from dataprep.record import Lineage, Message
    >>> c = Conversation(id="x", lineage=Lineage(source="a", line=1, group_id="x"), messages=[
    ...     Message("user", "找酒店"), Message("tool", name="s", parameters={"b": 1, "a": 2})])
    >>> call_signature(c)
    's({"a": 2, "b": 1})'
    """
    calls = [_tool_call_text(m.name, m.parameters) for m in conv.messages if m.role == "tool"]
    return "\n".join(calls) if calls else None
