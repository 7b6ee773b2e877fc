"""The one record type that flows through every stage: a conversation with its lineage.

A reader turns one input record into exactly one :class:`Conversation` or one :class:`Reject`;
stages take conversations and yield conversations, and say why whenever they drop one.

>>> c = Conversation(id="spo:1", messages=[Message("user", "你好"), Message("assistant", "您好")],
...                  lineage=Lineage(source="a.jsonl", line=1, group_id="spo:1"))
>>> c.to_chatglm3()["conversations"][0]
{'role': 'user', 'content': '你好'}
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant", "tool", "observation")
TEXT_ROLES = ("system", "user", "assistant", "observation")


class _Missing:
    """Sentinel for a tool message without an ``observation`` key.

    The fine-tuning-lab data has 330 tool turns with no observation at all; the official tokenizer
    renders those as the text "null", so "absent" must survive a round trip distinct from ``None``.
    """

    _instance = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __deepcopy__(self, memo: dict) -> _Missing:
        return self


MISSING: Any = _Missing()


@dataclass
class Message:
    """One turn. ``content`` for text roles; ``name``/``parameters``/``observation`` for ``tool``.

    ``parallel`` (tool messages only) marks a call issued in the same assistant turn as the tool
    message right before it (OpenAI/GLM-4 parallel calls). ChatGLM3 has one call per assistant
    turn, so such a group is written as consecutive tool messages, each with its own observation,
    and a ChatGLM3 model learns them as back-to-back calls; the flag lets exports regroup them.
    """

    role: str
    content: str | None = None
    name: str | None = None
    parameters: dict[str, Any] | None = None
    observation: Any = MISSING
    loss: bool | None = None
    parallel: bool | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r}; expected one of {', '.join(ROLES)}")
        if self.role == "tool":
            if not isinstance(self.name, str) or not self.name:
                raise ValueError("a tool message needs a non-empty 'name'")
            if not isinstance(self.parameters, dict):
                raise ValueError(
                    f"a tool message needs 'parameters' as an object, got {type(self.parameters).__name__}"
                )
        elif not isinstance(self.content, str):
            raise ValueError(
                f"a {self.role} message needs 'content' as a string, got {type(self.content).__name__}"
            )
        if self.parallel is not None and (self.role != "tool" or not isinstance(self.parallel, bool)):
            raise ValueError("'parallel' is a true/false flag of tool messages only")

    def to_dict(self) -> dict[str, Any]:
        if self.role == "tool":
            d: dict[str, Any] = {"role": "tool", "name": self.name, "parameters": self.parameters}
            if self.observation is not MISSING:
                d["observation"] = self.observation
            if self.parallel:
                d["parallel"] = True
        else:
            d = {"role": self.role, "content": self.content}
        if self.loss is not None:
            d["loss"] = self.loss
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Message:
        """Build from a ChatGLM3 message object; raises ``ValueError`` naming the bad field."""
        if not isinstance(d, dict):
            raise ValueError(f"a message must be an object, got {type(d).__name__}")
        role = d.get("role")
        loss = d.get("loss")
        if loss is not None and not isinstance(loss, bool):
            raise ValueError(f"'loss' must be true or false, got {loss!r}")
        if role == "tool":
            return cls(
                role="tool",
                name=d.get("name"),
                parameters=d.get("parameters"),
                observation=d.get("observation", MISSING),
                loss=loss,
                parallel=d.get("parallel"),
            )
        return cls(role=role, content=d.get("content"), loss=loss)  # type: ignore[arg-type]


@dataclass
class Lineage:
    """Where a record came from and what was done to it.

    ``group_id`` ties records that must land in the same split (a record and everything derived
    from it, or records cut from one source dialogue).
    """

    source: str
    line: int | None
    group_id: str
    item: str | None = None
    parent_id: str | None = None
    ops: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"source": self.source, "line": self.line, "group_id": self.group_id}
        if self.item is not None:
            d["item"] = self.item
        if self.parent_id is not None:
            d["parent_id"] = self.parent_id
        d["ops"] = list(self.ops)
        if self.extra:
            # JSON text, not an object: its keys differ from record to record (and some values
            # are maps keyed by data, e.g. facility words), and datasets.load_dataset("json")
            # 3.x fails on a line whose object has a key that the file's first block lacked.
            d["extra"] = json.dumps(self.extra, ensure_ascii=False)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Lineage:
        return cls(
            source=d.get("source", ""),
            line=d.get("line"),
            group_id=d.get("group_id", ""),
            item=d.get("item"),
            parent_id=d.get("parent_id"),
            ops=list(d.get("ops", [])),
            extra=lineage_extra(d),
        )


def json_object(value: Any, where: str) -> dict[str, Any]:
    """``value`` when it is an object, or the object its JSON text holds (columns that must keep
    one Arrow type are written as text). Raises ``ValueError`` naming ``where`` otherwise.

    >>> json_object('{"a": 1}', "/x"), json_object({"a": 1}, "/x")
    ({'a': 1}, {'a': 1})
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not JSON ({e.msg})") from e
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected an object, found {type(value).__name__}")
    return value


def lineage_extra(lineage: Any) -> dict[str, Any]:
    """``lineage.extra`` of a written record (JSON text) or of an older one (an object); ``{}``
    when absent. Raises ``ValueError`` when it is neither.

    >>> lineage_extra({"extra": '{"flags": ["x"]}'}), lineage_extra({"extra": {"a": 1}})
    ({'flags': ['x']}, {'a': 1})
    """
    value = lineage.get("extra") if isinstance(lineage, dict) else None
    if value in (None, ""):
        return {}
    return dict(json_object(value, "lineage.extra"))


@dataclass
class Conversation:
    """A training sample plus everything the stages need to reason about it.

    ``meta`` holds the corpus-specific structure a reader parsed (triples, question/answer/docs,
    the hotel calls) so later stages check it without re-parsing text. ``label`` drives stratified
    splitting and balancing. ``split`` is set by the split stage.
    """

    id: str
    messages: list[Message]
    lineage: Lineage
    tools: list[dict[str, Any]] | None = None
    corpus: str = ""
    label: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    split: str | None = None
    weight: float | None = None

    def to_chatglm3(self, with_lineage: bool = True) -> dict[str, Any]:
        """The output line. ``tools`` is omitted, not null, when there are none: the official
        preprocessor adds the tool system prompt whenever the key exists, whatever its value."""
        d: dict[str, Any] = {"id": self.id}
        if self.tools is not None:
            d["tools"] = self.tools
        d["conversations"] = [m.to_dict() for m in self.messages]
        if with_lineage:
            d["lineage"] = self.lineage.to_dict()
            if self.corpus:
                d["corpus"] = self.corpus
            if self.label is not None:
                d["label"] = self.label
            if self.weight is not None:
                d["weight"] = self.weight
        return d

    @classmethod
    def from_chatglm3(cls, d: dict[str, Any], *, source: str = "", line: int | None = None) -> Conversation:
        """Parse an output line back (used by ``validate``, ``report`` and the lab reader)."""
        msgs = d.get("conversations")
        if not isinstance(msgs, list):
            raise ValueError("'conversations' must be a list")
        lineage = (
            Lineage.from_dict(d["lineage"])
            if isinstance(d.get("lineage"), dict)
            else Lineage(source=source, line=line, group_id=str(d.get("id", f"{source}:{line}")))
        )
        return cls(
            id=str(d.get("id", f"{source}:{line}")),
            messages=[Message.from_dict(m) for m in msgs],
            lineage=lineage,
            tools=d.get("tools"),
            corpus=d.get("corpus", ""),
            label=d.get("label"),
            weight=d.get("weight"),
        )

    def derive(self, new_id: str, op: str, **extra: Any) -> Conversation:
        """A deep copy that records its parent and the operation; it keeps the parent's group
        so the splitter never separates a derived sample from its source."""
        child = copy.deepcopy(self)
        child.id = new_id
        child.lineage.parent_id = self.id
        child.lineage.ops = [*self.lineage.ops, op]
        if extra:
            child.lineage.extra = {**child.lineage.extra, **extra}
        return child

    def texts(self, roles: tuple[str, ...] = TEXT_ROLES) -> list[str]:
        return [m.content for m in self.messages if m.role in roles and m.content is not None]


@dataclass
class Reject:
    """An input record that did not become a conversation, or a conversation a stage removed.

    ``kind`` is ``"rejected"`` for bad input and ``"removed"`` for good input filtered by design
    (a duplicate, a dialogue outside the hotel domain). Both are kept in ``rejects.jsonl``.
    """

    reason: str
    source: str
    line: int | None
    message: str
    kind: str = "rejected"
    stage: str = "read"
    item: str | None = None
    raw: str | None = None
    raw_base64: str | None = None
    record: dict[str, Any] | None = None
    kept_id: str | None = None

    def location(self) -> str:
        loc = self.source
        if self.line is not None:
            loc += f":{self.line}"
        if self.item is not None:
            loc += f"#{self.item}"
        return loc

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "kind": self.kind,
            "reason": self.reason,
            "stage": self.stage,
            "source": self.source,
            "line": self.line,
            "message": self.message,
        }
        for key in ("item", "raw", "raw_base64", "record", "kept_id"):
            value = getattr(self, key)
            if value is not None:
                d[key] = value
        return d
