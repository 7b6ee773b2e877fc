"""``balance``: cap, floor and weights; train-only after the split; deterministic; accounted."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from dataprep.config import config_from_dict
from dataprep.corpora.docqa.labels import length_bucket
from dataprep.errors import ConfigError
from dataprep.pipeline import Pipeline
from dataprep.record import Conversation, Lineage, Message
from dataprep.stages.balance import Balance, label_function
from dataprep.stages.base import RunContext

SIZES = {"A": 10, "B": 4, "C": 1}


def _records(split: str | None = None, sizes: dict[str, int] = SIZES) -> list[Conversation]:
    out = []
    for label, n in sizes.items():
        for i in range(n):
            rid = f"{label.lower()}{i}"
            out.append(Conversation(id=rid, messages=[Message("user", f"q{rid}"),
                                                      Message("assistant", "a")],
                                    lineage=Lineage("s", i, f"g-{rid}"), corpus="t", label=label,
                                    split=split))
    return out


def _run(stage: Balance, recs: list[Conversation], ctx: RunContext) -> list[Conversation]:
    return list(stage.run(recs, ctx))


def test_cap_downsamples_with_reason(tmp_path: Path) -> None:
    ctx = RunContext(tmp_path)
    out = _run((balance_stage := Balance(mode="cap", cap=4)), _records(), ctx)
    assert Counter(r.label for r in out) == {"A": 4, "B": 4, "C": 1}
    assert ctx.counts.removed == Counter({"balance_downsample": 6})
    assert {r.stage for r in ctx.rejects} == {"balance"}
    st = balance_stage.stats
    assert st["before"] == {"A": 10, "B": 4, "C": 1} and st["after"] == {"A": 4, "B": 4, "C": 1}
    assert st["removed"] == 6 and st["added"] == 0 and st["applied"] == "before_split"
    # A float is a ratio of the median class size (4): the same cap.
    ctx2 = RunContext(tmp_path)
    assert [r.id for r in _run(Balance(mode="cap", cap=1.0), _records(), ctx2)] == \
        [r.id for r in out]


def test_floor_upsamples_with_derived_copies(tmp_path: Path) -> None:
    ctx = RunContext(tmp_path)
    out = _run((balance_stage := Balance(mode="floor", floor=3)), _records(), ctx)
    assert Counter(r.label for r in out) == {"A": 10, "B": 4, "C": 3}
    copies = [r for r in out if r.lineage.parent_id]
    assert [c.id for c in copies] == ["c0#up1", "c0#up2"]
    for c in copies:
        assert c.lineage.parent_id == "c0" and c.lineage.group_id == "g-c0"
        assert c.lineage.ops[-1] == "balance_upsample"
        assert c.lineage.extra["balance_label"] == "C"
    # Copies follow their parent in the stream.
    ids = [r.id for r in out]
    assert ids[ids.index("c0") + 1: ids.index("c0") + 3] == ["c0#up1", "c0#up2"]
    assert ctx.counts.added == Counter({"balance_upsample": 2})
    assert balance_stage.stats["added"] == 2


def test_both_and_weight_modes(tmp_path: Path) -> None:
    ctx = RunContext(tmp_path)
    out = _run(Balance(mode="both", cap=5, floor=2), _records(), ctx)
    assert Counter(r.label for r in out) == {"A": 5, "B": 4, "C": 2}
    ctx = RunContext(tmp_path)
    out = _run((balance_stage := Balance(mode="weight")), _records(), ctx)
    assert len(out) == 15 and not ctx.rejects
    weights = {r.label: r.weight for r in out}
    assert weights == {"A": 0.5, "B": 1.25, "C": 5.0}  # 15 / (3 classes × size)
    assert sum(r.weight for r in out) == pytest.approx(15)
    assert balance_stage.stats["after"] == {"A": 5.0, "B": 5.0, "C": 5.0}
    out = _run(Balance(mode="weight", max_weight=2.0), _records(), RunContext(tmp_path))
    assert max(r.weight for r in out) == 2.0


def test_after_split_only_train_is_touched(tmp_path: Path) -> None:
    recs = _records("train") + _records("dev", {"A": 6, "C": 1})
    for r in recs[15:]:
        r.id = "dev-" + r.id
    ctx = RunContext(tmp_path)
    out = _run((balance_stage := Balance(mode="both", cap=4, floor=2)), recs, ctx)
    by_split = Counter((r.split, r.label) for r in out)
    assert by_split == {("train", "A"): 4, ("train", "B"): 4, ("train", "C"): 2,
                        ("dev", "A"): 6, ("dev", "C"): 1}
    assert all(r.split == "train" for r in out if r.lineage.parent_id)
    st = balance_stage.stats
    assert st["applied"] == "after_split" and st["splits"] == ["train"]
    # Asked explicitly, dev is balanced as well.
    out = _run(Balance(mode="cap", cap=4, splits=["train", "dev"]), recs, RunContext(tmp_path))
    assert Counter((r.split, r.label) for r in out)[("dev", "A")] == 4


def test_deterministic_and_order_independent(tmp_path: Path) -> None:
    def kept(recs: list[Conversation], seed: int) -> list[str]:
        return sorted(r.id for r in _run(Balance(mode="both", cap=3, floor=3), recs,
                                         RunContext(tmp_path, seed=seed)))

    recs = _records()
    shuffled = list(recs)
    random.Random(1).shuffle(shuffled)
    assert kept(recs, 42) == kept(shuffled, 42) == kept(_records(), 42)
    assert kept(recs, 42) != kept(recs, 7)


def test_bad_options() -> None:
    with pytest.raises(ConfigError, match="needs 'cap'"):
        Balance(mode="cap")
    with pytest.raises(ConfigError, match="mode must be one of"):
        Balance(mode="oversample")
    with pytest.raises(ConfigError, match="unknown label"):
        Balance(mode="weight", label="relation_type")
    with pytest.raises(ConfigError, match="positive count"):
        Balance(mode="floor", floor=-1)
    with pytest.raises(ConfigError, match="only applies after the 'split' stage"):
        list(Balance(mode="weight", splits=["train"]).run(_records(), RunContext(".")))


def test_labels_per_corpus(corpora: Path, hotel_db_path: Path) -> None:
    from dataprep.corpora.hotel.lab import LabChatGLM3Reader

    assert [length_bucket(n, (10, 30)) for n in (0, 10, 11, 30, 31)] == \
        ["0-10", "0-10", "11-30", "11-30", ">30"]
    recs = [r for r in LabChatGLM3Reader(
        corpora / "crosswoz-hotel-finetune-lab" / "dev.chatglm3.jsonl",
        hotel_db=str(hotel_db_path)).read() if isinstance(r, Conversation)]
    scenario = label_function("scenario")
    labels = Counter(scenario(r) for r in recs)
    assert set(labels) <= {"facility", "rating", "price", "name", "type", "followup", "closing"}
    assert len(labels) >= 5
    doc = Conversation(id="d", messages=[Message("user", "q"), Message("assistant", "a")],
                       lineage=Lineage("s", 1, "d"), meta={"answer": "一" * 40,
                                                           "positive_docs": ["x" * 600]})
    assert label_function("answer_length")(doc) == "31-100"
    assert label_function("doc_length")(doc) == "501-1000"
    assert label_function("meta.answer")(doc) == "一" * 40


@pytest.mark.parametrize("where", ["before_split", "after_split"])
def test_real_pipeline_accounting(corpora: Path, tmp_path: Path, where: str) -> None:
    balance = {"name": "balance", "mode": "both", "cap": 1.5, "floor": 0.5}
    stages = ["validate", balance, "split", "write"] if where == "before_split" else \
        ["validate", "split", balance, "write"]
    cfg = {"name": "spo", "inputs": [{"reader": "spo", "path": str(
        corpora / "spo-repair-records" / "spo_0.subset.json")}], "stages": stages}
    # The pipeline itself raises AccountingError if a record went missing.
    m = Pipeline(config_from_dict(cfg)).run(tmp_path, progress=False)
    c, st = m["counts"], m["stage_stats"]["balance"]
    assert c["removed"] == {"balance_downsample": st["removed"]} and st["removed"] > 0
    assert c["added_by_op"] == {"balance_upsample": st["added"]} and st["added"] > 0
    assert c["input"] - 16 - st["removed"] + st["added"] == c["train"] + c["dev"] + c["test"]
    lines = {s: [json.loads(x) for x in (tmp_path / f"{s}.jsonl").read_text(
        encoding="utf-8").splitlines()] for s in ("train", "dev", "test")}
    split_of = {d["id"]: s for s, v in lines.items() for d in v}
    copies = [d for v in lines.values() for d in v if "balance_upsample" in d["lineage"]["ops"]]
    assert len(copies) == st["added"]
    # A copy always lands in its parent's split; after the split only train gets copies.
    assert all(split_of[d["id"]] == split_of[d["lineage"]["parent_id"]] for d in copies)
    if where == "after_split":
        assert {split_of[d["id"]] for d in copies} == {"train"}
        train = Counter(d["label"] for d in lines["train"])
        assert dict(train) == st["after"]
    # Same seed, same bytes.
    again = tmp_path / "again"
    Pipeline(config_from_dict(cfg)).run(again, progress=False)
    assert (again / "train.jsonl").read_bytes() == (tmp_path / "train.jsonl").read_bytes()


def test_each_corpus_is_balanced_on_its_own(tmp_path: Path) -> None:
    recs = _records() + _records(sizes={"X": 2, "Y": 6})
    for r in recs[15:]:
        r.corpus, r.id = "other", "o-" + r.id
        r.meta["answer"] = "短" if r.label == "X" else "长" * 50
    ctx = RunContext(tmp_path)
    out = _run((balance_stage := Balance(mode="cap", cap=1.0, label={"other": "answer_length"})), recs, ctx)
    st = balance_stage.stats
    # "t" by its labels (median 4), "other" by answer-length bucket (median 4 of 2 and 6).
    assert st["before"] == {"t:A": 10, "t:B": 4, "t:C": 1, "other:0-10": 2, "other:31-100": 6}
    assert st["after"] == {"t:A": 4, "t:B": 4, "t:C": 1, "other:0-10": 2, "other:31-100": 4}
    assert st["by_corpus"]["other"]["median"] == 4 and len(out) == 15
