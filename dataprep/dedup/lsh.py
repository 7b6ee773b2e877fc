"""LSH banding over a signature matrix, as sort-joins on compact arrays.

A signature of ``num_perm`` slots is cut into ``bands`` bands of ``rows`` slots; two records are a
candidate pair when all slots of one band agree. Each band is hashed to one uint64 per record, the
band hashes are sorted, and records with equal hashes are paired; every candidate is then verified
on the full signatures (estimated Jaccard >= threshold). Per record this holds the signature plus
one band hash and one sort index at a time: ~0.5 KB at 128 slots, against ~8 KB for datasketch's
``MinHashLSH`` (a bytes key and a Python set per band per record) and ~1.7 KB for rensa's
``RMinHashLSH`` at 16 bands. rensa's index also answers only one ``RMinHash`` object per query,
while this self-join is a whole-matrix operation, the same "band groupby" that a distributed
engine runs.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np

# Candidate pairs gathered before they are de-duplicated and verified: bounds memory (~50 bytes
# per pending pair with the sort and the split into i, j: ~100 MB) whatever the bucket sizes.
# Larger batches verify a pair seen in several bands fewer times, but at 2^22 this fixed buffer
# alone was ~0.2 KB per record at 1M records (measured by bench/bench_dedup.py).
_PENDING = 1 << 21
# Pairs verified at once: the two gathered signature blocks are 2 x 64k x 512 bytes.
_VERIFY = 1 << 16
_MIX = np.uint64(0x9E3779B97F4A7C15)


@functools.lru_cache(maxsize=64)
def optimal_bands(threshold: float, num_perm: int, weights: tuple[float, float]
                  ) -> tuple[int, int]:
    """(bands, rows) with ``bands * rows <= num_perm`` minimising the weighted areas of false
    positives (below the threshold) and false negatives (above it) of the S-curve
    ``1 - (1 - s**rows)**bands``: the criterion of datasketch's ``MinHashLSH``, integrated on a
    fine grid instead of with ``scipy.integrate.quad`` (a test checks both agree).

    >>> optimal_bands(0.65, 128, (0.2, 0.8)), optimal_bands(0.65, 128, (0.5, 0.5))
    ((21, 6), (16, 8))
    """
    fp_w, fn_w = weights
    grid = np.linspace(0.0, 1.0, 4001)
    below, above = grid <= threshold, grid >= threshold
    best: tuple[float, int, int] | None = None
    for b in range(1, num_perm + 1):
        r = np.arange(1, num_perm // b + 1)[:, None]
        p = 1.0 - (1.0 - grid[None, :] ** r) ** b
        fp = np.trapezoid(np.where(below, p, 0.0), grid, axis=1)
        fn = np.trapezoid(np.where(above, 1.0 - p, 0.0), grid, axis=1)
        err = fp_w * fp + fn_w * fn
        k = int(np.argmin(err))
        if best is None or err[k] < best[0]:
            best = (float(err[k]), b, k + 1)
    assert best is not None
    return best[1], best[2]


def band_hashes(sigs: np.ndarray, band: int, rows: int) -> np.ndarray:
    """One uint64 per signature for the slots ``band * rows .. (band + 1) * rows - 1``."""
    block = sigs[:, band * rows:(band + 1) * rows].astype(np.uint64)
    h = np.full(len(sigs), np.uint64(band), dtype=np.uint64)
    for k in range(rows):
        h = (h ^ block[:, k]) * _MIX
        h ^= h >> np.uint64(29)
    return h


def _group_pairs(order: np.ndarray, sorted_hashes: np.ndarray) -> Iterator[np.ndarray]:
    """All pairs inside runs of equal hashes, as ``(i << 32) | j`` with ``i < j``, in chunks."""
    n = sorted_hashes.size
    if n < 2:
        return
    new_run = np.concatenate(([True], sorted_hashes[1:] != sorted_hashes[:-1]))
    run_end = np.concatenate((np.flatnonzero(new_run)[1:], [n]))[np.cumsum(new_run) - 1]
    later = run_end - np.arange(n) - 1  # partners after each position in its run
    pos = np.flatnonzero(later)
    if pos.size == 0:
        return
    counts = later[pos]
    bounds = np.cumsum(counts)
    p0 = 0
    while p0 < pos.size:
        # Positions whose pairs fit one chunk (always at least one position).
        base = int(bounds[p0 - 1]) if p0 else 0
        p1 = max(int(np.searchsorted(bounds, base + _PENDING, side="right")), p0 + 1)
        c = counts[p0:p1]
        first = np.repeat(pos[p0:p1], c)
        step = np.arange(first.size) - np.repeat(np.cumsum(c) - c, c) + 1
        a, b = order[first], order[first + step]
        yield ((np.minimum(a, b).astype(np.uint64) << np.uint64(32))
               | np.maximum(a, b).astype(np.uint64))
        p0 = p1


def _distinct(keys: np.ndarray) -> np.ndarray:
    # Sort and drop repeats: np.unique's hash table is 3-5x slower on these uint64 keys.
    keys.sort()
    return keys[np.concatenate(([True], keys[1:] != keys[:-1]))] if keys.size else keys


def low_bytes(sigs: np.ndarray) -> np.ndarray:
    """The low byte of every slot: a quarter of the signature, for :func:`verify`'s pre-check."""
    return sigs.astype(np.uint8)


def verify(sigs_a: np.ndarray, sigs_b: np.ndarray, a: np.ndarray, b: np.ndarray,
           min_equal: int, low_a: np.ndarray | None = None, low_b: np.ndarray | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """Of the pairs ``(a[k], b[k])``, those whose signatures agree in at least ``min_equal``
    slots: their positions in ``a``/``b`` and their agreeing slot counts.

    With the signatures' :func:`low_bytes`, pairs are first counted on those: two slots that
    agree also agree in their low byte, so a pair below ``min_equal`` there is below it in full,
    and only the rest (about the true matches) are compared in full. Verification reads random
    rows, so a quarter of the bytes is ~2x faster on the many candidates that fail."""
    keep: list[np.ndarray] = []
    equal: list[np.ndarray] = []
    for s in range(0, a.size, _VERIFY):
        ca, cb = a[s:s + _VERIFY], b[s:s + _VERIFY]
        idx = np.arange(ca.size)
        if low_a is not None and low_b is not None:
            idx = np.flatnonzero(np.count_nonzero(low_a[ca] == low_b[cb], axis=1) >= min_equal)
            ca, cb = ca[idx], cb[idx]
        eq = np.count_nonzero(sigs_a[ca] == sigs_b[cb], axis=1)
        ok = np.flatnonzero(eq >= min_equal)
        keep.append(idx[ok] + s)
        equal.append(eq[ok])
    if not keep:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    return np.concatenate(keep), np.concatenate(equal)


def self_join(sigs: np.ndarray, bands: int, rows: int, min_equal: int,
              stats: dict[str, int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Verified pairs among the rows of ``sigs``: ``(i, j, equal_slots)`` arrays, ``i < j``,
    sorted by ``(i, j)``. ``stats["candidates"]`` receives the LSH candidates: pairs that share a
    band, counted once per band they share."""
    found_keys: list[np.ndarray] = []
    found_eq: list[np.ndarray] = []
    pending: list[np.ndarray] = []
    size = candidates = 0
    low = low_bytes(sigs)

    def flush() -> None:
        nonlocal size
        keys = _distinct(np.concatenate(pending))
        pending.clear()
        size = 0
        ok, eq = verify(sigs, sigs, *split_keys(keys), min_equal, low, low)
        found_keys.append(keys[ok])
        found_eq.append(eq)

    for band in range(bands):
        h = band_hashes(sigs, band, rows)
        order = np.argsort(h)
        for chunk in _group_pairs(order, h[order]):
            pending.append(chunk)
            size += chunk.size
            candidates += chunk.size
            if size >= _PENDING:
                flush()
        del h, order
    if pending:
        flush()
    if stats is not None:
        stats["candidates"] = stats.get("candidates", 0) + candidates
    keys, eq = merge_pairs(found_keys, found_eq)
    return (*split_keys(keys), eq)


def band_pairs(sigs: np.ndarray, band: int, rows: int, min_equal: int
               ) -> tuple[np.ndarray, np.ndarray, int]:
    """One band's share of :func:`self_join`: the verified pairs among the candidates of band
    ``band`` as sorted ``(i << 32) | j`` keys, their agreeing slot counts, and the number of
    candidates. The union over all bands is :func:`self_join`'s result (what a distributed
    engine computes one band per task)."""
    h = band_hashes(sigs, band, rows)
    order = np.argsort(h)
    keys_out: list[np.ndarray] = []
    eq_out: list[np.ndarray] = []
    candidates = 0
    low = low_bytes(sigs)
    for chunk in _group_pairs(order, h[order]):
        candidates += chunk.size
        keys = _distinct(chunk)
        ok, eq = verify(sigs, sigs, *split_keys(keys), min_equal, low, low)
        keys_out.append(keys[ok])
        eq_out.append(eq)
    if not keys_out:
        return np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.int64), 0
    return merge_pairs(keys_out, eq_out) + (candidates,)


def merge_pairs(keys: list[np.ndarray], eq: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate verified pair keys from several rounds, sorted, each pair once."""
    k = np.concatenate(keys) if keys else np.empty(0, dtype=np.uint64)
    e = np.concatenate(eq) if eq else np.empty(0, dtype=np.int64)
    order = np.argsort(k, kind="stable")
    k, e = k[order], e[order]
    # A pair verified in two rounds appears twice, with the same count.
    first = np.concatenate(([True], k[1:] != k[:-1])) if k.size else np.empty(0, dtype=bool)
    return k[first], e[first]


def split_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(i << 32) | j`` keys -> the arrays i and j."""
    return ((keys >> np.uint64(32)).astype(np.int64),
            (keys & np.uint64(0xFFFFFFFF)).astype(np.int64))


class BandIndex:
    """A fixed set of signatures, banded and sorted for queries by other signatures.

    >>> sigs = np.array([[1, 2, 3, 4], [1, 2, 9, 9], [5, 6, 7, 8]], dtype=np.uint32)
    >>> q, k, eq = BandIndex(sigs, 2, 2).query(np.array([[1, 2, 3, 5]], dtype=np.uint32), 3)
    >>> q.tolist(), k.tolist(), eq.tolist()
    ([0], [0], [3])
    """

    def __init__(self, sigs: np.ndarray, bands: int, rows: int) -> None:
        self.sigs = sigs
        self.bands = bands
        self.rows = rows
        self._low = low_bytes(sigs)
        self._tables: list[tuple[np.ndarray, np.ndarray]] = []
        for band in range(bands):
            h = band_hashes(sigs, band, rows)
            order = np.argsort(h)
            self._tables.append((h[order], order))

    def query(self, qsigs: np.ndarray, min_equal: int,
              stats: dict[str, int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Verified ``(query_row, key, equal_slots)`` arrays, sorted by query row then key."""
        pending: list[np.ndarray] = []
        for band, (sorted_h, order) in enumerate(self._tables):
            h = band_hashes(qsigs, band, self.rows)
            lo = np.searchsorted(sorted_h, h, side="left")
            hi = np.searchsorted(sorted_h, h, side="right")
            hits = hi - lo
            q = np.repeat(np.arange(len(qsigs), dtype=np.uint64), hits)
            at = np.repeat(lo, hits) + np.arange(int(hits.sum())) - np.repeat(np.cumsum(hits) - hits,
                                                                               hits)
            pending.append((q << np.uint64(32)) | order[at].astype(np.uint64))
        keys = _distinct(np.concatenate(pending))
        if stats is not None:
            stats["candidates"] = stats.get("candidates", 0) + keys.size
        q, k = split_keys(keys)
        ok, eq = verify(qsigs, self.sigs, q, k, min_equal, low_bytes(qsigs), self._low)
        return q[ok], k[ok], eq

    def nbytes(self) -> int:
        return int(self.sigs.nbytes + self._low.nbytes
                   + sum(h.nbytes + o.nbytes for h, o in self._tables))
