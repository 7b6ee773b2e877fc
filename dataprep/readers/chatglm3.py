"""ChatGLM3 tools/conversations JSONL, from any source (our own outputs, public datasets).

Two repairs every ChatGLM3 reader needs, shared with the fine-tuning-lab reader:

- ``tools`` double-encoded (a list holding one string that is a JSON list, as the lab and several
  public sets write it) is decoded, and the record's lineage gets the op ``decode_tools``.
- A conversation that ends with a ``tool`` turn (a sample whose training target was the call
  itself) breaks the "ends with an assistant turn" rule. With ``unanswered_tool_call: cut`` the last
  exchange — from the last user turn to the end — is cut and the op ``cut_unanswered_tool_call`` is
  recorded; the rest is the sample the upstream preprocessor had dropped as a prefix of this one.
  When nothing answered remains the record is *removed* (reason ``unanswered_tool_call``).
  ``keep`` (the default) keeps it: in ChatGLM3's format the call is an assistant turn with loss,
  so the sample trains the call.

A record with ``tools`` brings its own tool: ``lineage.extra["tool_origin"] = "dataset"`` unless its
lineage already says (our own outputs read back keep theirs); see
:data:`dataprep.corpora.hotel.tools.TOOL_ORIGINS`.

>>> r = ChatGLM3Reader("out/hotel/train.jsonl")  # doctest: +SKIP
>>> next(r.read()).messages[0].role  # doctest: +SKIP
'user'
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from dataprep.errors import ConfigError
from dataprep.io import iter_jsonl
from dataprep.readers.base import Item, Reader
from dataprep.record import Conversation, Message, Reject

UNANSWERED_POLICIES = ("keep", "cut", "remove")


def decode_tools(tools: Any) -> tuple[list[dict[str, Any]] | None, bool]:
    """(tool objects, whether anything was decoded). Raises ``ValueError`` saying which element is
    not a JSON-encoded tool list.

    >>> decode_tools(['[{"name": "search_hotels", "parameters": {"type": "object"}}]'])
    ([{'name': 'search_hotels', 'parameters': {'type': 'object'}}], True)
    """
    if tools is None:
        return None, False
    decoded = False
    items = tools
    if isinstance(tools, str):
        items, decoded = [tools], True
    if not isinstance(items, list):
        raise ValueError(f"expected a list of tool objects, found {type(tools).__name__}")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        if isinstance(item, dict):
            out.append(item)
            continue
        if not isinstance(item, str):
            raise ValueError(f"/tools/{i}: expected a tool object or a JSON string, found "
                             f"{type(item).__name__}")
        try:
            value = json.loads(item)
        except json.JSONDecodeError as e:
            raise ValueError(f"/tools/{i}: a string that is not JSON ({e.msg} at column {e.colno})"
                             ) from e
        decoded = True
        value = value if isinstance(value, list) else [value]
        for j, tool in enumerate(value):
            if not isinstance(tool, dict):
                raise ValueError(f"/tools/{i}: decoded item {j} is a {type(tool).__name__}, "
                                 "expected a tool object")
            out.append(tool)
    return out, decoded


def cut_unanswered_tool_call(messages: list[Message]) -> list[Message] | None:
    """The messages without a trailing unanswered exchange, or None when nothing answered is left.

    Returns the list unchanged when it does not end with a ``tool`` turn.

    >>> msgs = [Message("user", "a"), Message("assistant", "b"), Message("user", "c"),
    ...         Message("tool", name="t", parameters={})]
    >>> [m.content for m in cut_unanswered_tool_call(msgs)]
    ['a', 'b']
    """
    if not messages or messages[-1].role != "tool":
        return messages
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=None)
    if last_user is None:
        return None
    kept = messages[:last_user]
    if not kept or kept[-1].role != "assistant" or not any(m.role == "user" for m in kept):
        return None
    return kept


class ChatGLM3Reader(Reader):
    """Reads ChatGLM3 JSONL. Options: ``corpus`` (tag written on every record),
    ``unanswered_tool_call`` (``keep``, ``cut`` or ``remove``; see the module docstring)."""

    name = "chatglm3"
    corpus = ""
    input_schema = "chatglm3"
    default_unanswered = "keep"

    def configure(self, corpus: str | None = None, unanswered_tool_call: str | None = None,
                  **options: Any) -> None:
        super().configure(**options)
        self.corpus_tag = corpus if corpus is not None else self.corpus
        policy = unanswered_tool_call or self.default_unanswered
        if policy not in UNANSWERED_POLICIES:
            raise ConfigError(f"reader {self.name!r}: unanswered_tool_call must be one of "
                              f"{', '.join(UNANSWERED_POLICIES)}, got {policy!r}")
        self.unanswered = policy

    def read(self) -> Iterator[Item]:
        for raw in iter_jsonl(self.path, max_line_bytes=self.max_line_bytes, source=self.source):
            if raw.reject is not None:
                yield raw.reject
                continue
            yield self.convert(raw.value, raw.line, raw.text)

    # -- steps shared with subclasses ----------------------------------------------------------
    def decode(self, value: dict[str, Any], line: int, text: str | None
               ) -> tuple[dict[str, Any] | None, list[str], Reject | None]:
        """The record with proper tool objects, the ops applied, or a reject."""
        if "tools" not in value:
            return value, [], None
        try:
            tools, decoded = decode_tools(value["tools"])
        except ValueError as e:
            return None, [], self.make_reject("malformed_tools", str(e), line, text=text)
        return {**value, "tools": tools}, (["decode_tools"] if decoded else []), None

    def finish(self, conv: Conversation, line: int, text: str | None) -> Item:
        """Apply the unanswered-tool-call policy."""
        if self.unanswered == "keep" or not conv.messages or conv.messages[-1].role != "tool":
            return conv
        kept = cut_unanswered_tool_call(conv.messages) if self.unanswered == "cut" else None
        if kept is None:
            return self.make_reject(
                "unanswered_tool_call",
                f"/conversations/{len(conv.messages) - 1}: the sample ends with a tool call and "
                "has no answered exchange before it (nothing to learn at its end)",
                line, text=text, kind="removed")
        conv.lineage.extra = {**conv.lineage.extra,
                              "cut_messages": len(conv.messages) - len(kept)}
        conv.messages = kept
        conv.lineage.ops.append("cut_unanswered_tool_call")
        return conv

    def convert(self, value: Any, line: int, text: str | None) -> Item:
        if not isinstance(value, dict):
            rej = self.schema_reject(value, line, text)
            assert rej is not None  # the schema wants an object
            return rej
        record, ops, rej = self.decode(value, line, text)
        if rej is not None:
            return rej
        assert record is not None
        rej = self.schema_reject(record, line, text)
        if rej is not None:
            return rej
        try:
            conv = Conversation.from_chatglm3(record, source=self.source, line=line)
        except ValueError as e:
            return self.make_reject("invalid_message", f"/conversations: {e}", line, text=text)
        if "id" not in record:
            conv.id = self.make_id(line)
        if "lineage" not in record:
            conv.lineage.group_id = conv.id
        conv.lineage.ops.extend(ops)
        if conv.tools and "tool_origin" not in conv.lineage.extra:
            conv.lineage.extra["tool_origin"] = "dataset"
        if self.corpus_tag:
            conv.corpus = self.corpus_tag
        return self.finish(conv, line, text)
