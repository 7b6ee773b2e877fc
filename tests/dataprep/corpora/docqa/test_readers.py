"""Doc-QA readers (multidoc_qa, cmrc2018, dureader) on the whole real files, the samples and
deliberately broken input; the shared record shape of dataprep.corpora.docqa.common."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from dataprep import schema
from dataprep.cli import main
from dataprep.config import load_config
from dataprep.convert import convert
from dataprep.corpora.docqa.cmrc2018 import Cmrc2018Reader, pick_answer
from dataprep.corpora.docqa.common import (
    RAG_PROMPT,
    UNANSWERABLE_ANSWER,
    build_docqa_conversation,
    doc_text,
    fit_documents,
    format_documents,
    length_bucket,
    prompt_documents,
    rebuild_with_documents,
    validate_prompt,
)
from dataprep.corpora.docqa.dureader import DuReaderReader, document_pool, document_text, support
from dataprep.corpora.docqa.multidoc_qa import MultiDocQAReader
from dataprep.errors import ConfigError, InputError, StrictModeError
from dataprep.pipeline import Pipeline
from dataprep.record import Conversation, Lineage, Reject
from dataprep.stages.split import assign_splits

META_KEYS = {"question", "answer", "positive_docs", "negative_docs", "positive_index",
             "source_id"}


def split_items(items: list[Any]) -> tuple[list[Conversation], list[Reject]]:
    convs = [i for i in items if isinstance(i, Conversation)]
    rejects = [i for i in items if isinstance(i, Reject)]
    assert len(convs) + len(rejects) == len(items)
    return convs, rejects


def check_contract(conv: Conversation) -> None:
    """The doc-QA record shape others code against."""
    line = conv.to_chatglm3()
    assert schema.output_problems(line) == [], conv.id
    assert "tools" not in line and conv.tools is None
    assert conv.corpus == "docqa"
    assert [m.role for m in conv.messages] == ["user", "assistant"]
    meta = conv.meta
    assert set(meta) >= META_KEYS
    assert isinstance(meta["source_id"], str) and meta["source_id"]
    assert meta["answer"] == conv.messages[1].content and meta["answer"].strip()
    prompt = conv.messages[0].content
    assert prompt.endswith("问题：" + meta["question"])
    # meta alone rebuilds the document block of the prompt, in order.
    docs = prompt_documents(meta)
    assert format_documents(docs) in prompt
    idx = meta["positive_index"]
    positions = [idx] if isinstance(idx, int) else idx
    assert isinstance(idx, int) == (len(meta["positive_docs"]) == 1)
    assert [docs[i] for i in positions] == meta["positive_docs"]
    assert all(d in prompt for d in meta["positive_docs"] + meta["negative_docs"])
    assert conv.label == length_bucket(meta["answer"])
    assert conv.lineage.group_id


# -- real files -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cmrc_path(corpora: Path) -> Path:
    return corpora / "cmrc2018" / "cmrc2018_dev.json"


@pytest.fixture(scope="module")
def cmrc_items(cmrc_path: Path) -> list[Any]:
    return list(Cmrc2018Reader(cmrc_path).read())


@pytest.fixture(scope="module")
def cmrc_raw(cmrc_path: Path) -> dict[str, Any]:
    return json.loads(cmrc_path.read_text(encoding="utf-8"))


def test_cmrc_whole_dev_file(cmrc_items: list[Any], cmrc_raw: dict[str, Any]) -> None:
    articles = cmrc_raw["data"]
    questions = {qa["id"]: (art, para, qa) for art in articles for para in art["paragraphs"]
                 for qa in para["qas"]}
    assert len(articles) == 848 and len(questions) == 3219
    convs, rejects = split_items(cmrc_items)
    # Every dev question has an in-context annotation and none is empty (MANIFEST): no rejects.
    assert len(convs) == 3219 and rejects == []
    assert {c.lineage.item for c in convs} == set(questions)
    doc_to_article = {doc_text(a["title"], a["paragraphs"][0]["context"]): a for a in articles}
    majority_differs = 0
    for c in convs:
        check_contract(c)
        art, para, qa = questions[c.lineage.item]
        ctx = para["context"]
        assert c.lineage.group_id == f"cmrc2018:{art['id']}"
        assert c.meta["source_id"] == qa["id"] and c.meta["article_id"] == art["id"]
        assert c.lineage.line is not None
        # The answer is an in-context annotation, located in the passage.
        answer, start = c.meta["answer"], c.meta["answer_start"]
        assert answer in {a["text"].strip() for a in qa["answers"]}
        assert ctx[start:start + len(answer)] == answer
        texts = [a["text"].strip() for a in qa["answers"] if a["text"].strip() in ctx]
        assert Counter(texts)[answer] == max(Counter(texts).values())
        majority_differs += answer != qa["answers"][0]["text"].strip()
        # The positive is the question's own passage; distractors are whole passages of other
        # articles that do not contain the answer.
        assert c.meta["positive_docs"] == [doc_text(art["title"], ctx)]
        assert len(c.meta["negative_docs"]) == 3
        for neg in c.meta["negative_docs"]:
            other = doc_to_article[neg]
            assert other["id"] != art["id"]
            assert answer not in other["paragraphs"][0]["context"]
    # Once whitespace is stripped (3 questions differ only by a leading space) the first
    # annotation is never outvoted on dev; the vote matters on other files (test_pick_answer).
    assert majority_differs == 0
    # The positive is not always first: positions spread over all four slots.
    positions = Counter(c.meta["positive_index"] for c in convs)
    assert set(positions) == {0, 1, 2, 3} and min(positions.values()) > 600


def test_cmrc_groups_keep_passages_together(cmrc_items: list[Any]) -> None:
    convs, _ = split_items(cmrc_items)
    by_group = Counter(c.lineage.group_id for c in convs)
    assert len(by_group) == 848 and max(by_group.values()) == 5
    assignment = assign_splits(convs, (0.8, 0.1, 0.1), seed=42)
    splits_per_article: dict[str, set[str]] = defaultdict(set)
    for c in convs:
        splits_per_article[c.meta["article_id"]].add(assignment[c.lineage.group_id])
    assert all(len(s) == 1 for s in splits_per_article.values())
    assert set().union(*splits_per_article.values()) == {"train", "dev", "test"}


def test_cmrc_deterministic_under_seed(cmrc_path: Path, cmrc_items: list[Any]) -> None:
    again = list(Cmrc2018Reader(cmrc_path).read())
    assert [(c.to_chatglm3(), c.meta) for c in again] == \
        [(c.to_chatglm3(), c.meta) for c in cmrc_items]
    other = list(Cmrc2018Reader(cmrc_path, seed=7).read())
    changed = sum(a.meta["negative_docs"] != b.meta["negative_docs"]
                  for a, b in zip(other, cmrc_items, strict=True))
    assert changed > 3000  # a new seed draws new distractors for nearly every question
    assert [c.meta["answer"] for c in other] == [c.meta["answer"] for c in cmrc_items]


def test_dureader_whole_train_file(corpora: Path) -> None:
    path = corpora / "dureader-2.0-demo" / "search.train.json"
    raw = [json.loads(x) for x in path.read_text(encoding="utf-8").split("\n") if x.strip()]
    items = list(DuReaderReader(path).read())
    convs, rejects = split_items(items)
    assert len(items) == len(raw) == 100
    # MANIFEST: 4 questions have empty answers and no selected document.
    assert Counter(r.reason for r in rejects) == {"no_answer": 4}
    assert {raw[r.line - 1]["question_id"] for r in rejects} == {6, 91164, 91176, 91181}
    assert all(r.raw and "0 of" in r.message for r in rejects)
    assert len(convs) == 96
    for c in convs:
        check_contract(c)
        rec = raw[c.lineage.line - 1]
        assert c.meta["source_id"] == str(rec["question_id"])
        assert c.lineage.group_id == f"dureader:q{rec['question_id']}"
        # The default answer is the human answer best supported by the positive documents.
        answers = [a.strip() for a in rec["answers"]]
        scores = [support(a, c.meta["positive_docs"]) for a in answers]
        assert c.meta["answer"] == answers[scores.index(max(scores))]
        selected = [document_text(d) for d in rec["documents"] if d["is_selected"]]
        others = [document_text(d) for d in rec["documents"] if not d["is_selected"]]
        assert sorted(c.meta["positive_docs"]) == sorted(selected)
        # Distractors are the question's own non-selected documents (fewer only if the
        # character budget dropped some).
        assert set(c.meta["negative_docs"]) <= set(others)
        assert len(c.meta["negative_docs"]) + c.meta["dropped_negatives"] == len(set(others))
        assert sum(map(len, c.meta["positive_docs"] + c.meta["negative_docs"])) <= 6000
    assert Counter(type(c.meta["positive_index"]).__name__ for c in convs) == \
        {"int": 48, "list": 48}  # 48 questions with one selected document, 48 with two or three


def test_dureader_answer_choice_first(corpora: Path) -> None:
    path = corpora / "dureader-2.0-demo" / "search.train.json"
    raw = [json.loads(x) for x in path.read_text(encoding="utf-8").split("\n") if x.strip()]
    best = {c.id: c for c in DuReaderReader(path).read() if isinstance(c, Conversation)}
    first = [c for c in DuReaderReader(path, answer_choice="first").read()
             if isinstance(c, Conversation)]
    differs = 0
    for c in first:
        assert c.meta["answer"] == raw[c.lineage.line - 1]["answers"][0].strip()
        differs += c.meta["answer"] != best[c.id].meta["answer"]
        assert support(c.meta["answer"], c.meta["positive_docs"]) <= \
            support(best[c.id].meta["answer"], c.meta["positive_docs"])
    assert differs > 0


def test_dureader_test_file_is_unlabeled(corpora: Path) -> None:
    path = corpora / "dureader-2.0-demo" / "search.test.json"
    items = list(DuReaderReader(path).read())
    assert len(items) == 100
    assert Counter(getattr(i, "reason", None) for i in items) == {"unlabeled": 100}
    assert [i.line for i in items] == list(range(1, 101))
    # Its 477 documents remain usable as a distractor pool.
    pool = document_pool(path)
    assert len(pool) == 477 and all(0 < len(d) <= 1500 for d in pool)


def test_multidoc_old_layout_real_record(corpora: Path) -> None:
    path = corpora / "multi-doc-qa-chinese" / "sample_old_format.jsonl"
    raw = json.loads(path.read_text(encoding="utf-8"))
    (conv,) = MultiDocQAReader(path).read()
    check_contract(conv)
    assert conv.meta["question"] == raw["question"] == "哪些女性更容易患上乳腺癌？"
    assert conv.meta["answer"] == raw["answer"]
    pos = raw["positive_doc"][0]
    assert conv.meta["positive_docs"] == [doc_text(pos["title"], pos["content"])]
    negatives = {doc_text(d["title"], d["content"])[:1500] for d in raw["negative_doc"]}
    assert len(conv.meta["negative_docs"]) == 3 and set(conv.meta["negative_docs"]) <= negatives
    (conv5,) = MultiDocQAReader(path, negatives=5, seed=1).read()
    assert len(conv5.meta["negative_docs"]) + conv5.meta["dropped_negatives"] == 5
    assert set(conv5.meta["negative_docs"]) <= negatives


def test_cli_convert_and_validate_real_file(cmrc_path: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cmrc.jsonl"
    assert main(["convert", "--from", "cmrc2018", str(cmrc_path), "--out", str(out)]) == 0
    assert "3219 records, 3219 written" in capsys.readouterr().out
    assert main(["validate", str(out)]) == 0
    assert "3219 lines, 3219 valid, 0 invalid" in capsys.readouterr().err
    first = json.loads(out.read_text(encoding="utf-8").split("\n")[0])
    assert "tools" not in first and first["corpus"] == "docqa"


def test_cli_convert_reports_rejects_and_strict(corpora: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    path = corpora / "dureader-2.0-demo" / "search.train.json"
    out = tmp_path / "du.jsonl"
    assert main(["convert", "--from", "dureader", str(path), "--out", str(out),
                 "--option", "negatives=1"]) == 1
    err = capsys.readouterr().err
    assert err.count("[no_answer]") == 4 and f"{path}:6: /answers" in err
    assert main(["validate", str(out)]) == 0
    assert all(len(json.loads(x)["conversations"][0]["content"].split("【文档")) <= 5
               for x in out.read_text(encoding="utf-8").split("\n") if x)
    assert main(["convert", "--from", "dureader", str(path), "--out", str(out), "--strict"]) == 2
    assert f"{path}:6: /answers: expected at least one non-empty answer" in \
        capsys.readouterr().err


# -- samples and config ---------------------------------------------------------------------------

@pytest.mark.parametrize("reader, name, records, reasons", [
    (MultiDocQAReader, "docqa_multidoc_sample.jsonl", 13, {"empty_question": 1}),
    (MultiDocQAReader, "docqa_multidoc_old_sample.jsonl", 8, {"empty_answer": 1}),
    (Cmrc2018Reader, "cmrc2018_sample.json", 8, {"answer_not_in_context": 1}),
    (DuReaderReader, "dureader_sample.jsonl", 8, {"no_answer": 1}),
])
def test_samples(repo_root: Path, reader: type, name: str, records: int,
                 reasons: dict[str, int]) -> None:
    items = list(reader(repo_root / "data" / name, negatives=2).read())
    convs, rejects = split_items(items)
    assert len(items) == records
    assert Counter(r.reason for r in rejects) == reasons
    for c in convs:
        check_contract(c)


def test_sample_config_runs_with_accounting(repo_root: Path, tmp_path: Path) -> None:
    cfg = load_config(repo_root / "configs" / "docqa.yaml")
    assert cfg.name == "docqa" and len(cfg.inputs) == 4
    manifest = Pipeline(cfg).run(tmp_path / "out", progress=False)
    counts = manifest["counts"]
    assert counts["input"] == 13 + 8 + 8 + 8
    assert counts["rejected"] == {"answer_not_in_context": 1, "empty_answer": 1,
                                  "empty_question": 1, "no_answer": 1}
    # The config also dedups (nothing to remove in the sample) and augments train.
    assert counts["removed"] == {}
    assert counts["train"] + counts["dev"] + counts["test"] == 37 - 4 + counts["added"]
    assert counts["added"] == counts["added_by_stage"]["augment"] > 0
    for split in ("train", "dev", "test"):
        text = (tmp_path / "out" / f"{split}.jsonl").read_text(encoding="utf-8")
        for line in filter(None, text.split("\n")):
            assert schema.output_problems(json.loads(line)) == []


# -- broken input ---------------------------------------------------------------------------------

def _write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _j(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


RAW_GOOD = {"QA": [{"question": "长江有多长？", "answer": "约6300公里"},
                   {"question": "长江流经几个省？", "answer": "11个省级行政区"}],
            "positive_doc": [{"text": "长江全长约6300公里，流经11个省级行政区。"}],
            "negative_doc": [{"text": "黄河全长约5464公里。"}, {"text": "珠江是华南最大的河流。"}]}
OLD_GOOD = {"question": "黄山在哪个省？", "answer": "安徽省",
            "positive_doc": [{"id": 1, "title": "黄山", "content": "黄山位于安徽省南部。", "QA": None}],
            "negative_doc": [{"id": 2, "title": "泰山", "content": "泰山位于山东省。", "QA": None}]}

# (line bytes, [(item, reason) per record of the line; reason None = a conversation])
MULTIDOC_CASES: list[tuple[bytes, list[tuple[str | None, str | None]]]] = [
    (_j(RAW_GOOD), [("qa0", None), ("qa1", None)]),
    (b'{"QA": [{"question": "\xe9\x95\xbf', [(None, "malformed_json")]),
    (_j({**RAW_GOOD, "QA": "长江有多长？"}), [(None, "wrong_type")]),
    (_j({**RAW_GOOD, "QA": []}), [(None, "empty_value")]),
    (_j({**RAW_GOOD, "QA": [RAW_GOOD["QA"][0], {"question": "长江流经几个省？", "answer": None}]}),
     [("qa0", None), ("qa1", "null_value")]),
    (_j({**RAW_GOOD, "QA": [{"question": 3, "answer": "x"}, {"answer": "x"}]}),
     [("qa0", "wrong_type"), ("qa1", "missing_field")]),
    # A line-level problem with enumerable QA pairs: each pair is one rejected record.
    (_j({k: v for k, v in RAW_GOOD.items() if k != "positive_doc"}),
     [("qa0", "missing_field"), ("qa1", "missing_field")]),
    (_j({**RAW_GOOD, "positive_doc": [{"text": "  "}]}),
     [("qa0", "no_positive_doc"), ("qa1", "no_positive_doc")]),
    (_j({**RAW_GOOD, "QA": [{"question": "长江有多长？", "answer": " "}]}), [("qa0", "empty_answer")]),
    (json.dumps(RAW_GOOD, ensure_ascii=False).encode("gbk"), [(None, "undecodable_bytes")]),
    (_j({"text": "既不是新格式也不是旧格式"}), [(None, "missing_field")]),
    (b"[1, 2]", [(None, "wrong_type")]),
    (b"", [(None, "empty_line")]),
    (_j(OLD_GOOD), [(None, None)]),
    (_j({**OLD_GOOD, "answer": 5}), [(None, "wrong_type")]),
    (_j({**OLD_GOOD, "positive_doc": [{"title": "黄山", "content": None}]}), [(None, "null_value")]),
    (_j({**OLD_GOOD, "positive_doc": []}), [(None, "no_positive_doc")]),
    (_j({**OLD_GOOD, "question": "   "}), [(None, "empty_question")]),
    (json.dumps(OLD_GOOD, ensure_ascii=False).encode("gbk"), [(None, "undecodable_bytes")]),
]


def test_multidoc_broken_lines(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "m.jsonl", [b for b, _ in MULTIDOC_CASES])
    items = list(MultiDocQAReader(path).read())
    expected = [(line, item, reason) for line, (_, recs) in enumerate(MULTIDOC_CASES, 1)
                for item, reason in recs]
    got = [(i.lineage.line if isinstance(i, Conversation) else i.line,
            i.lineage.item if isinstance(i, Conversation) else i.item,
            None if isinstance(i, Conversation) else i.reason) for i in items]
    assert got == expected
    for item in items:
        if isinstance(item, Reject):
            assert item.source == str(path) and item.message
            assert item.raw is not None or item.raw_base64 or item.record is not None
        else:
            check_contract(item)
    gbk = [i for i in items if isinstance(i, Reject) and i.reason == "undecodable_bytes"]
    assert all("GBK" in r.message for r in gbk)
    # QA pairs of one line share its documents and its group.
    first, second = items[0], items[1]
    assert first.lineage.group_id == second.lineage.group_id and first.id != second.id


def test_multidoc_layout_option(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "m.jsonl", [_j(RAW_GOOD), _j(OLD_GOOD)])
    reasons = [getattr(i, "reason", None) for i in MultiDocQAReader(path, layout="old").read()]
    assert reasons == ["missing_field", None]
    with pytest.raises(ConfigError, match="'layout': expected one of auto, raw, old"):
        MultiDocQAReader(path, layout="new")


DUREADER_GOOD = {"question_id": 7, "question": "长江有多长", "question_type": "ENTITY",
                 "documents": [{"title": "长江", "paragraphs": ["长江全长约6300公里。"],
                                "is_selected": True, "most_related_para": 0},
                               {"title": "黄河", "paragraphs": ["黄河全长约5464公里。"],
                                "is_selected": False, "most_related_para": 0}],
                 "answers": ["约6300公里"]}


def _du(**changes: Any) -> bytes:
    return _j({**DUREADER_GOOD, **changes})


DUREADER_CASES: list[tuple[bytes, str | None]] = [
    (_du(), None),
    (b'{"question_id": 8, "question": "\xe9\x95\xbf', "malformed_json"),
    (_du(question_id=[8]), "wrong_type"),
    (_du(question=5), "wrong_type"),
    (_du(question=None), "null_value"),
    (_j({k: v for k, v in DUREADER_GOOD.items() if k != "documents"}), "missing_field"),
    (_du(documents=[{"title": "长江", "paragraphs": [1, 2], "is_selected": True}]), "wrong_type"),
    (_du(documents=[{"title": "长江", "paragraphs": ["x"], "is_selected": "yes"}]), "wrong_type"),
    (_du(answers=None), "null_value"),
    (json.dumps(DUREADER_GOOD, ensure_ascii=False).encode("gbk"), "undecodable_bytes"),
    (b'"just a string"', "wrong_type"),
    (b"   ", "empty_line"),
    (_du(question=" "), "empty_question"),
    (_du(answers=["", " "]), "no_answer"),
    (_du(documents=[{**DUREADER_GOOD["documents"][1]}]), "no_positive_doc"),
    (_j({k: v for k, v in DUREADER_GOOD.items() if k != "answers"}), "unlabeled"),
    (_du(question_id="q-9", answers=["约6300公里", "6300公里左右"]), None),
]


def test_dureader_broken_lines(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "d.jsonl", [b for b, _ in DUREADER_CASES])
    items = list(DuReaderReader(path).read())
    assert len(items) == len(DUREADER_CASES)
    for lineno, (item, (_, reason)) in enumerate(zip(items, DUREADER_CASES, strict=True), 1):
        if reason is None:
            assert isinstance(item, Conversation), (lineno, item)
            check_contract(item)
            assert item.lineage.line == lineno
        else:
            assert isinstance(item, Reject) and (item.line, item.reason) == (lineno, reason)
            assert item.source == str(path) and item.message


def test_dureader_strict_convert_stops_at_first_reject(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "d.jsonl", [b for b, _ in DUREADER_CASES])
    with pytest.raises(StrictModeError, match=r"d.jsonl:2: malformed JSON"):
        convert("dureader", path, tmp_path / "o.jsonl", strict=True)
    result = convert("dureader", path, tmp_path / "o.jsonl")
    assert (result.input, result.written) == (len(DUREADER_CASES), 2)


def _cmrc_doc() -> dict[str, Any]:
    def qa(qid: str, question: Any, answers: Any) -> dict[str, Any]:
        return {"question": question, "id": qid, "answers": answers}

    def ans(text: str, start: int) -> dict[str, Any]:
        return {"text": text, "answer_start": start}

    ctx0 = "泰山位于山东省泰安市，主峰玉皇顶海拔1545米。"
    return {"version": "v1.0", "data": [
        {"id": "T_0", "title": "泰山", "paragraphs": [{"id": "T_0", "context": ctx0, "qas": [
            qa("T_0_QUERY_0", "泰山主峰海拔多少米？", [ans("1545米", 19), ans("1545米", 19)]),
            qa("T_0_QUERY_1", None, [ans("泰安市", 5)]),
            qa("T_0_QUERY_2", "  ", [ans("泰安市", 5)]),
            qa("T_0_QUERY_3", "泰山在哪个市？", []),
            qa("T_0_QUERY_4", "泰山在哪个省？", [ans(" ", 0)]),
            qa("T_0_QUERY_5", "泰山有多高？", [ans("1500米", -1)]),
            qa("T_0_QUERY_6", "泰山在哪？", [{"text": "山东"}]),
        ]}]},
        {"id": "T_1", "title": "华山", "paragraphs": "not a list"},
        {"id": "T_2", "title": "衡山", "paragraphs": [{"id": "T_2", "qas": [
            qa("T_2_QUERY_0", "衡山在哪？", [ans("湖南", 0)]),
            qa("T_2_QUERY_1", "衡山多高？", [ans("1300米", 0)])]}]},
        {"id": "T_3", "title": "嵩山", "paragraphs": [{"id": "T_3", "context": "嵩山位于河南省登封市。",
                                                      "qas": [qa("T_3_QUERY_0", "嵩山在哪个省？",
                                                                 [ans("河南省", 4)])]}]},
        {"id": "T_4", "title": "恒山", "paragraphs": [{"id": "T_4", "context": "恒山位于山西省。",
                                                      "qas": {"not": "a list"}}]},
    ]}


CMRC_EXPECTED = [
    ("T_0_QUERY_0", None), ("T_0_QUERY_1", "null_value"), ("T_0_QUERY_2", "empty_question"),
    ("T_0_QUERY_3", "no_answer"), ("T_0_QUERY_4", "empty_answer"),
    ("T_0_QUERY_5", "answer_not_in_context"), ("T_0_QUERY_6", "missing_field"),
    ("T_1", "wrong_type"),  # questions cannot be enumerated: the article is one record
    ("T_2_QUERY_0", "missing_field"), ("T_2_QUERY_1", "missing_field"),  # no context
    ("T_3_QUERY_0", None),
    ("T_4.paragraphs[0]", "wrong_type"),
]


def test_cmrc_broken_structure(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(_cmrc_doc(), ensure_ascii=False, indent=2), encoding="utf-8")
    items = list(Cmrc2018Reader(path, negatives=3).read())
    got = [(i.lineage.item, None) if isinstance(i, Conversation) else (i.item, i.reason)
           for i in items]
    assert got == CMRC_EXPECTED
    lines = path.read_text(encoding="utf-8").split("\n")
    for item in items:
        if isinstance(item, Reject):
            assert item.message and item.record is not None
            # The line points at the question's (or article's) id in the file.
            assert f'"{item.item.split(".")[0]}"' in lines[item.line - 1]
        else:
            check_contract(item)
            # Only the valid passage of another article can be a distractor.
            assert len(item.meta["negative_docs"]) == 1
    with pytest.raises(StrictModeError, match=r"c.json:\d+#T_0_QUERY_1: /data/0/paragraphs/0/"
                       r"qas/1/question: expected string, found null"):
        convert("cmrc2018", path, tmp_path / "o.jsonl", strict=True)


@pytest.mark.parametrize("content, fragment", [
    (b'{"version": "v1.0", "data": [', "cannot read as JSON"),
    (b'{"version": "v1.0", "data": {}}', "/data: expected array, found object"),
    (b'[1, 2]', "/: expected object, found array"),
    ('{"data": []}'.encode("gbk") + b"\xb3\xa4", "cannot read as JSON"),
])
def test_cmrc_unreadable_file_raises(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(InputError, match="bad.json") as exc:
        list(Cmrc2018Reader(path).read())
    assert fragment in str(exc.value)


def test_cmrc_answer_truncated_by_budget(repo_root: Path) -> None:
    items = list(Cmrc2018Reader(repo_root / "data" / "cmrc2018_sample.json",
                                max_doc_chars=40).read())
    reasons = Counter(i.reason for i in items if isinstance(i, Reject))
    assert reasons["answer_truncated"] >= 1
    for c in items:
        if isinstance(c, Conversation):
            assert c.meta["answer"] in c.meta["positive_docs"][0]
            assert all(len(d) <= 40 for d in prompt_documents(c.meta))


@pytest.mark.parametrize("context, answers, expected", [
    ("甲乙丙丁", [{"text": "乙丙", "answer_start": 2}], ("乙丙", 1)),  # start off by one
    ("甲乙甲乙", [{"text": "甲乙", "answer_start": 2}], ("甲乙", 2)),  # nearest occurrence
    ("甲乙丙丁", [{"text": "乙", "answer_start": 1}, {"text": "丙丁", "answer_start": 2},
                 {"text": "丙丁", "answer_start": 2}], ("丙丁", 2)),  # majority wins
    ("甲乙丙丁", [{"text": "乙", "answer_start": 1}, {"text": "丙", "answer_start": 2}],
     ("乙", 1)),  # tie: earliest
    ("甲乙丙丁", [{"text": "戊", "answer_start": -1}], "answer_not_in_context"),
    ("甲乙丙丁", [], "no_answer"),
])
def test_pick_answer(context: str, answers: list[dict[str, Any]], expected: Any) -> None:
    assert pick_answer(context, answers) == expected


# -- shared prompt and record construction --------------------------------------------------------

@pytest.mark.parametrize("template, fragment", [
    ("问题：{question}", "found {documents} 0 time(s)"),
    ("{documents}{documents}{question}", "found {documents} 2 time(s)"),
    ("{documents} {question} {context}", "unknown placeholder(s) {context}"),
    ("{documents} {question} {}", "unknown placeholder(s) {}"),
    ("{documents!r} {question}", "conversion or format spec in {documents!r}"),
    ("{documents} {question} }", "does not parse"),
    (42, "expected a string template, found int"),
])
def test_prompt_template_is_validated(template: Any, fragment: str, repo_root: Path) -> None:
    with pytest.raises(ConfigError, match="reader option 'prompt'") as exc:
        DuReaderReader(repo_root / "data" / "dureader_sample.jsonl", prompt=template)
    assert fragment in str(exc.value)


def test_custom_prompt_and_options(repo_root: Path) -> None:
    path = repo_root / "data" / "dureader_sample.jsonl"
    items = list(DuReaderReader(path, prompt="资料：\n{documents}\n请回答{{简短}}：{question}",
                                shuffle=False, negatives=0).read())
    conv = next(i for i in items if isinstance(i, Conversation))
    assert conv.messages[0].content.startswith("资料：\n【文档1】\n")
    assert "请回答{简短}：" + conv.meta["question"] in conv.messages[0].content
    assert conv.meta["negative_docs"] == [] and conv.meta["positive_index"] == 0
    for bad in ({"negatives": -1}, {"negatives": True}, {"max_doc_chars": 0},
                {"max_total_chars": "6000"}, {"shuffle": "yes"}, {"seed": 1.5},
                {"answer_choice": "longest"}, {"prompt": "{question}"}):
        with pytest.raises(ConfigError, match="reader option"):
            DuReaderReader(path, **bad)


def test_length_bucket_thresholds() -> None:
    assert [length_bucket("字" * n) for n in (1, 10, 11, 50, 51)] == \
        ["short", "short", "medium", "medium", "long"]
    assert length_bucket("  短  ") == "short"


def test_fit_documents_keeps_positives() -> None:
    pos, neg, stats = fit_documents(["P" * 30, "Q" * 30], ["N" * 10, "M" * 50, "O" * 5],
                                    max_doc_chars=40, max_total_chars=50)
    assert pos == ["P" * 25, "Q" * 25] and neg == []
    assert stats == {"truncated_docs": 2, "dropped_negatives": 3}
    pos, neg, stats = fit_documents(["P" * 10], ["N" * 50, "O" * 5], max_doc_chars=40,
                                    max_total_chars=100)
    assert pos == ["P" * 10] and neg == ["N" * 40, "O" * 5]
    assert stats == {"truncated_docs": 1, "dropped_negatives": 0}


def test_build_and_rebuild_for_augmentation() -> None:
    lineage = Lineage(source="s.jsonl", line=3, group_id="g:1")
    conv = build_docqa_conversation(
        conv_id="d:1", question="黄山在哪个省？", answer="安徽省", positive_docs=["黄山位于安徽省。"],
        negative_docs=["泰山位于山东省。", "华山位于陕西省。"], source_id="3", lineage=lineage)
    check_contract(conv)
    assert conv.messages[0].content.startswith(RAG_PROMPT.split("{documents}")[0])
    # Same inputs, same order; the order depends on the seed and source id only.
    orders = {str(build_docqa_conversation(
        conv_id="d:1", question="q", answer="a", positive_docs=["P"], negative_docs=["A", "B"],
        source_id=str(i), lineage=lineage).meta["positive_index"]) for i in range(30)}
    assert orders == {"0", "1", "2"}
    unans = rebuild_with_documents(conv, new_id="d:1:unans", op="unanswerable", positive_docs=[],
                                   negative_docs=conv.meta["negative_docs"],
                                   answer=UNANSWERABLE_ANSWER)
    check_contract(unans)
    assert unans.meta["positive_index"] == [] and unans.meta["positive_docs"] == []
    assert "黄山位于安徽省。" not in unans.messages[0].content
    assert unans.lineage.group_id == "g:1" and unans.lineage.parent_id == "d:1"
    assert unans.lineage.ops == ["unanswerable"] and unans.label == "medium"
    assert conv.meta["answer"] == "安徽省"  # the parent is untouched
    assert validate_prompt(RAG_PROMPT) == RAG_PROMPT


def test_dureader_document_window_keeps_most_related_paragraph() -> None:
    doc = {"title": "标题", "paragraphs": ["甲" * 30, "乙" * 30, "丙" * 30, "丁" * 30],
           "most_related_para": 2}
    assert document_text(doc, 1000) == "标题\n" + "\n".join(doc["paragraphs"])
    # 3 + 30 + 1 + 30 = 64 characters: the related paragraph and the one after it.
    assert document_text(doc, 70) == "标题\n" + "丙" * 30 + "\n" + "丁" * 30
    assert document_text({**doc, "most_related_para": 3}, 70) == "标题\n" + "丙" * 30 + "\n" + "丁" * 30
    assert document_text({**doc, "most_related_para": 99}, 40) == "标题\n" + "甲" * 30
    assert document_text(doc, 10) == "标题\n丙丙丙丙丙丙丙"  # one paragraph too long: a head cut
