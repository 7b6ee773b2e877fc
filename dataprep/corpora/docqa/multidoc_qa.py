"""Multi-Doc-QA-Chinese (yuyijiong/Multi-Doc-QA-Chinese), both of its JSON Lines layouts.

- raw layout ``{"QA": [{"question", "answer"}], "positive_doc": [{"text"}], "negative_doc":
  [{"text"}]}``: several QA pairs over one document set. **One input record = one QA pair**
  (the contract is one question and one answer per sample, and a multi-turn dialog would put
  all questions after one document block, which is not how a RAG model is queried). Each QA pair
  gets every positive document of its line and up to ``negatives`` of the line's negatives.
  Rule for counting: a line whose ``QA`` is a non-empty array counts ``len(QA)`` records, even
  when the problem is elsewhere on the line (each QA pair is then rejected with the line's
  reason); any other line (malformed JSON, not an object, ``QA`` missing/empty/not an array)
  counts one record.
- old layout ``{"question", "answer", "positive_doc": [{title, content, ...}], "negative_doc":
  [...]}`` (before 2023-12-04): one record per line.

``layout: auto`` (default) picks the layout per line by its keys: ``QA`` means raw,
``question`` means old. Answers are free-form (not spans), so they are not checked against the
documents. Reject reasons beyond the schema ones: ``empty_question``, ``empty_answer``,
``no_positive_doc``, ``unknown_layout``.

>>> items = list(MultiDocQAReader("data/docqa_multidoc_sample.jsonl").read())  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from dataprep import schema
from dataprep.corpora.docqa.common import DocQAReader, doc_text, pick_negatives, pointer_tokens
from dataprep.errors import ConfigError
from dataprep.io import iter_jsonl
from dataprep.readers.base import Item
from dataprep.record import Lineage

LAYOUTS = ("auto", "raw", "old")
RAW_SCHEMA = "multidoc_qa"
OLD_SCHEMA = "multidoc_qa_old"


class MultiDocQAReader(DocQAReader):
    """Options: ``layout`` (``auto``, ``raw`` or ``old``) plus the doc-QA options of
    :class:`~dataprep.corpora.docqa.common.DocQAReader` (``negatives`` default 3, drawn from the line's
    own ``negative_doc`` by the seed)."""

    name = "multidoc_qa"
    input_schema = None  # chosen per line: multidoc_qa (raw) or multidoc_qa_old

    def configure(self, layout: str = "auto", **common: Any) -> None:
        if layout not in LAYOUTS:
            raise ConfigError(f"reader option 'layout': expected one of {', '.join(LAYOUTS)}, "
                              f"found {layout!r}")
        self.layout = layout
        super().configure(**common)

    def read(self) -> Iterator[Item]:
        for raw in iter_jsonl(self.path, max_line_bytes=self.max_line_bytes, source=self.source):
            if raw.reject is not None:
                yield raw.reject
                continue
            layout = self.detect(raw.value)
            if layout is None:
                keys = sorted(raw.value) if isinstance(raw.value, dict) else None
                reason, found = (("missing_field", f"keys {keys}") if keys is not None
                                 else ("wrong_type", f"a JSON {type(raw.value).__name__}"))
                yield self.make_reject(
                    reason, "/: expected the raw layout (QA, positive_doc, negative_doc) or the "
                    f"old layout (question, answer, positive_doc, negative_doc), found {found}",
                    raw.line, text=raw.text)
            elif layout == "old":
                yield self.read_old(raw.value, raw.line, raw.text)
            else:
                yield from self.read_raw(raw.value, raw.line, raw.text)

    def detect(self, value: Any) -> str | None:
        """``raw``, ``old`` or None (neither layout's key is there)."""
        if self.layout != "auto":
            return self.layout
        if not isinstance(value, dict):
            return None
        if "QA" in value:
            return "raw"
        if "question" in value:
            return "old"
        return None

    # -- raw layout -----------------------------------------------------------------------------
    def read_raw(self, value: Any, line: int, text: str | None) -> Iterator[Item]:
        problems = schema.check(RAW_SCHEMA, value)
        qa_list = value.get("QA") if isinstance(value, dict) else None
        if not isinstance(qa_list, list) or not qa_list:
            # The QA pairs cannot be enumerated: the whole line is one record.
            yield self.problems_reject(problems, line, text=text)
            return
        per_qa: dict[int, list[tuple[str, str, str]]] = {}
        line_level = []
        for prob in problems:
            tok = pointer_tokens(prob[1])
            if len(tok) >= 2 and tok[0] == "QA" and tok[1].isdigit():
                per_qa.setdefault(int(tok[1]), []).append(prob)
            else:
                line_level.append(prob)
        positives: list[str] = []
        negatives: list[str] = []
        if not line_level:
            positives = [doc_text(None, d["text"]) for d in value["positive_doc"]]
            positives = [d for d in positives if d]
            negatives = [doc_text(None, d["text"]) for d in value.get("negative_doc") or []]
        for k, qa in enumerate(qa_list):
            item = f"qa{k}"
            if line_level or k in per_qa:
                yield self.problems_reject(line_level or per_qa[k], line, text=text, item=item)
                continue
            yield self.convert(qa["question"], qa["answer"], positives, negatives, line,
                               key=f"{line}#{item}", item=item, record=qa,
                               docs_pointer="/positive_doc")

    # -- old layout -----------------------------------------------------------------------------
    def read_old(self, value: Any, line: int, text: str | None) -> Item:
        problems = schema.check(OLD_SCHEMA, value)
        if problems:
            return self.problems_reject(problems, line, text=text)
        positives = [doc_text(d.get("title"), d["content"]) for d in value["positive_doc"]]
        positives = [d for d in positives if d]
        negatives = [doc_text(d.get("title"), d["content"])
                     for d in value.get("negative_doc") or []]
        return self.convert(value["question"], value["answer"], positives, negatives, line,
                            key=line, item=None, record=None, text=text,
                            docs_pointer="/positive_doc")

    # -- shared ---------------------------------------------------------------------------------
    def convert(self, question: str, answer: str, positives: list[str], negatives: list[str],
                line: int, *, key: str | int, item: str | None, record: Any,
                docs_pointer: str, text: str | None = None) -> Item:
        where = f"/QA/{item[2:]}" if item else ""
        rej = (self.text_problem(f"{where}/question", question, "empty_question", "question",
                                 line, text=text, record=record, item=item)
               or self.text_problem(f"{where}/answer", answer, "empty_answer", "answer", line,
                                    text=text, record=record, item=item))
        if rej is not None:
            return rej
        if not positives:
            return self.make_reject("no_positive_doc", f"{docs_pointer}: expected at least one "
                                    "non-empty positive document, found none", line, text=text,
                                    value=record, item=item)
        source_id = f"{self.path.name}:{key}"
        chosen = pick_negatives(negatives, self.negatives, key=f"{self.seed}:{source_id}",
                                exclude=positives)
        # All QA pairs of a line share its documents, so they must share a split.
        group = self.make_id(line)
        return self.build(key=key, question=question.strip(), answer=answer.strip(),
                          positives=positives, negatives=chosen, source_id=source_id,
                          lineage=Lineage(source=self.source, line=line, group_id=group,
                                          item=item))
