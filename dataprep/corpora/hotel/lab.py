"""The fine-tuning-lab hotel data (agiclass/fine-tuning-lab), in its two layouts.

``lab_dialog`` — one dialogue per line, a list of turns::

    [{"role": "user", "content": …}, {"role": "search", "arguments": {…}},
     {"role": "return", "records": [{name, type, …, price, rating, hotel_id}]},
     {"role": "assistant", "content": …}, …]

``lab_chatglm3`` — the lab's ChatGLM3 export (``train/dev.chatglm3.jsonl``): ``tools`` is
double-encoded, each ``search`` became an assistant "thought" ("我需要使用search_hotels工具来查询酒店")
plus a ``tool`` turn, and samples whose target was a call end with that call, without observation.

Both become hotel conversations: ``corpus="hotel"``, ``label=scenario_label(conv)``,
``meta={"dialogue_id", "calls", …}``, the lab's turns kept as they are (no thought is invented for
``lab_dialog``), and ``lineage.extra["tool_origin"] = "dataset"``: the lab brings its own
``search_hotels`` (an approximate search whose facilities are free strings), so its observations are
judged against *that* tool: only its schema is binding, disagreements with hotel_db are flags (see
:mod:`dataprep.corpora.hotel.rules`). ``tools`` is the lab's declaration
(:data:`~dataprep.corpora.hotel.tools.LAB_SEARCH_HOTELS_TOOL`; the option ``tool_schema: ours``
writes ours instead, whose facility enum then rejects unmapped words). Repairs, each recorded in
``lineage.ops``:

- ``normalise_facilities``: the lab's searches use ChatGPT paraphrases of facility names (24% of
  its records); :meth:`HotelDB.canonical_facility` maps them to database names when the mapping is
  unambiguous (the table is data: ``facility_synonyms.json``), the originals are kept in
  ``lineage.extra["facilities_original"]``. A wording with no unambiguous database name is kept
  as the user said it when the declared tool allows free strings (``facilities_unmapped``), and
  rejected (``unknown_facility``) only when the declared tool's schema forbids it.
- ``normalise_observations``: observation records get one shape (facilities a list of strings,
  prices numbers or null; :func:`~dataprep.corpora.hotel.hotel_db.normalise_observation`).
- trailing calls: a sample that ends with a call is a complete sample (the call is an assistant
  turn with loss), kept by default (``unanswered_tool_call: keep``; ``cut``/``remove`` as in
  :mod:`dataprep.readers.chatglm3`).
- ``decode_tools``: the lab's double-encoded tool list is decoded and checked to be
  ``search_hotels``.

Split groups come from :func:`~dataprep.corpora.hotel.hotel_db.hotel_group_id` (first user text + first call, as
the lab wrote them), so a dialogue and its copies in either layout or file share one group.
"""

from __future__ import annotations

import copy
import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from dataprep.corpora.hotel.hotel_db import (
    HotelDB,
    hotel_group_id,
    normalise_observation,
    scenario_label,
)
from dataprep.corpora.hotel.tools import (
    LAB_SEARCH_HOTELS_TOOL,
    SEARCH_HOTELS_TOOL,
    allows_free_facility,
    check_parameters,
    hotel_tools,
)
from dataprep.errors import ConfigError, InputError
from dataprep.readers.base import Item, Reader
from dataprep.readers.chatglm3 import UNANSWERED_POLICIES, ChatGLM3Reader, cut_unanswered_tool_call
from dataprep.record import MISSING, Conversation, Lineage, Message, Reject

TOOL_NAME = SEARCH_HOTELS_TOOL["name"]


class HotelLabMixin:
    """Steps shared by the two lab layouts. Needs ``self.db``, ``self.source``, ``make_reject``."""

    db: HotelDB
    source: str
    corpus: ClassVar[str]

    def normalise_call(self, params: dict[str, Any], pointer: str, line: int, text: str | None,
                       rewrites: dict[str, str], tool: dict[str, Any],
                       unmapped: list[str]) -> tuple[dict[str, Any] | None, Reject | None]:
        """Facility names mapped to the database's, then the call checked against the declared
        ``tool``. An unmapped word stays when that tool allows free strings."""
        if self.tool_schema == "ours":  # type: ignore[attr-defined]
            tool = SEARCH_HOTELS_TOOL  # checked against the full vocabulary, enum shown or not
        out = dict(params)
        facs = params.get("facilities")
        if isinstance(facs, list):
            mapped: list[str] = []
            for j, f in enumerate(facs):
                canon = self.db.canonical_facility(f) if isinstance(f, str) else None
                if canon is None and isinstance(f, str) and allows_free_facility(tool):
                    canon = f
                    if f not in unmapped:
                        unmapped.append(f)
                if canon is None:
                    return None, self.make_reject(  # type: ignore[attr-defined]
                        "unknown_facility",
                        f"{pointer}/facilities/{j}: {f!r} is not a hotel_db facility, has no "
                        "unambiguous synonym (dataprep/corpora/hotel/facility_synonyms.json) and "
                        "the declared tool's schema does not allow free strings", line, text=text)
                if canon != f:
                    rewrites[f] = canon
                if canon not in mapped:  # two paraphrases of one facility
                    mapped.append(canon)
            out["facilities"] = mapped
        problems = check_parameters(out, tool)
        if problems:
            return None, self.make_reject(  # type: ignore[attr-defined]
                "invalid_tool_call", f"{pointer}{problems[0]}" + (
                    f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""),
                line, text=text)
        return out, None

    def hotel_conversation(self, rid: str, messages: list[Message], line: int,
                           first_user: str, first_call: dict[str, Any] | None,
                           ops: list[str], rewrites: dict[str, str],
                           meta: dict[str, Any], tools: list[dict[str, Any]] | None = None,
                           unmapped: list[str] | None = None) -> Conversation:
        changed = normalise_observations(messages)
        calls = [m.parameters for m in messages if m.role == "tool"]
        mismatches = sum(
            1 for m in messages if m.role == "tool" and isinstance(m.observation, list)
            for r in m.observation
            if isinstance(r, dict) and self.db.violations(r, m.parameters or {}))
        lineage = Lineage(source=self.source, line=line,
                          group_id=hotel_group_id(first_user, first_call), ops=[*ops])
        if rewrites:
            lineage.ops.append("normalise_facilities")
            lineage.extra["facilities_original"] = rewrites
        if unmapped:
            lineage.extra["facilities_unmapped"] = unmapped
        if changed:
            lineage.ops.append("normalise_observations")
            lineage.extra["observation_fields_normalised"] = changed
        if self.tool_schema == "ours":
            lineage.ops.append("hotel_tools")
        lineage.extra["tool_origin"] = "dataset"
        conv = Conversation(id=rid, messages=messages, lineage=lineage,
                            tools=copy.deepcopy(tools or self.tools), corpus=self.corpus,
                            meta={**meta, "calls": calls,
                                  # The lab's results came from an embedding search, not from
                                  # exact filters: count, do not drop, those that miss a filter.
                                  "observation_mismatches": mismatches})
        return conv


def normalise_observations(messages: list[Message]) -> list[str]:
    """Every observation record normalised in place; the sorted field names that changed."""
    changed: set[str] = set()
    for m in messages:
        if m.role == "tool" and isinstance(m.observation, list):
            new = []
            for rec in m.observation:
                rec, fields = normalise_observation(rec)
                changed.update(fields)
                new.append(rec)
            m.observation = new
    return sorted(changed)


def _hotel_setup(reader: Any, hotel_db: str | None, unanswered_tool_call: str,
                 facility_enum: bool, tool_schema: str) -> None:
    """Options both lab readers share: the database, the trailing-call policy, the tool copy."""
    if not hotel_db:
        raise ConfigError(f"reader {reader.name!r} needs hotel_db (CrossWOZ hotel_db.json): "
                          "pass --hotel-db or set 'hotel_db:' in the config")
    reader.db = HotelDB.load(hotel_db)
    if unanswered_tool_call not in UNANSWERED_POLICIES:
        raise ConfigError(f"reader {reader.name!r}: unanswered_tool_call must be one of "
                          f"{', '.join(UNANSWERED_POLICIES)}, got {unanswered_tool_call!r}")
    if tool_schema not in ("dataset", "ours"):
        raise ConfigError(f"reader {reader.name!r}: tool_schema must be dataset or ours, got "
                          f"{tool_schema!r}")
    reader.tool_schema = tool_schema
    reader.tools = (hotel_tools(facility_enum) if tool_schema == "ours"
                    else [copy.deepcopy(LAB_SEARCH_HOTELS_TOOL)])


class LabDialogReader(HotelLabMixin, Reader):
    """Reads ``raw_dialogs.jsonl``. Options: ``index`` (the ``*.index.tsv`` naming each line's
    source file; default: ``<stem>.index.tsv`` next to the input when it exists, ``false`` for
    none), ``unanswered_tool_call`` (``keep``, default, ``cut`` or ``remove``), ``tool_schema``
    (``dataset``, default: the lab's own tool; ``ours``), ``facility_enum`` (with ``tool_schema:
    ours``: show the model the facility vocabulary; see :func:`~dataprep.corpora.hotel.tools.hotel_tools`)."""

    name = "lab_dialog"
    corpus = "hotel"
    input_schema = "lab_dialog"
    needs_hotel_db = True

    def configure(self, hotel_db: str | None = None, index: str | bool | None = None,
                  unanswered_tool_call: str = "keep", facility_enum: bool = True,
                  tool_schema: str = "dataset") -> None:
        _hotel_setup(self, hotel_db, unanswered_tool_call, facility_enum, tool_schema)
        self.unanswered = unanswered_tool_call
        self.index = self._load_index(index)

    def _load_index(self, index: str | bool | None) -> dict[int, dict[str, str]]:
        if index is False:
            return {}
        path = Path(index) if isinstance(index, str) else \
            self.path.with_name(self.path.name.removesuffix(".jsonl") + ".index.tsv")
        if not path.is_file():
            if isinstance(index, str):
                raise InputError(f"{index}: no such index file")
            return {}
        try:
            with path.open(encoding="utf-8", newline="") as fh:
                reader = csv.DictReader(fh, delimiter="\t")
                header = reader.fieldnames or []
                if "line" not in header or "source_path" not in header:
                    raise InputError(f"{path}: expected a tab-separated header with 'line' and "
                                     f"'source_path', found {header}")
                out: dict[int, dict[str, str]] = {}
                for r in reader:
                    line = r.get("line")
                    item = r.get("item_index") or ""
                    if not isinstance(line, str) or not line.strip().isdigit() \
                            or not isinstance(r.get("source_path"), str) \
                            or not isinstance(item, str) or not (item == "" or item.isdigit()):
                        raise InputError(f"{path}:{reader.line_num}: expected a line number, a "
                                         "source path and an empty or whole-number item_index, "
                                         f"found {list(r.values())[:3]}")
                    out[int(line)] = {k: v for k, v in r.items() if isinstance(k, str)}
                return out
        except (UnicodeDecodeError, csv.Error) as e:
            raise InputError(f"{path}: not a UTF-8 tab-separated index ({e})") from None
        except OSError as e:
            raise InputError(f"{path}: cannot read: {e.strerror or e}") from None

    def read(self) -> Iterator[Item]:
        for line, value, text, rej in self.iter_json_lines():
            yield rej if rej is not None else self.convert(value, line, text)

    def convert(self, turns: list[dict[str, Any]], line: int, text: str | None) -> Item:
        messages: list[Message] = []
        rewrites: dict[str, str] = {}
        unmapped: list[str] = []
        first_call: dict[str, Any] | None = None
        for i, turn in enumerate(turns):
            role = turn["role"]
            if role in ("user", "assistant"):
                messages.append(Message(role, turn["content"]))
            elif role == "search":
                if first_call is None:
                    first_call = turn["arguments"]
                params, rej = self.normalise_call(turn["arguments"], f"/{i}/arguments", line,
                                                  text, rewrites, self.tools[0], unmapped)
                if rej is not None:
                    return rej
                messages.append(Message("tool", name=TOOL_NAME, parameters=params))
            else:  # return: the observation of the search right before it
                if not messages or messages[-1].role != "tool" \
                        or messages[-1].observation is not MISSING:
                    return self.make_reject(
                        "orphan_return", f"/{i}: a 'return' turn must follow a 'search' turn, "
                        f"found it after {turns[i - 1]['role'] if i else 'nothing'!r}",
                        line, text=text)
                messages[-1].observation = turn["records"]
        if not any(m.role == "user" for m in messages):
            return self.make_reject("no_user_turn", "/: expected at least one 'user' turn",
                                    line, text=text)
        ops: list[str] = []
        if messages[-1].role == "tool" and self.unanswered != "keep":
            kept = cut_unanswered_tool_call(messages) if self.unanswered == "cut" else None
            if kept is None:
                return self.make_reject(
                    "unanswered_tool_call", f"/{len(turns) - 1}: the dialogue ends with a search "
                    "that was never answered, and has no answered exchange before it",
                    line, text=text, kind="removed")
            messages = kept
            ops.append("cut_unanswered_tool_call")
        if messages[-1].role not in ("assistant", "tool"):
            return self.make_reject(
                "not_ending_with_assistant", f"/{len(turns) - 1}: expected the dialogue to end "
                f"with an assistant turn or a call, found {turns[-1]['role']!r}", line, text=text)
        first_user = next(t["content"] for t in turns if t["role"] == "user")
        src = self.index.get(line, {})
        meta = {"dialogue_id": (f"{src['source_path']}#{src['item_index']}"
                                if src.get("item_index") else src.get("source_path"))
                or f"{self.path.name}:{line}"}
        conv = self.hotel_conversation(self.make_id(line), messages, line, first_user,
                                       first_call, ops, rewrites, meta, unmapped=unmapped)
        if src:
            conv.lineage.extra["source_path"] = src.get("source_path")
            if src.get("item_index"):
                conv.lineage.extra["item_index"] = int(src["item_index"])
        conv.label = scenario_label(conv)
        return conv


class LabChatGLM3Reader(HotelLabMixin, ChatGLM3Reader):
    """Reads the lab's ``*.chatglm3.jsonl``. Options: ``unanswered_tool_call`` (``keep``, default,
    ``cut`` or ``remove``), ``tool_schema`` and ``facility_enum`` (as for ``lab_dialog``; with
    ``dataset`` the tool each record declares is kept)."""

    name = "lab_chatglm3"
    corpus = "hotel"
    input_schema = "lab_chatglm3"
    needs_hotel_db = True
    default_unanswered = "keep"

    def configure(self, hotel_db: str | None = None, unanswered_tool_call: str = "keep",
                  facility_enum: bool = True, tool_schema: str = "dataset") -> None:
        _hotel_setup(self, hotel_db, unanswered_tool_call, facility_enum, tool_schema)
        super().configure(unanswered_tool_call=unanswered_tool_call)

    def convert(self, value: Any, line: int, text: str | None) -> Item:
        rej = self.schema_reject(value, line, text)
        if rej is not None:
            return rej
        record, ops, rej = self.decode(value, line, text)
        if rej is not None:
            return rej
        assert record is not None
        names = [t.get("name") for t in record["tools"]]
        if names != [TOOL_NAME]:
            return self.make_reject("unexpected_tools", f"/tools: expected the one tool "
                                    f"{TOOL_NAME!r}, found {names}", line, text=text)
        rewrites: dict[str, str] = {}
        unmapped: list[str] = []
        tools = record["tools"] if self.tool_schema == "dataset" else self.tools
        messages: list[Message] = []
        first_call: dict[str, Any] | None = None
        for i, m in enumerate(record["conversations"]):
            if m["role"] == "tool":
                if m["name"] != TOOL_NAME:
                    return self.make_reject("unknown_tool", f"/conversations/{i}/name: expected "
                                            f"{TOOL_NAME!r}, found {m['name']!r}", line, text=text)
                if first_call is None:
                    first_call = m["parameters"]
                params, rej = self.normalise_call(m["parameters"], f"/conversations/{i}/parameters",
                                                  line, text, rewrites, tools[0], unmapped)
                if rej is not None:
                    return rej
                m = {**m, "parameters": params}
            try:
                messages.append(Message.from_dict(m))
            except ValueError as e:
                return self.make_reject("invalid_message", f"/conversations/{i}: {e}", line,
                                        text=text)
        first_user = next((m.content for m in messages if m.role == "user"), None)
        if first_user is None:
            return self.make_reject("no_user_turn", "/conversations: expected at least one user "
                                    "message", line, text=text)
        conv = self.hotel_conversation(self.make_id(line), messages, line, first_user, first_call,
                                       ops, rewrites, {"dialogue_id": f"{self.path.name}:{line}"},
                                       tools=tools, unmapped=unmapped)
        item = self.finish(conv, line, text)
        if isinstance(item, Conversation):
            item.meta["calls"] = [m.parameters for m in item.messages if m.role == "tool"]
            item.label = scenario_label(item)
        return item
