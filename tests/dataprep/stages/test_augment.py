"""The ``augment`` stage in real pipelines: accounting, lineage, train-only default, determinism,
option errors."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from dataprep.config import config_from_dict
from dataprep.corpora import op_class, op_names
from dataprep.errors import ConfigError
from dataprep.pipeline import Pipeline
from dataprep.record import lineage_extra
from dataprep.stages.augment import NEEDS_ENDPOINT, Augment, parse_ops, selected
from dataprep.stages.base import RunContext


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, lab_train_path: Path,
           corpora: Path) -> dict[str, Path]:
    """120 real lab dialogs and 60 real DuReader questions, as input files."""
    d = tmp_path_factory.mktemp("inputs")
    lab = d / "lab.jsonl"
    lab.write_text("".join(lab_train_path.read_text(encoding="utf-8").splitlines(True)[:120]),
                   encoding="utf-8")
    dureader = d / "dureader.jsonl"
    src = (corpora / "dureader-2.0-demo" / "search.train.json").read_text(encoding="utf-8")
    dureader.write_text("".join(src.splitlines(True)[:60]), encoding="utf-8")
    return {"lab": lab, "dureader": dureader}


def run(inputs: dict[str, Path], out: Path, hotel_db_path: Path, *,
        augment: dict[str, Any] | None = None, ratios: list[float] | None = None) -> dict[str, Any]:
    raw = {
        "name": "augment-test",
        "seed": 11,
        "hotel_db": str(hotel_db_path),
        "inputs": [{"reader": "lab_chatglm3", "path": str(inputs["lab"])},
                   {"reader": "dureader", "path": str(inputs["dureader"])}],
        "stages": [{"name": "split", "ratios": ratios or [0.6, 0.2, 0.2]},
                   {"name": "augment", **(augment or {})}, "write"],
    }
    return Pipeline(config_from_dict(raw)).run(out, progress=False)


def lines(out: Path) -> dict[str, list[dict[str, Any]]]:
    return {s: read_jsonl(out / f"{s}.jsonl") for s in ("train", "dev", "test")}


@pytest.fixture(scope="module")
def default_run(inputs: dict[str, Path], hotel_db_path: Path,
                tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("default")
    return out, run(inputs, out, hotel_db_path)


def test_accounting_and_lineage(default_run: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = default_run
    counts = manifest["counts"]
    assert counts["input"] - sum(counts["rejected"].values()) - sum(counts["removed"].values()) \
        + counts["added"] == counts["train"] + counts["dev"] + counts["test"]
    st = manifest["stage_stats"]["augment"]
    added = {op: outcomes.get("added", 0) for op, outcomes in st["ops"].items()}
    assert counts["added_by_op"] == {op: n for op, n in sorted(added.items()) if n}
    # every default op did something on this real data
    assert set(counts["added_by_op"]) == {op for op in op_names() if op not in NEEDS_ENDPOINT}

    by_id = {rec["id"]: (split, rec) for split, recs in lines(out).items() for rec in recs}
    derived = [(split, rec) for split, rec in by_id.values() if "parent_id" in rec["lineage"]]
    assert len(derived) == counts["added"]
    for split, rec in derived:
        parent_split, parent = by_id[rec["lineage"]["parent_id"]]
        op = rec["lineage"]["ops"][-1]
        assert rec["id"] == f"{parent['id']}~{op}"
        assert rec["lineage"]["ops"][:-1] == parent["lineage"]["ops"]
        assert rec["lineage"]["group_id"] == parent["lineage"]["group_id"]
        # augmentation applies to train only by default, and a child stays with its parent
        assert split == parent_split == "train"
        assert rec["corpus"] == parent["corpus"]
        extra = lineage_extra(rec["lineage"])
        if op == "rewrite_rules":
            assert extra["rules_hash"] and extra["rewritten_turns"]
        elif rec["corpus"] == "hotel":
            assert extra["templates_hash"]
        else:
            assert extra["negatives"] >= 1
            assert 0 <= extra["borrowed_negatives"] <= extra["negatives"]


def test_every_applicable_record_has_one_outcome_per_op(
        default_run: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = default_run
    train = read_jsonl(out / "train.jsonl")
    originals = Counter(r["corpus"] for r in train if "parent_id" not in r["lineage"])
    st = manifest["stage_stats"]["augment"]
    assert st["in_scope"] == sum(originals.values())
    counts = manifest["counts"]
    assert sum(st["out_of_scope"].values()) == counts["dev"] + counts["test"]
    for op, outcomes in st["ops"].items():
        corpus = op_class(op).corpus
        assert sum(outcomes.values()) == originals[corpus], (op, outcomes)
        assert all(k in ("added", "not_selected") or k.startswith(("kept:", "skipped:"))
                   for k in outcomes)


def test_shares_follow_the_configuration(default_run: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = default_run
    ops = manifest["stage_stats"]["augment"]["ops"]
    train = read_jsonl(out / "train.jsonl")
    originals = [r for r in train if "parent_id" not in r["lineage"]]
    for op in ("followup", "closing", "name_query", "price_upper_query", "docqa_unanswerable"):
        cls = op_class(op)
        share = cls.Options().share
        chosen = sum(ops[op].values()) - ops[op].get("not_selected", 0)
        # Exactly the records the selection hash picks at the op's default share: a run that
        # picked none (or all) of them would not match.
        expected = sum(selected(manifest["seed"], op, r["id"], share)
                       for r in originals if r["corpus"] == cls.corpus)
        assert chosen == expected > 0, (op, chosen, expected)
    # ... and the hash picks close to the share over many ids (3 standard deviations).
    for share in (0.1, 0.3):
        n = sum(selected(11, "closing", f"r{i}", share) for i in range(4000))
        assert abs(n - 4000 * share) < 3 * (4000 * share * (1 - share)) ** 0.5, (share, n)


def test_reruns_are_byte_identical(inputs: dict[str, Path], hotel_db_path: Path, tmp_path: Path,
                                   default_run: tuple[Path, dict[str, Any]]) -> None:
    out, _ = default_run
    again = run(inputs, tmp_path, hotel_db_path)
    for name in ("train.jsonl", "dev.jsonl", "test.jsonl", "augment_discarded.jsonl"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name
    assert again["counts"]["added_by_op"]


def test_all_splits_when_asked(inputs: dict[str, Path], hotel_db_path: Path,
                               tmp_path: Path) -> None:
    manifest = run(inputs, tmp_path, hotel_db_path,
                   augment={"splits": ["train", "dev", "test"],
                            "ops": [{"name": "closing", "share": 1.0}, "docqa_contrastive"]})
    by_split = defaultdict(list)
    for split, recs in lines(tmp_path).items():
        for rec in recs:
            if "parent_id" in rec["lineage"]:
                by_split[split].append(rec)
    assert set(by_split) == {"train", "dev", "test"}
    assert manifest["stage_stats"]["augment"]["out_of_scope"] == {}
    assert set(manifest["counts"]["added_by_op"]) == {"closing", "docqa_contrastive"}


def test_selection_is_a_function_of_seed_op_and_id() -> None:
    ids = [f"r{i}" for i in range(2000)]
    picked = [i for i in ids if selected(1, "followup", i, 0.3)]
    assert 500 < len(picked) < 700
    assert picked == [i for i in reversed(ids) if selected(1, "followup", i, 0.3)][::-1]
    assert picked != [i for i in ids if selected(2, "followup", i, 0.3)]
    assert picked != [i for i in ids if selected(1, "closing", i, 0.3)]


@pytest.mark.parametrize("ops, message", [
    (["nope"], "unknown op 'nope'; available: docqa_contrastive, docqa_unanswerable, "
               "rewrite_rules"),
    ([{"name": "followup", "shares": 0.2}],
     "augment op 'followup': unknown option 'shares'; valid: share, aspects"),
    ([{"name": "followup", "share": 1.5}], "share must be a number between 0 and 1"),
    (["closing", "closing"], "listed twice"),
    ([{"name": "followup", "aspects": ["weather"]}], "aspects must be a non-empty subset"),
    ([{"name": "docqa_contrastive", "k": 0}], "k must be an integer >= 1"),
])
def test_bad_ops_are_config_errors(ops: list[Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        parse_ops(ops)


def test_bad_splits_and_missing_split(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="augment.splits"):
        Augment(splits=["validation"])
    from dataprep.record import Conversation, Lineage, Message

    rec = Conversation("x", [Message("user", "你好"), Message("assistant", "您好")],
                       Lineage("s", 1, "x"))
    with pytest.raises(ValueError, match="put 'augment' after 'split'"):
        list(Augment().run([rec], RunContext(tmp_path)))


def test_rewrite_llm_without_an_llm_section_says_what_to_add(inputs: dict[str, Path],
                                                             hotel_db_path: Path,
                                                             tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="top-level 'llm:' section"):
        run(inputs, tmp_path, hotel_db_path, augment={"ops": ["rewrite_llm"]})


def test_example_config_augments_offline(repo_root: Path, tmp_path: Path) -> None:
    """configs/augment_example.yaml (the repository's sample data, no endpoint) augments."""
    from dataprep.config import load_config

    manifest = Pipeline(load_config(repo_root / "configs" / "augment_example.yaml")).run(
        tmp_path, progress=False)
    by_op = manifest["counts"]["added_by_op"]
    assert {"rewrite_rules", "followup", "docqa_contrastive"} <= set(by_op)
    assert manifest["stage_stats"]["augment"]["out_of_scope"]  # dev/test left alone
    assert (tmp_path / "augment_discarded.jsonl").exists()


def test_derived_records_pass_validate_run_after_augment(inputs: dict[str, Path],
                                                         hotel_db_path: Path,
                                                         tmp_path: Path) -> None:
    """Validate before split (as usual) and again after augment: the second pass rejects none
    of the derived records (tool schema, observations against the database, role order,
    grounding, unanswerable samples)."""
    raw = {
        "name": "augment-validate", "seed": 11, "hotel_db": str(hotel_db_path),
        "inputs": [{"reader": "lab_chatglm3", "path": str(inputs["lab"])},
                   {"reader": "dureader", "path": str(inputs["dureader"])}],
        "stages": ["validate", {"name": "split", "ratios": [0.6, 0.2, 0.2]},
                   {"name": "augment", "ops": [
                       {"name": op, "share": 1.0} for op in op_names()
                       if op not in NEEDS_ENDPOINT]},
                   "validate", "write"],
    }
    manifest = Pipeline(config_from_dict(raw)).run(tmp_path, progress=False)
    assert manifest["counts"]["added"] > 100
    rejects = read_jsonl(tmp_path / "rejects.jsonl")
    derived_rejects = [r for r in rejects if "~" in (r.get("record") or {}).get("id", "")]
    assert derived_rejects == []
