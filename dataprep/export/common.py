"""What every export format and its reader share: the export report, the grouping of tool calls,
and the observation codec.

Every format writes observations as text (a target has no slot for a JSON value), so a value
that is not a string is written as compact JSON and a reader decodes text that parses as JSON
back into the value. A *string* observation that happens to parse as JSON (``"[1]"``) would come
back as a list: exporters count those as ``string_observation_looks_like_json``.

>>> observation_text([{"name": "北京饭店"}])
'[{"name": "北京饭店"}]'
>>> decode_observation('[{"name": "北京饭店"}]')
[{'name': '北京饭店'}]
>>> decode_observation("没有找到酒店")
'没有找到酒店'
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dataprep.errors import ConfigError
from dataprep.io import AtomicWriter, dumps, iter_jsonl, write_json_atomic
from dataprep.record import MISSING, Conversation, Message, json_object

SPLITS = ("train", "dev", "test")
EXAMPLES_PER_REASON = 5


class Skip(Exception):
    """A conversation the target format cannot hold at all; ``reason`` is a snake_case code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class ExportReport:
    """Counts of what an export wrote, changed and dropped, with example ids per reason.

    ``changed`` counts conversations that were written but differ from ours in a way the target
    format forces (a loss mask it cannot express, a message it has no slot for); ``dropped``
    counts conversations not written at all. ``notes`` say what a user of the target must know.
    """

    format: str
    out_dir: str
    options: dict[str, Any] = field(default_factory=dict)
    written: dict[str, int] = field(default_factory=dict)
    changed: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def _example(self, reason: str, rec_id: str, message: str) -> None:
        ids = self.examples.setdefault(reason, [])
        if len(ids) < EXAMPLES_PER_REASON and rec_id not in ids:
            ids.append(rec_id)
        self.messages.setdefault(reason, message)

    def change(self, reason: str, rec_id: str, message: str) -> None:
        """Count one change (one conversation may count several reasons)."""
        self.changed[reason] += 1
        self._example(reason, rec_id, message)

    def drop(self, reason: str, rec_id: str, message: str) -> None:
        self.dropped[reason] += 1
        self._example(reason, rec_id, message)

    @property
    def total_written(self) -> int:
        return sum(self.written.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "out_dir": self.out_dir,
            "options": self.options,
            "written": dict(self.written),
            "dropped": {k: {"count": v, "what": self.messages.get(k, ""),
                            "examples": self.examples.get(k, [])}
                        for k, v in sorted(self.dropped.items())},
            "changed": {k: {"count": v, "what": self.messages.get(k, ""),
                            "examples": self.examples.get(k, [])}
                        for k, v in sorted(self.changed.items())},
            "files": self.files,
            "notes": self.notes,
        }

    def summary(self) -> str:
        """Lines for the CLI: what was written, then every dropped/changed reason with its count."""
        lines = [f"{self.format}: wrote " + ", ".join(f"{s} {n}" for s, n in self.written.items())
                 + f" -> {self.out_dir}"]
        for kind, counter in (("dropped", self.dropped), ("changed", self.changed)):
            for reason, n in sorted(counter.items()):
                lines.append(f"  {kind} {n} x {reason}: {self.messages.get(reason, '')}")
        return "\n".join(lines)


# -- observations --------------------------------------------------------------------------------
def observation_text(value: Any) -> str:
    """An observation as the text a target format holds (strings verbatim, the rest as JSON)."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def decode_observation(text: Any, parse_json: bool = True) -> Any:
    """Inverse of :func:`observation_text` (see the module docstring for the one ambiguity)."""
    if not parse_json or not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def string_looks_like_json(value: Any) -> bool:
    return isinstance(value, str) and decode_observation(value) != value


def check_observation(report: ExportReport, rec_id: str, value: Any) -> None:
    if string_looks_like_json(value):
        report.change("string_observation_looks_like_json", rec_id,
                      "a string observation that parses as JSON; readers decode it into a value")


EXTRA_COLUMN = "dataprep_extra"


def pack_extra(items: list[dict[str, Any]], keep: tuple[str, ...]) -> str:
    """Move every key but ``keep`` out of ``items`` into one JSON text (index -> keys).

    Targets loaded with ``datasets`` (LLaMA-Factory, GLM-4's demo) infer a JSON file's schema from
    its first block and fail on a later line with a new key, so lines must all look alike: what
    only our readers need rides in this one text column, which the targets ignore.

    >>> turns = [{"from": "gpt", "value": "a", "loss": False}]
    >>> pack_extra(turns, ("from", "value")), turns
    ('{"0": {"loss": false}}', [{'from': 'gpt', 'value': 'a'}])
    """
    extra = {}
    for k, item in enumerate(items):
        more = {key: item.pop(key) for key in list(item) if key not in keep}
        if more:
            extra[str(k)] = more
    return json.dumps(extra, ensure_ascii=False)


def unpack_extra(value: Any) -> dict[str, dict[str, Any]]:
    """Inverse of :func:`pack_extra`; raises ``ValueError`` when the column is not an object."""
    if value in (None, ""):
        return {}
    return {k: v for k, v in json_object(value, f"/{EXTRA_COLUMN}").items() if isinstance(v, dict)}


def check_sample_weight(report: ExportReport, conv: Conversation) -> None:
    """The balance stage's per-sample ``weight`` has no field in the chat formats."""
    if conv.weight is not None and conv.weight != 1:
        report.change("sample_weight_not_expressible", conv.id,
                      "a sample weight from the balance stage; the target has no per-sample "
                      "weight (written once, unweighted)")


# -- tool calls ---------------------------------------------------------------------------------
def call_groups(messages: list[Message]) -> Iterator[tuple[int, list[Message]]]:
    """(index of the first message, messages) per segment: a run of parallel tool calls is one
    segment, every other message is a segment of its own.

    >>> msgs = [Message("user", "u"), Message("tool", name="f", parameters={}),
    ...         Message("tool", name="f", parameters={}, parallel=True)]
    >>> [(i, len(g)) for i, g in call_groups(msgs)]
    [(0, 1), (1, 2)]
    """
    i = 0
    while i < len(messages):
        j = i + 1
        if messages[i].role == "tool":
            while j < len(messages) and messages[j].role == "tool" and messages[j].parallel:
                j += 1
        yield i, messages[i:j]
        i = j


def openai_tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    """Our tool object in the ``{"type": "function", "function": {...}}`` wrapper."""
    return {"type": "function", "function": dict(tool)}


def plain_tool(tool: Any) -> dict[str, Any]:
    """Inverse of :func:`openai_tool`; plain tool objects pass through. Raises ``ValueError``."""
    if not isinstance(tool, dict):
        raise ValueError(f"a tool must be an object, found {type(tool).__name__}")
    if tool.get("type") == "function" and isinstance(tool.get("function"), dict):
        return dict(tool["function"])
    if "name" in tool:
        return dict(tool)
    raise ValueError(f"a tool needs 'name' (or a 'function' object), found keys {sorted(tool)}")


def parse_arguments(raw: Any, where: str) -> dict[str, Any]:
    """Call arguments given as an object or as a JSON string holding one. Raises ``ValueError``."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: arguments are not JSON ({e.msg} at column {e.colno})"
                             ) from e
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: arguments must be a JSON object, found {type(raw).__name__}")
    return raw


def missing(value: Any) -> bool:
    return value is MISSING


# -- files --------------------------------------------------------------------------------------
def read_run(run_dir: str | Path) -> dict[str, list[Conversation]]:
    """The train/dev/test conversations of a finished run folder."""
    run = Path(run_dir)
    found = [s for s in SPLITS if (run / f"{s}.jsonl").is_file()]
    if not found:
        raise ConfigError(f"{run}: no train/dev/test.jsonl here; give the output folder of a "
                          "finished 'dataprep run'")
    out: dict[str, list[Conversation]] = {}
    for split in found:
        path = run / f"{split}.jsonl"
        convs = []
        for raw in iter_jsonl(path, source=str(path)):
            if raw.reject is not None:
                raise ConfigError(f"{raw.reject.location()}: {raw.reject.message}")
            try:
                convs.append(Conversation.from_chatglm3(raw.value, source=str(path), line=raw.line))
            except ValueError as e:
                raise ConfigError(f"{path}:{raw.line}: {e}") from e
        out[split] = convs
    return out


def write_jsonl_splits(out_dir: Path, splits: Mapping[str, Iterable[Conversation]],
                       to_line: Callable[[Conversation], dict[str, Any]],
                       report: ExportReport) -> None:
    """One ``SPLIT.jsonl`` per split; a :class:`Skip` raised by ``to_line`` is counted."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, convs in splits.items():
        n = 0
        with AtomicWriter(out_dir / f"{split}.jsonl") as fh:
            for conv in convs:
                try:
                    line = to_line(conv)
                except Skip as s:
                    report.drop(s.reason, conv.id, s.message)
                    continue
                fh.write(dumps(line) + "\n")
                n += 1
        report.written[split] = n
        report.files.append(f"{split}.jsonl")


def write_report(out_dir: Path, report: ExportReport) -> Path:
    path = out_dir / "export_report.json"
    write_json_atomic(path, report.to_dict())
    return path


def take_options(fmt: str, options: Mapping[str, Any], allowed: Mapping[str, tuple]) -> dict:
    """Check ``options`` against ``allowed`` (name -> (default, allowed values or None))."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"export {fmt!r}: unknown option(s) {unknown}; available: "
                          f"{', '.join(sorted(allowed)) or '(none)'}")
    out = {}
    for name, (default, choices) in allowed.items():
        value = options.get(name, default)
        if choices is not None and value not in choices:
            raise ConfigError(f"export {fmt!r}: option {name} must be one of "
                              f"{', '.join(map(str, choices))}, got {value!r}")
        out[name] = value
    return out
