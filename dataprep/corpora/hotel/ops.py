"""Hotel-dialog augmentation: follow-up turns, closings, name queries, price-upper-bound queries.

Every op returns a new derived conversation (or None and a reason) and never touches its input:

- **followup**: the parent dialog up to its last recommendation, plus a user question about one
  recommended hotel (price, phone, address, subway, rating or a facility) and an answer taken from
  that hotel's database record. An aspect is only asked when the database value equals what the
  dialog's own observation showed, so the answer never contradicts the context it follows.
- **closing**: the same prefix plus "好的，我决定入住X了。" -> "好的，祝您入住愉快！" (variants).
- **name_query** / **price_upper_query**: a new single-query dialog about a hotel the parent's
  observations mention: the user asks for it by name, or for hotels under a price, the tool call is
  ``{"name": X}`` / ``{"price_range_upper": N}`` and the observation is what
  :meth:`HotelDB.search` returns for that call (checked with :meth:`HotelDB.violations` and the
  tool's JSON Schema before use). The original lab data has few of either.

>>> rec_id = "hotel:lab:1"
>>> derived_id(rec_id, "followup")
'hotel:lab:1~followup'
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dataprep.corpora.hotel.phrases import (
    CLOSING_ASSISTANT,
    CLOSING_USER,
    FACILITY_NOUN_REWRITES,
    FOLLOWUP_ANSWERS,
    FOLLOWUP_QUESTIONS,
    HOTEL_THOUGHT,
    NAME_QUERY_REPLY,
    NAME_QUERY_REPLY_NO_PRICE,
    NAME_QUERY_USER,
    PRICE_UPPER_REPLY,
    PRICE_UPPER_USER,
)
from dataprep.record import Conversation, Message

ASPECTS = ("price", "phone", "address", "subway", "rating", "facilities")
TOOL_NAME = "search_hotels"


def derived_id(parent_id: str, op: str) -> str:
    """Id of the record an op derives from ``parent_id`` (one per op and parent)."""
    return f"{parent_id}~{op}"


@dataclass
class Recommendation:
    """An assistant reply (``reply_index``) that names hotels of the observation before it."""

    reply_index: int
    hotels: list[dict[str, Any]]


def _squash(text: str) -> str:
    return "".join(text.split())


def find_recommendations(conv: Conversation) -> list[Recommendation]:
    """Assistant replies that name at least one hotel of the preceding tool observation, in
    dialog order; each lists the named hotels in the order the reply names them."""
    out = []
    msgs = conv.messages
    for i, m in enumerate(msgs):
        if m.role != "tool" or m.name != TOOL_NAME or not isinstance(m.observation, list):
            continue
        for j in range(i + 1, len(msgs)):
            nxt = msgs[j]
            if nxt.role in ("user", "tool"):
                break
            if nxt.role != "assistant" or not nxt.content:
                continue
            reply = _squash(nxt.content)
            named = [(reply.find(_squash(h["name"])), h) for h in m.observation
                     if isinstance(h, dict) and isinstance(h.get("name"), str) and h["name"]
                     and _squash(h["name"]) in reply]
            if named:
                named.sort(key=lambda ph: ph[0])
                out.append(Recommendation(j, [h for _, h in named]))
                break
    return out


def _fmt_number(value: Any) -> str:
    """989.0 -> "989", 4.5 -> "4.5"."""
    f = float(value)
    return str(int(f)) if f.is_integer() else f"{f:g}"


def _db_record(db: Any, name: str) -> dict[str, Any] | None:
    hotel = db.by_name(name)
    if hotel is None:
        return None
    return hotel.to_record() if hasattr(hotel, "to_record") else dict(hotel)


def _prefix(conv: Conversation, rec: Recommendation) -> list[Message]:
    return copy.deepcopy(conv.messages[: rec.reply_index + 1])


def _label(conv: Conversation, fallback: str) -> str:
    try:
        from dataprep.corpora.hotel.hotel_db import scenario_label
    except ImportError:  # the labeller lives with the hotel database; tolerate its absence
        return fallback
    return scenario_label(conv)


def _calls(messages: Sequence[Message]) -> list[dict[str, Any]]:
    return [dict(m.parameters or {}) for m in messages if m.role == "tool"]


def _finish(parent: Conversation, op: str, messages: list[Message], fallback_label: str,
            db: Any, **extra: Any) -> Conversation:
    child = parent.derive(derived_id(parent.id, op), op, **extra)
    child.messages = messages
    child.meta = {**child.meta, "calls": _calls(messages)}
    if "observation_mismatches" in child.meta:
        # The reader's count was for the parent's messages; the child has other ones.
        child.meta["observation_mismatches"] = sum(
            1 for m in messages if m.role == "tool" and isinstance(m.observation, list)
            for h in m.observation if isinstance(h, dict) and db.violations(h, m.parameters or {}))
    child.label = _label(child, fallback_label)
    return child


def followup(conv: Conversation, db: Any, rng: random.Random,
             aspects: Sequence[str] = ASPECTS, facilities: Sequence[str] = (),
             op: str = "followup") -> tuple[Conversation | None, str]:
    """Add one follow-up question and its database answer after the last recommendation.

    Outcomes: ``added``, ``skipped:no_recommendation``, ``skipped:not_in_db``,
    ``skipped:no_consistent_aspect``.
    """
    recs = find_recommendations(conv)
    if not recs:
        return None, "skipped:no_recommendation"
    last = recs[-1]
    shown = rng.choice(last.hotels)
    record = _db_record(db, shown["name"])
    if record is None:
        return None, "skipped:not_in_db"
    usable = [a for a in aspects if _aspect_ok(a, record, shown)
              and (a != "facilities" or record["facilities"] or facilities)]
    if not usable:
        return None, "skipped:no_consistent_aspect"
    aspect = rng.choice(usable)
    ref = "这家酒店" if len(last.hotels) == 1 else record["name"]
    fields = {"ref": ref, "name": record["name"], "phone": record["phone"],
              "address": record["address"], "subway": record["subway"]}
    if record.get("price") is not None and record["price"] >= 0:
        fields["price"] = _fmt_number(record["price"])
    if record.get("rating") is not None:
        fields["rating"] = _fmt_number(record["rating"])
    answer_key = aspect
    if aspect == "facilities":
        has = list(record["facilities"])
        lacks = [f for f in facilities if f not in has]
        ask_has = bool(has) and (not lacks or rng.random() < 0.5)
        canon = rng.choice(has if ask_has else lacks)
        # Ask with a colloquial name when the phrase table has one (the answer keeps the
        # database name), so the model learns to map wordings onto the facility list.
        asked = rng.choice([canon, *FACILITY_NOUN_REWRITES.get(canon, [])])
        fields["facility"] = asked
        question = rng.choice(FOLLOWUP_QUESTIONS[aspect]).format(**fields)
        fields["facility"] = canon
        answer_key = "facilities_yes" if ask_has else "facilities_no"
    else:
        question = rng.choice(FOLLOWUP_QUESTIONS[aspect]).format(**fields)
    answer = rng.choice(FOLLOWUP_ANSWERS[answer_key]).format(**fields)
    messages = [*_prefix(conv, last), Message("user", question), Message("assistant", answer)]
    child = _finish(conv, op, messages, "followup", db, aspect=aspect,
                    truncated_after=last.reply_index)
    return child, "added"


def _aspect_ok(aspect: str, record: dict[str, Any], shown: dict[str, Any]) -> bool:
    if aspect == "facilities":
        return "facilities" not in shown or list(shown["facilities"]) == list(record["facilities"])
    value = record.get(aspect)
    if value in (None, "") or (aspect == "price" and float(value) < 0):  # -1: the lab's "no price"
        return False
    # The dialog's observation is the context the answer follows; never contradict it.
    return aspect not in shown or shown[aspect] == value


def closing(conv: Conversation, db: Any, rng: random.Random,
            op: str = "closing") -> tuple[Conversation | None, str]:
    """Add a closing exchange naming one recommended hotel after the last recommendation.

    Outcomes: ``added``, ``skipped:no_recommendation``.
    """
    recs = find_recommendations(conv)
    if not recs:
        return None, "skipped:no_recommendation"
    last = recs[-1]
    name = rng.choice(last.hotels)["name"]
    messages = [*_prefix(conv, last), Message("user", rng.choice(CLOSING_USER).format(name=name)),
                Message("assistant", rng.choice(CLOSING_ASSISTANT))]
    return _finish(conv, op, messages, "closing", db, truncated_after=last.reply_index), "added"


def _observed_hotels(conv: Conversation) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for m in conv.messages:
        if m.role == "tool" and isinstance(m.observation, list):
            for h in m.observation:
                if isinstance(h, dict) and isinstance(h.get("name"), str) and h["name"]:
                    seen.setdefault(h["name"], h)
    return list(seen.values())


def _checked_search(db: Any, params: dict[str, Any], limit: int) -> tuple[list[dict] | None, str]:
    """db.search, then the same checks the validate stage applies: the call satisfies the tool
    schema and every returned hotel satisfies the call."""
    from dataprep.corpora.hotel.tools import check_parameters

    problems = check_parameters(params)
    if problems:
        return None, "skipped:call_off_schema"
    results = db.search(params, limit=limit)
    if not results:
        return None, "skipped:search_empty"
    if any(db.violations(h, params) for h in results):
        return None, "skipped:observation_violates_call"
    return results, "ok"


def _single_query(parent: Conversation, op: str, user: str, params: dict[str, Any],
                  observation: list[dict[str, Any]], reply: str, label: str, db: Any,
                  **extra: Any) -> Conversation:
    # The lab's ChatGLM3 export puts a "thought" before each call and its raw dialogs do not;
    # a new dialog follows its parent's convention so one corpus stays uniform.
    thought = any(m.role == "assistant" and m.content == HOTEL_THOUGHT for m in parent.messages)
    messages = [Message("user", user),
                *([Message("assistant", HOTEL_THOUGHT)] if thought else []),
                Message("tool", name=TOOL_NAME, parameters=params, observation=observation),
                Message("assistant", reply)]
    child = _finish(parent, op, messages, label, db, **extra)
    if child.tools is None:
        from dataprep.corpora.hotel.tools import HOTEL_TOOLS

        child.tools = HOTEL_TOOLS
    return child


def name_query(conv: Conversation, db: Any, rng: random.Random, max_results: int = 3,
               op: str = "name_query") -> tuple[Conversation | None, str]:
    """A new dialog asking for a hotel of the parent's observations by its name.

    Outcomes: ``added``, ``skipped:no_hotel``, ``skipped:search_empty``,
    ``skipped:name_not_found``, ``skipped:call_off_schema``, ``skipped:observation_violates_call``.
    """
    hotels = [h for h in _observed_hotels(conv) if db.by_name(h["name"]) is not None]
    if not hotels:
        return None, "skipped:no_hotel"
    name = rng.choice(hotels)["name"]
    params = {"name": name}
    results, outcome = _checked_search(db, params, max_results)
    if results is None:
        return None, outcome
    # Search ranks the exact name first; anything else means the name is ambiguous in the db.
    if results[0]["name"] != name:
        return None, "skipped:name_not_found"
    hotel = results[0]
    fields = {"name": name, "type": hotel["type"], "address": hotel["address"],
              "price": _fmt_number(hotel["price"] if hotel["price"] is not None else -1),
              "rating": _fmt_number(hotel["rating"] or 0)}
    has_price = hotel["price"] is not None and hotel["price"] >= 0
    templates = NAME_QUERY_REPLY if has_price and hotel["rating"] else \
        NAME_QUERY_REPLY_NO_PRICE
    child = _single_query(conv, op, rng.choice(NAME_QUERY_USER).format(name=name), params,
                          results, rng.choice(templates).format(**fields), "name", db)
    return child, "added"


def price_upper_query(conv: Conversation, db: Any, rng: random.Random, max_results: int = 3,
                      type_share: float = 0.3,
                      op: str = "price_upper_query") -> tuple[Conversation | None, str]:
    """A new dialog asking for hotels up to a price taken from a hotel the parent saw (its price
    rounded up to the next hundred, so the search is never empty), sometimes with its type.

    Outcomes: ``added``, ``skipped:no_priced_hotel`` and the search outcomes of
    :func:`name_query`.
    """
    priced = [h for h in _observed_hotels(conv)
              if isinstance(h.get("price"), (int, float)) and h["price"] > 0]
    if not priced:
        return None, "skipped:no_priced_hotel"
    anchor = rng.choice(priced)
    upper = int(math.ceil(float(anchor["price"]) / 100.0) * 100)
    params: dict[str, Any] = {"price_range_upper": upper}
    with_type = rng.random() < type_share and isinstance(anchor.get("type"), str)
    if with_type:
        params["type"] = anchor["type"]
    results, outcome = _checked_search(db, params, max_results)
    if results is None:
        return None, outcome
    shown = results[: 2 if len(results) > 1 else 1]
    fields = {f"h{k}": h["name"] for k, h in enumerate(shown, 1)}
    fields.update({f"p{k}": _fmt_number(h["price"]) for k, h in enumerate(shown, 1)})
    user = rng.choice(PRICE_UPPER_USER).format(upper=upper, type=params.get("type", ""))
    reply = rng.choice(PRICE_UPPER_REPLY[len(shown)]).format(**fields)
    child = _single_query(conv, op, user, params, results, reply, "price", db)
    return child, "added"

