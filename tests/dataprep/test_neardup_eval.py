"""Near-duplicate recall and precision on the labelled set of ``bench/neardup_eval.py``: perturbed
copies of real records next to untouched distinct real records."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from scipy import sparse

from bench.neardup_eval import (
    SOURCES,
    LabelledSet,
    build_labelled_set,
    evaluate,
    perturb,
)
from dataprep.dedup import DedupConfig, normalize_for_matching


@pytest.fixture(scope="module")
def labelled(corpora: Path) -> LabelledSet:
    return build_labelled_set(corpora)


def test_perturbations_are_the_ones_the_issue_lists() -> None:
    rng = random.Random(3)
    text = "北京新世界酒店，早餐服务很好。房间干净，价格989元。Wifi覆盖全部房间！"
    seen = set()
    for _ in range(200):
        copy, ops = perturb(text, rng)
        assert copy != text and ops[0].startswith("edit:")
        seen.update(op.split(":")[0] for op in ops)
    assert seen == {"edit", "punct", "width", "reorder"}


def test_labelled_set_is_real_and_hard_enough(labelled: LabelledSet) -> None:
    kinds = {src: {k: 0 for k in ("original", "copy", "negative")} for src in SOURCES}
    for src, kind in zip(labelled.source, labelled.kind, strict=True):
        kinds[src][kind] += 1
    for src in SOURCES:
        assert kinds[src]["original"] == 150 and kinds[src]["negative"] == 300
        assert kinds[src]["copy"] >= 150
    positives = labelled.positive_pairs()
    assert len(positives) == sum(k["copy"] for k in kinds.values())
    # Every copy carries a real edit: normalisation alone (exact matching) cannot find them.
    same_after_norm = sum(normalize_for_matching(labelled.texts[i])
                          == normalize_for_matching(labelled.texts[j]) for i, j in positives)
    assert same_after_norm < 0.01 * len(positives)
    # Negatives are distinct by an exact measure (3-gram Jaccard < 0.7), within each corpus:
    # intersections of every pair at once as a sparse matrix product.
    for src in SOURCES:
        vocab: dict[str, int] = {}
        rows, cols = [], []
        negatives = [t for t, s, k in zip(labelled.texts, labelled.source, labelled.kind,
                                          strict=True) if s == src and k == "negative"]
        for r, t in enumerate(negatives):
            n = normalize_for_matching(t)
            for g in {n[i:i + 3] for i in range(len(n) - 2)}:
                rows.append(r)
                cols.append(vocab.setdefault(g, len(vocab)))
        m = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)))
        inter = (m @ m.T).toarray()
        size = np.diag(inter)
        jacc = inter / (size[:, None] + size[None, :] - inter)
        np.fill_diagonal(jacc, 0)
        assert jacc.max() < 0.7, src


def test_recall_and_precision_at_the_defaults(labelled: LabelledSet) -> None:
    res = evaluate(labelled)
    # Recorded at the defaults (threshold 0.65, 4-grams, 128 permutations): recall 0.949
    # (748 of 788 copies clustered with their original), precision 1.0 (0 of 909 pairs wrong).
    assert res["recall"] >= 0.93
    assert res["precision"] >= 0.99
    for src, m in res["by_source"].items():
        assert m["recall"] >= 0.88, src
        assert m["precision"] >= 0.98, src
    # What split moves (connected components) is at least as complete.
    assert res["components"]["recall"] >= res["recall"]
    assert res["components"]["precision"] >= 0.98


def test_the_measurement_can_fail(labelled: LabelledSet) -> None:
    # Exact matching alone finds (almost) no perturbed copy ...
    assert evaluate(labelled, DedupConfig(near=False))["recall"] < 0.05
    # ... and 2-grams at 0.5 merge distinct records.
    assert evaluate(labelled, DedupConfig(threshold=0.5, ngram=2))["precision"] < 0.8
