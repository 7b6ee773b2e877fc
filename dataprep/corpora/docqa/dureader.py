"""DuReader 2.0 (search/zhidao, JSON Lines despite ``.json``) as document-QA samples.

**One input record = one line = one question.** Documents with ``is_selected: true`` are the
positives, the other documents of the same question the distractors (``negatives`` default None:
all of them; the demo has at most 5 documents per question). A document is its title and its
paragraphs joined by newlines; when that exceeds ``max_doc_chars``, whole paragraphs farthest from
``most_related_para`` are dropped first, so the budget keeps the evidence rather than the head.

Answer: ``answer_choice: most_supported`` (default): of the human-written answers, the one with
the largest share of its character bigrams in the positive documents, ties to the earliest: a
RAG target should be what the documents support, and the answers' order carries no meaning. On
the demo train file this leaves 2 answers under the validate stage's grounding threshold instead
of 9 with ``answers[0]`` (``answer_choice: first``). DuReader answers are paraphrases (only 11 of
177 demo answers occur verbatim), so no substring check is made. ``group_id`` is the question id.

Reject reasons beyond the schema ones: ``unlabeled`` (no ``answers`` field: test files; the
documents are still usable as a distractor pool via :func:`document_pool`), ``no_answer``
(``answers`` empty or blank: 4 demo train questions, which also have no selected document),
``no_positive_doc`` (answers but no selected non-empty document), ``empty_question``.

>>> items = list(DuReaderReader("data/dureader_sample.jsonl").read())  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dataprep.corpora.docqa.common import (
    DEFAULT_MAX_DOC_CHARS,
    DocQAReader,
    pick_negatives,
    truncate,
)
from dataprep.errors import ConfigError
from dataprep.io import iter_jsonl
from dataprep.readers.base import Item
from dataprep.record import Lineage
from dataprep.text import grounding_score

ANSWER_CHOICES = ("first", "most_supported")


def document_text(doc: dict[str, Any], max_chars: int = DEFAULT_MAX_DOC_CHARS) -> str:
    """Title plus paragraphs, cut to ``max_chars`` around ``most_related_para``.

    >>> document_text({"title": "T", "paragraphs": ["a" * 4, "b" * 4, "c" * 4],
    ...                "most_related_para": 2}, max_chars=12)
    'T\\nbbbb\\ncccc'
    """
    title = (doc.get("title") or "").strip()
    paras = [p.strip() for p in doc["paragraphs"]]
    mrp = doc.get("most_related_para")
    centre = mrp if isinstance(mrp, int) and 0 <= mrp < len(paras) else 0
    head = f"{title}\n" if title else ""

    def render(lo: int, hi: int) -> str:
        return head + "\n".join(p for p in paras[lo:hi] if p)

    full = render(0, len(paras))
    if len(full) <= max_chars or not paras:
        return truncate(full, max_chars)
    lo, hi = centre, centre + 1
    # Grow the window one paragraph at a time (the next one before the previous one) while it fits.
    while True:
        grown = False
        for cand in ((lo, hi + 1), (lo - 1, hi)):
            if cand[0] >= 0 and cand[1] <= len(paras) and len(render(*cand)) <= max_chars:
                lo, hi = cand
                grown = True
                break
        if not grown:
            break
    return truncate(render(lo, hi), max_chars)


def support(answer: str, documents: list[str]) -> float:
    """Share of the answer's character bigrams found in the documents (0..1): the same score the
    validate stage's grounding rule applies (:func:`dataprep.text.grounding_score`).

    >>> support("约6300公里", ["长江全长约6300公里。"]), support("很长", ["长江"])
    (1.0, 0.0)
    """
    return grounding_score(answer, documents)


def document_pool(path: str | Path, max_chars: int = DEFAULT_MAX_DOC_CHARS) -> list[str]:
    """Every non-empty document of a DuReader file (test files included), in file order: a
    distractor pool for augmentation. Bad lines are skipped here; read them with the reader to
    see why.

    >>> pool = document_pool("search.test.json")  # doctest: +SKIP
    """
    out = []
    for raw in iter_jsonl(path):
        docs = raw.value.get("documents") if isinstance(raw.value, dict) else None
        for doc in docs if isinstance(docs, list) else []:
            if (isinstance(doc, dict) and isinstance(doc.get("paragraphs"), list)
                    and all(isinstance(p, str) for p in doc["paragraphs"])):
                text = document_text(doc, max_chars)
                if text:
                    out.append(text)
    return out


class DuReaderReader(DocQAReader):
    """Options: ``answer_choice`` (``most_supported`` or ``first``) plus the doc-QA options of
    :class:`~dataprep.corpora.docqa.common.DocQAReader` (``negatives`` default None: every
    non-selected document of the question)."""

    name = "dureader"
    input_schema = "dureader"
    default_negatives = None

    def configure(self, answer_choice: str = "most_supported", **common: Any) -> None:
        if answer_choice not in ANSWER_CHOICES:
            raise ConfigError(f"reader option 'answer_choice': expected one of "
                              f"{', '.join(ANSWER_CHOICES)}, found {answer_choice!r}")
        self.answer_choice = answer_choice
        super().configure(**common)

    def read(self) -> Iterator[Item]:
        for line, value, text, rej in self.iter_json_lines():
            yield rej if rej is not None else self.convert(value, line, text)

    def convert(self, value: dict[str, Any], line: int, text: str | None) -> Item:
        qid = str(value["question_id"])
        rej = self.text_problem("/question", value["question"], "empty_question", "question",
                                line, text=text)
        if rej is not None:
            return rej
        docs = value["documents"]
        if "answers" not in value:
            return self.make_reject(
                "unlabeled", "/answers: expected the human answers, found no 'answers' field "
                "(an unlabeled test file? use dureader.document_pool() to use its documents as "
                "distractors)", line, text=text)
        answers = [a.strip() for a in value["answers"] if a.strip()]
        selected = [d for d in docs if d.get("is_selected") is True]
        if not answers:
            return self.make_reject(
                "no_answer", f"/answers: expected at least one non-empty answer, found "
                f"{value['answers']!r} ({len(selected)} of {len(docs)} documents selected)",
                line, text=text)
        texts = {id(d): document_text(d, self.max_doc_chars) for d in docs}
        # Counted here because the paragraph window already fits the budget's per-document cut.
        cut = sum(len(texts[id(d)]) < len(document_text(d, 1 << 30)) for d in docs)
        positives = [t for t in (texts[id(d)] for d in selected) if t]
        if not positives:
            return self.make_reject(
                "no_positive_doc", f"/documents: expected at least one non-empty document with "
                f"is_selected true, found {len(selected)} selected of {len(docs)}", line,
                text=text)
        others = [texts[id(d)] for d in docs if d.get("is_selected") is not True]
        negatives = pick_negatives(others, self.negatives, key=f"{self.seed}:{qid}",
                                   exclude=positives)
        if self.answer_choice == "first":
            answer = answers[0]
        else:
            scores = [support(a, positives) for a in answers]
            answer = answers[scores.index(max(scores))]
        return self.build(
            key=line, question=value["question"].strip(), answer=answer, positives=positives,
            negatives=negatives, source_id=qid,
            lineage=Lineage(source=self.source, line=line, group_id=f"{self.id_prefix}:q{qid}"),
            extra_meta={"question_type": value.get("question_type")}, pre_truncated=cut)
