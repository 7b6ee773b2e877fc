"""The doc-QA rule of the ``validate`` stage: ``answer_not_grounded``.

Grounding is the share of the answer's character bigrams (whitespace and punctuation removed; one
character for a one-character answer) that occur in the positive documents together. Exact
substring matching is useless for DuReader, whose answers are written by people (MANIFEST: 11 of
177 are verbatim). Measured through the readers and ``clean`` at 0.5: CMRC 2018 dev 3219/3219 (the
reader keeps an in-passage annotation), DuReader demo train 94/96 = 97.9% (the reader keeps the
best-supported of up to three answers; over all 177 human answers against the selected documents
the rate is 88.7%). Scored against *another* question's documents the same answers pass 1.7%
(DuReader) and 3.4% (CMRC, short answers) of the time at 0.5, 0% and 1.6% at 0.6; 0.5 keeps the
most real answers while still catching an answer paired with the wrong documents.

A sample with no positive document whose answer is the fixed refusal
(:data:`~dataprep.corpora.docqa.common.UNANSWERABLE_ANSWER`) is unanswerable by design and passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dataprep.corpora.base import NOT_APPLICABLE, NotApplicable, Problem, Rule, RuleOptions
from dataprep.corpora.docqa.common import UNANSWERABLE_ANSWER
from dataprep.errors import ConfigError
from dataprep.record import Conversation
from dataprep.text import grounding_score


@dataclass
class GroundingOptions(RuleOptions):
    """``grounding_threshold`` (0..1, default 0.5), ``grounding_ngram`` (default 2)."""

    grounding_threshold: float = 0.5
    grounding_ngram: int = 2

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.grounding_threshold) <= 1.0:
            raise ConfigError(f"validate.grounding_threshold must be between 0 and 1, "
                              f"got {self.grounding_threshold!r}")
        if int(self.grounding_ngram) < 1:
            raise ConfigError(f"validate.grounding_ngram must be >= 1, "
                              f"got {self.grounding_ngram!r}")
        self.grounding_threshold = float(self.grounding_threshold)
        self.grounding_ngram = int(self.grounding_ngram)


class AnswerNotGrounded(Rule):
    """``answer_not_grounded``: the answer overlaps the positive documents enough."""

    reason = "answer_not_grounded"
    corpus = "docqa"
    Options = GroundingOptions
    stats_key = "grounding"
    options: GroundingOptions

    def new_detail(self) -> dict[str, Any]:
        return {"threshold": self.options.grounding_threshold, "checked": 0, "grounded": 0,
                "rate": None, "by_source": {}, "unanswerable": 0, "skipped_no_meta": 0}

    def check(self, rec: Conversation, detail: dict[str, Any]) -> Problem | NotApplicable | None:
        answer, docs = rec.meta.get("answer"), rec.meta.get("positive_docs")
        if not isinstance(answer, str) or not isinstance(docs, list):
            detail["skipped_no_meta"] += 1
            return NOT_APPLICABLE
        if not docs and answer.strip() == UNANSWERABLE_ANSWER:
            # An unanswerable sample (augmentation drops the positives on purpose): its answer
            # is the fixed refusal, and there is nothing to be grounded in.
            detail["unanswerable"] += 1
            return NOT_APPLICABLE
        threshold, ngram = self.options.grounding_threshold, self.options.grounding_ngram
        score = grounding_score(answer, [d for d in docs if isinstance(d, str)], ngram)
        ok = score >= threshold
        source = Path(rec.lineage.source).name or "?"
        by = detail["by_source"].setdefault(source, {"checked": 0, "grounded": 0, "rate": None})
        for bucket in (detail, by):
            bucket["checked"] += 1
            bucket["grounded"] += int(ok)
            bucket["rate"] = round(bucket["grounded"] / bucket["checked"], 6)
        if ok:
            return None
        why = "no positive document" if not docs else (
            f"{score:.2f} of its character {ngram}-grams occur in the positive "
            f"document(s), under grounding_threshold {threshold}")
        return Problem(self.reason, f"/meta/answer: {answer[:40]!r}: {why}")
