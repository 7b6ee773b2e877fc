"""The SPO rules of the ``validate`` stage.

Measured on spo_0.subset (1125 records, 4932 triples, after ``clean``): every triple's relation is
known and every subject and object occurs in the source text (rate 1.0), so a failure is a real
extraction error and both rules reject by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dataprep.corpora.base import NOT_APPLICABLE, NotApplicable, Problem, Rule, RuleOptions
from dataprep.corpora.spo.reader import RELATIONS
from dataprep.errors import ConfigError
from dataprep.record import Conversation
from dataprep.text import squash


def _triples(rec: Conversation) -> tuple[list, str] | None:
    triples, text = rec.meta.get("triples"), rec.meta.get("text")
    if not isinstance(triples, list) or not isinstance(text, str):
        return None
    return triples, text


@dataclass
class RelationOptions(RuleOptions):
    """``relations``: the relation set (default: the reader's four)."""

    relations: list[str] | None = None

    def __post_init__(self) -> None:
        if self.relations is not None and not all(isinstance(r, str) for r in self.relations):
            raise ConfigError(f"validate.relations must be a list of names, got {self.relations!r}")
        self.relations = list(self.relations) if self.relations is not None else list(RELATIONS)


class UnknownRelation(Rule):
    """``unknown_relation``: every triple's relation is in ``relations``."""

    reason = "unknown_relation"
    corpus = "spo"
    Options = RelationOptions
    stats_key = "relations"
    options: RelationOptions

    def new_detail(self) -> dict[str, Any]:
        return {"records": 0, "total": 0, "known_relation": 0, "skipped_no_meta": 0}

    def check(self, rec: Conversation, detail: dict[str, Any]) -> Problem | NotApplicable | None:
        found = _triples(rec)
        if found is None:
            detail["skipped_no_meta"] += 1
            return NOT_APPLICABLE
        detail["records"] += 1
        problem = None
        for k, (_, rel, _) in enumerate(found[0]):
            detail["total"] += 1
            if rel in (self.options.relations or ()):
                detail["known_relation"] += 1
            elif problem is None:
                problem = Problem(self.reason, f"/meta/triples/{k}: expected a relation in "
                                  f"{self.options.relations}, found {rel!r}", (k,))
        return problem


class TripleNotInText(Rule):
    """``triple_not_in_text``: every subject and object occurs in the source text (whitespace
    ignored)."""

    reason = "triple_not_in_text"
    corpus = "spo"
    stats_key = "triples"

    def new_detail(self) -> dict[str, Any]:
        return {"records": 0, "total": 0, "in_text": 0, "rate_in_text": None,
                "skipped_no_meta": 0}

    def check(self, rec: Conversation, detail: dict[str, Any]) -> Problem | NotApplicable | None:
        found = _triples(rec)
        if found is None:
            detail["skipped_no_meta"] += 1
            return NOT_APPLICABLE
        triples, text = found
        squashed = squash(text)
        detail["records"] += 1
        problem = None
        for k, triple in enumerate(triples):
            subj, _, obj = triple
            detail["total"] += 1
            missing = [part for part in (subj, obj) if squash(part) not in squashed]
            if not missing:
                detail["in_text"] += 1
            elif problem is None:
                problem = Problem(self.reason, f"/meta/triples/{k}: {'_'.join(triple)!r}: "
                                  f"{missing[0]!r} does not occur in the text", (k,))
        detail["rate_in_text"] = round(detail["in_text"] / detail["total"], 6) \
            if detail["total"] else None
        return problem
