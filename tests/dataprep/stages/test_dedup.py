"""The ``dedup`` stage: what it removes, the evidence it keeps, the stats/artifacts contract, and a
real pipeline run over the fine-tuning-lab files whose written output is checked independently."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from itertools import combinations
from pathlib import Path

import pytest

from dataprep.config import config_from_dict
from dataprep.dedup import call_signature, normalize_for_matching, sample_key
from dataprep.errors import ConfigError
from dataprep.pipeline import Pipeline, build_stages
from dataprep.record import Conversation, Lineage, Message
from dataprep.stages.base import RunContext
from dataprep.stages.dedup import Dedup

LAB = "crosswoz-hotel-finetune-lab"
REPORT = ("故障现象：一辆2007年长丰猎豹飞腾越野车，行驶里程27000公里。维修室内灯不亮，更换灯泡后发现四个"
          "转向灯常亮，后雨刮和后喷水常工作，开关不起作用。")


def spo(rid: str, text: str, source: str = "train.jsonl") -> Conversation:
    return Conversation(id=rid, messages=[Message("user", "抽取：" + text),
                                          Message("assistant", "开关_部件故障_不起作用")],
                        lineage=Lineage(source=source, line=1, group_id=rid), corpus="spo",
                        meta={"text": text})


def run(stage: Dedup, recs: list[Conversation], tmp_path: Path) -> tuple[list[Conversation],
                                                                         RunContext]:
    ctx = RunContext(tmp_path)
    return list(stage.run(iter(recs), ctx)), ctx


def input_audit(stage: Dedup) -> dict:
    """The input leakage audit the stage's matching made (before anything was removed)."""
    assert stage.matching.input_leakage is not None
    return stage.matching.input_leakage


def test_removes_exact_and_near_duplicates_with_their_kept_twin(tmp_path: Path) -> None:
    recs = [spo("a", REPORT), spo("b", "上海浦东国际机场附近有哪些评分高的酒店？"),
            spo("c", REPORT.replace("，", ",").replace("2007", "２００７")),
            spo("d", REPORT.replace("维修室内灯", "检修室内灯").replace("常亮", "一直亮")),
            spo("e", "发动机水温高，风扇始终是低速转动，高速档不工作，开空调尤其如此。")]
    out, ctx = run((dedup_stage := Dedup()), recs, tmp_path)
    assert [r.id for r in out] == ["a", "b", "e"]  # input order kept, first of a cluster kept
    rejects = {r.record["id"]: r for r in ctx.rejects}  # type: ignore[index]
    assert {k: (r.reason, r.kept_id, r.kind, r.stage) for k, r in rejects.items()} == {
        "c": ("exact_duplicate", "a", "removed", "dedup"),
        "d": ("near_duplicate", "a", "removed", "dedup")}
    assert "duplicate of a (estimated Jaccard" in rejects["d"].message
    assert ctx.counts.removed == Counter({"exact_duplicate": 1, "near_duplicate": 1})
    stats = dedup_stage.stats
    assert {k: stats[k] for k in ("exact_removed", "near_removed", "clusters", "threshold",
                                  "ngram", "num_perm")} == {
        "exact_removed": 1, "near_removed": 1, "clusters": 1, "threshold": 0.65, "ngram": 4,
        "num_perm": 128}
    (cluster,) = dedup_stage.stats.artifacts["dedup_clusters"]
    assert cluster["kept_id"] == "a" and cluster["kept_text"] == REPORT and cluster["size"] == 3
    assert [(m["id"], m["reason"]) for m in cluster["removed"]] == [
        ("c", "exact_duplicate"), ("d", "near_duplicate")]
    assert cluster["removed"][0]["similarity"] == 1.0
    assert 0.65 <= cluster["removed"][1]["similarity"] < 1.0


def test_settings_change_the_decision(tmp_path: Path) -> None:
    near = REPORT.replace("维修室内灯", "检修室内灯").replace("常亮", "一直亮")
    recs = [spo("a", REPORT), spo("b", near)]
    assert [r.id for r in run(Dedup(threshold=0.95), recs, tmp_path)[0]] == ["a", "b"]
    assert [r.id for r in run(Dedup(near=False), recs, tmp_path)[0]] == ["a", "b"]
    assert [r.id for r in run(Dedup(threshold=0.5, ngram=3, num_perm=64), recs,
                              tmp_path)[0]] == ["a"]


def test_dialogs_match_on_user_turns_and_calls_not_on_answers(tmp_path: Path) -> None:
    def dialog(rid: str, ask: str, upper: int, answer: str) -> Conversation:
        return Conversation(
            id=rid, tools=[{"name": "search_hotels"}], lineage=Lineage("t.jsonl", 1, rid),
            messages=[Message("user", ask), Message("assistant", "我需要使用search_hotels工具来查询酒店"),
                      Message("tool", name="search_hotels",
                              parameters={"price_range_upper": upper}, observation=[]),
                      Message("assistant", answer)])
    recs = [dialog("a", "你好，有价格在500以内的酒店可以订吗", 500, "推荐如家酒店。"),
            dialog("b", "你好，有价格在500以内的酒店可以订吗？", 500, "为您推荐汉庭酒店(北京新国展店)。"),
            dialog("c", "你好，有价格在600以内的酒店可以订吗", 600, "推荐如家酒店。")]
    out, ctx = run(Dedup(), recs, tmp_path)
    # b asks the same with the same call (answers differ: not part of the sample key): removed.
    # c is one character away but makes another call: kept (match_calls, the default).
    assert [r.id for r in out] == ["a", "c"]
    assert ctx.rejects[0].reason == "exact_duplicate"
    out, _ = run(Dedup(match_calls=False), recs, tmp_path)
    assert [r.id for r in out] == ["a"]


def test_input_leakage_is_audited_before_removal(tmp_path: Path) -> None:
    recs = [spo("t1", REPORT, "data/train.jsonl"),
            spo("t2", "上海浦东国际机场附近有哪些评分高的酒店？", "data/train.jsonl"),
            spo("d1", REPORT + "！", "data/dev.jsonl"),
            spo("d2", "发动机水温高，风扇始终是低速转动，高速档不工作。", "data/dev.jsonl"),
            spo("s1", REPORT.replace("维修室内灯", "检修室内灯").replace("常亮", "一直亮"),
                "data/my_test.jsonl")]
    run(stage := Dedup(), recs, tmp_path)
    audit = input_audit(stage)
    assert (audit["leaked"], audit["dev_test"], audit["rate"], audit["exact"]) == (2, 3, 0.6667, 1)
    assert audit["by_source_split"] == {"dev": {"records": 2, "leaked": 1, "rate": 0.5},
                                        "test": {"records": 1, "leaked": 1, "rate": 1.0}}
    assert audit["sources"] == {"dev.jsonl": "dev", "my_test.jsonl": "test", "train.jsonl": "train"}
    assert [(p["id"], p["train_id"], p["kind"]) for p in audit["pairs_examples"]] == [
        ("d1", "t1", "exact"), ("s1", "t1", "near")]
    # The mapping is configurable: call the "my_test" file train and nothing leaks from it.
    run(stage := Dedup(source_splits={"*dev*": "dev", "*": "train"}), recs, tmp_path)
    assert input_audit(stage)["dev_test"] == 2


def test_report_examples_are_capped_and_truncated(tmp_path: Path) -> None:
    long_text = "很长的故障描述" * 60
    recs = [spo(f"r{i}", long_text + ("。" * i)) for i in range(15)]
    recs += [spo(f"x{i}", f"第{i}号完全不同的记录：" + "甲乙丙丁戊己庚辛"[i % 8] * (i + 5))
             for i in range(3)]
    run(stage := Dedup(max_examples=1), recs, tmp_path)
    (cluster,) = stage.stats.artifacts["dedup_clusters"]
    assert cluster["size"] == 15 and len(cluster["removed"]) == 10
    assert len(cluster["kept_text"]) == 200 and cluster["kept_text"].endswith("…")


def test_bad_options_fail_with_a_message() -> None:
    with pytest.raises(ConfigError, match="matching.fields must be one of auto, user"):
        Dedup(fields="users")
    with pytest.raises(ConfigError, match="threshold must be in"):
        Dedup(threshold=0)
    with pytest.raises(ConfigError, match="source_splits must map file-name globs"):
        Dedup(source_splits={"*dev*": "validation"})
    with pytest.raises(ConfigError, match=r"stage 'dedup': unknown option 'treshold'; valid: near"):
        build_stages([{"name": "dedup", "treshold": 0.8}, {"name": "split"}, {"name": "write"}])


# -- the real fine-tuning-lab files, end to end --------------------------------------------------
def _written(out: Path, split: str) -> list[dict]:
    text = (out / f"{split}.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.split("\n") if line]


def test_the_writer_rejects_lines_whose_fields_change_shape(corpora: Path, tmp_path: Path) -> None:
    """The generic ChatGLM3 reader does not normalise the lab's observations: some carry
    ``facilities`` as a string among lists (96 in this file). Those lines are rejected (not the
    run), and the split loads with datasets."""
    import datasets

    cfg = config_from_dict({"name": "lab", "seed": 42, "inputs": [
        {"reader": "chatglm3", "path": str(corpora / LAB / "train.chatglm3.jsonl")}],
        "stages": [{"name": "split", "ratios": [1.0, 0.0, 0.0]}, "write"]})
    manifest = Pipeline(cfg).run(tmp_path, progress=False)
    rejects = [json.loads(x) for x in (tmp_path / "rejects.jsonl").read_text(
        encoding="utf-8").splitlines()]
    shape = [r for r in rejects if r["reason"] == "inconsistent_shape"]
    assert manifest["counts"]["rejected"] == {"inconsistent_shape": len(shape)} and len(shape) > 50
    assert all(r["stage"] == "write" and "/facilities: expected array (as in the train split's "
               "earlier lines), found string" in r["message"] for r in shape)
    loaded = datasets.load_dataset("json", data_files=str(tmp_path / "train.jsonl"),
                                   split="train", cache_dir=str(tmp_path / "hf"))
    assert loaded.num_rows == manifest["counts"]["train"]


def test_lab_pipeline_finds_duplicates_and_leaks_and_writes_none(corpora: Path,
                                                                  tmp_path: Path) -> None:
    lab = corpora / LAB
    # The generic ChatGLM3 reader keeps the files as the lab ships them (samples ending with a
    # tool call included), so the audit sees everything the lab's own split contains.
    cfg = config_from_dict({"name": "lab", "seed": 42, "inputs": [
        {"reader": "chatglm3", "path": str(lab / name), "options": {"unanswered_tool_call": "keep"}}
        for name in ("train.chatglm3.jsonl", "dev.chatglm3.jsonl")],
        # The generic reader does not normalise the lab's observations (172 carry facilities
        # as a string), so the splits mix shapes: the writer refuses that unless told not to.
        "stages": ["dedup", "split", {"name": "write", "check_schema": False}]})
    manifest = Pipeline(cfg).run(tmp_path, progress=False)
    stats = manifest["stage_stats"]["dedup"]
    assert stats["records_in"] == 1803
    assert stats["exact_copies"] == 27  # 23 inside train, 4 dev records copy train ones
    assert stats["exact_removed"] >= 19 and stats["near_removed"] > 50
    leak_in = manifest["artifacts"]["leakage"]["input"]
    # 24 of 201 (25 with datasketch's affine32 signatures, which estimate ~1 point high).
    assert (leak_in["leaked"], leak_in["dev_test"], leak_in["exact"]) == (24, 201, 4)
    assert leak_in["rate"] == pytest.approx(0.1194)
    leak_out = manifest["artifacts"]["leakage"]["output"]
    assert (leak_out["rate"], leak_out["leaked"], leak_out["dev_test_pairs"]) == (0.0, 0, 0)

    rejects = [json.loads(line) for line in
               (tmp_path / "rejects.jsonl").read_text(encoding="utf-8").split("\n") if line]
    dups = [r for r in rejects if r["reason"] in ("exact_duplicate", "near_duplicate")]
    assert len(dups) == stats["exact_removed"] + stats["near_removed"]
    splits = {s: _written(tmp_path, s) for s in ("train", "dev", "test")}
    written_ids = {r["id"] for rows in splits.values() for r in rows}
    rejected_ids = {r["record"]["id"] for r in rejects if r.get("record")}
    for r in dups:
        assert r["stage"] == "dedup" and r["kind"] == "removed"
        # The kept twin is written, or was itself rejected later by 'write' (and is in rejects).
        assert r["kept_id"] in written_ids or r["kept_id"] in rejected_ids
        assert r["record"]["id"] not in written_ids

    # Independent check of the output: raw bytes first, then normalised keys, then exact Jaccard.
    def conv_of(row: dict) -> Conversation:
        return Conversation.from_chatglm3(row)

    where: dict[str, str] = {}
    for split, rows in splits.items():
        for row in rows:
            digest = hashlib.sha256(json.dumps(row["conversations"], sort_keys=True,
                                               ensure_ascii=False).encode()).hexdigest()
            assert digest not in where, f"{row['id']} duplicates a record in {where.get(digest)}"
            where[digest] = split
    keys = {s: [(sample_key(conv_of(r)), call_signature(conv_of(r))) for r in rows]
            for s, rows in splits.items()}
    norm = Counter(normalize_for_matching(k) for rows in keys.values() for k, _ in rows)
    assert max(norm.values()) == 1  # no exact duplicate at the normalised-key level either

    def grams(key: str) -> set[str]:  # plain string 4-grams: no MinHash, no LSH
        t = normalize_for_matching(key)
        return {t[i:i + 4] for i in range(max(1, len(t) - 3))}

    sets = {s: [(grams(k), g) for k, g in rows] for s, rows in keys.items()}
    worst = 0.0
    for held in ("dev", "test"):
        for (a, ga), (b, gb) in ((x, y) for x in sets[held] for y in sets["train"]):
            if ga == gb:
                worst = max(worst, len(a & b) / len(a | b))
    for (a, ga), (b, gb) in combinations(sets["dev"] + sets["test"], 2):
        if ga == gb:
            worst = max(worst, len(a & b) / len(a | b))
    # Clear near duplicates (exact Jaccard 0.8, well above the 0.65 threshold) would be leaks.
    assert worst < 0.8


def test_hotel_reader_pipeline_still_finds_leaks_and_writes_none(corpora: Path, hotel_db_path: Path,
                                                                  tmp_path: Path) -> None:
    # The hotel readers keep every sample (those ending with a call too); matching on user turns
    # (the call guard keeps different calls apart), as configs/real/hotel_lab.yaml does.
    lab = corpora / LAB
    cfg = config_from_dict({"name": "hotel", "seed": 42, "hotel_db": str(hotel_db_path),
                            "matching": {"fields": "user"},
                            "inputs": [{"reader": "lab_chatglm3", "path": str(lab / name)}
                                       for name in ("train.chatglm3.jsonl", "dev.chatglm3.jsonl")],
                            "stages": ["dedup", "split", "write"]})
    manifest = Pipeline(cfg).run(tmp_path, progress=False)
    stats = manifest["stage_stats"]["dedup"]
    assert stats["exact_removed"] + stats["near_removed"] == 43
    leak = manifest["artifacts"]["leakage"]
    assert (leak["input"]["leaked"], leak["input"]["dev_test"]) == (6, 201)
    assert leak["output"]["leaked"] == 0 and leak["output"]["dev_test_pairs"] == 0
    where: dict[str, str] = {}
    for split in ("train", "dev", "test"):
        for row in _written(tmp_path, split):
            key = normalize_for_matching(sample_key(Conversation.from_chatglm3(row)))
            assert key not in where, (row["id"], where[key], split)
            where[key] = split
