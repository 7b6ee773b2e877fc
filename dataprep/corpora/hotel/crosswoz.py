"""CrossWOZ dialogues (``train/val/test.json[.zip]``, a dict keyed by dialogue id) turned into
hotel tool dialogs, grounded in ``hotel_db.json``.

How a dialogue becomes a conversation (docs/hotel.md has the reasoning):

1. Each user turn is classified by the domain it is about: its dialogue acts' domains, where a
   ``Select`` act's source domain (the restaurant a hotel should be near) is context, not target.
   *hotel* = only 酒店; *general* = greetings/thanks only; anything else (another domain, a mix,
   or a hotel search "near" another place, which ``search_hotels`` cannot express) ends a hotel run.
2. A *hotel run* is a maximal stretch of hotel and general exchanges (user turn + system reply).
   The run that yields the longest grounded conversation is kept; the others are cut away
   (op ``cut_hotel_segment``). One conversation per dialogue; a dialogue without a usable run is
   *removed* with a reason (``no_hotel_domain`` when it never talks about hotels).
3. A user turn searches when it informs a hotel constraint (``价格 300-400元`` → price bounds,
   ``评分 4.5分以上`` → rating lower bound, ``酒店类型``, ``酒店设施-X 是`` → facilities) or asks
   for a hotel (``Request 名称``). Constraints accumulate within the run, as in the lab's data;
   naming a hotel not yet seen is a lookup ``{"name": …}``.
4. The observation is ``hotel_db.search(call, limit=3)``, with the hotels the system turn names
   put first when they satisfy the call (``prefer``), so the kept reply is grounded.
   When the system relaxed the user's constraints ("没有符合的，推荐您…", CrossWOZ's ``sys_state``
   differs from the user's query), its reply names hotels the user's call does not return, so a
   second call with the system's final query follows (op ``relaxed_search``): the model sees the
   empty result and the relaxation. ``relaxed_search: false`` treats the exchange as ungrounded.
5. Grounding: every hotel name and attribute value (phone, address, price, rating, type) the
   system states must be in an observation so far. An exchange whose reply is not grounded —
   nearby attractions/restaurants, which observations do not carry — is dropped when it does not
   search (op ``drop_ungrounded_exchange``); otherwise the run ends before it.

Every record of every observation satisfies its call (``HotelDB.violations`` is empty): the
observations are produced by the same query code that checks them.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from dataprep.corpora.hotel.hotel_db import HotelDB, hotel_group_id, scenario_label
from dataprep.corpora.hotel.tools import (
    HOTEL_TYPES,
    SEARCH_HOTELS_TOOL,
    check_parameters,
    hotel_tools,
)
from dataprep.errors import ConfigError, InputError
from dataprep.io import read_json_document, value_problem
from dataprep.readers.base import Item, Reader
from dataprep.record import Conversation, Lineage, Message

HOTEL = "酒店"
TOOL_NAME = SEARCH_HOTELS_TOOL["name"]
FACILITY_PREFIX = "酒店设施-"
NEARBY_SLOTS = ("周边景点", "周边餐馆", "周边酒店")

_RANGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[-~～至到]\s*(\d+(?:\.\d+)?)\s*(元|分)?\s*$")
_BOUND = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(元|分)?\s*(以上|以下|及以上|及以下)\s*$")
_VALUE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(元|分)?\s*$")


def _num(text: str, as_int: bool) -> float | int:
    value = float(text)
    if not math.isfinite(value):  # 400 nines parse as float("inf")
        raise ValueError(f"the number {text[:20]}… is out of range")
    return int(value) if as_int and value.is_integer() else value


def parse_bounds(value: str, unit: str) -> tuple[float | int | None, float | int | None]:
    """(lower, upper) of a CrossWOZ range slot value; raises ``ValueError`` when unparsable.

    Prices stay integers (the lab writes ``300``), ratings become floats (``4.5``, ``4.0``).

    >>> parse_bounds("300-400元", "元"), parse_bounds("1000元以上", "元")
    ((300, 400), (1000, None))
    >>> parse_bounds("4.5分以上", "分"), parse_bounds("5分", "分")
    ((4.5, None), (5.0, None))
    """
    as_int = unit == "元"
    m = _RANGE.match(value)
    if m and (m.group(3) in (None, unit)):
        lo, hi = _num(m.group(1), as_int), _num(m.group(2), as_int)
        return (lo, hi) if lo <= hi else (hi, lo)
    m = _BOUND.match(value)
    if m and (m.group(2) in (None, unit)):
        v = _num(m.group(1), as_int)
        return (v, None) if m.group(3).endswith("以上") else (None, v)
    m = _VALUE.match(value)
    if m and (m.group(2) in (None, unit)):
        v = _num(m.group(1), as_int)
        # An exact rating of 5 needs no upper bound (5 is the maximum); other exact values do.
        return (v, None) if unit == "分" and v >= 5 else (v, v)
    raise ValueError(f"expected a {unit} range like '300-400{unit}', '4.5{unit}以上' or "
                     f"'5{unit}', found {value!r}")


def _hotel_type(value: str) -> str:
    # sys_state sometimes drops the suffix ("经济" for 经济型).
    v = value.strip()
    if v not in HOTEL_TYPES and v + "型" in HOTEL_TYPES:
        v += "型"
    if v not in HOTEL_TYPES:
        raise ValueError(f"expected a hotel type ({', '.join(HOTEL_TYPES)}), found {value!r}")
    return v


def slot_params(slot: str, value: str) -> dict[str, Any]:
    """The ``search_hotels`` arguments one hotel-domain slot/value pair stands for.

    Empty for slots the tool cannot express (nearby places) and for facility values other than
    "是". Raises ``ValueError`` for an unparsable value.

    >>> slot_params("价格", "300-400元")
    {'price_range_lower': 300, 'price_range_upper': 400}
    >>> slot_params("评分", "4.5分以上")
    {'rating_range_lower': 4.5}
    >>> slot_params("酒店设施-无烟房", "是"), slot_params("酒店类型", "舒适型")
    ({'facilities': ['无烟房']}, {'type': '舒适型'})
    >>> slot_params("名称", "北京饭店")
    {'name': '北京饭店'}
    """
    value = value.strip()
    if slot == "名称":
        return {"name": value} if value else {}
    if slot == "酒店类型":
        return {"type": _hotel_type(value)} if value else {}
    if slot in ("价格", "评分"):
        if not value:
            return {}
        lo, hi = parse_bounds(value, "元" if slot == "价格" else "分")
        key = "price" if slot == "价格" else "rating"
        out: dict[str, Any] = {}
        if lo is not None:
            out[f"{key}_range_lower"] = lo
        if hi is not None:
            out[f"{key}_range_upper"] = hi
        return out
    if slot.startswith(FACILITY_PREFIX):
        return {"facilities": [slot[len(FACILITY_PREFIX):]]} if value == "是" else {}
    return {}


def merge_params(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Later constraints replace earlier ones of the same kind; facilities accumulate.

    >>> merge_params({"facilities": ["无烟房"], "price_range_upper": 300},
    ...              {"facilities": ["吹风机"], "price_range_lower": 400, "price_range_upper": 500})
    {'facilities': ['无烟房', '吹风机'], 'price_range_upper': 500, 'price_range_lower': 400}
    """
    out = dict(base)
    for key in ("price", "rating"):
        # A new range replaces the old one as a whole ("300-400" after "1000以上").
        if any(k.startswith(key) for k in new):
            out.pop(f"{key}_range_lower", None) if f"{key}_range_lower" not in new else None
            out.pop(f"{key}_range_upper", None) if f"{key}_range_upper" not in new else None
    for k, v in new.items():
        if k == "facilities":
            out["facilities"] = list(dict.fromkeys([*out.get("facilities", []), *v]))
        else:
            out[k] = v
    return out


def turn_params(acts: list[list[str]]) -> dict[str, Any]:
    """Arguments informed by one user turn's hotel-domain acts (``Inform 酒店 slot value``).

    >>> turn_params([["Inform", "酒店", "评分", "4分以上"], ["Request", "酒店", "名称", ""]])
    {'rating_range_lower': 4.0}
    """
    out: dict[str, Any] = {}
    for intent, domain, slot, value in acts:
        if intent == "Inform" and domain == HOTEL:
            out = merge_params(out, slot_params(slot, value))
    return out


def state_params(state: dict[str, Any]) -> dict[str, Any]:
    """Arguments of a ``sys_state["酒店"]`` query (the system's final DB query). Facilities are
    space-separated there; nearby-place slots and the name are left out.

    >>> state_params({"酒店类型": "舒适", "酒店设施": "早餐服务 无烟房", "周边景点": "故宫"})
    {'type': '舒适型', 'facilities': ['早餐服务', '无烟房']}
    """
    out: dict[str, Any] = {}
    for slot, value in state.items():
        if slot in ("selectedResults", "名称", *NEARBY_SLOTS) or not isinstance(value, str):
            continue
        if slot == "酒店设施":
            for fac in value.split():
                out = merge_params(out, {"facilities": [fac]})
        else:
            out = merge_params(out, slot_params(slot, value))
    return out


def turn_kind(acts: list[list[str]]) -> str:
    """``hotel``, ``general``, ``other``, ``mixed`` or ``near`` (a hotel search near a place of
    another domain, which the tool cannot express).

    >>> turn_kind([["Inform", "景点", "名称", "故宫"], ["Select", "酒店", "源领域", "景点"]])
    'near'
    """
    selects = [a for a in acts if a[0] == "Select"]
    sources = {a[3] for a in selects}
    targets = {a[1] for a in acts if a[0] not in ("General", "Select") and a[1] not in sources}
    targets |= {a[1] for a in selects}
    if not targets:
        return "general"
    if targets == {HOTEL}:
        return "near" if any(a[1] == HOTEL for a in selects) else "hotel"
    return "mixed" if HOTEL in targets else "other"


class InvalidCall(ValueError):
    """A user turn's constraints do not fit ``search_hotels`` (e.g. a facility the database
    does not know)."""


@dataclass
class _Build:
    """State while a run is turned into messages."""

    messages: list[Message] = field(default_factory=list)
    constraints: dict[str, Any] = field(default_factory=dict)
    seen: dict[int, dict[str, Any]] = field(default_factory=dict)
    exchanges: list[int] = field(default_factory=list)
    dropped: int = 0
    relaxed: int = 0
    stop_reason: str | None = None


class CrossWOZReader(Reader):
    """Reads a CrossWOZ dialogue file. Options: ``hotel_db`` (required), ``limit`` (observation
    length, default 3), ``relaxed_search`` (default true: where the system relaxed the user's
    constraints, add its relaxed query as a second call; false drops such exchanges as ungrounded.
    Two calls in a row are valid ChatGLM3, but the ``validate`` stage's ``tool_out_of_order`` rule
    currently rejects them, see docs/hotel.md).

    Rejects carry the dialogue id as ``item`` (a JSON document has no useful line numbers).
    """

    name = "crosswoz"
    corpus = "hotel"
    input_schema = "crosswoz"
    needs_hotel_db = True

    def configure(self, hotel_db: str | None = None, limit: int = 3,
                  relaxed_search: bool = True, facility_enum: bool = True) -> None:
        if not hotel_db:
            raise ConfigError(f"reader {self.name!r} needs hotel_db (CrossWOZ hotel_db.json): "
                              "pass --hotel-db or set 'hotel_db:' in the config")
        if not isinstance(limit, int) or limit < 1:
            raise ConfigError(f"reader {self.name!r}: limit must be a positive integer, got "
                              f"{limit!r}")
        self.db = HotelDB.load(hotel_db)
        self.limit = limit
        self.relaxed_search = bool(relaxed_search)
        self.tools = hotel_tools(facility_enum)

    def read(self) -> Iterator[Item]:
        data, display = read_json_document(self.path, max_bytes=self.max_document_bytes)
        if not isinstance(data, dict):
            raise InputError(f"{display}: expected a JSON object keyed by dialogue id, found "
                             f"{type(data).__name__}")
        # A dialogue id that occurs twice in the file (a repeated JSON key) would silently keep
        # one dialogue: the first is kept, every later one is rejected (``duplicate_dialogue_id``),
        # so both are accounted for and the rejected one is kept as evidence.
        items = [(k, v, False) for k, v in data.items()]
        items += [(k, v, True) for k, v in getattr(data, "duplicates", [])]
        for dialogue_id, dialogue, duplicate in items:
            if duplicate:
                yield self.make_reject("duplicate_dialogue_id", f"dialogue id {dialogue_id!r} "
                                       "occurs more than once in the file; the first is kept",
                                       None, value=dialogue, item=str(dialogue_id))
                continue
            bad = value_problem(dialogue)
            if bad is not None:
                yield self.make_reject(bad[0], f"{bad[1]}: {bad[2]}", None, value=dialogue,
                                       item=str(dialogue_id))
                continue
            rej = self.schema_reject(dialogue, None, None, item=str(dialogue_id))
            if rej is not None:
                yield rej
                continue
            yield self.convert(str(dialogue_id), dialogue)

    # -- one dialogue ------------------------------------------------------------------------
    def convert(self, dialogue_id: str, dialogue: dict[str, Any]) -> Item:
        msgs = dialogue["messages"]
        for i, m in enumerate(msgs):
            if m["role"] != ("usr" if i % 2 == 0 else "sys"):
                return self.make_reject(
                    "unpaired_turns", f"/messages/{i}/role: expected "
                    f"{'usr' if i % 2 == 0 else 'sys'!r} (turns alternate, user first), found "
                    f"{m['role']!r}", None, value=dialogue, item=dialogue_id)
        pairs = [(msgs[i], msgs[i + 1]) for i in range(0, len(msgs) - 1, 2)]
        kinds = [turn_kind(u["dialog_act"]) for u, _ in pairs]
        # Evidence for a dialogue removed by design: the file#id locates it, this says why.
        summary = {"type": dialogue.get("type"), "turn_kinds": kinds}
        if "hotel" not in kinds and "near" not in kinds and "mixed" not in kinds:
            return self.make_reject("no_hotel_domain", "the dialogue never talks about hotels",
                                    None, value=summary, item=dialogue_id, kind="removed")
        runs: list[list[int]] = []
        cur: list[int] = []
        for k, kind in enumerate(kinds):
            if kind == "hotel" or (kind == "general" and cur):
                cur.append(k)
            else:
                if cur:
                    runs.append(cur)
                cur = []
        if cur:
            runs.append(cur)
        best: _Build | None = None
        reasons: list[str] = []
        for run in runs:
            try:
                built = self.build(pairs, run)
            except InvalidCall as e:
                return self.make_reject("invalid_tool_call", str(e), None, value=dialogue,
                                        item=dialogue_id)
            except ValueError as e:
                return self.make_reject("unparsable_slot", str(e), None, value=dialogue,
                                        item=dialogue_id)
            if built.messages and (best is None or len(built.exchanges) > len(best.exchanges)):
                best = built
            elif built.stop_reason:
                reasons.append(built.stop_reason)
        if best is None:
            if not runs:
                reason, why = "hotel_not_separable", ("every hotel turn also concerns another "
                                                      "domain or asks for a hotel near a place")
            else:
                reason = "ungrounded_hotel_reply" if reasons else "no_hotel_search"
                why = reasons[0] if reasons else "no hotel run starts with a search"
            return self.make_reject(reason, why, None, value=summary, item=dialogue_id,
                                    kind="removed")
        return self.conversation(dialogue_id, dialogue, pairs, best, len(runs))

    def build(self, pairs: list[tuple[dict[str, Any], dict[str, Any]]], run: list[int]) -> _Build:
        b = _Build()
        for k in run:
            usr, sys = pairs[k]
            acts = usr["dialog_act"]
            try:
                new = turn_params(acts)
            except ValueError as e:
                raise ValueError(f"/messages/{2 * k}/dialog_act: {e}") from e
            name = new.pop("name", None)
            asks_hotel = any(a[0] == "Request" and a[1] == HOTEL and a[2] == "名称" for a in acts)
            name_hit = self.db.by_name(name) if name else None
            searches = bool(new) or asks_hotel or (name is not None and (
                name_hit is None or name_hit.hotel_id not in b.seen))
            if not b.messages and not searches:
                continue  # a run must open with a search: earlier turns lean on other context
            named = self._named(sys)
            calls: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
            if searches:
                if name is not None:
                    params = {"name": name, **new}
                    b.constraints = merge_params(b.constraints, new)
                else:
                    b.constraints = merge_params(b.constraints, new)
                    params = dict(b.constraints)
                problems = check_parameters(params)
                if problems:
                    raise InvalidCall(f"/messages/{2 * k}/dialog_act: the call does not fit "
                                      f"search_hotels: {problems[0]}")
                ids = [h for h in named if h is not None]
                obs = self.db.search(params, limit=self.limit, prefer=ids)
                calls.append((params, obs))
                got = {r["hotel_id"] for r in obs}
                missing = [h for h in ids if h not in got]
                if self.relaxed_search and (missing or any(h is None for h in named)):
                    relaxed = self._relaxed(sys, name)
                    robs = self.db.search(relaxed, limit=self.limit, prefer=ids) \
                        if relaxed is not None else []
                    if relaxed is not None and relaxed != params and None not in named \
                            and all(h in {r["hotel_id"] for r in robs} for h in missing):
                        calls.append((relaxed, robs))
            seen = dict(b.seen)
            for _, obs in calls:
                seen.update({r["hotel_id"]: r for r in obs})
            problem = self._ungrounded(sys, seen, calls)
            if problem is not None:
                if searches:
                    b.stop_reason = f"turn {2 * k + 1}: {problem}"
                    break
                b.dropped += 1
                continue
            b.seen = seen
            b.messages.append(Message("user", usr["content"]))
            for params, obs in calls:
                b.messages.append(Message("tool", name=TOOL_NAME, parameters=params,
                                          observation=obs))
            b.relaxed += max(len(calls) - 1, 0)
            b.messages.append(Message("assistant", sys["content"]))
            b.exchanges.append(k)
        return b

    @staticmethod
    def _relaxed(sys: dict[str, Any], name: str | None) -> dict[str, Any] | None:
        """The system's final query as a call, or None when its state is not a valid call (the
        annotators' state has slips such as 酒店设施 "舒适"; those only cost the relaxation)."""
        state = sys.get("sys_state", {}).get(HOTEL, {})
        try:
            relaxed = state_params(state if isinstance(state, dict) else {})
        except ValueError:
            return None
        if name is not None:
            relaxed = {"name": name, **relaxed}
        return relaxed if not check_parameters(relaxed) else None

    def _named(self, sys: dict[str, Any]) -> list[int | None]:
        """Ids of the hotels the system turn names (None for a name not in the database)."""
        out: list[int | None] = []
        for intent, domain, slot, value in sys["dialog_act"]:
            if domain == HOTEL and slot == "名称" and intent in ("Inform", "Recommend") \
                    and value not in ("", "无"):
                hit = self.db.by_name(value)
                hid = hit.hotel_id if hit else None
                if hid not in out:
                    out.append(hid)
        return out

    def _ungrounded(self, sys: dict[str, Any], seen: dict[int, dict[str, Any]],
                    calls: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> str | None:
        """Why the system reply states something no observation shows, or None."""
        records = list(seen.values())
        names = {r["name"] for r in records}
        for intent, domain, slot, value in sys["dialog_act"]:
            if intent == "General":
                continue
            if domain != HOTEL:
                return f"the reply talks about {domain!r}"
            if intent == "NoOffer":
                if calls and calls[0][1]:
                    return "the system found nothing but the query returns hotels"
                continue
            if slot in NEARBY_SLOTS:
                # Even "无" ("周边没有餐馆") is a claim that no observation supports.
                return f"{slot} is not part of an observation"
            if intent not in ("Inform", "Recommend") or value in ("", "无"):
                continue
            if slot == "名称" and value not in names:
                return f"{value!r} is not in any observation"
            if not self._value_seen(slot, value, records):
                return f"{slot} {value!r} matches no observed hotel"
        return None

    @staticmethod
    def _value_seen(slot: str, value: str, records: list[dict[str, Any]]) -> bool:
        field_of = {"电话": "phone", "地址": "address", "酒店类型": "type", "地铁": "subway"}
        if slot in field_of:
            return any(r[field_of[slot]] == value for r in records)
        if slot in ("价格", "评分"):
            m = _VALUE.match(value)
            if not m:
                return False
            key = "price" if slot == "价格" else "rating"
            return any(r[key] == float(m.group(1)) for r in records)
        if slot.startswith(FACILITY_PREFIX):
            fac = slot[len(FACILITY_PREFIX):]
            # "是"/"否" about the hotel under discussion: some observed hotel must agree.
            return any((fac in r["facilities"]) == (value == "是") for r in records)
        return slot == "名称" or slot == "源领域"

    def conversation(self, dialogue_id: str, dialogue: dict[str, Any],
                     pairs: list[tuple[dict[str, Any], dict[str, Any]]], b: _Build,
                     n_runs: int) -> Conversation:
        ops = []
        first, last = b.exchanges[0], b.exchanges[-1]
        if first > 0 or last < len(pairs) - 1:
            ops.append("cut_hotel_segment")
        if b.dropped:
            ops.append("drop_ungrounded_exchange")
        if b.relaxed:
            ops.append("relaxed_search")
        calls = [m.parameters for m in b.messages if m.role == "tool"]
        first_user = next(m.content for m in b.messages if m.role == "user")
        conv = Conversation(
            id=self.make_id(dialogue_id),
            messages=b.messages,
            lineage=Lineage(source=self.source, line=None, item=dialogue_id,
                            group_id=hotel_group_id(first_user or "", calls[0] if calls else None),
                            ops=ops, extra={"tool_origin": "ours"}),
            tools=copy.deepcopy(self.tools),
            corpus=self.corpus,
            meta={"dialogue_id": dialogue_id, "calls": calls,
                  "crosswoz_type": dialogue.get("type"),
                  # Message indices are 0-based over the whole dialogue (user turns even).
                  "turns": [2 * first, 2 * last + 1], "hotel_runs": n_runs,
                  "dropped_exchanges": b.dropped, "stopped": b.stop_reason},
        )
        conv.label = scenario_label(conv)
        return conv
