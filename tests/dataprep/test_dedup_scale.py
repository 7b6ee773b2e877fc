"""The parts of the dedup engine that make it fast and small: the batch normalisation against its
definition, the LSH shape against datasketch's, the band sort-join against brute force, decisions
that do not depend on batching, and bounded memory for a multi-megabyte record."""

from __future__ import annotations

import json
import random
import tracemalloc
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from datasketch import MinHashLSH
from hypothesis import given, settings
from hypothesis import strategies as st

from dataprep.dedup import (
    MAX_SHINGLES,
    DedupConfig,
    find_duplicates,
    normalize_batch,
    normalize_for_matching,
    optimal_bands,
    shingle_hashes,
)
from dataprep.dedup.lsh import band_hashes, self_join


def _decoded(texts: list[str]) -> list[str]:
    cps, lens = normalize_batch(texts)
    ends = np.cumsum(lens)
    return [cps[e - n:e].tobytes().decode("utf-32-le") for e, n in zip(ends, lens, strict=True)]


# Characters where a character-by-character mapping goes wrong: combining marks, Hangul jamo and
# syllables, capital sigma (final form by context), ligatures and compatibility characters.
_TRICKY = "\u0301\u0308\u3099\u309a가각\u1100\u1161\u11a8ΣσςΑ\u0345ﬁ℃Ⅱ…㈱①，。！１ａＡ　_é\u1e9b"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from(_TRICKY),
                        max_size=12), max_size=8))
def test_batch_normalisation_is_the_definition(texts: list[str]) -> None:
    assert _decoded(texts) == [normalize_for_matching(t) for t in texts]


def test_batch_normalisation_on_the_real_lab_dialogs(corpora: Path) -> None:
    lines = (corpora / "crosswoz-hotel-finetune-lab" / "train.chatglm3.jsonl").read_text(
        encoding="utf-8").split("\n")
    texts = [m["content"] for ln in lines if ln for m in json.loads(ln)["conversations"]
             if isinstance(m.get("content"), str)]
    assert len(texts) > 5000
    assert _decoded(texts) == [normalize_for_matching(t) for t in texts]


@pytest.mark.parametrize("threshold", [0.5, 0.65, 0.8, 0.9])
@pytest.mark.parametrize("weights", [(0.5, 0.5), (0.2, 0.8)])
def test_lsh_shape_is_datasketchs(threshold: float, weights: tuple[float, float]) -> None:
    lsh = MinHashLSH(threshold=threshold, num_perm=128, weights=weights)
    assert optimal_bands(threshold, 128, weights) == (lsh.b, lsh.r)


def test_band_join_finds_exactly_the_brute_force_pairs() -> None:
    rng = np.random.default_rng(5)
    base = rng.integers(0, 50, size=(60, 32), dtype=np.uint32)  # small alphabet: many collisions
    sigs = np.concatenate([base, base.copy()])
    noisy = rng.random(sigs[60:].shape) < 0.3
    sigs[60:][noisy] = rng.integers(0, 50, size=int(noisy.sum()), dtype=np.uint32)
    bands, rows, min_equal = 8, 4, 20
    stats: dict[str, int] = {}
    i, j, eq = self_join(sigs, bands, rows, min_equal, stats)
    expected = set()
    for a, b in combinations(range(len(sigs)), 2):
        shares_band = any((sigs[a, k * rows:(k + 1) * rows] == sigs[b, k * rows:(k + 1) * rows])
                          .all() for k in range(bands))
        agree = int((sigs[a] == sigs[b]).sum())
        if shares_band and agree >= min_equal:
            expected.add((a, b, agree))
    assert set(zip(i.tolist(), j.tolist(), eq.tolist(), strict=True)) == expected
    assert len(expected) >= 40 and stats["candidates"] >= len(expected)
    assert list(zip(i, j, strict=True)) == sorted(zip(i, j, strict=True))
    # Band hashes are per band: the same slot values in another band hash differently.
    same = np.tile(np.arange(4, dtype=np.uint32), (1, 2))
    assert band_hashes(same, 0, 4)[0] != band_hashes(same, 1, 4)[0]


def test_decisions_do_not_depend_on_batching_or_streaming() -> None:
    rng = random.Random(1)
    words = ["北京", "上海", "酒店", "早餐", "价格", "评分", "地铁", "附近", "推荐", "房间"]
    bases = ["".join(rng.choice(words) for _ in range(12)) for _ in range(40)]
    texts = [b if rng.random() < 0.5 else b[:-2] + "好的" for b in bases for _ in range(3)]
    rng.shuffle(texts)
    whole = find_duplicates(texts)
    streamed = find_duplicates(iter(texts), batch_size=7)
    for name in ("kept", "roots", "exact_rep", "key_hash", "similarity", "edge_i", "edge_j"):
        assert np.array_equal(getattr(whole, name), getattr(streamed, name)), name
    assert whole.removed() > 40


def _cjk(n: int, seed: int) -> str:
    cps = np.random.default_rng(seed).integers(0x4E00, 0xA000, n).astype(np.uint32)
    return cps.tobytes().decode("utf-32-le")


def test_a_multi_megabyte_record_takes_bounded_memory() -> None:
    # Issue 9: one 3 MB record took 1.1 GB in MinHash (a shingles x permutations matrix). Now the
    # shingles are hashed window by window and capped, so the peak is a small multiple of the
    # text itself.
    big = _cjk(1_000_000, seed=0) + "，完。"
    assert len(big.encode("utf-8")) > 3_000_000
    find_duplicates(["热身"])  # build the character table outside the measurement
    tracemalloc.start()
    try:
        result = find_duplicates([big, big[:400_000] + "尾", "短文本"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 80 * 2**20, f"{peak / 2**20:.0f} MiB"
    assert result.kept.tolist() == [0, 1, 2]  # 40% of the shingles in common: not a duplicate
    # The cap: a long text is represented by its MAX_SHINGLES smallest distinct shingle hashes.
    chunks = list(shingle_hashes(*normalize_batch([big[:50_000]]), 4))
    assert [int(np.diff(o)[0]) for _, _, o in chunks] == [MAX_SHINGLES]
    (_, h, _), = chunks
    assert (np.diff(h.astype(np.float64)) > 0).all()  # distinct and sorted: the bottom sample


def test_long_copies_are_still_found_through_the_cap() -> None:
    text = _cjk(60_000, seed=2)
    edited = text[:30_000] + "改" + text[30_001:]
    r = find_duplicates([text, edited, text[::-1]], DedupConfig())
    assert r.kept.tolist() == [0, 0, 2] and r.similarity[1] > 0.9
