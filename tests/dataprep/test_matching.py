"""One matching configuration per run: parsed once, shared by dedup, split and the audit, and a
subset's clustering cut out of an earlier result equals a fresh search over that subset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dataprep.config import config_from_dict
from dataprep.dedup import find_duplicates
from dataprep.errors import ConfigError
from dataprep.matching import Matching, MatchingConfig, matching_config
from dataprep.pipeline import Pipeline
from dataprep.record import Conversation, Lineage, Message

BASE = "汽车空调不制冷，压缩机不工作，检查发现继电器烧坏，更换后恢复正常"


def rec(rid: str, text: str) -> Conversation:
    return Conversation(id=rid, messages=[Message("user", text), Message("assistant", "好")],
                        lineage=Lineage(source="train.jsonl", line=1, group_id=rid),
                        corpus="spo", meta={"text": text})


def _records() -> list[Conversation]:
    out = []
    for i in range(40):
        # Families of near duplicates (a few characters changed) mixed with distinct records.
        family = i % 8
        out.append(rec(f"r{i}", f"第{family}类：{BASE[family:]}{'。' * (i % 3)}{'啊' * (i // 8 % 2)}"))
    out += [rec(f"u{i}", f"完全不同的第{i}条记录，内容是{'甲乙丙丁戊己庚辛'[i % 8] * (i + 3)}")
            for i in range(10)]
    return out


def test_a_cut_out_subset_equals_a_fresh_search() -> None:
    recs = _records()
    matching = Matching(MatchingConfig(threshold=0.6, ngram=3))
    full = matching.cluster(recs)
    assert not full.reused and full.clustering.edges  # there are pairs to cut
    # Keep first-of-key records only, in order, with members of the same families.
    subset = [r for i, r in enumerate(recs) if int(full.clustering.exact_rep[i]) == i][::2]
    cut = matching.cluster(subset)
    assert cut.reused
    fresh = find_duplicates(cut.keys, matching.config.engine(), guards=cut.guards)
    assert sorted(cut.clustering.edges) == sorted(fresh.edges) and fresh.edges
    assert np.array_equal(cut.clustering.roots, fresh.roots)
    # Out of order, or with a record it never saw, the engine runs again.
    assert not matching.cluster(subset[::-1]).reused
    assert not matching.cluster([*subset, rec("new", "新的记录")]).reused


def test_the_first_clustering_audits_the_input_once() -> None:
    recs = _records()
    recs.append(Conversation(id="d", messages=[Message("user", recs[0].messages[0].content),
                                               Message("assistant", "好")],
                             lineage=Lineage(source="dev.jsonl", line=1, group_id="d"),
                             corpus="spo"))
    matching = Matching()
    matching.cluster(recs)
    audit = matching.input_leakage
    assert audit is not None and audit["leaked"] == 1 and audit["dev_test"] == 1
    matching.cluster(recs[:5])  # a later user (split after dedup) does not audit again
    assert matching.input_leakage is audit


def test_one_config_reaches_dedup_and_split(tmp_path: Path) -> None:
    data = tmp_path / "spo.jsonl"
    data.write_text('{"text": "发动机异响", "spo_list": [["发动机", "部件故障", "异响"]]}\n',
                    encoding="utf-8")
    cfg = {"name": "m", "inputs": [{"reader": "spo", "path": str(data)}],
           "matching": {"seed": 7, "lsh_weights": [0.5, 0.5]},
           "stages": [{"name": "dedup", "threshold": 0.7}, "split", "write"]}
    pipe = Pipeline(config_from_dict(cfg))
    dedup, split = pipe.stages[0], pipe.stages[1]
    assert dedup.resources.matching is split.resources.matching is pipe.resources.matching
    config = pipe.resources.matching.config
    assert (config.seed, config.lsh_weights, config.threshold) == (7, (0.5, 0.5), 0.7)
    manifest = pipe.run(tmp_path / "out", progress=False)
    assert manifest["matching"]["seed"] == 7 and manifest["matching"]["threshold"] == 0.7


def test_bad_matching_options() -> None:
    with pytest.raises(ConfigError, match="matching: unknown option 'treshold'; valid: threshold"):
        matching_config({"treshold": 0.7}, [])
    with pytest.raises(ConfigError, match="set it once, under 'matching:'"):
        matching_config({"threshold": 0.8}, [{"name": "dedup", "threshold": 0.7}])
    with pytest.raises(ConfigError, match="'matching' must be a mapping"):
        config_from_dict({"name": "x", "inputs": [{"reader": "spo", "path": "a"}],
                          "matching": [0.7]})
