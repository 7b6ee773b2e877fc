"""The dedup engine on Ray: the same decisions as :func:`dataprep.dedup.find_duplicates`, computed
by a cluster. Every step is a Ray Data operation over data that stays on the cluster:

1. **Signatures**: a ``map_batches`` normalises, hashes the key and signs every text (the
   expensive part: ~80% of the local time).
2. **Exact duplicates**: the driver gathers the 64-bit key hashes (8 bytes a record, which the
   result holds anyway) and picks the first record of every key; a 1-byte-per-record mask of
   those records goes back to the cluster.
3. **LSH band groupby**: every indexed record emits one ``(band, bucket)`` row per band; a
   ``groupby(["band", "bucket"])`` pairs the records of each bucket (the candidates).
4. **Verification**: a ``map_batches`` actor compares each candidate pair's signatures, read
   zero-copy from one object-store copy of the indexed signatures (and drops pairs whose tool-call
   guards differ).
5. **Connected components** of the verified pairs by alternating large-star / small-star
   rounds (Kiveris et al., "Connected Components in MapReduce and Beyond", 2014), each one
   ``groupby`` on a node, until the graph is a forest of stars centred on each component's
   smallest record: O(log^2 n) rounds on any graph, so long chains of small edits converge in a
   few rounds instead of one per link.
6. **Decisions**: the verified pairs are tagged with their component (a ``groupby`` on the node
   joins them with the star forest) and a ``groupby`` on the component runs the local engine's
   greedy keep rule on that component's pairs; the rule never looks across components, so the
   result is the global one.

Back on the driver: the mapping record -> (component root, kept twin, similarity) for the
records in a verified pair, and the verified pairs themselves (a few per duplicate), which the
:class:`~dataprep.dedup.engine.Clustering` carries for the leakage audit and for ``split``'s
reuse of dedup's result. Signatures, band rows and candidates never reach it.

Why the star rounds are written here: Ray Data has no graph operations, and a union-find on the
driver would need every verified pair in one process (what this module exists to avoid).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from typing import Any

import numpy as np

from dataprep.dedup.engine import (
    Clustering,
    DedupConfig,
    _guard_ids,
    _keep_greedily,
    find_duplicates,
)
from dataprep.dedup.lsh import (
    _MIX,
    _group_pairs,
    band_hashes,
    low_bytes,
    merge_pairs,
    split_keys,
    verify,
)
from dataprep.dedup.minhash import MinHasher
from dataprep.dedup.normalize import key_hashes, normalize_batch

# Rows per groupby group: a group is a partition of many buckets (or nodes) handled with numpy,
# not one Python call per bucket (there are ~bands x records of them, most with one member).
_ROWS_PER_PART = 1 << 21
_I64 = np.int64


class _Sign:
    """Texts -> key hash, whether the key is empty, signature."""

    def __init__(self, num_perm: int, ngram: int, seed: int) -> None:
        self.hasher = MinHasher(num_perm, ngram, seed)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(t) for t in batch["text"]]
        cps, lens = normalize_batch(texts)
        return {"row": batch["row"],
                "key_hash": np.asarray(key_hashes(cps, lens), dtype=np.uint64),
                "empty": lens == 0,
                "sig": self.hasher.from_codepoints(cps, lens)}


def _indexed(batch: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    keep = mask[batch["row"]]
    return {"row": batch["row"][keep], "sig": batch["sig"][keep]}


def _partition_of(keys: np.ndarray, parts: int) -> np.ndarray:
    """A partition number per key: rows with the same key meet in one ``groupby`` group."""
    h = keys.astype(np.uint64) * _MIX
    return ((h ^ (h >> np.uint64(31))) % np.uint64(parts)).astype(np.int32)


def _band_rows(batch: dict[str, np.ndarray], bands: int, rows: int, parts: int
               ) -> dict[str, np.ndarray]:
    sigs, n = batch["sig"], batch["row"].size
    bucket = (np.concatenate([band_hashes(sigs, b, rows) for b in range(bands)]) if n
              else np.empty(0, dtype=np.uint64))
    return {"band": np.repeat(np.arange(bands, dtype=np.int32), n), "bucket": bucket,
            "row": np.tile(batch["row"].astype(_I64), bands),
            "part": _partition_of(bucket, parts)}


def _bucket_pairs(part: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    """Every pair ``i < j`` of records in the same (band, bucket), for the buckets of one
    partition: the partition is sorted by (band, bucket) and each run of equal keys paired, in
    slices of at most ``lsh._PENDING`` pairs (the local engine's pairing code)."""
    order = np.lexsort((part["row"], part["bucket"], part["band"]))
    band, bucket = part["band"][order], part["bucket"][order]
    new_run = np.ones(order.size, dtype=bool)
    new_run[1:] = (band[1:] != band[:-1]) | (bucket[1:] != bucket[:-1])
    run_id = np.cumsum(new_run).astype(np.uint64)
    yield {"i": np.empty(0, dtype=_I64), "j": np.empty(0, dtype=_I64)}
    for keys in _group_pairs(part["row"][order], run_id):
        i, j = split_keys(keys)
        yield {"i": i, "j": j}


class _Verify:
    """Candidate pairs -> the verified ones with their agreeing slot counts. The indexed
    signatures are one object in the store, read zero-copy by every actor of a node."""

    def __init__(self, table: list[Any], guards: list[Any], min_equal: int) -> None:
        import ray

        self.rows, self.sigs, self.low = ray.get(table[0])
        self.gid = ray.get(guards[0]) if guards else None
        self.min_equal = min_equal

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        i, j = batch["i"], batch["j"]
        pi, pj = np.searchsorted(self.rows, i), np.searchsorted(self.rows, j)
        ok, eq = verify(self.sigs, self.sigs, pi, pj, self.min_equal, self.low, self.low)
        i, j = i[ok], j[ok]
        if self.gid is not None:
            same = self.gid[i] == self.gid[j]
            i, j, eq = i[same], j[same], eq[same]
        return {"i": i, "j": j, "eq": eq.astype(_I64)}


def _gather(*blocks: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The indexed rows (ascending), their signatures and the signatures' low bytes."""
    rows = np.concatenate([b["row"] for b in blocks])
    sigs = np.concatenate([b["sig"] for b in blocks])
    order = np.argsort(rows, kind="stable")
    return rows[order], sigs[order], low_bytes(sigs[order])


# -- connected components ------------------------------------------------------------------------
# The rounds below are hash shuffles written with Ray tasks: a map task per block splits its rows
# by the partition of their key (one return value per partition, left in the object store), a
# reduce task per partition takes its piece of every block. Not Ray Data's groupby: each of those
# pays seconds of executor start-up (6-7 s for 1,000 rows on this 2-core machine under load),
# and the components need several rounds of small shuffles.
Block = dict[str, np.ndarray]


def _split(block: Block, key: np.ndarray, parts: int) -> list[Block]:
    """``block``'s rows in ``parts`` pieces by the partition of ``key``."""
    where = _partition_of(key, parts)
    order = np.argsort(where, kind="stable")
    bounds = np.searchsorted(where[order], np.arange(1, parts))
    return [{c: v[idx] for c, v in block.items()} for idx in np.split(order, bounds)]


def _concat(pieces: Sequence[Block]) -> Block:
    return {c: np.concatenate([p[c] for p in pieces]) for c in pieces[0]}


def _route_both_ways(block: Block, parts: int) -> list[Block]:
    """Undirected edges as (node, neighbour) rows in both directions, by the node's partition."""
    a, b = block["i"], block["j"]
    keep = a != b
    a, b = a[keep], b[keep]
    node = np.concatenate((a, b))
    return _split({"node": node, "nbr": np.concatenate((b, a))}, node, parts)


def _star_round(large: bool, *pieces: Block) -> tuple[Block, int]:
    """One large-star (``large``) or small-star round over the nodes of one partition: the new
    edges, and how many of the nodes were not yet settled.

    For a node u with neighbours N(u) and m = min(u, N(u)): large-star links every neighbour
    larger than u to m; small-star links u and every smaller neighbour to m. A node is settled
    when it is a star centre (no smaller neighbour) or a leaf (its one neighbour is smaller); all
    settled <=> the graph is a forest of stars centred on each component's minimum, a fixed point
    of both rounds."""
    part = _concat(pieces)
    order = np.lexsort((part["nbr"], part["node"]))
    node, nbr = part["node"][order], part["nbr"][order]
    if node.size == 0:
        return {"i": node, "j": nbr}, 0
    distinct = np.ones(node.size, dtype=bool)
    distinct[1:] = (node[1:] != node[:-1]) | (nbr[1:] != nbr[:-1])
    node, nbr = node[distinct], nbr[distinct]
    starts = np.flatnonzero(np.concatenate(([True], node[1:] != node[:-1])))
    sizes = np.diff(np.append(starts, node.size))
    smaller_n = np.add.reduceat((nbr < node).astype(_I64), starts)
    unsettled = int(np.count_nonzero((smaller_n > 1) | ((smaller_n == 1) & (sizes > 1))))
    m = np.repeat(np.minimum(node[starts], nbr[starts]), sizes)  # nbr sorted: first is smallest
    if large:
        up = nbr > node
        return {"i": nbr[up], "j": m[up]}, unsettled
    down = (nbr < node) & (nbr != m)
    hub = starts[smaller_n > 0]  # nodes with a smaller neighbour: u -> m
    return {"i": np.concatenate((nbr[down], node[hub])),
            "j": np.concatenate((m[down], m[starts][smaller_n > 0]))}, unsettled


def _parts_for(rows: int) -> int:
    import ray

    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    return max(2, cpus, -(-rows // _ROWS_PER_PART))


def _shuffle(blocks: list[Any], route: Any, reduce: Any, parts: int, route_args: tuple = (),
             reduce_args: tuple = (), reduce_returns: int = 1) -> list[Any]:
    """Map ``route`` over the blocks (each returns ``parts`` pieces), then ``reduce`` over each
    partition's pieces; the reduce tasks' results (object refs)."""
    import ray

    mapper = ray.remote(route).options(num_returns=parts)
    pieces = [mapper.remote(b, *route_args) for b in blocks]
    reducer = ray.remote(reduce).options(num_returns=reduce_returns)
    return [reducer.remote(*reduce_args, *(p[k] for p in pieces)) for k in range(parts)]


def connected_components_ray(blocks: list[Any], edges: int,
                             max_rounds: int = 200) -> tuple[list[Any], int]:
    """Connected components of the undirected graph whose edges are the rows ``(i, j)`` of the
    blocks ``blocks`` (object refs of column dicts; self-loops and duplicates allowed), about
    ``edges`` of them (it sizes the partitions).

    Returns object refs of blocks of rows ``(i, j)`` pairing every node of the graph except each
    component's smallest with that smallest node (its root), and the number of rounds it took.
    Alternates large-star and small-star rounds (see :func:`_star_round`) until one finds its
    input settled. Only one integer per partition and round comes back to the driver."""
    import ray

    parts = _parts_for(2 * edges)
    for rounds in range(1, max_rounds + 1):
        out = _shuffle(blocks, _route_both_ways, _star_round, parts, (parts,),
                       (rounds % 2 == 1,), reduce_returns=2)
        if not sum(ray.get([unsettled for _, unsettled in out])):
            # Stars are a fixed point: the output's edges are its input's, now known settled.
            return [edges for edges, _ in out], rounds
        blocks = [edges for edges, _ in out]
    raise RuntimeError(f"connected components did not settle in {max_rounds} rounds")


def _route_by_first(block: Block, parts: int) -> list[Block]:
    """Verified pairs (with ``eq``) or star edges (leaf -> root, given ``eq`` = -1), by the
    partition of their first node."""
    eq = block["eq"] if "eq" in block else np.full(block["i"].size, -1, dtype=_I64)
    return _split({"i": block["i"], "j": block["j"], "eq": eq}, block["i"], parts)


def _tag_with_root(parts: int, *pieces: Block) -> list[Block]:
    """Each verified pair (keyed by its smaller record) with its component's root, which the
    star forest gives (a record without a star edge of its own is a root), routed by the root."""
    part = _concat(pieces)
    is_edge = part["eq"] >= 0
    leaves, roots = part["i"][~is_edge], part["j"][~is_edge]
    order = np.argsort(leaves, kind="stable")
    leaves, roots = leaves[order], roots[order]
    i, j, eq = part["i"][is_edge], part["j"][is_edge], part["eq"][is_edge]
    root = i.copy()
    if leaves.size:
        at = np.minimum(np.searchsorted(leaves, i), leaves.size - 1)
        hit = leaves[at] == i
        root[hit] = roots[at[hit]]
    return _split({"root": root, "i": i, "j": j, "eq": eq}, root, parts)


def _decide(num_perm: int, *pieces: Block) -> Block:
    """The local engine's greedy keep rule on the verified pairs of whole components (the rule
    never looks across components, so running it on several at once changes nothing)."""
    part = _concat(pieces)
    i, j = part["i"], part["j"]
    nodes = np.unique(np.concatenate((i, j)))
    li, lj = np.searchsorted(nodes, i), np.searchsorted(nodes, j)
    kept, similarity = _keep_greedily(nodes.size, np.arange(nodes.size), li, lj, part["eq"],
                                      num_perm)
    root = np.empty(nodes.size, dtype=_I64)
    root[li] = part["root"]
    root[lj] = part["root"]
    return {"node": nodes, "root": root, "kept": nodes[kept], "sim": similarity}


def decide_ray(verified: list[Any], pairs: int, num_perm: int) -> tuple[list[Any], int]:
    """Components and keep decisions of the ~``pairs`` verified pairs in the blocks
    ``verified`` (object refs of ``(i, j, eq)`` column dicts): refs of blocks ``(node, root,
    kept, sim)`` for every record in a pair, and the rounds the components took."""
    import ray

    stars, rounds = connected_components_ray(verified, pairs)
    parts = _parts_for(2 * pairs)
    tagged = _shuffle(verified + stars, _route_by_first, _tag_with_root, parts, (parts,),
                      (parts,), reduce_returns=parts)
    decide = ray.remote(_decide)
    return [decide.remote(num_perm, *(t[k] for t in tagged)) for k in range(parts)], rounds


# -- the engine -------------------------------------------------------------------------------
def find_duplicates_ray(texts: Sequence[str], config: DedupConfig | None = None, *,
                        guards: Sequence[Hashable] | None = None, batch_size: int = 4096,
                        stats: dict[str, Any] | None = None) -> Clustering:
    """:func:`~dataprep.dedup.find_duplicates` run on the connected Ray cluster (``ray.init``
    first); the result is identical (see the module docstring for the steps)."""
    import pyarrow as pa
    import ray
    import ray.data

    cfg = config or DedupConfig()
    n = len(texts)
    if n == 0:
        return find_duplicates([], cfg, stats=stats)
    ray.data.DataContext.get_current().enable_progress_bars = False
    table = pa.table({"row": np.arange(n, dtype=_I64),
                      "text": pa.array(list(texts), pa.large_string())})
    signed = ray.data.from_arrow(table).map_batches(
        _Sign, fn_constructor_args=(cfg.num_perm, cfg.ngram, cfg.seed), batch_size=batch_size,
        batch_format="numpy", concurrency=1 if n <= batch_size else None).materialize()
    del table
    key_hash = np.empty(n, dtype=np.uint64)
    empty = np.empty(n, dtype=bool)
    for b in signed.select_columns(["row", "key_hash", "empty"]).iter_batches(
            batch_size=None, batch_format="numpy"):
        key_hash[b["row"]] = b["key_hash"]
        empty[b["row"]] = b["empty"]
    # np.unique's return_index is each key's first occurrence: the local "first record wins".
    _, first, inverse = np.unique(key_hash, return_index=True, return_inverse=True)
    exact_rep = first.astype(_I64)[inverse.reshape(-1)]
    indexed = (exact_rep == np.arange(n)) & ~empty if cfg.near else np.zeros(n, dtype=bool)
    bands, rows_per_band = cfg.bands()
    n_indexed = int(indexed.sum())
    vroot = np.arange(n, dtype=_I64)
    vkept = np.arange(n, dtype=_I64)
    vsim = np.ones(n, dtype=np.float32)
    candidates = 0
    keys = np.empty(0, dtype=np.uint64)
    eqs = np.empty(0, dtype=_I64)
    if n_indexed > 1:
        sigs = signed.map_batches(_indexed, fn_args=(indexed,),
                                  batch_format="numpy").materialize()
        del signed
        table_ref = ray.remote(_gather).remote(*sigs.to_numpy_refs())
        parts = _parts_for(bands * n_indexed)
        pairs = (sigs.map_batches(_band_rows, fn_args=(bands, rows_per_band, parts),
                                  batch_format="numpy")
                 .groupby("part").map_groups(_bucket_pairs, batch_format="numpy")
                 .materialize())
        candidates = pairs.count()
        gid = _guard_ids(guards, n)
        verified = pairs.map_batches(
            _Verify, fn_constructor_args=([table_ref], [] if gid is None else [ray.put(gid)],
                                          cfg.min_equal),
            batch_size=1 << 16, batch_format="numpy", concurrency=(1, 2)).materialize()
        del pairs, sigs
        found = [(b["i"], b["j"], b["eq"]) for b in verified.iter_batches(
            batch_size=None, batch_format="numpy") if b["i"].size]
        keys, eqs = merge_pairs(
            [(i.astype(np.uint64) << np.uint64(32)) | j.astype(np.uint64) for i, j, _ in found],
            [e for _, _, e in found])
        if keys.size:
            decided, _ = decide_ray(verified.to_numpy_refs(), int(keys.size), cfg.num_perm)
            for b in ray.get(decided):
                vroot[b["node"]] = b["root"]
                vkept[b["node"]] = b["kept"]
                vsim[b["node"]] = b["sim"]
    ei, ej = split_keys(keys)
    if stats is not None:
        stats.update(lsh_bands=bands, lsh_rows=rows_per_band, indexed=n_indexed,
                     candidates=candidates, verified_pairs=int(ei.size),
                     signature_bytes=n_indexed * cfg.num_perm * 4)
    # Exact copies follow the first record with their key (which is never removed in favour of
    # a copy, and whose component is theirs): the local engine's rule.
    return Clustering(kept=vkept[exact_rep], roots=vroot[exact_rep], exact_rep=exact_rep,
                      key_hash=key_hash, similarity=vsim[exact_rep], edge_i=ei, edge_j=ej,
                      edge_sim=(eqs / cfg.num_perm).astype(np.float32))
