"""The whole-stream stages keep records on disk (dataprep.spill), not in memory (issue 14).

The store gives every record back exactly; dedup, split and balance on real lab dialogs decide
exactly what the in-memory reference computes from the same records; the spill folder never
outlives a run; and while a stream flows through dedup -> split -> balance, the Conversation
objects alive stay a handful instead of the whole stream.
"""

from __future__ import annotations

import gc
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from dataprep import spill
from dataprep.config import load_config
from dataprep.dedup import call_signature, find_duplicates, sample_key
from dataprep.errors import ConfigError
from dataprep.matching import Matching, MatchingConfig
from dataprep.pipeline import Pipeline
from dataprep.record import MISSING, Conversation, Lineage, Message
from dataprep.resources import Resources
from dataprep.spill import SPILL_DIR, RecordStore
from dataprep.stages.balance import Balance, label_function
from dataprep.stages.base import RunContext
from dataprep.stages.dedup import Dedup
from dataprep.stages.split import Split, assign_splits, decontaminate, rebalance


def _odd_record(i: int) -> Conversation:
    text = f"第{i}条：行分隔\u2028段分隔\u2029下一行\u0085NEL，emoji 🏨，零宽\u200b，\x00NUL"
    return Conversation(
        id=f"odd:{i}", corpus="hotel", label="价格\u2028", split="dev", weight=1.25,
        tools=[{"name": "search_hotels", "parameters": {"type": "object", "properties": {}}}],
        messages=[Message("system", "系统"), Message("user", text),
                  Message("tool", name="search_hotels", parameters={"价格": [1, 2.5, None]},
                          observation={"hotels": [{"名称": "北京\u2028饭店", "评分": 4.5,
                                                   "设施": ["早餐", {"接机": True}]}]}),
                  Message("tool", name="search_hotels", parameters={}, parallel=True),
                  Message("observation", "null"),
                  Message("assistant", "好的\u0085", loss=False)],
        lineage=Lineage(source="a/train.jsonl", line=i, group_id=f"g{i}", item="3",
                        parent_id="odd:0", ops=["clean", "rewrite_rules"],
                        extra={"balance_label": "价格", "nested": {"a": [1, {"b": "\u2028"}]}}),
        meta={"triples": [("头", "关系", "尾")], 7: "int key", "nan": float("inf")})


def test_the_store_gives_every_record_back_exactly(tmp_path: Path) -> None:
    recs = [_odd_record(i) for i in range(5000)]  # more than one insert batch and one scan
    path = tmp_path / SPILL_DIR / "s.sqlite"
    with RecordStore(path) as store:
        assert [store.append(r) for r in recs] == list(range(len(recs)))
        order = list(range(len(recs)))
        random.Random(1).shuffle(order)
        for n in order[:300]:  # by number, in any order
            assert store.get(n) == recs[n]
        back = list(store)  # all, in order
        assert back == recs and back[0] is not recs[0]
        tool = back[7].messages[3]
        assert tool.observation is MISSING and tool.parallel is True  # the absent observation
        assert back[7].meta["triples"] == [("头", "关系", "尾")] and 7 in back[7].meta
        assert back[7].to_chatglm3() == recs[7].to_chatglm3()
        assert path.is_file()
        with pytest.raises(IndexError, match="no record 5000"):
            store.get(len(recs))
    assert not path.exists()


# -- the same decisions as the in-memory reference, on real lab dialogs ---------------------------
@pytest.fixture(scope="module")
def lab_400(lab_records: list[Conversation]) -> list[Conversation]:
    # The lab file's template twins give exact and near duplicates; a few exact copies more.
    recs = lab_records[:400]
    return recs + [r.derive(f"{r.id}#copy", "copy") for r in recs[::40]]


def test_dedup_and_split_decide_as_the_in_memory_reference(lab_400: list[Conversation],
                                                           tmp_path: Path) -> None:
    matching = Matching()
    resources = Resources(matching=matching)
    ctx = RunContext(tmp_path, seed=42)
    dedup, split = Dedup(resources=resources), Split(resources=resources)
    out = list(split.run(dedup.run(iter(lab_400), ctx), ctx))

    # Reference: the engine and the splitter's functions on the records held in a list.
    cfg = MatchingConfig().engine()
    keys = [sample_key(r) for r in lab_400]
    guards = [call_signature(r) for r in lab_400]
    result = find_duplicates(keys, cfg, guards=guards)
    kept = [r for i, r in enumerate(lab_400) if int(result.kept[i]) == i]
    assert dedup.stats["exact_removed"] > 0 and len(kept) < len(lab_400)
    removed = {rej.record["id"]: rej.kept_id for rej in ctx.rejects}
    assert removed == {r.id: lab_400[int(result.kept[i])].id
                       for i, r in enumerate(lab_400) if int(result.kept[i]) != i}
    kept_keys = [sample_key(r) for r in kept]
    kept_guards = [call_signature(r) for r in kept]
    assignment = assign_splits(kept, split.ratios, seed=42)
    moves = decontaminate(kept, assignment, kept_keys, cfg, kept_guards)
    if moves["moved_records"]:
        rebalance(kept, assignment, split.ratios, 42, moves["components"], moves["frozen"],
                  moves["left"])
    for r in kept:
        r.split = assignment[r.lineage.group_id]
    assert split.stats["matching_reused"]  # cut out of dedup's result, as with records in memory
    assert out == kept  # same records, same order, same splits (dataclass equality: every field)
    assert {r.split for r in out} == {"train", "dev", "test"}


def _balance_reference(recs: list[Conversation], cap: int, floor: int) -> list[str]:
    """The ids balance (mode both, train only) yields, computed on the records in a list."""
    label_of = label_function("scenario")
    classes: dict[str, list[Conversation]] = {}
    for r in recs:
        if r.split == "train":
            classes.setdefault(label_of(r), []).append(r)
    removed: set[str] = set()
    copies: dict[str, list[str]] = {}
    for label in sorted(classes):
        pool = sorted(classes[label], key=lambda r: r.id)
        random.Random(f"42:balance:hotel:train:{label}").shuffle(pool)
        if len(pool) > cap:
            removed.update(r.id for r in pool[cap:])
        elif len(pool) < floor:
            made: Counter[str] = Counter()
            for j in range(floor - len(pool)):
                parent = pool[j % len(pool)].id
                made[parent] += 1
                copies.setdefault(parent, []).append(f"{parent}#up{made[parent]}")
    ids = []
    for r in recs:
        if r.id not in removed:
            ids += [r.id, *copies.get(r.id, [])]
    return ids


def test_balance_decides_as_the_in_memory_reference(lab_400: list[Conversation],
                                                    tmp_path: Path) -> None:
    recs = [r.derive(r.id, "x") for r in lab_400[:400]]
    for i, r in enumerate(recs):
        r.split = "train" if i % 5 else "dev"
    sizes = Counter(label_function("scenario")(r) for r in recs if r.split == "train")
    cap, floor = sorted(sizes.values())[-2], sorted(sizes.values())[1] + 3
    assert floor <= cap and len(sizes) >= 4
    ctx = RunContext(tmp_path, seed=42)
    stage = Balance(label="scenario", mode="both", cap=cap, floor=floor)
    out = list(stage.run(iter(recs), ctx))
    assert [r.id for r in out] == _balance_reference(recs, cap, floor)
    assert stage.stats["removed"] > 0 and stage.stats["added"] > 0
    by_id = {r.id: r for r in recs}
    for r in out:  # a copy is its parent's record with the op in its lineage
        parent = by_id[r.lineage.parent_id] if "#up" in r.id else r
        assert r.messages == parent.messages and r.split == parent.split
    rejected = [rej.record["id"] for rej in ctx.rejects]
    assert len(rejected) == stage.stats["removed"] and not set(rejected) & {r.id for r in out}

    weighted = list(Balance(label="scenario").run(iter(recs), RunContext(tmp_path / "w")))
    total, classes = sum(sizes.values()), len(sizes)
    for r in weighted:
        expected = (round(total / (classes * sizes[label_function("scenario")(r)]), 6)
                    if r.split == "train" else None)
        assert r.weight == expected


# -- the spill folder never outlives a run --------------------------------------------------------
def _config(tmp_path: Path, corpora: Path, stages: list) -> Path:
    cfg = {"name": "spill", "seed": 42,
           "inputs": [{"reader": "spo",
                       "path": str(corpora / "spo-repair-records" / "spo_0.subset.json")}],
           "stages": stages}
    path = tmp_path / "spill.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return path


@pytest.fixture
def stores_made(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The paths of the record stores made during the test."""
    made: list[Path] = []
    init = RecordStore.__init__

    def spy(self: RecordStore, path: str | Path) -> None:
        init(self, path)
        assert self.path.is_file()
        made.append(self.path)

    monkeypatch.setattr(spill.RecordStore, "__init__", spy)
    return made


def test_no_spill_is_left_after_a_run_or_a_failed_run(tmp_path: Path, corpora: Path,
                                                      stores_made: list[Path]) -> None:
    out = tmp_path / "out"
    stages = ["validate", "dedup", {"name": "split", "ratios": [0.8, 0.1, 0.1]},
              {"name": "balance", "mode": "cap", "cap": 50}, "write"]
    Pipeline(load_config(_config(tmp_path, corpora, stages))).run(out, progress=False)
    assert sorted(p.name.split("-")[0] for p in stores_made) == ["balance", "dedup", "split"]
    # Written inside the generation being built, never inside the --out folder itself.
    assert all(p.parent.name == SPILL_DIR and p.parent.parent.name.startswith("out.tmp-")
               for p in stores_made)
    assert not any(p.exists() for p in stores_made) and not (out / SPILL_DIR).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "spill.yaml"]
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    # balance.splits before the split fails once the stream has been stored.
    stores_made.clear()
    bad = ["validate", "dedup", {"name": "balance", "splits": ["train"]},
           {"name": "split", "ratios": [0.8, 0.1, 0.1]}, "write"]
    with pytest.raises(ConfigError, match="balance.splits only applies after"):
        Pipeline(load_config(_config(tmp_path, corpora, bad))).run(out, progress=False)
    assert sorted(p.name.split("-")[0] for p in stores_made) == ["balance", "dedup", "split"]
    assert not any(p.exists() for p in stores_made)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "spill.yaml"]
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


# -- what the stages hold --------------------------------------------------------------------------
def _live_conversations() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is Conversation)


N = 3000


def _stream(seen: dict[str, int]) -> Iterator[Conversation]:
    """N synthetic dialogs (every third a near copy), counting the live Conversations once the
    last one has been handed over and the stage upstream of this generator holds the rest."""
    for i in range(N):
        base = f"第{i // 3}号问题：请问北京哪家酒店提供{'早餐' if i % 2 else '接机'}服务，价格在{i // 3}元以内"
        yield Conversation(id=f"s{i}", corpus="t", label="ABC"[i % 3],
                           messages=[Message("user", base + "？" * (i % 3)),
                                     Message("assistant", f"回答{i}")],
                           lineage=Lineage(source="train.jsonl", line=i, group_id=f"g{i}"))
    seen["after_input"] = _live_conversations()


def test_the_whole_stream_stages_hold_ids_and_keys_not_records(tmp_path: Path) -> None:
    baseline = _live_conversations()
    resources = Resources(matching=Matching())
    ctx = RunContext(tmp_path, seed=42)
    seen: dict[str, int] = {}
    stream = _stream(seen)
    for stage in (Dedup(resources=resources), Split(resources=resources),
                  Balance(mode="cap", cap=600)):
        stream = stage.run(stream, ctx)
    first = next(iter(stream))
    # Every record has gone through dedup, split and balance's bookkeeping: the records kept
    # in memory would be N (or 3N: each stage's list); on disk, a few remain alive.
    during = _live_conversations() - baseline
    rest = sum(1 for _ in stream)
    assert first.split is not None and 1 + rest < N
    assert seen["after_input"] - baseline < 50, seen
    assert during < 50, during
