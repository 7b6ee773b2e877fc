"""The hotel rules of the ``validate`` stage.

- ``observation_violates_call`` (reject): every hotel a ``search_hotels`` call returned satisfies
  the call's constraints in the hotel database (:meth:`HotelDB.violations`). The lab data fails
  this often: 209 of 1262 ``train.chatglm3`` records (16.6%) and 442 of 3332 raw dialogs (13.3%)
  return a hotel outside the call's bounds (mostly "rating 4.6 below rating_range_lower 5.0", and
  prices outside the range), i.e. the rewritten calls no longer match their results: training on
  them teaches the model that results need not match the query, so the default rejects.
  That holds for observations *we* produce (``tool_origin: ours``). A record that brings its own
  tool (``tool_origin: dataset``, the lab files: an approximate search) returned what that tool
  really returned: the validate stage flags it instead (``dataset_tools: reject`` rejects).
  A third mode, ``repair``, re-runs the call on hotel_db (:meth:`HotelDB.search`), replaces the
  observation with the true result and keeps the sample when the assistant's next reply is still
  grounded in it (it names a returned hotel and none of the dropped ones; an empty result must
  not be answered with hotel names); otherwise ``repair_ungrounded`` (reject).
- ``unknown_facility`` (reject; flag for dataset tools): every facility a call asks for is a
  hotel_db facility. Ours cannot fail it (our schema's enum); the lab's free-string tool keeps
  the user's words (``停车场``, ``wifi``…) the synonym table does not map unambiguously.
- ``reply_mentions_no_result`` (flag): the reply after a non-empty result names one of the
  returned hotels. 99.8% of such replies do (lab train 1429/1432, raw dialogs 3520/3527). Some
  misses are real errors ("中安之家连锁(北京中安宾馆。"), others list branches without the brand
  ("分别是北京望京798店、北京天坛店"), so the default only flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dataprep.corpora.base import NOT_APPLICABLE, NotApplicable, Problem, Rule, RuleOptions
from dataprep.corpora.hotel.hotel_db import DEFAULT_LIMIT
from dataprep.record import MISSING, Conversation, Message
from dataprep.text import squash


@dataclass
class HotelToolOptions(RuleOptions):
    """``hotel_tool``: the tool whose calls are checked (default ``search_hotels``)."""

    hotel_tool: str = "search_hotels"


def _searches(rec: Conversation, tool: str) -> list[tuple[int, Message, list]]:
    """(index, tool message, observation list) of every answered call of ``tool``."""
    out = []
    for i, msg in enumerate(rec.messages):
        if msg.role != "tool" or msg.name != tool:
            continue
        obs = msg.observation
        if obs is MISSING or not isinstance(obs, list):
            continue
        out.append((i, msg, obs))
    return out


class ObservationViolatesCall(Rule):
    """``observation_violates_call``: returned hotels satisfy the call (needs the hotel db)."""

    reason = "observation_violates_call"
    corpus = "hotel"
    Options = HotelToolOptions
    options: HotelToolOptions
    semantic = True
    repairable = True

    def check(self, rec: Conversation, detail: dict[str, Any]) -> Problem | NotApplicable | None:
        searches = _searches(rec, self.options.hotel_tool)
        if not searches:
            return NOT_APPLICABLE
        db = self.resources.hotel_db
        for i, msg, obs in searches:
            for j, hotel in enumerate(obs):
                problems = db.violations(hotel, msg.parameters or {})
                if problems:
                    name = hotel.get("name") if isinstance(hotel, dict) else hotel
                    return Problem(self.reason, f"/conversations/{i}/observation/{j}: {name!r} "
                                   f"does not satisfy the call: {'; '.join(map(str, problems))}",
                                   (i,))
        return None


    def repair(self, rec: Conversation) -> str | None:
        """Replace every violating observation by hotel_db's answer to its call, in place.
        None when the sample is still grounded, else why not (``repair_ungrounded``'s message)."""
        db = self.resources.hotel_db
        for i, msg, obs in _searches(rec, self.options.hotel_tool):
            if not any(db.violations(h, msg.parameters or {}) for h in obs):
                continue
            try:
                # The returned hotels that do satisfy the call stay first (the reply may name them).
                prefer = [h["hotel_id"] for h in obs if isinstance(h, dict)
                          and isinstance(h.get("hotel_id"), int)
                          and not db.violations(h, msg.parameters or {})]
                new = db.search(msg.parameters or {}, limit=max(len(obs), DEFAULT_LIMIT),
                                prefer=prefer)
            except ValueError as e:
                return f"/conversations/{i}/parameters: the call cannot run on hotel_db: {e}"
            nxt = rec.messages[i + 1] if i + 1 < len(rec.messages) else None
            if nxt is not None and nxt.role == "assistant":
                reply = squash(nxt.content or "")
                kept = {squash(h["name"]) for h in new}
                dropped = [h.get("name") for h in obs if isinstance(h, dict)
                           and isinstance(h.get("name"), str)
                           and squash(h["name"]) not in kept and squash(h["name"]) in reply]
                if dropped:
                    return (f"/conversations/{i + 1}/content: the reply names {dropped[0]!r}, "
                            "which hotel_db does not return for the call")
                if new and not any(n in reply for n in kept):
                    return (f"/conversations/{i + 1}/content: the reply names none of the "
                            f"{len(new)} hotels hotel_db returns for the call")
            msg.observation = new
        rec.lineage.ops.append("repair_observation")
        return None


class UnknownFacility(Rule):
    """``unknown_facility``: every facility a call asks for is a hotel_db facility."""

    reason = "unknown_facility"
    corpus = "hotel"
    Options = HotelToolOptions
    options: HotelToolOptions
    semantic = True

    def check(self, rec: Conversation, detail: dict[str, Any]) -> Problem | NotApplicable | None:
        calls = [(i, m) for i, m in enumerate(rec.messages)
                 if m.role == "tool" and m.name == self.options.hotel_tool]
        if not calls:
            return NOT_APPLICABLE
        known = self.resources.hotel_db.facility_names
        for i, msg in calls:
            for j, f in enumerate((msg.parameters or {}).get("facilities") or []):
                if f not in known:
                    return Problem(self.reason, f"/conversations/{i}/parameters/facilities/{j}: "
                                   f"{f!r} is not a hotel_db facility", (i,))
        return None


class ReplyMentionsNoResult(Rule):
    """``reply_mentions_no_result``: the reply after a non-empty result names a returned hotel."""

    reason = "reply_mentions_no_result"
    corpus = "hotel"
    default_mode = "flag"
    Options = HotelToolOptions
    stats_key = "reply_mentions"
    options: HotelToolOptions

    def new_detail(self) -> dict[str, Any]:
        return {"checked": 0, "mentions": 0, "rate": None}

    def check(self, rec: Conversation, detail: dict[str, Any]) -> Problem | NotApplicable | None:
        checked = False
        problem = None
        for i, _, obs in _searches(rec, self.options.hotel_tool):
            names = [squash(h["name"]) for h in obs
                     if isinstance(h, dict) and isinstance(h.get("name"), str) and h["name"]]
            nxt = rec.messages[i + 1] if i + 1 < len(rec.messages) else None
            if not names or nxt is None or nxt.role != "assistant":
                continue
            checked = True
            detail["checked"] += 1
            reply = squash(nxt.content or "")
            if any(n in reply for n in names):
                detail["mentions"] += 1
            elif problem is None:
                example = next(h["name"] for h in obs if isinstance(h, dict) and h.get("name"))
                problem = Problem(self.reason, f"/conversations/{i + 1}/content: the reply names "
                                  f"none of the {len(names)} returned hotels (e.g. {example!r})",
                                  (i + 1,))
            detail["rate"] = round(detail["mentions"] / detail["checked"], 6)
        return problem if checked else NOT_APPLICABLE
