"""``split``: the group-aware stratified assignment, and the decontamination that moves duplicate
clusters spanning splits into one split so that the output leakage is 0."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import pytest

from dataprep.dedup import normalize_for_matching, sample_key
from dataprep.errors import ConfigError
from dataprep.readers.chatglm3 import ChatGLM3Reader
from dataprep.record import Conversation, Lineage, Message
from dataprep.resources import Resources
from dataprep.stages.base import RunContext
from dataprep.stages.dedup import Dedup
from dataprep.stages.split import Split, assign_splits, decontaminate, output_leakage

LAB = "crosswoz-hotel-finetune-lab"
REPORT = ("故障现象：一辆2007年长丰猎豹飞腾越野车，行驶里程27000公里。维修室内灯不亮，更换灯泡后发现四个"
          "转向灯常亮，后雨刮和后喷水常工作，开关不起作用。")
HOTEL = "你好，请帮我找一家位于北京东城区、提供早餐服务和接机服务、评分在4.5分以上的豪华型酒店，谢谢。"
FAULT = "发动机水温高，风扇始终是低速转动，高速档不工作，开空调尤其如此，检查发现节温器卡滞。"


def rec(rid: str, text: str, group: str | None = None, label: str | None = None,
        source: str = "data.jsonl") -> Conversation:
    return Conversation(id=rid, messages=[Message("user", text), Message("assistant", "好的")],
                        lineage=Lineage(source=source, line=1, group_id=group or rid),
                        label=label, meta={"text": text})


def distinct(i: int) -> str:
    # Texts that share no 4-gram with each other: digits spelled out differ in every window.
    return f"记录{i:05d}号：" + "".join("零一二三四五六七八九"[int(c)] for c in f"{i * 7919:08d}") * 3


# -- the assignment (unchanged behaviour) --------------------------------------------------------
def test_assignment_keeps_groups_together_and_is_order_independent() -> None:
    recs = [rec(f"r{i}", distinct(i), group=f"g{i // 3}", label="ab"[i % 2]) for i in range(300)]
    a = assign_splits(recs, (0.8, 0.1, 0.1), seed=7)
    assert a == assign_splits(list(reversed(recs)), (0.8, 0.1, 0.1), seed=7)
    assert set(a) == {f"g{i}" for i in range(100)}
    sizes = Counter(a[r.lineage.group_id] for r in recs)
    assert sizes["train"] == 240 and sizes["dev"] == 30 and sizes["test"] == 30
    assert a != assign_splits(recs, (0.8, 0.1, 0.1), seed=8)


def test_without_decontamination_the_stage_is_the_plain_assignment(tmp_path: Path) -> None:
    recs = [rec(f"r{i}", distinct(i % 50)) for i in range(100)]  # every text twice
    ctx = RunContext(tmp_path, seed=3)
    out = list((split_stage := Split(decontaminate=False)).run(iter(recs), ctx))
    expected = assign_splits(recs, (0.8, 0.1, 0.1), seed=3)
    assert [r.split for r in out] == [expected[r.lineage.group_id] for r in recs]
    assert "decontamination" not in split_stage.stats
    # ... and such a random split leaks: the stage still reports it, and so does a direct audit.
    reported = split_stage.stats.artifacts["leakage"]["output"]
    assert reported["leaked"] > 0 and reported["moved_records"] == 0
    assert output_leakage(out, [sample_key(r) for r in out])["leaked"] == reported["leaked"]


# -- decontamination -----------------------------------------------------------------------------
def test_clusters_move_whole_to_the_majority_split_honouring_groups() -> None:
    near = REPORT.replace("维修室内灯", "检修室内灯").replace("常亮", "一直亮")
    recs = [
        rec("x0", REPORT, "g0"), rec("x0b", distinct(1), "g0"),      # g0: train, 2 records
        rec("x1", near, "g1"), rec("x2", REPORT + "！", "g2"),        # dev, dev, dev
        rec("x3", REPORT.replace("，", ","), "g3"),
        rec("y1", HOTEL, "g4"), rec("y2", HOTEL.replace("，谢谢", ""), "g5"),  # dev, test: tie
        rec("z1", FAULT, "g6"), rec("z2", FAULT + "。", "g7"),        # train, test: tie
        rec("w1", distinct(2), "g8"), rec("w2", distinct(2) + "。", "g9"),  # test, train ...
        rec("w3", distinct(3), "g9"), rec("w4", distinct(3) + "！", "g11"),  # ... g9 drags g11
        rec("solo", distinct(4), "g12"),
    ]
    assignment = {"g0": "train", "g1": "dev", "g2": "dev", "g3": "dev", "g4": "dev", "g5": "test",
                  "g6": "train", "g7": "test", "g8": "test", "g9": "train", "g11": "dev",
                  "g12": "test"}
    moves = decontaminate(recs, assignment, [sample_key(r) for r in recs])
    assert assignment == {"g0": "dev", "g1": "dev", "g2": "dev", "g3": "dev",  # 3 dev vs 2 train
                          "g4": "dev", "g5": "dev",                 # tie dev/test -> dev
                          "g6": "train", "g7": "train",             # tie train/test -> train
                          "g8": "train", "g9": "train", "g11": "train",  # 2 train vs 1 + 1
                          "g12": "test"}
    assert moves["moved_clusters"] == 4
    assert moves["moved_records"] == 2 + 1 + 1 + 2  # x0+x0b, y2, z2, w1+w4
    for r in recs:
        r.split = assignment[r.lineage.group_id]
    audit = output_leakage(recs, [sample_key(r) for r in recs])
    assert (audit["leaked"], audit["dev_test_pairs"], audit["rate"]) == (0, 0, 0.0)


def test_stage_reports_moves_and_zero_output_leakage(tmp_path: Path) -> None:
    # 60 texts, each three times in its own group (a random split scatters most triples), and
    # 420 distinct records.
    recs = [rec(f"r{i}-{k}", distinct(i) + "。" * k, label="ab"[i % 2], source=src)
            for i in range(60) for k, src in enumerate(("train.jsonl", "train.jsonl", "dev.jsonl"))]
    recs += [rec(f"s{i}", distinct(i), label="ab"[i % 2], source="train.jsonl")
             for i in range(1000, 1420)]
    ctx = RunContext(tmp_path, seed=1)
    out = list((split_stage := Split()).run(iter(recs), ctx))
    by_text = defaultdict(set)
    for r in out[:180]:
        by_text[r.id.split("-")[0]].add(r.split)
    assert all(len(s) == 1 for s in by_text.values())
    decon = split_stage.stats["decontamination"]
    assert decon["moved_records"] > 20 and decon["moved_clusters"] > 10
    # Rebalancing moved distinct records back: 8:1:1 within one record, per label too.
    assert decon["rebalanced_records"] > 10
    assert split_stage.stats["records"] == {"train": 480, "dev": 60, "test": 60}
    per_label = Counter((r.split, r.label) for r in out)
    assert all(abs(per_label[("dev", lab)] - 30) <= 3 for lab in "ab")
    leakage = split_stage.stats.artifacts["leakage"]
    assert leakage["output"]["rate"] == 0.0 and leakage["output"]["leaked"] == 0
    assert leakage["output"]["moved_records"] == decon["moved_records"]
    # No dedup stage ran: split audited its own input (dev.jsonl copies of train.jsonl texts).
    assert (leakage["input"]["leaked"], leakage["input"]["dev_test"]) == (60, 60)
    # Without rebalancing the moves pull records into train.
    ctx = RunContext(tmp_path, seed=1)
    list((split_stage := Split(rebalance=False)).run(iter(recs), ctx))
    assert split_stage.stats["records"]["train"] > 490


def test_input_audit_of_an_earlier_dedup_stage_is_kept(tmp_path: Path) -> None:
    recs = [rec("t", REPORT, source="train.jsonl"), rec("d", REPORT + "。", source="dev.jsonl"),
            rec("o", HOTEL, source="dev.jsonl")]
    ctx = RunContext(tmp_path)
    shared = Resources()  # one matching for both, as the pipeline builds it
    split = Split(resources=shared)
    out = list(split.run(Dedup(resources=shared).run(iter(recs), ctx), ctx))
    assert [r.id for r in out] == ["t", "o"]
    leakage = split.stats.artifacts["leakage"]
    assert leakage["input"]["leaked"] == 1  # measured before 'd' was removed
    assert leakage["output"]["leaked"] == 0
    # split reused dedup's search: the survivors of dedup have no pair among them.
    assert split.stats["matching_reused"] is True


def test_bad_options_fail_with_a_message() -> None:
    with pytest.raises(ConfigError, match="split.ratios must be three non-negative numbers"):
        Split(ratios=[0.8, 0.2])
    with pytest.raises(ConfigError, match=r"stage 'split': unknown option 'ratio'; valid: ratios, "):
        Split(ratio=[0.8, 0.1, 0.1])
    # Matching is configured once per run, not per stage.
    with pytest.raises(ConfigError, match="unknown option 'threshold'.*top-level 'matching:'"):
        Split(threshold=0.7)


# -- the real fine-tuning-lab files --------------------------------------------------------------
def test_lab_split_alone_moves_the_leaks_into_one_split(corpora: Path, tmp_path: Path) -> None:
    recs = [item for name in ("train.chatglm3.jsonl", "dev.chatglm3.jsonl")
            for item in ChatGLM3Reader(corpora / LAB / name, unanswered_tool_call="keep").read()]
    assert len(recs) == 1803 and all(isinstance(r, Conversation) for r in recs)
    ctx = RunContext(tmp_path, seed=42)
    out = list((split := Split()).run(iter(recs), ctx))
    leakage = split.stats.artifacts["leakage"]
    assert (leakage["input"]["leaked"], leakage["input"]["dev_test"]) == (24, 201)
    assert leakage["output"]["leaked"] == 0 and leakage["output"]["dev_test_pairs"] == 0
    assert leakage["output"]["moved_records"] > 10
    # Independent exact check: no normalised key in two splits.
    where: dict[str, set[str]] = defaultdict(set)
    for r in out:
        where[normalize_for_matching(sample_key(r))].add(r.split or "")
    assert all(len(s) == 1 for s in where.values())
    # The same split without decontamination leaks.
    plain = list(Split(decontaminate=False).run(iter(recs), RunContext(tmp_path, seed=42)))
    assert output_leakage(plain, [sample_key(r) for r in plain])["leaked"] > 10
