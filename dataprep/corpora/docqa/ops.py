"""Doc-QA augmentation: contrastive samples and unanswerable samples.

Both rebuild a record's prompt from another document set with
:func:`dataprep.corpora.docqa.common.rebuild_with_documents`, so a derived sample has exactly the shape
a reader would have produced (same template, document headers, ``meta``), and keeps its parent's
group id.

- **contrastive**: the positive document(s) shuffled among ``k`` negatives, sampled first from the
  record's own negatives, then from other records' documents; cut to a character budget and, when
  a tokenizer is configured, a token budget.
- **unanswerable**: negatives only, and the refusal answer the RAG prompt names; label
  ``unanswerable``.

Documents borrowed from other records come from a :class:`DocPool` built from the records being
augmented (the train split by default), so no dev/test document ever appears in train. A borrowed
document that contains the answer text is never used as a negative: it might answer the question.

>>> pool = DocPool()
>>> pool.add("a", ["长江全长约6300公里。"])
>>> len(pool)
1
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from dataprep.corpora.docqa.common import (
    DEFAULT_MAX_DOC_CHARS,
    DEFAULT_MAX_TOTAL_CHARS,
    RAG_PROMPT,
    UNANSWERABLE_ANSWER,
    fit_documents,
    pick_negatives,
    rebuild_with_documents,
)
from dataprep.record import Conversation

UNANSWERABLE_LABEL = "unanswerable"

TokenCounter = Callable[[Conversation], int]


class DocPool:
    """Distinct documents of many records, each remembered with the first record it came from."""

    def __init__(self) -> None:
        self._docs: list[tuple[str, str]] = []
        self._seen: set[str] = set()

    def add(self, owner_id: str, docs: Iterable[str]) -> None:
        for d in docs:
            key = d.strip()
            if key and key not in self._seen:
                self._seen.add(key)
                self._docs.append((owner_id, d))

    def __len__(self) -> int:
        return len(self._docs)

    def sample(self, n: int, *, key: str, exclude_owner: str, exclude: Iterable[str] = (),
               answer: str | None = None) -> list[str]:
        """Up to ``n`` documents not owned by ``exclude_owner``, not in ``exclude`` and not
        containing ``answer``, chosen by a shuffle seeded with ``key``."""
        if n <= 0 or not self._docs:
            return []
        skip = {e.strip() for e in exclude}
        order = list(range(len(self._docs)))
        random.Random(f"pool:{key}").shuffle(order)
        out: list[str] = []
        for i in order:
            owner, doc = self._docs[i]
            if owner == exclude_owner or doc.strip() in skip or _contains_answer(doc, answer):
                continue
            out.append(doc)
            if len(out) == n:
                break
        return out


def _contains_answer(doc: str, answer: str | None) -> bool:
    # A one-character answer ("是", "无") occurs in unrelated text by chance; from two characters
    # on ("绿茶"), finding it verbatim is taken as a sign the document may answer the question,
    # which errs towards keeping answer-bearing text out of negatives.
    text = (answer or "").strip()
    return len(text) >= 2 and text in doc


@dataclass
class DocBudget:
    """Character budget per document and in total, plus an optional token budget for the whole
    sample (prompt + answer) when a tokenizer is configured."""

    max_doc_chars: int = DEFAULT_MAX_DOC_CHARS
    max_total_chars: int = DEFAULT_MAX_TOTAL_CHARS
    max_tokens: int | None = None


def _fit_tokens(build: Callable[[list[str]], Conversation], negatives: list[str],
                budget: DocBudget, count: TokenCounter | None) -> tuple[Conversation | None, int]:
    """Build with as many negatives as fit the token budget (dropping from the end)."""
    negs = list(negatives)
    while True:
        child = build(negs)
        if count is None or budget.max_tokens is None or count(child) <= budget.max_tokens:
            return child, len(negatives) - len(negs)
        if not negs:
            return None, len(negatives)
        negs.pop()


def contrastive(rec: Conversation, *, pool: DocPool, k: int, budget: DocBudget, seed: int,
                prompt: str = RAG_PROMPT, count_tokens: TokenCounter | None = None,
                op: str = "docqa_contrastive") -> tuple[Conversation | None, str]:
    """A derived sample: the positives among ``k`` negatives, shuffled; returns (child, outcome).

    Outcomes: ``added``, ``skipped:no_positive``, ``skipped:no_negatives``,
    ``skipped:over_token_budget``.
    """
    meta = rec.meta
    positives: list[str] = list(meta.get("positive_docs") or [])
    if not positives:
        return None, "skipped:no_positive"
    answer = meta.get("answer")
    key = f"{seed}:{rec.id}:{op}"
    own = pick_negatives(list(meta.get("negative_docs") or []), k, key=key, exclude=positives)
    more = pool.sample(k - len(own), key=key, exclude_owner=rec.id,
                       exclude=[*positives, *own], answer=answer)
    negatives = own + more
    if not negatives:
        return None, "skipped:no_negatives"
    pos, negs, _ = fit_documents(positives, negatives, max_doc_chars=budget.max_doc_chars,
                                 max_total_chars=budget.max_total_chars)
    if not negs:
        return None, "skipped:no_negatives"

    def build(ns: list[str]) -> Conversation:
        return rebuild_with_documents(rec, new_id=f"{rec.id}~{op}", op=op, positive_docs=pos,
                                      negative_docs=ns, prompt=prompt, seed=seed)

    child, _ = _fit_tokens(build, negs, budget, count_tokens)
    if child is None:
        return None, "skipped:over_token_budget"
    _note_sources(child, rec)
    return child, "added"


def unanswerable(rec: Conversation, *, pool: DocPool, k: int, budget: DocBudget, seed: int,
                 refusal: str = UNANSWERABLE_ANSWER, prompt: str = RAG_PROMPT,
                 count_tokens: TokenCounter | None = None,
                 op: str = "docqa_unanswerable") -> tuple[Conversation | None, str]:
    """A derived sample with negatives only and the refusal answer; returns (child, outcome).

    Outcomes: ``added``, ``skipped:no_negatives``, ``skipped:over_token_budget``.
    """
    meta = rec.meta
    positives: list[str] = list(meta.get("positive_docs") or [])
    answer = meta.get("answer")
    key = f"{seed}:{rec.id}:{op}"
    own = [d for d in pick_negatives(list(meta.get("negative_docs") or []), k, key=key,
                                     exclude=positives)
           if not _contains_answer(d, answer)]
    more = pool.sample(k - len(own), key=key, exclude_owner=rec.id, exclude=[*positives, *own],
                       answer=answer)
    _, negs, _ = fit_documents([], own + more, max_doc_chars=budget.max_doc_chars,
                               max_total_chars=budget.max_total_chars)
    if not negs:
        return None, "skipped:no_negatives"

    def build(ns: list[str]) -> Conversation:
        child = rebuild_with_documents(rec, new_id=f"{rec.id}~{op}", op=op, positive_docs=[],
                                       negative_docs=ns, answer=refusal, prompt=prompt, seed=seed)
        child.label = UNANSWERABLE_LABEL
        child.meta["original_answer"] = answer
        # Offsets into a positive document mean nothing once there is none.
        child.meta.pop("answer_start", None)
        return child

    child, _ = _fit_tokens(build, negs, budget, count_tokens)
    if child is None or not child.meta.get("negative_docs"):
        return None, "skipped:over_token_budget"
    _note_sources(child, rec)
    return child, "added"


def _note_sources(child: Conversation, parent: Conversation) -> None:
    # How many negatives the child has and how many were borrowed from other records: enough
    # to audit the op's effect per record without diffing prompts.
    own = {d.strip() for d in docs_of(parent)}
    negs = child.meta.get("negative_docs") or []
    child.lineage.extra["negatives"] = len(negs)
    child.lineage.extra["borrowed_negatives"] = sum(
        not any(o.startswith(d.strip()) for o in own) for d in negs)


def token_counter(tokenizer: Any) -> TokenCounter:
    """Count a doc-QA sample's tokens (user prompt + answer) with a tokenizer's ``encode``."""

    def count(conv: Conversation) -> int:
        return sum(len(tokenizer.encode(t)) for t in conv.texts())

    return count


def docs_of(rec: Conversation) -> Sequence[str]:
    """All documents of a doc-QA record (positives and negatives)."""
    return [*(rec.meta.get("positive_docs") or []), *(rec.meta.get("negative_docs") or [])]
