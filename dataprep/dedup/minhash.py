"""Character n-gram shingles of normalised texts and their MinHash signatures.

Shingles are hashed with numpy on the code point arrays of :func:`normalize_batch` (one pass per
n-gram position for a whole batch; a per-shingle Python call is the slowest part of MinHash on
short Chinese texts). The signatures are rensa's ``RMinHash`` (Rust) over those 64-bit shingle
hashes, a whole batch per call. A text with more than ``MAX_SHINGLES`` distinct shingles is
represented by the ``MAX_SHINGLES`` smallest of its shingle hashes (a consistent sample: two long
texts keep the same shingles where they agree, so their estimated Jaccard stays close to the
true one), hashed window by window, so one multi-megabyte record holds a bounded amount of memory.
"""

from __future__ import annotations

import array
from collections.abc import Iterator, Sequence

import numpy as np
import rensa

from dataprep.dedup.normalize import normalize_batch

# Multiplier of the rolling n-gram hash: an odd 64-bit constant (from splitmix64).
_NGRAM_MULT = np.uint64(0x9E3779B97F4A7C15)
# Distinct shingles kept per text. Real sample keys have tens to a few thousand; the cap only
# bites on pasted documents, where 16k shingles still estimate Jaccard within a few points.
MAX_SHINGLES = 1 << 14
# Code points hashed at once: bounds the scratch arrays (~40 bytes per code point) to ~40 MB.
_WINDOW = 1 << 20
EMPTY = np.uint32(0xFFFFFFFF)  # every slot of the signature of a text without shingles


def _fmix64(h: np.ndarray) -> np.ndarray:
    # MurmurHash3's 64-bit finalizer: spreads the rolling hash over all bits.
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


def _rolling(seg: np.ndarray, lens: np.ndarray, ngram: int) -> np.ndarray:
    """Hashes of all n-grams of the texts laid end to end in ``seg`` (lengths ``lens``, each at
    least ``ngram``), concatenated: the n-grams at every position, on shifted views of the code
    points (no gathers), minus those that would run into the next text."""
    c64 = seg.astype(np.uint64)
    width = c64.size - ngram + 1
    h = c64[:width].copy()
    for k in range(1, ngram):
        h *= _NGRAM_MULT
        h += c64[k:width + k]
    if lens.size > 1 and ngram > 1:
        valid = np.ones(width, dtype=bool)
        across = (np.cumsum(lens)[:-1, None] - np.arange(1, ngram)[None, :]).ravel()
        valid[across] = False
        h = h[valid]
    return _fmix64(h)


def _pad_short(cps: np.ndarray, lens: np.ndarray, ngram: int) -> tuple[np.ndarray, np.ndarray]:
    # A text shorter than the n-gram is one shingle: itself, padded with NULs.
    short = (lens > 0) & (lens < ngram)
    if not short.any():
        return cps, lens
    plens = np.where(short, ngram, lens)
    out = np.zeros(int(plens.sum()), dtype=np.uint32)
    dest = np.arange(cps.size) + np.repeat((np.cumsum(plens) - plens) - (np.cumsum(lens) - lens),
                                           lens)
    out[dest] = cps
    return out, plens


def shingle_hashes(cps: np.ndarray, lens: np.ndarray, ngram: int
                   ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """For texts given as code points (see :func:`normalize_batch`): yields ``(rows, hashes,
    offsets)`` chunks, ``hashes[offsets[k]:offsets[k + 1]]`` being the uint64 shingle hashes of
    text ``rows[k]`` (at most ``MAX_SHINGLES`` distinct ones). Texts without shingles (empty)
    are left out.

    >>> cps, lens = normalize_batch(["abcd", "ab", ""])
    >>> [(r.tolist(), np.diff(o).tolist()) for r, h, o in shingle_hashes(cps, lens, 3)]
    [([0, 1], [2, 1])]
    """
    cps, lens = _pad_short(cps, lens, ngram)
    counts = np.where(lens > 0, lens - ngram + 1, 0)
    starts = np.cumsum(lens) - lens
    rows = np.flatnonzero(counts)
    csum = np.cumsum(counts[rows])
    i = 0
    while i < rows.size:
        first = rows[i]
        if counts[first] > _WINDOW:  # one huge text: window by window
            yield rows[i:i + 1], *_long_text(cps[starts[first]:starts[first] + lens[first]], ngram)
            i += 1
            continue
        # Texts while their shingles fit one window (always at least one text).
        done = int(csum[i - 1]) if i else 0
        j = max(int(np.searchsorted(csum, done + _WINDOW, side="right")), i + 1)
        take = rows[i:j]
        end = starts[take[-1]] + lens[take[-1]]
        h = _rolling(cps[starts[take[0]]:end], lens[take], ngram)
        offsets = np.concatenate(([0], np.cumsum(counts[take])))
        yield take, *_cap(h, offsets)
        i = j


def _bottom(h: np.ndarray) -> np.ndarray:
    u = np.unique(h)
    return u[:MAX_SHINGLES]


def _cap(h: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sizes = np.diff(offsets)
    long_rows = np.flatnonzero(sizes > MAX_SHINGLES)
    if long_rows.size == 0:
        return h, offsets
    pieces = np.split(h, offsets[1:-1])
    for r in long_rows:
        pieces[r] = _bottom(pieces[r])
    return np.concatenate(pieces), np.concatenate(([0], np.cumsum([p.size for p in pieces])))


def _long_text(cps: np.ndarray, ngram: int) -> tuple[np.ndarray, np.ndarray]:
    kept = np.empty(0, dtype=np.uint64)
    count = cps.size - ngram + 1
    for s in range(0, count, _WINDOW):
        n = min(_WINDOW, count - s)
        window = _rolling(cps[s:s + n + ngram - 1], np.array([n + ngram - 1]), ngram)
        kept = _bottom(np.concatenate((kept, window)))
    return kept, np.array([0, kept.size])


class MinHasher:
    """MinHash signatures of normalised texts: rensa's ``RMinHash`` over character n-gram
    hashes, ``num_perm`` uint32 per text.

    >>> MinHasher(num_perm=16, ngram=3, seed=1).signatures(["北京新世界酒店"]).shape
    (1, 16)
    """

    def __init__(self, num_perm: int, ngram: int, seed: int) -> None:
        self.num_perm = num_perm
        self.ngram = ngram
        self.seed = seed

    def signatures(self, normalised: Sequence[str]) -> np.ndarray:
        """An ``(len(texts), num_perm)`` uint32 matrix for already normalised texts."""
        cps = np.frombuffer("".join(normalised).encode("utf-32-le"), dtype=np.uint32)
        lens = np.fromiter(map(len, normalised), dtype=np.int64, count=len(normalised))
        return self.from_codepoints(cps, lens)

    def from_codepoints(self, cps: np.ndarray, lens: np.ndarray) -> np.ndarray:
        """Signatures of texts given as code points and lengths (see :func:`normalize_batch`);
        a text without shingles gets all-0xFFFFFFFF."""
        out = np.full((lens.size, self.num_perm), EMPTY, dtype=np.uint32)
        for rows, hashes, offsets in shingle_hashes(cps, lens, self.ngram):
            digests = rensa.RMinHash.digest_matrix_from_flat_token_hashes(
                hashes, offsets.astype(np.uint64), self.num_perm, self.seed)
            # rensa hands its matrix out only as Python lists; array.array collects them ~2x
            # faster than numpy does.
            flat = array.array("I")
            for row in digests.to_rows():
                flat.extend(row)
            out[rows] = np.frombuffer(flat, dtype=np.uint32).reshape(rows.size, self.num_perm)
        return out


def signatures_of(texts: Sequence[str], hasher: MinHasher) -> np.ndarray:
    """Normalise and sign raw texts in one go (a convenience for tests and benches)."""
    return hasher.from_codepoints(*normalize_batch(texts))
