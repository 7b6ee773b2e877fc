"""Contrastive and unanswerable doc-QA samples built from real CMRC 2018 and DuReader records."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from dataprep import schema
from dataprep.corpora.docqa import ops as docqa_ops
from dataprep.corpora.docqa.cmrc2018 import Cmrc2018Reader
from dataprep.corpora.docqa.common import (
    DOC_HEADER,
    UNANSWERABLE_ANSWER,
    format_documents,
    prompt_documents,
)
from dataprep.corpora.docqa.dureader import DuReaderReader
from dataprep.corpora.docqa.ops import DocBudget, DocPool
from dataprep.record import Conversation
from dataprep.tokenizer import load_tokenizer
from tests.dataprep.conftest import conversations


@pytest.fixture(scope="module")
def docqa_records(corpora: Path) -> list[Conversation]:
    cmrc = conversations(list(Cmrc2018Reader(corpora / "cmrc2018" / "cmrc2018_dev.json").read()))
    dureader = conversations(list(
        DuReaderReader(corpora / "dureader-2.0-demo" / "search.train.json").read()))
    return cmrc[:400] + dureader


@pytest.fixture(scope="module")
def pool(docqa_records: list[Conversation]) -> DocPool:
    p = DocPool()
    for rec in docqa_records:
        p.add(rec.id, docqa_ops.docs_of(rec))
    return p


def prompt_docs(conv: Conversation) -> list[str]:
    """The documents as they appear in the prompt, rebuilt from meta; checked against the text."""
    docs = prompt_documents(conv.meta)
    assert format_documents(docs) in conv.messages[0].content
    return docs


def test_contrastive_shuffles_the_positive_among_k_negatives(
        docqa_records: list[Conversation], pool: DocPool) -> None:
    budget = DocBudget(max_doc_chars=1500, max_total_chars=6000)
    positions: Counter[int] = Counter()
    borrowed = 0
    for rec in docqa_records:
        child, outcome = docqa_ops.contrastive(rec, pool=pool, k=5, budget=budget, seed=7)
        assert child is not None, outcome
        assert child.id == f"{rec.id}~docqa_contrastive"
        assert child.lineage.parent_id == rec.id
        assert child.lineage.group_id == rec.lineage.group_id
        assert schema.output_problems(child.to_chatglm3()) == []
        assert child.label == rec.label and child.messages[1].content == rec.meta["answer"]
        docs = prompt_docs(child)
        pos = child.meta["positive_docs"]
        negs = child.meta["negative_docs"]
        # every positive, verbatim (or a prefix when the budget cut it), in prompt order
        assert len(pos) == len(rec.meta["positive_docs"])
        assert all(p and any(o.startswith(p) for o in rec.meta["positive_docs"]) for p in pos)
        assert 1 <= len(negs) <= 5 and len(set(negs)) == len(negs)
        assert not set(negs) & set(pos)
        assert all(len(d) <= 1500 for d in docs) and sum(map(len, docs)) <= 6000
        if isinstance(child.meta["positive_index"], int):
            positions[child.meta["positive_index"]] += 1
        own = {d.strip() for d in docqa_ops.docs_of(rec)}
        borrowed += sum(d.strip() not in own for d in negs)
    # the positive is not always first, and records do get documents of other records
    assert len(positions) >= 4 and max(positions.values()) < 0.5 * sum(positions.values())
    assert borrowed > 100


def test_contrastive_respects_a_tight_character_budget(docqa_records: list[Conversation],
                                                       pool: DocPool) -> None:
    budget = DocBudget(max_doc_chars=300, max_total_chars=700)
    for rec in docqa_records[:100]:
        child, outcome = docqa_ops.contrastive(rec, pool=pool, k=5, budget=budget, seed=1)
        if child is None:
            assert outcome == "skipped:no_negatives"
            continue
        docs = prompt_docs(child)
        assert all(len(d) <= 300 for d in docs) and sum(map(len, docs)) <= 700


def test_contrastive_token_budget_with_the_real_tokenizer(
        docqa_records: list[Conversation], pool: DocPool, tokenizer_dir: Path) -> None:
    tok = load_tokenizer(tokenizer_dir)
    count = docqa_ops.token_counter(tok)
    budget = DocBudget(max_doc_chars=1500, max_total_chars=6000, max_tokens=900)
    fewer = 0
    for rec in docqa_records[:60]:
        child, outcome = docqa_ops.contrastive(rec, pool=pool, k=5, budget=budget, seed=3,
                                               count_tokens=count)
        if child is None:
            assert outcome in ("skipped:over_token_budget", "skipped:no_negatives")
            continue
        assert count(child) <= 900
        fewer += len(child.meta["negative_docs"]) < 5
    assert fewer > 0  # the budget really bit
    tiny = DocBudget(max_tokens=10)
    child, outcome = docqa_ops.contrastive(docqa_records[0], pool=pool, k=5, budget=tiny, seed=3,
                                           count_tokens=count)
    assert child is None and outcome == "skipped:over_token_budget"


def test_unanswerable_has_negatives_only_and_the_refusal(docqa_records: list[Conversation],
                                                         pool: DocPool) -> None:
    budget = DocBudget()
    made = 0
    for rec in docqa_records:
        child, outcome = docqa_ops.unanswerable(rec, pool=pool, k=3, budget=budget, seed=5)
        assert child is not None, outcome
        made += 1
        assert schema.output_problems(child.to_chatglm3()) == []
        assert child.label == docqa_ops.UNANSWERABLE_LABEL
        assert child.messages[1].content == UNANSWERABLE_ANSWER == child.meta["answer"]
        assert child.meta["positive_docs"] == [] and child.meta["positive_index"] == []
        assert child.meta["original_answer"] == rec.meta["answer"]
        docs = prompt_docs(child)
        assert 1 <= len(docs) <= 3
        prompt = child.messages[0].content
        for p in rec.meta["positive_docs"]:
            assert p.strip() not in prompt
        answer = rec.meta["answer"].strip()
        if len(answer) >= 2:
            assert all(answer not in d for d in docs), rec.id
        assert prompt.count(DOC_HEADER.format(index=1)) == 1
    assert made == len(docqa_records)


def test_custom_refusal(docqa_records: list[Conversation], pool: DocPool) -> None:
    child, _ = docqa_ops.unanswerable(docqa_records[0], pool=pool, k=2, budget=DocBudget(),
                                      seed=5, refusal="文档中没有相关信息。")
    assert child is not None and child.messages[1].content == "文档中没有相关信息。"


def test_pool_never_lends_a_records_own_or_answer_bearing_documents() -> None:
    p = DocPool()
    p.add("a", ["长江全长约6300公里。", "黄河全长约5464公里。"])
    p.add("b", ["长江全长约6300公里。", "珠江是中国第三长河。"])  # duplicate text kept once
    assert len(p) == 3
    got = p.sample(5, key="k", exclude_owner="b", answer="6300公里")
    assert got == ["黄河全长约5464公里。"]
    assert p.sample(5, key="k", exclude_owner="a") == ["珠江是中国第三长河。"]
