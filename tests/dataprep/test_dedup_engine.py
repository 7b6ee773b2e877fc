"""The duplicate-detection engine: normalisation, shingles, MinHash signatures, the LSH index,
clustering rules, guards, leakage matching, and what it finds in the fine-tuning-lab files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import rensa
import xxhash

from dataprep.dedup import (
    BandIndex,
    DedupConfig,
    MinHasher,
    UnionFind,
    call_signature,
    cross_matches,
    exact_hash,
    exact_jaccard,
    find_duplicates,
    held_out_matches,
    normalize_batch,
    normalize_for_matching,
    sample_key,
    shingle_hashes,
    source_split,
)
from dataprep.dedup import minhash as minhash_module
from dataprep.errors import ConfigError
from dataprep.record import Conversation, Lineage, Message

LAB = "crosswoz-hotel-finetune-lab"

# Three versions of one car-fault report: B rewrites A's first clause, C rewrites B's cause, so
# A~B and B~C are near duplicates but A and C are not (checked below with exact Jaccard).
A = ("故障现象：一辆2007年长丰猎豹飞腾越野车，行驶里程27000公里。维修室内灯不亮，更换灯泡后发现四个"
     "转向灯常亮，后雨刮和后喷水常工作，开关不起作用。故障原因：组合开关内部触点烧蚀粘连，线束插头进水腐蚀。")
B = A.replace("一辆2007年长丰猎豹飞腾越野车", "一台二手的进口丰田越野车")
C = B.replace("组合开关内部触点烧蚀粘连", "车身控制模块程序错乱")


def lab_lines(corpora: Path, name: str) -> list[str]:
    return [ln for ln in (corpora / LAB / name).read_text(encoding="utf-8").split("\n")
            if ln.strip()]


def lab_conversation(line: str) -> Conversation:
    obj = json.loads(line)
    obj["tools"] = json.loads(obj["tools"][0])  # the lab double-encodes its tool list
    return Conversation.from_chatglm3(obj)


def conv(*turns: tuple[str, object], meta: dict | None = None) -> Conversation:
    msgs = [Message("tool", name=str(t[1]), parameters=t[2]) if t[0] == "tool"  # type: ignore[misc]
            else Message(t[0], str(t[1])) for t in turns]
    return Conversation(id="x", messages=msgs, meta=meta or {},
                        lineage=Lineage(source="a.jsonl", line=1, group_id="x"))


# -- normalisation and keys ----------------------------------------------------------------------
def test_normalisation_folds_width_case_punctuation_and_spaces() -> None:
    assert normalize_for_matching("Ｈｏｔｅｌ　北京，  早餐！ (A_1)") == "hotel北京早餐a1"
    assert normalize_for_matching("价格：３００－４００元。") == normalize_for_matching("价格300-400元")
    # Content characters survive: a changed digit is a different key.
    assert normalize_for_matching("300元") != normalize_for_matching("400元")


def test_exact_hash_is_stable_across_processes() -> None:
    # xxh3 of the UTF-32 code points, not hash(): a golden value pins it (hash() is salted per
    # process), and the batch path hashes the same bytes.
    assert exact_hash("北京") == 0x6493B3AA918F4EAA
    assert exact_hash("北京") == xxhash.xxh3_64_intdigest("北京".encode("utf-32-le"))
    assert exact_hash("北京") != exact_hash("上海")


def test_sample_key_by_fields() -> None:
    dialog = conv(("user", "找个酒店"), ("assistant", "好的"),
                  ("tool", "search_hotels", {"type": "经济型", "facilities": ["早餐"]}),
                  ("assistant", "推荐如家"))
    call = 'search_hotels({"facilities": ["早餐"], "type": "经济型"})'
    assert sample_key(dialog) == f"找个酒店\n{call}"  # auto -> user+tools, keys sorted
    assert sample_key(dialog, "user") == "找个酒店"
    assert sample_key(dialog, "all") == f"找个酒店\n好的\n{call}\n推荐如家"
    spo = conv(("user", "抽取三元组。文本：发动机水温高"), ("assistant", "发动机_部件故障_水温高"),
               meta={"text": "发动机水温高"})
    assert sample_key(spo) == "发动机水温高"
    qa = conv(("user", "文章……问题：谁？"), ("assistant", "张三"),
              meta={"question": "谁？", "answer": "张三"})
    assert sample_key(qa) == "谁？\n张三"
    with pytest.raises(ConfigError, match="unknown dedup fields 'users'"):
        sample_key(dialog, "users")


def test_call_signature_is_canonical() -> None:
    a = conv(("user", "x"), ("tool", "s", {"b": 1, "a": [2, 3]}))
    b = conv(("user", "y"), ("tool", "s", {"a": [2, 3], "b": 1}))
    assert call_signature(a) == call_signature(b) == 's({"a": [2, 3], "b": 1})'
    assert call_signature(conv(("user", "x"), ("assistant", "y"))) is None


# -- shingles and MinHash ------------------------------------------------------------------------
def _shingles(texts: list[str], ngram: int) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in texts]
    for rows, hashes, offsets in shingle_hashes(*normalize_batch(texts), ngram):
        for k, r in enumerate(rows.tolist()):
            out[r] = hashes[offsets[k]:offsets[k + 1]].tolist()
    return out


def test_shingle_counts_short_and_empty_texts() -> None:
    sh = _shingles(["abcdef", "ab", "", "abcd"], 4)
    assert [len(s) for s in sh] == [3, 1, 0, 1]
    # The same n-gram gets the same hash wherever it occurs; different n-grams differ.
    assert sh[0][0] == sh[3][0]  # "abcd" in text 0 and text 3
    assert len(set(sh[0])) == 3
    assert sh[1] != _shingles(["abc"], 4)[0]  # "ab" padded is not "abc" padded


@pytest.mark.parametrize("num_perm", [16, 128])
def test_batched_signatures_equal_rensa_per_text(num_perm: int, monkeypatch) -> None:
    # A tiny window forces the batch through many chunks and the long text through the
    # window-by-window path; each row must still be rensa's signature of that text's shingles.
    monkeypatch.setattr(minhash_module, "_WINDOW", 64)
    texts = [A, B, "短", "", "x" * 5000 + "y" * 100, C]
    sigs = MinHasher(num_perm=num_perm, ngram=4, seed=3).signatures(
        [normalize_for_matching(t) for t in texts])
    monkeypatch.undo()
    for text, sig, tokens in zip(texts, sigs, _shingles(texts, 4), strict=True):
        if not tokens:
            assert (sig == 0xFFFFFFFF).all()  # empty text: no shingle, the empty signature
            continue
        ref = rensa.RMinHash.digest_matrix_from_token_hash_sets([tokens], num_perm, 3).to_rows()
        assert sig.tolist() == ref[0], text[:10]


def test_signature_agreement_tracks_exact_jaccard() -> None:
    texts = [normalize_for_matching(t) for t in (A, B, C)]
    sigs = MinHasher(num_perm=256, ngram=4, seed=1).signatures(texts)
    for i, j in ((0, 1), (1, 2), (0, 2)):
        est = float(np.mean(sigs[i] == sigs[j]))
        assert abs(est - exact_jaccard((A, B, C)[i], (A, B, C)[j], 4)) < 0.1


# -- index and clustering ------------------------------------------------------------------------
def test_index_returns_only_verified_matches() -> None:
    hasher = MinHasher(num_perm=128, ngram=4, seed=1)
    sigs = hasher.signatures([normalize_for_matching(t) for t in (A, B, C, "上海浦东国际机场到虹桥")])
    cfg = DedupConfig()
    index = BandIndex(sigs[[0, 3]], *cfg.bands())
    q, k, eq = index.query(sigs[[1, 2]], cfg.min_equal)
    assert q.tolist() == [0] and k.tolist() == [0]  # B matches A; C is too far from A
    assert eq[0] >= cfg.min_equal
    assert index.nbytes() >= 2 * 128 * 4


def test_union_find_root_is_smallest_member() -> None:
    uf = UnionFind(6)
    uf.union(5, 3)
    uf.union(3, 4)
    uf.union(4, 1)
    assert uf.roots().tolist() == [0, 1, 2, 1, 1, 1]


def test_chain_is_one_component_but_nothing_is_removed_through_it() -> None:
    assert exact_jaccard(A, B, 4) > 0.7 and exact_jaccard(B, C, 4) > 0.7
    assert exact_jaccard(A, C, 4) < 0.55
    r = find_duplicates([A, B, C])
    # B goes (similar to A); C is similar only to B, which was removed, so C stays.
    assert r.kept.tolist() == [0, 0, 2]
    assert r.reason(1) == "near_duplicate" and r.reason(2) is None
    assert r.roots.tolist() == [0, 0, 0]  # ... but all three form one component (for split)
    assert r.clusters() == {0: [0, 1]} and r.components() == {0: [0, 1, 2]}


def test_exact_and_near_reasons_and_keep_first() -> None:
    texts = ["北京新世界酒店，提供早餐服务，评分4.6分。", "上海浦东国际机场附近的酒店有哪些推荐",
             "北京新世界酒店提供早餐服务评分４．６分", B, A, A + "。"]
    r = find_duplicates(texts)
    assert r.kept.tolist() == [0, 1, 0, 3, 3, 3]
    assert [r.reason(i) for i in range(6)] == [
        None, None, "exact_duplicate", None, "near_duplicate", "near_duplicate"]
    assert r.exact_rep.tolist() == [0, 1, 0, 3, 4, 4]
    assert r.similarity[2] == 1.0 and 0.65 <= r.similarity[4] < 1.0
    assert r.removed() == 3


def test_exact_only_mode_and_empty_keys() -> None:
    r = find_duplicates([A, B, "！！", "。"], DedupConfig(near=False))
    # Punctuation-only keys normalise to "" and are exact duplicates of each other.
    assert r.kept.tolist() == [0, 1, 2, 2]
    assert r.edges == []


def test_guards_keep_template_twins_with_different_calls_apart() -> None:
    texts = ["你好，有价格在500以内的酒店可以订吗 search_hotels price_range_upper 500",
             "你好，有价格在600以内的酒店可以订吗 search_hotels price_range_upper 600",
             "你好，有价格在500以内的酒店可以订吗？search_hotels price_range_upper 500"]
    assert find_duplicates(texts).kept.tolist() == [0, 0, 0]
    guarded = find_duplicates(texts, guards=["upper=500", "upper=600", "upper=500"])
    assert guarded.kept.tolist() == [0, 1, 0]  # exact duplicates ignore the guard


def test_config_rejects_bad_values_with_a_fix() -> None:
    with pytest.raises(ConfigError, match=r"threshold must be in \(0, 1\]"):
        DedupConfig(threshold=1.5)
    with pytest.raises(ConfigError, match="ngram must be a positive integer"):
        DedupConfig(ngram=0)
    with pytest.raises(ConfigError, match="num_perm must be an integer >= 16"):
        DedupConfig(num_perm=8)
    with pytest.raises(ConfigError, match="lsh_weights"):
        DedupConfig(lsh_weights=(0.5, 0.6))


# -- leakage helpers -----------------------------------------------------------------------------
def test_source_split_patterns() -> None:
    assert source_split("/x/dev.chatglm3.jsonl") == "dev"
    assert source_split("train.chatglm3.jsonl") == "train"
    assert source_split("cmrc2018_trial.json") is None
    assert source_split("VALID.jsonl") == "dev"
    assert source_split("pretrain_test.jsonl") == "test"  # held-out names win over "train"
    assert source_split("a.jsonl", {"a.*": "test"}) == "test"


def test_held_out_matches_and_cross_matches() -> None:
    texts = [A, "上海浦东国际机场附近的酒店有哪些推荐", A + "！", B, "完全不同的一段文字内容在这里出现"]
    splits = ["train", "train", "dev", "test", "dev"]
    r = find_duplicates(texts)
    matches = held_out_matches(r, splits)
    assert [(i, j) for i, j, _ in matches] == [(2, 0), (3, 0)]
    assert matches[0][2] == 1.0 and matches[1][2] < 1.0
    hits = cross_matches([A, texts[1]], [A + "！", B, texts[4]])
    assert [(q, i) for q, i, _ in hits] == [(0, 0), (1, 0)]


# -- the real fine-tuning-lab files --------------------------------------------------------------
def test_lab_train_has_exact_duplicates_and_dev_leaks_into_train(corpora: Path) -> None:
    train = lab_lines(corpora, "train.chatglm3.jsonl")
    dev = lab_lines(corpora, "dev.chatglm3.jsonl")
    convs = [lab_conversation(ln) for ln in train + dev]
    keys = [sample_key(c) for c in convs]
    r = find_duplicates(keys, guards=[call_signature(c) for c in convs])
    # Independent ground truth: byte-identical lines.
    seen: dict[str, int] = {}
    identical_later = []
    for i, ln in enumerate(train):
        if ln in seen:
            identical_later.append(i)
        seen.setdefault(ln, i)
    assert len(identical_later) == 21  # 21 lines of train repeat an earlier line (17 distinct)
    for i in identical_later:
        assert r.reason(i) is not None, train[i][:80]  # every repeated line is found and removed
        assert r.exact_rep[i] == seen[train[i]]
    train_exact_copies = int(np.sum(r.exact_rep[: len(train)] != np.arange(len(train))))
    # Two more once normalised sample keys are compared: same asks and calls, other answers or
    # punctuation.
    assert train_exact_copies == 23
    in_train = [j for j, ln in enumerate(dev) if ln in seen]
    assert len(in_train) == 4  # four dev lines are byte-identical to train lines
    splits = ["train"] * len(train) + ["dev"] * len(dev)
    matches = held_out_matches(r, splits)
    leaked = {i - len(train) for i, _, _ in matches}
    assert set(in_train) <= leaked
    exact = [m for m in matches if r.key_hash[m[0]] == r.key_hash[m[1]]]
    assert len(exact) == 4
    # The recorded audit figure at the default settings: 24 of 201 dev records (11.9%; 25 with
    # datasketch's affine32 signatures, which estimate ~1 point high: the other pairs are
    # borderline, true Jaccard 0.61-0.67).
    assert len(matches) == 24
    near_examples = Counter(round(sim, 1) for _, _, sim in matches if sim < 1.0)
    assert near_examples and min(near_examples) >= 0.6
