"""Issue 9 item 8: labels too rare to be split alone are pooled, not collapsed into train."""

from __future__ import annotations

from collections import Counter

from dataprep.record import Conversation, Lineage, Message
from dataprep.stages.split import assign_splits, min_stratum_groups


def _rec(i: int, label: str, group: str | None = None) -> Conversation:
    return Conversation(id=f"r{i}", messages=[Message("user", f"问题{i}"),
                                              Message("assistant", f"回答{i}")],
                        lineage=Lineage(source="s", line=i, group_id=group or f"g{i}"),
                        label=label)


def test_600_unique_labels_split_about_8_1_1() -> None:
    recs = [_rec(i, f"label{i}") for i in range(600)]
    report: dict = {}
    assignment = assign_splits(recs, (0.8, 0.1, 0.1), seed=42, report=report)
    sizes = Counter(assignment.values())
    # Before: 600 / 0 / 0 (every label with at most 3 groups went to train).
    assert abs(sizes["train"] - 480) <= 6 and abs(sizes["dev"] - 60) <= 6 \
        and abs(sizes["test"] - 60) <= 6, sizes
    assert report == {"min_groups_per_label": 10, "stratified_labels": 0, "pooled_labels": 600,
                      "pooled_records": 600}


def test_splittable_labels_stay_stratified_and_only_rare_ones_are_pooled() -> None:
    recs = [_rec(i, "common") for i in range(500)]
    recs += [_rec(500 + i, f"rare{i % 50}") for i in range(100)]  # 50 labels x 2 groups
    report: dict = {}
    assignment = assign_splits(recs, (0.8, 0.1, 0.1), seed=7, report=report)
    common = Counter(assignment[r.lineage.group_id] for r in recs if r.label == "common")
    assert common == {"train": 400, "dev": 50, "test": 50}  # exact: its own stratum
    rare = Counter(assignment[r.lineage.group_id] for r in recs if r.label != "common")
    assert rare == {"train": 80, "dev": 10, "test": 10}
    assert report["stratified_labels"] == 1 and report["pooled_labels"] == 50
    # deterministic and independent of input order
    assert assign_splits(list(reversed(recs)), (0.8, 0.1, 0.1), seed=7) == assignment


def test_threshold_follows_the_smallest_ratio() -> None:
    assert min_stratum_groups((0.8, 0.1, 0.1)) == 10
    assert min_stratum_groups((0.7, 0.2, 0.1)) == 10
    assert min_stratum_groups((0.6, 0.2, 0.2)) == 5
    assert min_stratum_groups((1.0, 0.0, 0.0)) == 1


def test_the_run_reports_pooled_labels_in_the_manifest(tmp_path) -> None:
    import json

    from dataprep.config import config_from_dict
    from dataprep.pipeline import Pipeline

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"conversations": [
        {"role": "user", "content": f"第{i}个问题：发动机第{i * 7919 % 1000}号零件为什么异响"},
        {"role": "assistant", "content": f"答案{i}：检查第{i * 104729 % 997}号部件"}],
        "label": f"label{i}"}, ensure_ascii=False) + "\n" for i in range(600)), encoding="utf-8")
    cfg = config_from_dict({"name": "rare", "inputs": [{"reader": "chatglm3", "path": str(src)}],
                            "stages": [{"name": "split", "ratios": [0.8, 0.1, 0.1]}, "write"]})
    manifest = Pipeline(cfg).run(tmp_path / "out", progress=False)
    c = manifest["counts"]
    assert c["input"] == 600 and c["train"] + c["dev"] + c["test"] == 600
    assert abs(c["dev"] - 60) <= 10 and abs(c["test"] - 60) <= 10, c
    strat = manifest["stage_stats"]["split"]["stratification"]
    assert strat["pooled_labels"] == 600 and strat["stratified_labels"] == 0
