"""GLM-4 fine-tuning JSONL (THUDM/GLM-4 ``finetune_demo`` format) into our record.

- ``tools`` in the first (system) message, plain or ``{"type": "function"}``; that system message
  becomes a system turn only when its content is not empty.
- An assistant message whose content is a ``{"name", "arguments"}`` JSON object naming a declared
  tool is a call; calls in a row (no observation between them) are one parallel group, and the
  observation messages after them pair with them in order. Other assistant content is text.
- An observation with no call left to answer becomes an ``observation`` message.
- ``loss`` flags kept by ``dataprep export --to glm4`` (in the ``dataprep_extra`` column, or on
  the message itself) are restored.
"""

from __future__ import annotations

import json
from typing import Any

from dataprep.export.common import EXTRA_COLUMN, decode_observation, unpack_extra
from dataprep.readers.chat_common import (
    BadRecord,
    ChatReader,
    call_from_json,
    parse_tools,
    text_content,
)
from dataprep.record import Message


def _loss(m: dict[str, Any], where: str) -> bool | None:
    loss = m.get("loss")
    if loss is None or isinstance(loss, bool):
        return loss
    raise BadRecord("wrong_type", f"{where}/loss: expected true or false, found {loss!r}")


class GLM4Reader(ChatReader):
    name = "glm4"

    def messages(self, value: dict[str, Any]
                 ) -> tuple[list[Message], list[dict[str, Any]] | None]:
        raw = value.get("messages")
        if not isinstance(raw, list):
            raise BadRecord("missing_field" if raw is None else "wrong_type",
                            "/messages: expected a list of messages")
        tools: list[dict[str, Any]] | None = None
        names: set[str] = set()
        out: list[Message] = []
        group: list[Message] = []  # the calls of the current group
        answered = 0
        last_was_call = False
        try:
            extra = unpack_extra(value.get(EXTRA_COLUMN))
        except ValueError as e:
            raise BadRecord("wrong_type", str(e)) from e
        for i, m in enumerate(raw):
            where = f"/messages/{i}"
            if not isinstance(m, dict):
                raise BadRecord("wrong_type", f"{where}: expected an object")
            m = {**extra.get(str(i), {}), **m}
            role = m.get("role")
            content = text_content(m.get("content"), f"{where}/content")
            loss = _loss(m, where)
            if role == "system":
                if i != 0 and "tools" in m:
                    raise BadRecord("misplaced_tools", f"{where}/tools: tools belong in the first "
                                    "message")
                if i == 0 and m.get("tools") is not None:
                    tools = parse_tools(m["tools"], f"{where}/tools")
                    names = {t.get("name") for t in tools or []}
                    if content == "":
                        continue
                out.append(Message("system", content, loss=loss))
            elif role == "user":
                out.append(Message("user", content, loss=loss))
            elif role == "assistant":
                call = self._call(content, names, where)
                if call is None:
                    out.append(Message("assistant", content, loss=loss))
                    last_was_call = False
                    continue
                msg = Message("tool", name=call[0], parameters=call[1], loss=loss,
                              parallel=True if last_was_call else None)
                if not last_was_call:
                    group, answered = [], 0
                group.append(msg)
                out.append(msg)
                last_was_call = True
                continue
            elif role == "observation":
                if answered < len(group):
                    group[answered].observation = decode_observation(content,
                                                                     self.observation_json)
                    answered += 1
                else:
                    out.append(Message("observation", content, loss=loss))
            else:
                raise BadRecord("unsupported_role", f"{where}/role: expected system, user, "
                                f"assistant or observation, found {role!r}")
            last_was_call = False
        return out, tools

    @staticmethod
    def _call(content: str, names: set[str], where: str) -> tuple[str, dict[str, Any]] | None:
        if not names or not content.lstrip().startswith("{"):
            return None
        try:
            value = json.loads(content)
        except json.JSONDecodeError:
            return None
        if not isinstance(value, dict) or set(value) != {"name", "arguments"} \
                or value.get("name") not in names:
            return None
        return call_from_json(value, f"{where}/content")
