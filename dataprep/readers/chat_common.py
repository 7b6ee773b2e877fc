"""What the chat-format readers (``openai_chat``, ``glm4``, ``sharegpt``) share: one JSON object
per line (or one JSON array of objects), tools in either the plain or the ``{"type":
"function"}`` form, and the turn from parsed messages into a :class:`Conversation`.

A subclass implements :meth:`ChatReader.messages`, which raises :class:`BadRecord` with a reason
code and a message that names the position (``/messages/3/tool_call_id``). A record that
declares tools is marked ``lineage.extra["tool_origin"] = "dataset"``, as the ChatGLM3 reader does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from dataprep.errors import ConfigError
from dataprep.export.common import plain_tool
from dataprep.io import iter_jsonl, read_json_document
from dataprep.readers.base import Item, Reader
from dataprep.record import Conversation, Lineage, Message, json_object


class BadRecord(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def text_content(value: Any, where: str) -> str:
    """Message content as a string: a string, or a list of text parts (OpenAI's array form)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                       and isinstance(p.get("text"), str) for p in value):
        return "".join(p["text"] for p in value)
    found = "null" if value is None else type(value).__name__
    raise BadRecord("wrong_type", f"{where}: expected a string (or a list of text parts), "
                                  f"found {found}")


def parse_tools(value: Any, where: str) -> list[dict[str, Any]] | None:
    """A tools list (objects, or a JSON string holding the list); ``None`` when absent/empty
    string."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise BadRecord("malformed_tools", f"{where}: a string that is not JSON ({e.msg})"
                            ) from e
    if not isinstance(value, list):
        raise BadRecord("malformed_tools", f"{where}: expected a list of tools, found "
                                           f"{type(value).__name__}")
    out = []
    for i, tool in enumerate(value):
        try:
            out.append(plain_tool(tool))
        except ValueError as e:
            raise BadRecord("malformed_tools", f"{where}/{i}: {e}") from e
    return out


def call_from_json(value: Any, where: str) -> tuple[str, dict[str, Any]]:
    """(name, arguments) of ``{"name": ..., "arguments": {...} or "json"}``."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value["name"]:
        raise BadRecord("malformed_call", f"{where}: expected a call object with a 'name', "
                                          f"found {json.dumps(value, ensure_ascii=False)[:80]}")
    args = value.get("arguments", value.get("parameters", {}))
    try:
        return value["name"], json_object(args, f"{where}/arguments")
    except ValueError as e:
        raise BadRecord("malformed_call", str(e)) from e


def loss_from_weight(value: Any, where: str) -> bool | None:
    if value is None:
        return None
    if value in (0, 1) and not isinstance(value, bool):
        return bool(value)
    raise BadRecord("invalid_value", f"{where}: weight must be 0 or 1, found {value!r}")


class ChatReader(Reader):
    """Base of the chat-format readers. Options: ``corpus`` (tag written on every record),
    ``observation_json`` (decode observation text that parses as JSON; default true)."""

    def configure(self, corpus: str | None = None, observation_json: bool = True,
                  **options: Any) -> None:
        self.corpus_tag = corpus or ""
        if not isinstance(observation_json, bool):
            raise ConfigError(f"reader {self.name!r}: observation_json must be true or false")
        self.observation_json = observation_json
        self.configure_format(**options)

    def configure_format(self, **options: Any) -> None:
        if options:
            raise ConfigError(f"reader {self.name!r} got unknown options {sorted(options)}; "
                              "available: corpus, observation_json")

    def messages(self, value: dict[str, Any]
                 ) -> tuple[list[Message], list[dict[str, Any]] | None]:
        """(messages, tools) of one record; raises :class:`BadRecord`."""
        raise NotImplementedError

    def read(self) -> Iterator[Item]:
        with open(self.path, "rb") as fh:
            head = fh.read(4096).lstrip()
        if head.startswith(b"["):
            # A JSON array file (LLaMA-Factory's own examples are written this way).
            doc, _ = read_json_document(self.path)
            for i, value in enumerate(doc if isinstance(doc, list) else [doc]):
                yield self.convert(value, i + 1, None)
            return
        for raw in iter_jsonl(self.path, max_line_bytes=self.max_line_bytes, source=self.source):
            yield raw.reject if raw.reject is not None else self.convert(raw.value, raw.line,
                                                                         raw.text)

    def convert(self, value: Any, line: int, text: str | None) -> Item:
        if not isinstance(value, dict):
            return self.make_reject("wrong_type", f"/: expected an object, found "
                                    f"{type(value).__name__}", line, text=text, value=value)
        try:
            messages, tools = self.messages(value)
            if not messages:
                raise BadRecord("empty_value", "/: no messages")
        except BadRecord as e:
            return self.make_reject(e.reason, e.message, line, text=text, value=value)
        except ValueError as e:  # a Message that does not validate itself
            return self.make_reject("invalid_message", str(e), line, text=text, value=value)
        rec_id = value.get("id")
        rec_id = str(rec_id) if rec_id not in (None, "") else self.make_id(line)
        # Chat data that declares its tools brings its own tool, as ChatGLM3 files do (see
        # dataprep.corpora.hotel.tools.TOOL_ORIGINS): its rules judge it against that tool.
        extra = {"tool_origin": "dataset"} if tools else {}
        return Conversation(id=rec_id, messages=messages, tools=tools, corpus=self.corpus_tag,
                            lineage=Lineage(source=self.source, line=line, group_id=rec_id,
                                            extra=extra))
