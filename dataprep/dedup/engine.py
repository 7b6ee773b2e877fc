"""Exact and near duplicates of many texts: the decisions (keep the first, remove its twins) and
the connected components the split stage moves together."""

from __future__ import annotations

import array
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from dataprep.dedup.lsh import BandIndex, optimal_bands, self_join
from dataprep.dedup.minhash import MinHasher, shingle_hashes
from dataprep.dedup.normalize import key_hashes, normalize_batch
from dataprep.errors import ConfigError

# Chosen by measurement on the labelled set (`python -m bench.neardup_eval --grid`: perturbed
# copies of real lab/SPO/CMRC/DuReader records next to distinct real records). Our samples are
# short (a lab dialog key is ~50 normalised characters), so every edited character costs a large
# share of the n-grams: 5-grams at 0.7 found only 78% of the copies. 3-grams at 0.7: recall 0.957,
# precision 0.995 (they merge hotel requests that differ in one hotel name); 4-grams at 0.65:
# recall 0.949, precision 1.000 (0 wrong of 909 clustered pairs). 128 permutations: 256 gained
# <1 point of recall for twice the MinHash time and LSH memory.
DEFAULT_THRESHOLD = 0.65
DEFAULT_NGRAM = 4
DEFAULT_NUM_PERM = 128
DEFAULT_SEED = 1
# Balancing LSH false positives and false negatives 50/50 (datasketch's default) makes a pair
# right at the threshold a candidate only ~40% of the time (0.65, 128 permutations: 16 bands x 8
# rows). Every candidate is verified against its signature anyway, so a false positive costs one
# comparison while a false negative is a missed duplicate: lean towards recall (21 bands x 6 rows,
# 81% at the threshold; measured recall 0.901 -> 0.948 on the labelled set, precision unchanged).
DEFAULT_LSH_WEIGHTS = (0.2, 0.8)


@dataclass
class DedupConfig:
    """Matching parameters shared by ``dedup``, ``split`` and the benches."""

    threshold: float = DEFAULT_THRESHOLD
    """Estimated Jaccard similarity of n-gram sets at or above which two records are duplicates."""
    ngram: int = DEFAULT_NGRAM
    """Characters per shingle, counted on the normalised text."""
    num_perm: int = DEFAULT_NUM_PERM
    """MinHash permutations (signature length)."""
    seed: int = DEFAULT_SEED
    """Seed of the MinHash permutations."""
    near: bool = True
    """Also look for near duplicates (False: exact duplicates of the normalised key only)."""
    lsh_weights: tuple[float, float] = DEFAULT_LSH_WEIGHTS
    """(false positive, false negative) weights for the choice of LSH bands and rows."""

    def __post_init__(self) -> None:
        if not 0.0 < float(self.threshold) <= 1.0:
            raise ConfigError(f"dedup threshold must be in (0, 1], got {self.threshold!r}; "
                              f"{DEFAULT_THRESHOLD} is the measured default")
        if not isinstance(self.ngram, int) or self.ngram < 1:
            raise ConfigError(f"dedup ngram must be a positive integer, got {self.ngram!r}")
        if not isinstance(self.num_perm, int) or self.num_perm < 16:
            raise ConfigError(f"dedup num_perm must be an integer >= 16, got {self.num_perm!r}")
        self.threshold = float(self.threshold)
        fp, fn = (float(w) for w in self.lsh_weights)
        if fp < 0 or fn < 0 or abs(fp + fn - 1.0) > 1e-9:
            raise ConfigError(f"dedup lsh_weights must be two non-negative numbers summing to 1 "
                              f"(false positive, false negative), got {list(self.lsh_weights)}")
        self.lsh_weights = (fp, fn)

    @property
    def min_equal(self) -> int:
        """Signature slots that must agree: the threshold on the integer count, so that float
        rounding never decides a borderline pair."""
        return int(np.ceil(self.threshold * self.num_perm - 1e-9))

    def bands(self) -> tuple[int, int]:
        """The LSH shape (bands, rows) for this threshold, signature length and weights."""
        return optimal_bands(self.threshold, self.num_perm, self.lsh_weights)


class UnionFind:
    """Disjoint sets over ``0..n-1`` whose root is always the smallest member.

    >>> uf = UnionFind(4)
    >>> uf.union(3, 1), uf.union(1, 2), [uf.find(i) for i in range(4)]
    (1, 1, [0, 1, 1, 1])
    """

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]  # path halving
            x = int(parent[x])
        return x

    def union(self, x: int, y: int) -> int:
        rx, ry = self.find(x), self.find(y)
        if rx == ry:
            return rx
        lo, hi = (rx, ry) if rx < ry else (ry, rx)
        # Linking the larger root under the smaller keeps "root = first record in input order",
        # which is the deterministic keep rule.
        self.parent[hi] = lo
        return lo

    def roots(self) -> np.ndarray:
        """The root of every element, fully compressed."""
        parent = self.parent
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                return parent.copy()
            parent[:] = grand


@dataclass
class Clustering:
    """Duplicate decisions and clusters over records ``0..n-1`` (in input order).

    Two views of the same verified pairs:

    * ``kept[i]``: the record i is removed in favour of (itself when kept). Decided greedily in
      input order: a record is removed when it is an exact duplicate of, or verified similar to, a
      record already kept (the most similar one; ties to the earliest); otherwise it is kept. So
      every removed record is directly similar to its kept twin (no drift along chains of small
      edits), and no two kept records are a verified pair.
    * ``roots[i]``: the first record of i's connected component under all verified pairs. Used
      where nothing is removed and whole components must move together (the split stage); chains
      do join here, on purpose.

    ``exact_rep[i]`` is the first record with the same normalised key, ``key_hash[i]`` that key's
    64-bit hash, ``similarity[i]`` the estimated Jaccard of i with ``kept[i]`` (1.0 for exact and
    kept records). The verified pairs between first-of-key records are three arrays,
    ``edge_i < edge_j`` and ``edge_sim``; :attr:`edges` lists them as tuples.
    """

    kept: np.ndarray
    roots: np.ndarray
    exact_rep: np.ndarray
    key_hash: np.ndarray
    similarity: np.ndarray
    edge_i: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    edge_j: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    edge_sim: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.kept)

    @property
    def edges(self) -> list[tuple[int, int, float]]:
        """The verified pairs ``(i, j, estimated_jaccard)``, ``i < j``, sorted."""
        return list(zip(self.edge_i.tolist(), self.edge_j.tolist(), self.edge_sim.tolist(),
                        strict=True))

    def is_kept(self, i: int) -> bool:
        return int(self.kept[i]) == i

    def reason(self, i: int) -> str | None:
        """None for a kept record, else ``exact_duplicate`` (same normalised key as its kept twin)
        or ``near_duplicate``."""
        twin = int(self.kept[i])
        if twin == i:
            return None
        return "exact_duplicate" if self.key_hash[i] == self.key_hash[twin] else "near_duplicate"

    @staticmethod
    def _groups(labels: np.ndarray) -> dict[int, list[int]]:
        order = np.argsort(labels, kind="stable")
        bounds = np.flatnonzero(np.diff(labels[order])) + 1
        return {int(m[0]): [int(x) for x in m] for m in np.split(order, bounds) if len(m) > 1}

    def clusters(self) -> dict[int, list[int]]:
        """Kept record -> itself and the records removed in its favour (only clusters > 1)."""
        return self._groups(self.kept)

    def components(self) -> dict[int, list[int]]:
        """First record -> all records connected to it (only components > 1)."""
        return self._groups(self.roots)

    def removed(self) -> int:
        return int(np.count_nonzero(self.kept != np.arange(len(self.kept))))


def _batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class _SignatureStore:
    """A growing uint32 matrix: one signature per indexed record, nothing else."""

    def __init__(self, num_perm: int, capacity: int) -> None:
        self._sigs = np.empty((max(capacity, 16), num_perm), dtype=np.uint32)
        self.n = 0

    def extend(self, sigs: np.ndarray) -> None:
        need = self.n + len(sigs)
        if need > len(self._sigs):
            grown = np.empty((max(need, 2 * len(self._sigs)), self._sigs.shape[1]), np.uint32)
            grown[:self.n] = self._sigs[:self.n]
            self._sigs = grown
        self._sigs[self.n:need] = sigs
        self.n = need

    def matrix(self) -> np.ndarray:
        return self._sigs[:self.n]


def _select(cps: np.ndarray, lens: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The code points and lengths of the texts ``rows`` of a batch."""
    mask = np.zeros(lens.size, dtype=bool)
    mask[rows] = True
    return cps[np.repeat(mask, lens)], lens[rows]


def _guard_ids(guards: Sequence[Hashable] | None, n: int) -> np.ndarray | None:
    if guards is None:
        return None
    ids: dict[Hashable, int] = {}
    return np.fromiter((ids.setdefault(g, len(ids)) for g in guards), dtype=np.int64, count=n)


def _keep_greedily(n: int, exact_rep: np.ndarray, ei: np.ndarray, ej: np.ndarray,
                   eq: np.ndarray, num_perm: int) -> tuple[np.ndarray, np.ndarray]:
    """``kept`` and ``similarity`` from the verified pairs (see :class:`Clustering`)."""
    kept = np.arange(n, dtype=np.int64)
    similarity = np.ones(n, dtype=np.float32)
    # In input order of the later record; its candidates by similarity, then earliest first.
    order = np.lexsort((ei, -eq, ej))
    kept_list = kept.tolist()
    decided = -1
    for i, j, e in zip(ei[order].tolist(), ej[order].tolist(), eq[order].tolist(), strict=True):
        if j != decided and kept_list[i] == i:
            kept_list[j] = i
            similarity[j] = e / num_perm
            decided = j
    kept = np.asarray(kept_list, dtype=np.int64)
    # Exact copies follow the first record with their key, whose decision is final.
    return kept[exact_rep], similarity[exact_rep]


def _components(n: int, exact_rep: np.ndarray, ei: np.ndarray, ej: np.ndarray) -> np.ndarray:
    """The smallest member of each record's connected component (exact copies and verified
    pairs), with scipy's connected components (one sparse graph, no Python loop per edge)."""
    rows = np.concatenate((np.arange(n), ei))
    cols = np.concatenate((exact_rep, ej))
    graph = coo_matrix((np.ones(rows.size, dtype=np.int8), (rows, cols)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    first = np.full(labels.max() + 1 if n else 0, n, dtype=np.int64)
    np.minimum.at(first, labels, np.arange(n))
    return first[labels]


def find_duplicates(texts: Iterable[str], config: DedupConfig | None = None, *,
                    guards: Sequence[Hashable] | None = None, batch_size: int = 4096,
                    on_batch: Callable[[int], None] | None = None,
                    stats: dict[str, Any] | None = None) -> Clustering:
    """Cluster texts into exact and near duplicates (see the package docstring).

    Records are streamed: per record only its 64-bit key hash, a few integers and, for the first
    record of each normalised key, its signature are held, never the texts. ``guards[i]``
    (optional) must be equal for two records to be near duplicates, e.g. :func:`call_signature`
    so that dialogs making different tool calls are never merged; exact duplicates ignore it.
    ``on_batch(n)`` is called after each batch. ``stats``, when given, receives the LSH shape
    and the candidate counts.

    >>> r = find_duplicates(["北京新世界酒店的早餐服务", "北京新世界酒店的早餐服务！", "上海浦东"],
    ...                     DedupConfig(ngram=3))
    >>> r.kept.tolist(), r.clusters()
    ([0, 0, 2], {0: [0, 1]})
    """
    cfg = config or DedupConfig()
    hasher = MinHasher(cfg.num_perm, cfg.ngram, cfg.seed)
    store = _SignatureStore(cfg.num_perm, len(texts) if isinstance(texts, Sequence) else 1024)
    indexed: list[np.ndarray] = []  # record number of each stored signature
    first_of_key: dict[int, int] = {}
    # 8 bytes per record each (a list would hold a Python int object per entry).
    hashes = array.array("Q")
    exact_rep = array.array("q")
    n = 0
    for batch in _batched(texts, batch_size):
        cps, lens = normalize_batch(batch)
        batch_hashes = key_hashes(cps, lens)
        first = first_of_key.setdefault
        reps = [first(h, i) for i, h in enumerate(batch_hashes, start=n)]
        hashes.extend(batch_hashes)
        exact_rep.extend(reps)
        rows = np.flatnonzero((np.asarray(reps) == np.arange(n, n + len(batch))) & (lens > 0))
        if cfg.near and rows.size:
            store.extend(hasher.from_codepoints(*_select(cps, lens, rows)))
            indexed.append(rows + n)
        n += len(batch)
        if on_batch is not None:
            on_batch(len(batch))
    records = np.concatenate(indexed) if indexed else np.empty(0, dtype=np.int64)
    return cluster_signatures(np.frombuffer(exact_rep, dtype=np.int64).copy(),
                              np.frombuffer(hashes, dtype=np.uint64).copy(), records,
                              store.matrix(), cfg, guards=guards, stats=stats)


PairFinder = Callable[[np.ndarray, int, int, int, dict], tuple[np.ndarray, np.ndarray, np.ndarray]]


def cluster_signatures(exact_rep: np.ndarray, key_hash: np.ndarray, records: np.ndarray,
                       sigs: np.ndarray, cfg: DedupConfig, *,
                       guards: Sequence[Hashable] | None = None,
                       stats: dict[str, Any] | None = None,
                       pairs: PairFinder = self_join) -> Clustering:
    """The decisions from what the streaming pass collected: the first record with each key
    (``exact_rep``), the key hashes, and the signatures ``sigs`` of the records ``records``
    (ascending). ``pairs`` finds the verified pairs among the signatures (:func:`self_join`,
    or a distributed one with the same result)."""
    n = exact_rep.size
    bands, rows_per_band = cfg.bands()
    engine: dict[str, int] = {"candidates": 0}
    ki, kj, eq = pairs(sigs, bands, rows_per_band, cfg.min_equal, engine)
    ei, ej = records[ki], records[kj]  # stored in input order, so ei < ej still
    gid = _guard_ids(guards, n)
    if gid is not None and ei.size:
        same = gid[ei] == gid[ej]
        ei, ej, eq = ei[same], ej[same], eq[same]
    kept, similarity = _keep_greedily(n, exact_rep, ei, ej, eq, cfg.num_perm)
    if stats is not None:
        stats.update(lsh_bands=bands, lsh_rows=rows_per_band, indexed=int(records.size),
                     candidates=engine["candidates"], verified_pairs=int(ei.size),
                     signature_bytes=int(sigs.nbytes))
    return Clustering(kept=kept, roots=_components(n, exact_rep, ei, ej), exact_rep=exact_rep,
                      key_hash=key_hash, similarity=similarity, edge_i=ei, edge_j=ej,
                      edge_sim=(eq / cfg.num_perm).astype(np.float32))


def cross_matches(index_texts: Iterable[str], query_texts: Iterable[str],
                  config: DedupConfig | None = None, *,
                  index_guards: Sequence[Hashable] | None = None,
                  query_guards: Sequence[Hashable] | None = None) -> list[tuple[int, int, float]]:
    """Pairs ``(query_i, index_j, similarity)`` where a query text is an exact (similarity 1.0)
    or near duplicate of an indexed text (with equal guards, when given; see
    :func:`find_duplicates`); the best match per query, ties to the earliest indexed text. Used
    to audit leakage: index train, query dev/test.

    >>> cross_matches(["北京新世界酒店的早餐服务"], ["北京新世界酒店的早餐服务！", "上海"],
    ...               DedupConfig(ngram=3))
    [(0, 0, 1.0)]
    """
    cfg = config or DedupConfig()
    hasher = MinHasher(cfg.num_perm, cfg.ngram, cfg.seed)
    bands, rows_per_band = cfg.bands()
    exact: dict[int, int] = {}
    store = _SignatureStore(cfg.num_perm, 1024)
    index_rows: list[np.ndarray] = []
    j0 = 0
    for batch in _batched(index_texts, 4096):
        cps, lens = normalize_batch(batch)
        for row, h in enumerate(key_hashes(cps, lens)):
            exact.setdefault(h, j0 + row)
        rows = np.flatnonzero(lens)
        if cfg.near and rows.size:
            store.extend(hasher.from_codepoints(*_select(cps, lens, rows)))
            index_rows.append(rows + j0)
        j0 += len(batch)
    index = BandIndex(store.matrix(), bands, rows_per_band)
    to_record = np.concatenate(index_rows) if index_rows else np.empty(0, dtype=np.int64)
    guarded = index_guards is not None and query_guards is not None
    out: list[tuple[int, int, float]] = []
    i0 = 0
    for batch in _batched(query_texts, 4096):
        cps, lens = normalize_batch(batch)
        best: dict[int, tuple[int, int]] = {}  # query row -> (equal slots, index record)
        near = []
        for row, h in enumerate(key_hashes(cps, lens)):
            if h in exact:
                best[row] = (cfg.num_perm, exact[h])
            elif lens[row]:
                near.append(row)
        if cfg.near and near and store.n:
            rows = np.asarray(near, dtype=np.int64)
            q, k, eq = index.query(hasher.from_codepoints(*_select(cps, lens, rows)),
                                   cfg.min_equal)
            for r, j, e in zip(rows[q].tolist(), to_record[k].tolist(), eq.tolist(), strict=True):
                if guarded and index_guards[j] != query_guards[i0 + r]:  # type: ignore[index]
                    continue
                if r not in best or (e, -j) > (best[r][0], -best[r][1]):
                    best[r] = (e, j)
        out.extend((i0 + r, j, e / cfg.num_perm) for r, (e, j) in sorted(best.items()))
        i0 += len(batch)
    return out


def exact_jaccard(a: str, b: str, ngram: int = DEFAULT_NGRAM) -> float:
    """Jaccard similarity of the n-gram sets of two texts after normalisation (for reports).

    >>> round(exact_jaccard("北京新世界酒店", "北京新世界饭店", 2), 3)
    0.5
    """
    cps, lens = normalize_batch([a, b])
    sets: list[set[int]] = [set(), set()]
    for rows, hashes, offsets in shingle_hashes(cps, lens, ngram):
        for k, r in enumerate(rows.tolist()):
            sets[r] = set(hashes[offsets[k]:offsets[k + 1]].tolist())
    if not sets[0] and not sets[1]:
        return 1.0
    return len(sets[0] & sets[1]) / len(sets[0] | sets[1])
