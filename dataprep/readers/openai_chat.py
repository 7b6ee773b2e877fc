"""OpenAI-format chat JSONL (fine-tuning files, logged chat requests) into our record.

One line: ``{"messages": [...], "tools": [{"type": "function", "function": {...}}]?}``.

- ``system``/``developer`` -> system, ``user`` -> user; content may be a string or a list of
  text parts.
- An assistant message with ``content`` and ``tool_calls`` becomes an assistant text (the
  "thought") followed by one tool message per call; the second and later calls of one message
  are marked ``parallel``. ``weight`` 0/1 becomes ``loss`` false/true on all of them.
- A ``tool`` message is the observation of the call its ``tool_call_id`` names (JSON text is
  decoded, see ``dataprep.export.common``); a call nobody answered keeps no observation.

Rejected with a reason: an unknown role (``unsupported_role``; the legacy ``function`` role
included), a ``tool_call_id`` that names no earlier call (``unknown_tool_call_id``), arguments
that are not a JSON object (``malformed_call``), a message without usable content.

>>> r = OpenAIChatReader("out/hotel/openai/train.jsonl")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from dataprep.export.common import decode_observation
from dataprep.readers.chat_common import (
    BadRecord,
    ChatReader,
    call_from_json,
    loss_from_weight,
    parse_tools,
    text_content,
)
from dataprep.record import MISSING, Message


class OpenAIChatReader(ChatReader):
    name = "openai_chat"

    def messages(self, value: dict[str, Any]
                 ) -> tuple[list[Message], list[dict[str, Any]] | None]:
        raw = value.get("messages")
        if not isinstance(raw, list):
            raise BadRecord("missing_field" if raw is None else "wrong_type",
                            "/messages: expected a list of messages")
        tools = parse_tools(value.get("tools"), "/tools")
        out: list[Message] = []
        calls: dict[str, Message] = {}
        for i, m in enumerate(raw):
            where = f"/messages/{i}"
            if not isinstance(m, dict):
                raise BadRecord("wrong_type", f"{where}: expected an object")
            role = m.get("role")
            if role in ("system", "developer", "user"):
                out.append(Message("user" if role == "user" else "system",
                                   text_content(m.get("content"), f"{where}/content")))
            elif role == "assistant":
                loss = loss_from_weight(m.get("weight"), f"{where}/weight")
                tool_calls = m.get("tool_calls") or []
                content = m.get("content")
                if content is not None or not tool_calls:
                    text = text_content(content, f"{where}/content")
                    if text or not tool_calls:
                        out.append(Message("assistant", text, loss=loss))
                if not isinstance(tool_calls, list):
                    raise BadRecord("wrong_type", f"{where}/tool_calls: expected a list")
                for k, tc in enumerate(tool_calls):
                    fn = tc.get("function") if isinstance(tc, dict) else None
                    name, args = call_from_json(fn, f"{where}/tool_calls/{k}/function")
                    msg = Message("tool", name=name, parameters=args, loss=loss,
                                  parallel=True if k else None)
                    call_id = tc.get("id")
                    if isinstance(call_id, str) and call_id:
                        calls[call_id] = msg
                    out.append(msg)
            elif role == "tool":
                call_id = m.get("tool_call_id")
                if call_id not in calls:
                    raise BadRecord("unknown_tool_call_id",
                                    f"{where}/tool_call_id: {call_id!r} names no earlier call")
                target = calls[call_id]
                if target.observation is not MISSING:
                    raise BadRecord("duplicate_observation",
                                    f"{where}: a second result for call {call_id!r}")
                target.observation = decode_observation(
                    text_content(m.get("content"), f"{where}/content"), self.observation_json)
            else:
                raise BadRecord("unsupported_role", f"{where}/role: expected system, developer, "
                                f"user, assistant or tool, found {role!r}")
        return out, tools
