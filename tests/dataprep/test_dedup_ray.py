"""The dedup engine on a local Ray: the same decisions, components and pairs as the local engine
on the real lab dialogs (with tool-call guards) and on synthetic near duplicates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dataprep.dedup import DedupConfig, call_signature, find_duplicates, sample_key
from dataprep.dedup.distributed import find_duplicates_ray
from dataprep.record import Conversation

FIELDS = ("kept", "roots", "exact_rep", "key_hash", "similarity", "edge_i", "edge_j", "edge_sim")


def _lab(corpora: Path) -> list[Conversation]:
    out = []
    for name in ("train.chatglm3.jsonl", "dev.chatglm3.jsonl"):
        for line in (corpora / "crosswoz-hotel-finetune-lab" / name).read_text(
                encoding="utf-8").split("\n"):
            if line.strip():
                obj = json.loads(line)
                obj["tools"] = json.loads(obj["tools"][0])
                out.append(Conversation.from_chatglm3(obj))
    return out


def test_ray_dedup_equals_local_on_the_lab_dialogs(ray_local, corpora: Path) -> None:
    convs = _lab(corpora)
    keys = [sample_key(c) for c in convs]
    guards = [call_signature(c) for c in convs]
    local_stats: dict = {}
    ray_stats: dict = {}
    local = find_duplicates(keys, guards=guards, stats=local_stats)
    distributed = find_duplicates_ray(keys, guards=guards, batch_size=512, stats=ray_stats)
    for name in FIELDS:
        assert np.array_equal(getattr(local, name), getattr(distributed, name)), name
    assert local.removed() > 100 and local_stats == ray_stats
    exact_only = find_duplicates_ray(keys, DedupConfig(near=False), batch_size=512)
    assert np.array_equal(exact_only.kept, find_duplicates(keys, DedupConfig(near=False)).kept)


def _chains(n_chains: int, length: int, seed: int = 3) -> list[str]:
    """Texts in chains of one-character edits: neighbours are near duplicates, the ends of a
    chain are not, so components are long paths (and a few exact copies and unrelated texts)."""
    rng = np.random.default_rng(seed)
    texts: list[str] = []
    for _ in range(n_chains):
        chars = [chr(c) for c in rng.integers(0x4E00, 0x9FA5, size=120)]
        for _ in range(length):
            chars[int(rng.integers(len(chars)))] = chr(int(rng.integers(0x4E00, 0x9FA5)))
            texts.append("".join(chars))
    texts += [texts[5], texts[length + 7], "", ""]  # exact copies, empty keys
    order = rng.permutation(len(texts))  # chains interleaved, not in input order
    return [texts[k] for k in order]


def test_ray_dedup_equals_local_on_long_chains(ray_local) -> None:
    texts = _chains(3, 60)
    cfg = DedupConfig(threshold=0.8)
    local_stats: dict = {}
    ray_stats: dict = {}
    local = find_duplicates(texts, cfg, stats=local_stats)
    distributed = find_duplicates_ray(texts, cfg, batch_size=64, stats=ray_stats)
    for name in FIELDS:
        assert np.array_equal(getattr(local, name), getattr(distributed, name)), name
    assert local_stats == ray_stats
    # Whole chains are components; the greedy rule keeps several records along each chain.
    sizes = sorted(len(m) for m in local.components().values())
    assert sizes[-3:] == [60, 61, 61] and len(local.clusters()) > 6


def test_star_rounds_find_components_of_long_paths(ray_local) -> None:
    import ray
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from dataprep.dedup.distributed import connected_components_ray

    rng = np.random.default_rng(0)
    ids = rng.permutation(3000)  # a path of 2000 nodes in random id order, a star, pairs
    edges = [(ids[k], ids[k + 1]) for k in range(1999)]
    edges += [(ids[2000], ids[k]) for k in range(2001, 2100)]
    edges += [(ids[k], ids[k + 1]) for k in range(2100, 2998, 2)] + [(ids[7], ids[3])]
    i, j = np.array(edges).T
    blocks = [ray.put({"i": i[k::3].astype(np.int64), "j": j[k::3].astype(np.int64)})
              for k in range(3)]
    stars, rounds = connected_components_ray(blocks, i.size)
    leaf_root = {int(a): int(b) for s in ray.get(stars) for a, b in zip(s["i"], s["j"],
                                                                         strict=True)}
    _, labels = connected_components(coo_matrix((np.ones(i.size), (i, j)), shape=(3000, 3000)),
                                     directed=False)
    first = {lab: min(np.flatnonzero(labels == lab)) for lab in set(labels[np.r_[i, j]])}
    expected = {int(v): int(first[labels[v]]) for v in set(np.r_[i, j]) if first[labels[v]] != v}
    assert leaf_root == expected
    assert 4 < rounds < 40  # several rounds, far fewer than the path's 2000 links
