"""ShareGPT-style chat data (LLaMA-Factory's ``sharegpt`` formatting) into our record.

Default tags are LLaMA-Factory's (``from``/``value``; ``human``, ``gpt``, ``function_call``,
``observation``, ``system``); every tag and column is an option, so a ``dataset_info.json`` entry
translates one to one: ``messages`` (default ``conversations``), ``system`` (a column with the
system prompt; default ``system``), ``tools`` (default ``tools``), ``role_tag``, ``content_tag``,
``user_tag``, ``assistant_tag``, ``observation_tag``, ``function_tag``, ``system_tag``.

- A ``function_call`` turn holds ``{"name", "arguments"}`` JSON or a list of them (parallel
  calls); the ``observation`` turn after it is their observation (for a list: a JSON list with
  one observation per call). A call with no observation turn after it keeps none.
- An ``observation`` turn that answers no call becomes an ``observation`` message.
- What ``dataprep export --to llamafactory`` keeps for us is restored: the ``id`` column and, per
  turn, the keys in the ``dataprep_extra`` column (JSON text; also read from the turn itself):
  ``loss``, ``thought`` (the assistant text before a call), ``thought_loss``, ``parallel`` (a call split
  from the group of the call before it), ``final_observation`` (the observation of a call that
  ends the sample), ``no_observation`` (indices of calls that had none) and ``rest`` (the
  messages after a call that a user turn interrupted, in our record's form).
- ``call_style: official`` also reads ``gpt`` turns holding ChatGLM3's own call text
  (``name\\n```python\\ntool_call(...)\\n````) as calls; they are parsed with ``ast``, never run.
"""

from __future__ import annotations

import json
from typing import Any

from dataprep.errors import ConfigError
from dataprep.export.common import EXTRA_COLUMN, decode_observation, unpack_extra
from dataprep.readers.chat_common import BadRecord, ChatReader, call_from_json, parse_tools
from dataprep.record import Message
from dataprep.tool_call import parse_tool_call

DEFAULT_TAGS = {"messages": "conversations", "system": "system", "tools": "tools",
                "role_tag": "from", "content_tag": "value", "user_tag": "human",
                "assistant_tag": "gpt", "observation_tag": "observation",
                "function_tag": "function_call", "system_tag": "system"}


def _loss(value: Any, where: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise BadRecord("wrong_type", f"{where}: expected true or false, found {value!r}")


class ShareGPTReader(ChatReader):
    name = "sharegpt"

    def configure_format(self, call_style: str = "function_call", **options: Any) -> None:
        unknown = sorted(set(options) - set(DEFAULT_TAGS))
        if unknown:
            raise ConfigError(f"reader 'sharegpt' got unknown options {unknown}; available: "
                              f"corpus, observation_json, call_style, {', '.join(DEFAULT_TAGS)}")
        if call_style not in ("function_call", "official"):
            raise ConfigError("reader 'sharegpt': call_style must be function_call or official, "
                              f"got {call_style!r}")
        self.call_style = call_style
        self.tags = {**DEFAULT_TAGS, **{k: str(v) for k, v in options.items()}}

    def _official_call(self, text: str) -> tuple[str, dict[str, Any]] | None:
        return parse_tool_call(text) if self.call_style == "official" else None

    def _observe(self, calls: list[Message], text: str, turn: dict[str, Any], where: str) -> None:
        """Give ``calls`` their observations from one observation text."""
        if len(calls) == 1:
            values = [decode_observation(text, self.observation_json)]
        else:
            try:
                values = json.loads(text)
            except json.JSONDecodeError:
                values = None
            if not isinstance(values, list) or len(values) != len(calls):
                raise BadRecord("malformed_observation",
                                f"{where}: expected a JSON list of {len(calls)} observations, "
                                "one per parallel call")
        absent = turn.get("no_observation") or []
        for k, (call, obs) in enumerate(zip(calls, values, strict=True)):
            if k not in absent:
                call.observation = obs

    @staticmethod
    def _rest(value: Any, where: str) -> list[Message]:
        """The messages after an interrupted call, as ``export --to llamafactory`` keeps them."""
        if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
            raise BadRecord("wrong_type", f"{where}: expected a list of message objects")
        try:
            return [Message.from_dict(m) for m in value]
        except (KeyError, TypeError, ValueError) as e:
            raise BadRecord("wrong_type", f"{where}: not a message list ({e})") from e

    def messages(self, value: dict[str, Any]
                 ) -> tuple[list[Message], list[dict[str, Any]] | None]:
        t = self.tags
        raw = value.get(t["messages"])
        if not isinstance(raw, list):
            raise BadRecord("missing_field" if raw is None else "wrong_type",
                            f"/{t['messages']}: expected a list of turns")
        tools = parse_tools(value.get(t["tools"]), f"/{t['tools']}")
        out: list[Message] = []
        system = value.get(t["system"])
        if isinstance(system, str) and system:
            out.append(Message("system", system))
        pending: list[Message] = []  # calls waiting for their observation turn
        try:
            extra = unpack_extra(value.get(EXTRA_COLUMN))
        except ValueError as e:
            raise BadRecord("wrong_type", str(e)) from e
        for i, turn in enumerate(raw):
            where = f"/{t['messages']}/{i}"
            if not isinstance(turn, dict):
                raise BadRecord("wrong_type", f"{where}: expected an object")
            turn = {**extra.get(str(i), {}), **turn}
            role, content = turn.get(t["role_tag"]), turn.get(t["content_tag"])
            if not isinstance(content, str):
                raise BadRecord("wrong_type", f"{where}/{t['content_tag']}: expected a string")
            loss = _loss(turn.get("loss"), f"{where}/loss")
            if role != t["observation_tag"]:
                pending = []
            if role == t["system_tag"] and i == 0:
                out.append(Message("system", content))
            elif role == t["user_tag"]:
                out.append(Message("user", content, loss=loss))
            elif role in (t["function_tag"], t["assistant_tag"]):
                official = self._official_call(content) if role == t["assistant_tag"] else None
                if role == t["assistant_tag"] and official is None:
                    out.append(Message("assistant", content, loss=loss))
                    continue
                thought = turn.get("thought")
                if isinstance(thought, str):
                    out.append(Message("assistant", thought,
                                       loss=_loss(turn.get("thought_loss"), f"{where}/thought_loss")))
                if official is not None:
                    calls = [official]
                else:
                    try:
                        parsed = json.loads(content)
                    except json.JSONDecodeError as e:
                        raise BadRecord("malformed_call", f"{where}: a function_call turn that is "
                                        f"not JSON ({e.msg})") from e
                    items = parsed if isinstance(parsed, list) else [parsed]
                    calls = [call_from_json(c, f"{where}/{k}") for k, c in enumerate(items)]
                split_off = turn.get("parallel") is True
                pending = [Message("tool", name=name, parameters=args, loss=loss,
                                   parallel=True if k or split_off else None)
                           for k, (name, args) in enumerate(calls)]
                out.extend(pending)
                if isinstance(turn.get("final_observation"), str):
                    self._observe(pending, turn["final_observation"], turn, where)
                    pending = []
                if "rest" in turn:
                    out.extend(self._rest(turn["rest"], f"{where}/rest"))
                    pending = []
            elif role == t["observation_tag"]:
                if not pending:
                    out.append(Message("observation", content, loss=loss))
                else:
                    self._observe(pending, content, turn, where)
                pending = []
            else:
                raise BadRecord("unsupported_role", f"{where}/{t['role_tag']}: unknown tag "
                                f"{role!r}; set the reader's *_tag options to this data's tags")
        return out, tools
