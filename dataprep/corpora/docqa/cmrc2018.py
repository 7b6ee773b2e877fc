"""CMRC 2018 (SQuAD-style Chinese extractive MRC) as document-QA samples.

**One input record = one question** (cmrc2018_dev.json: 848 articles, 3219 questions). Questions
of a problem article or paragraph are still counted one by one, each rejected with that problem;
only an article or paragraph whose questions cannot be enumerated (``paragraphs`` or ``qas`` not
an array, an item not an object) counts as one record. The file is one JSON document, so a file
that does not parse at all raises :class:`~dataprep.errors.InputError`; rejects carry the line of
the question's ``"id"`` in the file and the question id as ``item``.

Answer: of the (usually three) annotations, those whose text occurs in the context are used
(``answer_start`` is a hint, as 7 dev annotations are off by 1-2 characters; ``-1`` annotations
never occur in their context); the most frequent in-context text wins, ties go to the earliest.
Distractors: ``negatives`` (default 3) other articles, drawn by the seed, skipping any whose
document contains the answer text (it could support the answer, e.g. the two different rivers
named 雅芳河). ``group_id`` is the article id: up to five questions share one passage and must
land in the same split.

Reject reasons beyond the schema ones: ``empty_question``, ``no_answer`` (no annotation),
``empty_answer`` (only blank annotations), ``answer_not_in_context``, ``empty_context``,
``answer_truncated`` (the document budget cut the answer out of the passage).

>>> items = list(Cmrc2018Reader("data/cmrc2018_sample.json", negatives=2).read())  # doctest: +SKIP
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dataprep import schema
from dataprep.corpora.docqa.common import DocQAReader, doc_text, pointer_tokens
from dataprep.errors import InputError
from dataprep.io import read_json_document
from dataprep.readers.base import Item
from dataprep.record import Lineage

SCHEMA = "cmrc2018"
_ID_RE = re.compile(r'"id"\s*:\s*"((?:[^"\\]|\\.)*)"')

Problem = tuple[str, str, str]


@dataclass
class _Article:
    index: int
    id: str
    doc: str  # title + context, as shown in the prompt
    context: str


def pick_answer(context: str, answers: list[dict[str, Any]]) -> tuple[str, int] | str:
    """The answer text and its start in ``context``, or a reject reason.

    >>> pick_answer("长江全长6300公里", [{"text": "6300公里", "answer_start": 4},
    ...                                 {"text": "约6300公里", "answer_start": -1}])
    ('6300公里', 4)
    >>> pick_answer("长江", [{"text": "黄河", "answer_start": -1}])
    'answer_not_in_context'
    """
    if not answers:
        return "no_answer"
    found: list[tuple[str, int]] = []
    for ann in answers:
        text = ann["text"].strip()
        if not text:
            continue
        hint = ann["answer_start"]
        starts = [m.start() for m in re.finditer(re.escape(text), context)]
        if starts:
            # The nearest occurrence to the annotated start: the same span, even when the
            # annotation is off by a character or two.
            found.append((text, min(starts, key=lambda s: (abs(s - hint), s))))
    if not found:
        blank = all(not a["text"].strip() for a in answers)
        return "empty_answer" if blank else "answer_not_in_context"
    votes = Counter(t for t, _ in found)
    best = max(votes.values())
    return next((t, s) for t, s in found if votes[t] == best)


def id_lines(path: Any) -> dict[str, int]:
    """First line of each ``"id": "..."`` in the file: a location for messages (the JSON parser
    keeps none)."""
    out: dict[str, int] = {}
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if b'"id"' not in raw:
                continue
            for m in _ID_RE.finditer(raw.decode("utf-8", "replace")):
                out.setdefault(m.group(1), lineno)
    return out


class Cmrc2018Reader(DocQAReader):
    """Reads a CMRC 2018 SQuAD-style JSON file (dev, trial or train). Options: those of
    :class:`~dataprep.corpora.docqa.common.DocQAReader` (``negatives`` default 3 other articles)."""

    name = "cmrc2018"
    input_schema = SCHEMA

    def read(self) -> Iterator[Item]:
        value, _ = read_json_document(self.path)
        problems = schema.check(SCHEMA, value)
        top = [p for p in problems if len(pointer_tokens(p[1])) < 2]
        if top or not isinstance(value, dict):
            reason, pointer, message = top[0]
            raise InputError(f"{self.source}: {pointer}: {message} (expected the SQuAD-style "
                             '{"version", "data": [articles]} layout) [' + reason + "]")
        by_scope = self._scope_problems(problems)
        lines = id_lines(self.path)
        data = value["data"]
        pool = self._pool(data, by_scope)
        for i, art in enumerate(data):
            art_probs = by_scope.get(("a", i), [])
            paragraphs = art.get("paragraphs") if isinstance(art, dict) else None
            art_id = art.get("id") if isinstance(art, dict) else None
            art_item = art_id if isinstance(art_id, str) and art_id else f"data[{i}]"
            if not isinstance(paragraphs, list):
                yield self.problems_reject(art_probs, lines.get(art_item), value=art,
                                           item=art_item)
                continue
            for j, para in enumerate(paragraphs):
                qas = para.get("qas") if isinstance(para, dict) else None
                para_probs = art_probs or by_scope.get(("p", i, j), [])
                if not isinstance(qas, list):
                    yield self.problems_reject(para_probs, lines.get(art_item), value=para,
                                               item=f"{art_item}.paragraphs[{j}]")
                    continue
                for k, qa in enumerate(qas):
                    qid = qa.get("id") if isinstance(qa, dict) else None
                    item = (qid if isinstance(qid, str) and qid
                            else f"{art_item}.paragraphs[{j}].qas[{k}]")
                    probs = para_probs or by_scope.get(("q", i, j, k), [])
                    if probs:
                        yield self.problems_reject(probs, lines.get(item), value=qa, item=item)
                        continue
                    yield self.convert(qa, para, art, pool, lines.get(item), item, i)

    @staticmethod
    def _scope_problems(problems: list[Problem]) -> dict[tuple[Any, ...], list[Problem]]:
        """Group schema problems by the article (``a``), paragraph (``p``) or question (``q``)
        they belong to, from their JSON pointers."""
        out: dict[tuple[Any, ...], list[Problem]] = {}
        for prob in problems:
            t = pointer_tokens(prob[1])
            if len(t) >= 6 and t[2] == "paragraphs" and t[4] == "qas":
                key: tuple[Any, ...] = ("q", int(t[1]), int(t[3]), int(t[5]))
            elif len(t) >= 4 and t[2] == "paragraphs":
                key = ("p", int(t[1]), int(t[3]))
            else:
                key = ("a", int(t[1]))
            out.setdefault(key, []).append(prob)
        return out

    @staticmethod
    def _pool(data: list[Any], by_scope: dict[tuple[Any, ...], list[Problem]]) -> list[_Article]:
        """Every usable passage, the distractor pool (in file order, so the draw is stable)."""
        pool = []
        for i, art in enumerate(data):
            if ("a", i) in by_scope:
                continue
            for j, para in enumerate(art["paragraphs"]):
                if ("p", i, j) in by_scope or not para["context"].strip():
                    continue
                pool.append(_Article(i, art["id"], doc_text(art.get("title"), para["context"]),
                                     para["context"]))
        return pool

    def convert(self, qa: dict[str, Any], para: dict[str, Any], art: dict[str, Any],
                pool: list[_Article], line: int | None, qid: str, art_index: int) -> Item:
        context = para["context"]
        if not context.strip():
            return self.make_reject("empty_context", f"{qid}: the paragraph's context is empty: "
                                    "expected the passage text", line, value=qa, item=qid)
        rej = self.text_problem(f"{qid}/question", qa["question"], "empty_question", "question",
                                line, record=qa, item=qid)
        if rej is not None:
            return rej
        picked = pick_answer(context, qa["answers"])
        if isinstance(picked, str):
            texts = [a["text"] for a in qa["answers"]]
            expected = {"no_answer": "at least one answer annotation",
                        "empty_answer": "a non-empty answer annotation",
                        "answer_not_in_context": "an annotation whose text occurs in the "
                        "context"}[picked]
            return self.make_reject(picked, f"{qid}/answers: expected {expected}, found "
                                    f"{texts!r}", line, value=qa, item=qid)
        answer, start = picked
        positive = doc_text(art.get("title"), context)
        negatives = self.draw_distractors(pool, art_index, positive, answer, qid)
        conv = self.build(
            key=qid, question=qa["question"].strip(), answer=answer, positives=[positive],
            negatives=negatives, source_id=qid,
            lineage=Lineage(source=self.source, line=line,
                            group_id=f"{self.id_prefix}:{art['id']}", item=qid),
            extra_meta={"article_id": art["id"], "answer_start": start})
        if answer not in conv.meta["positive_docs"][0]:
            return self.make_reject(
                "answer_truncated", f"{qid}: the answer {answer!r} (context position {start}) "
                f"is cut off by the document budget (max_doc_chars={self.max_doc_chars}, "
                f"max_total_chars={self.max_total_chars}); raise them", line, value=qa,
                item=qid)
        return conv

    def draw_distractors(self, pool: list[_Article], art_index: int, positive: str,
                         answer: str, qid: str) -> list[str]:
        """Up to ``negatives`` passages of other articles, drawn by ``seed`` and the question id.

        Random draws until enough pass the filter, rather than shuffling the whole pool: the pool
        has one entry per article and this runs once per question."""
        k = len(pool) if self.negatives is None else self.negatives
        rng = random.Random(f"negatives:{self.seed}:{qid}")
        chosen: list[str] = []
        tried: set[int] = set()
        while len(chosen) < k and len(tried) < len(pool):
            n = rng.randrange(len(pool))
            if n in tried:
                continue
            tried.add(n)
            cand = pool[n]
            if cand.index == art_index or cand.doc == positive or answer in cand.context:
                continue
            chosen.append(cand.doc)
        return chosen
