"""The runner: accounting, manifest contents, determinism, group-aware split, atomic output."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from dataprep.config import config_from_dict
from dataprep.pipeline import Pipeline
from dataprep.record import Conversation, Lineage, Message
from dataprep.stages.split import assign_splits


def _spo_config(path: Path, **extra: object) -> dict:
    return {"name": "spo", "inputs": [{"reader": "spo", "path": str(path)}], **extra}


def test_real_spo_run_accounts_for_every_record(corpora: Path, tmp_path: Path) -> None:
    src = corpora / "spo-repair-records" / "spo_0.subset.json"
    manifest = Pipeline(config_from_dict(_spo_config(src))).run(tmp_path, progress=False)
    c = manifest["counts"]
    assert c["input"] == 1141  # MANIFEST.md: 1141 records
    assert c["rejected"] == {"no_triples": 16}
    assert c["input"] - 16 == c["train"] + c["dev"] + c["test"]
    # 8:1:1 within one record per stratum of rounding.
    total = c["train"] + c["dev"] + c["test"]
    assert abs(c["train"] - 0.8 * total) <= 4 and abs(c["dev"] - 0.1 * total) <= 4
    assert manifest["inputs"][0]["sha256"] == (
        "1a02946ab3229326b42167702d9c3d31c2d2ccffa206264d262aed167cae3df6")
    assert manifest["packages"]["jsonschema"] != "not installed"
    assert manifest["seed"] == 42 and manifest["config"]["name"] == "spo"
    lines = {s: (tmp_path / f"{s}.jsonl").read_text(encoding="utf-8").splitlines()
             for s in ("train", "dev", "test")}
    assert {s: len(v) for s, v in lines.items()} == {s: c[s] for s in lines}
    # Stratified: the rarest relation label reaches dev and test too.
    labels = {s: Counter(json.loads(x)["label"] for x in v) for s, v in lines.items()}
    assert labels["dev"]["性能故障"] > 0 and labels["test"]["性能故障"] > 0
    rejects = (tmp_path / "rejects.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(rejects) == 16


def test_same_seed_same_bytes_other_seed_other_split(corpora: Path, tmp_path: Path) -> None:
    src = corpora / "spo-repair-records" / "spo_0.subset.json"
    outs = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        Pipeline(config_from_dict(_spo_config(src, seed=seed))).run(tmp_path / name, progress=False)
        outs.append((tmp_path / name / "dev.jsonl").read_bytes())
    assert outs[0] == outs[1]
    assert outs[0] != outs[2]


def _rec(i: int, group: str, label: str) -> Conversation:
    return Conversation(id=f"r{i}", messages=[Message("user", f"q{i}"), Message("assistant", "a")],
                        lineage=Lineage(source="s", line=i, group_id=group), label=label)


def test_groups_never_straddle_splits_and_strata_follow_ratios() -> None:
    recs = [_rec(i, f"g{i // 3}", "rare" if i < 30 else "common") for i in range(600)]
    assignment = assign_splits(recs, (0.8, 0.1, 0.1), seed=5)
    assert len(assignment) == 200  # one entry per group: a group cannot be in two splits
    per_label = Counter((r.label, assignment[r.lineage.group_id]) for r in recs)
    assert per_label[("rare", "dev")] == 3 and per_label[("rare", "test")] == 3
    assert per_label[("common", "train")] == 456
    # Independent of input order.
    assert assign_splits(list(reversed(recs)), (0.8, 0.1, 0.1), seed=5) == assignment


def test_interrupted_write_leaves_no_partial_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   corpora: Path) -> None:
    from dataprep.stages import write as write_mod

    src = corpora / "spo-repair-records" / "spo_0.subset.json"
    out = tmp_path / "out"
    Pipeline(config_from_dict(_spo_config(src))).run(out, progress=False)
    before = (out / "train.jsonl").read_bytes()

    calls = {"n": 0}
    real = write_mod.dumps

    def dying_dumps(obj: object) -> str:
        calls["n"] += 1
        if calls["n"] == 500:
            raise KeyboardInterrupt
        return real(obj)

    monkeypatch.setattr(write_mod, "dumps", dying_dumps)
    with pytest.raises(KeyboardInterrupt):
        Pipeline(config_from_dict(_spo_config(src, seed=9))).run(out, progress=False)
    assert (out / "train.jsonl").read_bytes() == before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_a_stage_that_loses_records_fails_the_accounting(tmp_path: Path, corpora: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from dataprep.errors import AccountingError
    from dataprep.stages.validate import Validate

    def leaky(self, rec, ctx):  # drops every 10th record without a reason
        if not rec.id.endswith("0"):
            yield rec

    monkeypatch.setattr(Validate, "process", leaky)
    src = corpora / "spo-repair-records" / "spo_0.subset.json"
    with pytest.raises(AccountingError, match="unaccounted"):
        Pipeline(config_from_dict(_spo_config(src))).run(tmp_path, progress=False)


def test_outputs_are_readable_like_any_user_file(corpora: Path, tmp_path: Path) -> None:
    import os
    import stat

    src = corpora / "spo-repair-records" / "spo_0.subset.json"
    Pipeline(config_from_dict(_spo_config(src))).run(tmp_path, progress=False)
    mask = os.umask(0)
    os.umask(mask)
    for name in ("train.jsonl", "manifest.json", "rejects.jsonl"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~mask


def test_additions_are_credited_to_the_stage_that_made_them(tmp_path: Path, repo_root: Path) -> None:
    from dataprep.config import load_config

    cfg = load_config(repo_root / "configs" / "hotel.yaml",
                      overrides=["stages=[validate, split, augment, write]"])
    m = Pipeline(cfg).run(tmp_path, progress=False)
    c = m["counts"]
    assert c["added"] > 0
    assert c["added_by_stage"] == {"augment": c["added"]}
