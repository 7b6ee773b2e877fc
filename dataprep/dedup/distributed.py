"""The dedup engine on Ray: same decisions as :func:`dataprep.dedup.find_duplicates`, computed by
a cluster.

1. Signatures: a Ray Data ``map_batches`` over the texts normalises, hashes the key and signs
   every non-empty text (the expensive part: ~80% of the local time).
2. Exact duplicates: the first record of every key hash, from the gathered 64-bit key hashes.
3. LSH band groupby: one Ray task per band sorts that band's hashes of the signatures (one shared
   object-store copy) and verifies its candidate pairs.
4. Connected components and the keep decisions on the driver, over the verified pairs only
   (integers, a few per record), with the local engine's code.

The driver keeps the signatures of the distinct keys only (512 bytes each at 128 permutations),
like the local engine; beyond ~10^8 records they would be grouped by band on the cluster instead.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from dataprep.dedup.engine import Clustering, DedupConfig, cluster_signatures, find_duplicates
from dataprep.dedup.lsh import band_pairs, merge_pairs, split_keys
from dataprep.dedup.minhash import MinHasher
from dataprep.dedup.normalize import key_hashes, normalize_batch


class _Sign:
    """The Ray Data map: texts -> key hash, whether the key is empty, signature."""

    def __init__(self, num_perm: int, ngram: int, seed: int) -> None:
        self.hasher = MinHasher(num_perm, ngram, seed)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(t) for t in batch["text"]]
        cps, lens = normalize_batch(texts)
        return {"row": batch["row"],
                "key_hash": np.asarray(key_hashes(cps, lens), dtype=np.uint64),
                "empty": lens == 0,
                "sig": self.hasher.from_codepoints(cps, lens)}


def _ray_pairs(sigs: np.ndarray, bands: int, rows: int, min_equal: int,
               stats: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import ray

    remote = ray.remote(band_pairs)
    ref = ray.put(sigs)
    results = ray.get([remote.remote(ref, band, rows, min_equal) for band in range(bands)])
    stats["candidates"] = stats.get("candidates", 0) + sum(c for _, _, c in results)
    keys, eq = merge_pairs([k for k, _, _ in results], [e for _, e, _ in results])
    return (*split_keys(keys), eq)


def find_duplicates_ray(texts: Sequence[str], config: DedupConfig | None = None, *,
                        guards: Sequence[Hashable] | None = None, batch_size: int = 4096,
                        stats: dict[str, Any] | None = None) -> Clustering:
    """:func:`~dataprep.dedup.find_duplicates` with the signatures and the LSH band groupby run
    on the connected Ray cluster (``ray.init`` first); the result is identical."""
    import pyarrow as pa
    import ray.data

    cfg = config or DedupConfig()
    n = len(texts)
    if n == 0:
        return find_duplicates([], cfg, stats=stats)
    table = pa.table({"row": np.arange(n, dtype=np.int64), "text": pa.array(list(texts),
                                                                           pa.large_string())})
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    signed = ray.data.from_arrow(table).map_batches(
        _Sign, fn_constructor_args=(cfg.num_perm, cfg.ngram, cfg.seed), batch_size=batch_size,
        batch_format="numpy", concurrency=1 if n <= batch_size else None)
    key_hash = np.empty(n, dtype=np.uint64)
    exact_rep = np.empty(n, dtype=np.int64)
    first_of_key: dict[int, int] = {}
    kept_rows: list[np.ndarray] = []
    kept_sigs: list[np.ndarray] = []
    # Batches arrive in input order (preserve_order), so "first record with this key" is decided
    # as the local engine decides it, and only those records' signatures are kept.
    for batch in signed.iter_batches(batch_size=None, batch_format="numpy"):
        rows = batch["row"]
        key_hash[rows] = batch["key_hash"]
        first = first_of_key.setdefault
        reps = np.fromiter((first(int(h), int(r)) for h, r in zip(batch["key_hash"], rows,
                                                                   strict=True)),
                           dtype=np.int64, count=rows.size)
        exact_rep[rows] = reps
        new = (reps == rows) & ~batch["empty"]
        if cfg.near and new.any():
            kept_rows.append(rows[new])
            kept_sigs.append(batch["sig"][new])
    records = np.concatenate(kept_rows) if kept_rows else np.empty(0, dtype=np.int64)
    indexed = (np.concatenate(kept_sigs) if kept_sigs
               else np.empty((0, cfg.num_perm), dtype=np.uint32))
    return cluster_signatures(exact_rep, key_hash, records, indexed, cfg, guards=guards,
                              stats=stats, pairs=_ray_pairs)
