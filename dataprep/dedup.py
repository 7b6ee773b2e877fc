"""Duplicate detection engine: matching normalisation, character n-gram shingles, MinHash + LSH,
union-find clusters, exact hashing. Shared by the ``dedup`` stage, the ``split`` stage's
decontamination and the benches.

How a record is matched:

1. :func:`sample_key` picks the fields that define a sample (for a dialog: the user turns and the
   tool calls; for an SPO record: the source text; ...).
2. :func:`normalize_for_matching` makes width, case, punctuation and whitespace changes invisible.
3. Exact duplicates share a 64-bit hash of the normalised key.
4. Near duplicates: MinHash over the set of character n-grams of the normalised key, candidates from
   ``datasketch.MinHashLSH``, each candidate verified by the estimated Jaccard similarity of the two
   signatures (``>= threshold``).
5. Decisions: in input order, a record is removed when it is an exact copy of, or verified similar
   to, a record already kept (so the first record of a cluster is kept, and every removed record is
   directly similar to its kept twin); union-find over all verified pairs gives the connected
   components that the split stage moves together.

Written here rather than taken from datasketch, each with its measured reason: the n-gram hashing
and the MinHash signatures are computed for a whole batch with numpy, using datasketch's own
``affine32`` permutations (bit-identical to ``MinHash.update_batch``, pinned by a test; 20-45
instead of 240-250 us per 119-character record, ``bench/bench_dedup.py --compare-minhash``), and
signatures are kept as one uint32 matrix instead of MinHash objects. The LSH index is
datasketch's.

>>> result = find_duplicates(["北京新世界酒店，早餐服务。", "北京新世界酒店早餐服务", "上海"])
>>> result.kept.tolist(), result.reason(1)
([0, 0, 2], 'exact_duplicate')
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import unicodedata
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

import numpy as np
from datasketch import LeanMinHash, MinHash, MinHashLSH

from dataprep.errors import ConfigError
from dataprep.record import Conversation

# Chosen by measurement on the labelled set (`python -m bench.neardup_eval --grid`: perturbed
# copies of real lab/SPO/CMRC/DuReader records next to distinct real records). Our samples are
# short (a lab dialog key is ~50 normalised characters), so every edited character costs a large
# share of the n-grams: 5-grams at 0.7 found only 78% of the copies. 3-grams at 0.7: recall 0.957,
# precision 0.995 (they merge hotel requests that differ in one hotel name); 4-grams at 0.65:
# recall 0.948, precision 1.000 (0 wrong of 905 clustered pairs). 128 permutations: 256 gained
# <1 point of recall for twice the MinHash time and LSH memory.
DEFAULT_THRESHOLD = 0.65
DEFAULT_NGRAM = 4
DEFAULT_NUM_PERM = 128
DEFAULT_SEED = 1
# datasketch balances LSH false positives and false negatives 50/50 by default, which makes a pair
# right at the threshold a candidate only ~40% of the time (0.65, 128 permutations: 16 bands x 8
# rows). Every candidate is verified against its signature anyway, so a false positive costs one
# comparison while a false negative is a missed duplicate: lean towards recall (21 bands x 6 rows,
# 81% at the threshold; measured recall 0.901 -> 0.948 on the labelled set, precision unchanged).
DEFAULT_LSH_WEIGHTS = (0.2, 0.8)

FIELDS = ("auto", "user", "user+tools", "all", "source", "qa")

# \W is "not a word character": punctuation, symbols, whitespace and control characters of every
# script (CJK ideographs, letters and digits are word characters). "_" is a word character, so it is
# listed explicitly.
_NON_WORD = re.compile(r"[\W_]+")
_UINT32_MAX = np.uint32(0xFFFFFFFF)
# Multiplier of the rolling n-gram hash: an odd 64-bit constant (from splitmix64).
_NGRAM_MULT = np.uint64(0x9E3779B97F4A7C15)


# -- what a sample is --------------------------------------------------------------------------
def _tool_call_text(name: str | None, parameters: dict[str, Any] | None) -> str:
    # Canonical JSON: the same call with its keys in another order is the same call.
    return f"{name}({json.dumps(parameters, sort_keys=True, ensure_ascii=False)})"


def sample_key(conv: Conversation, fields: str = "auto") -> str:
    """The text that defines a sample, used for matching (never written out).

    ``fields``: ``"user"`` (user turns), ``"user+tools"`` (user turns and tool calls: name plus
    canonical JSON parameters), ``"all"`` (user and assistant text and tool calls), ``"source"``
    (``meta["text"]``, the SPO source text, falling back to the user turns), ``"qa"``
    (``meta["question"]`` + ``meta["answer"]``, falling back to ``"all"``), ``"auto"`` (dialogs
    with tools -> ``user+tools``, records with ``meta["text"]`` -> ``source``, records with
    ``meta["question"]`` -> ``qa``, otherwise ``all``). Observations and assistant replies of a
    dialog are left out on purpose: two dialogs that ask for the same things with the same calls
    are the same training sample even when the hotel database answered differently.

    >>> from dataprep.record import Lineage, Message
    >>> c = Conversation(id="x", messages=[Message("user", "你好"), Message("assistant", "您好")],
    ...                  lineage=Lineage(source="a.jsonl", line=1, group_id="x"))
    >>> sample_key(c, "user"), sample_key(c)
    ('你好', '你好\\n您好')
    """
    if fields not in FIELDS:
        raise ConfigError(f"unknown dedup fields {fields!r}; choose one of {', '.join(FIELDS)}")
    if fields == "auto":
        if conv.tools or any(m.role == "tool" for m in conv.messages):
            fields = "user+tools"
        elif isinstance(conv.meta.get("text"), str):
            fields = "source"
        elif isinstance(conv.meta.get("question"), str):
            fields = "qa"
        else:
            fields = "all"
    if fields == "source":
        text = conv.meta.get("text")
        return text if isinstance(text, str) else "\n".join(conv.texts(("user",)))
    if fields == "qa":
        q, a = conv.meta.get("question"), conv.meta.get("answer", conv.meta.get("answers"))
        if isinstance(q, str):
            answer = "\n".join(a) if isinstance(a, list) else (a if isinstance(a, str) else "")
            return f"{q}\n{answer}"
        fields = "all"
    parts: list[str] = []
    for m in conv.messages:
        if m.role == "user" or (fields == "all" and m.role == "assistant"):
            parts.append(m.content or "")
        elif m.role == "tool" and fields in ("user+tools", "all"):
            parts.append(_tool_call_text(m.name, m.parameters))
    return "\n".join(parts)


def call_signature(conv: Conversation) -> str | None:
    """The tool calls of a dialog (names and canonical arguments), or None without calls: the
    guard that keeps two template twins asking for different things (``价格在500以内`` ->
    ``price_range_upper: 500`` vs ``600以内`` -> ``600``) from being near duplicates. Their texts
    differ by one character, but they teach different calls, and a dev copy of one is not a leak of
    the other.

    >>> from dataprep.record import Lineage, Message
    >>> c = Conversation(id="x", lineage=Lineage(source="a", line=1, group_id="x"), messages=[
    ...     Message("user", "找酒店"), Message("tool", name="s", parameters={"b": 1, "a": 2})])
    >>> call_signature(c)
    's({"a": 2, "b": 1})'
    """
    calls = [_tool_call_text(m.name, m.parameters) for m in conv.messages if m.role == "tool"]
    return "\n".join(calls) if calls else None


# -- normalisation and shingles ------------------------------------------------------------------
def normalize_for_matching(text: str) -> str:
    """Fold the differences that must not hide a duplicate: width, case, punctuation, spaces.

    NFKC is right here and wrong for output text: it maps full-width ``ＡＢＣ１２３`` and ``，``
    to ``ABC123`` and ``,``, which is what matching wants, but it would also rewrite Chinese
    punctuation and compatibility characters in the training data, so it is never applied to what
    gets written. Punctuation is then dropped entirely, so "，" vs "," vs nothing are equal.

    >>> normalize_for_matching("Ｈｏｔｅｌ　北京，  早餐！")
    'hotel北京早餐'
    """
    return _NON_WORD.sub("", unicodedata.normalize("NFKC", text).lower())


def exact_hash(normalised: str) -> int:
    """64-bit hash of a normalised key (stable across processes, unlike ``hash()``).

    >>> exact_hash("abc") == exact_hash("abc") != exact_hash("abd")
    True
    """
    return int.from_bytes(hashlib.blake2b(normalised.encode("utf-8"), digest_size=8).digest(),
                          "little")


def _fmix64(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


def _fmix32(h: np.ndarray) -> np.ndarray:
    # MurmurHash3's 32-bit finalizer: datasketch's "affine32" scheme pre-mixes every input hash
    # with it before permuting; the test pins our signatures to datasketch's own MinHash.
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def shingle_ids(normalised: Sequence[str], ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """uint32 ids of the character n-grams of each text, all texts concatenated, and the count per
    text. A text shorter than ``ngram`` is one shingle (itself); an empty text has none.

    Vectorised over the whole batch (one ``encode`` and ``ngram`` array operations), because a
    per-shingle Python hash call (datasketch's default ``update`` path) is the slowest part of
    MinHash on short Chinese texts.

    >>> ids, counts = shingle_ids(["abcd", "ab", ""], 3)
    >>> counts.tolist(), ids.dtype.name
    ([2, 1, 0], 'uint32')
    """
    padded = [t + "\0" * (ngram - len(t)) if 0 < len(t) < ngram else t for t in normalised]
    lens = np.fromiter((len(t) for t in padded), dtype=np.int64, count=len(padded))
    counts = np.where(lens > 0, lens - ngram + 1, 0)
    total = int(counts.sum())
    if total == 0:
        return np.empty(0, dtype=np.uint32), counts
    cps = np.frombuffer("".join(padded).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    text_starts = np.concatenate(([0], np.cumsum(lens)[:-1]))
    shingle_starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    pos = np.arange(total, dtype=np.int64) + np.repeat(text_starts - shingle_starts, counts)
    h = cps[pos]
    for k in range(1, ngram):
        h = h * _NGRAM_MULT + cps[pos + k]
    h = _fmix64(h)
    return (h ^ (h >> np.uint64(32))).astype(np.uint32), counts


class MinHasher:
    """Batch MinHash signatures with datasketch's ``affine32`` permutations.

    The permutation parameters come from ``datasketch.MinHash(num_perm, seed)``, and the result is
    bit-identical to ``MinHash.update_batch`` fed the same shingle ids (a test pins this). We
    compute it for many texts at once with numpy because that is 6-12x faster than one
    ``MinHash`` per record (measured by ``bench/bench_dedup.py --compare-minhash``).

    >>> MinHasher(num_perm=16, ngram=3).signatures(["北京新世界酒店"]).shape
    (1, 16)
    """

    def __init__(self, num_perm: int = DEFAULT_NUM_PERM, ngram: int = DEFAULT_NGRAM,
                 seed: int = DEFAULT_SEED, max_cells: int = 1 << 23) -> None:
        self.num_perm = num_perm
        self.ngram = ngram
        self.seed = seed
        a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
        self._a = np.asarray(a, dtype=np.uint32)
        self._b = np.asarray(b, dtype=np.uint32)
        # Bounds the (shingles x permutations) scratch matrix: 2^23 uint32 cells = 32 MiB.
        self._max_rows = max(1, max_cells // num_perm)

    def signatures(self, normalised: Sequence[str]) -> np.ndarray:
        """An ``(len(texts), num_perm)`` uint32 matrix; an empty text gets all-0xFFFFFFFF."""
        ids, counts = shingle_ids(normalised, self.ngram)
        out = np.full((len(counts), self.num_perm), _UINT32_MAX, dtype=np.uint32)
        rows = np.flatnonzero(counts)
        if rows.size == 0:
            return out
        hv = _fmix32(ids)
        starts = np.concatenate(([0], np.cumsum(counts[rows])[:-1]))
        i = 0
        while i < rows.size:
            # Take texts while their shingles fit the scratch budget (always at least one text).
            j = int(np.searchsorted(starts, starts[i] + self._max_rows, side="right"))
            j = max(j, i + 1)
            lo = int(starts[i])
            hi = int(starts[j]) if j < rows.size else hv.size
            # (permutations x shingles) and a reduce along rows: 3x faster than the transposed
            # layout, because reduceat then scans contiguous memory (measured 19 vs 60 ms for
            # 64k shingles x 128 permutations).
            phv = self._a[:, None] * hv[None, lo:hi] + self._b[:, None]
            out[rows[i:j]] = np.minimum.reduceat(phv, starts[i:j] - lo, axis=1).T
            i = j
        return out


# -- the index -----------------------------------------------------------------------------------
class NearDupIndex:
    """``datasketch.MinHashLSH`` plus a compact signature store for verifying candidates.

    Only ``num_perm`` uint32 per record are kept (512 bytes at 128 permutations), not MinHash
    objects; a transient ``LeanMinHash`` view is built to talk to the LSH.

    >>> hasher = MinHasher(num_perm=64, ngram=3)
    >>> sigs = hasher.signatures(["北京新世界酒店的早餐", "北京新世界酒店的早餐啊", "上海浦东机场"])
    >>> index = NearDupIndex(threshold=0.5, num_perm=64)
    >>> index.add(sigs[0]), index.add(sigs[2])
    (0, 1)
    >>> [key for key, _ in index.query(sigs[1])]
    [0]
    """

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, num_perm: int = DEFAULT_NUM_PERM,
                 seed: int = DEFAULT_SEED, capacity: int = 1024,
                 weights: tuple[float, float] = DEFAULT_LSH_WEIGHTS) -> None:
        self.threshold = threshold
        self.num_perm = num_perm
        self.seed = seed
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=weights)
        self._sigs = np.empty((max(capacity, 16), num_perm), dtype=np.uint32)
        self._n = 0
        self.candidates = 0  # LSH candidates returned by queries, before verification
        # The same Jaccard estimate as MinHash.jaccard, with the threshold on the integer count so
        # that float rounding never decides a borderline pair.
        self._min_equal = int(np.ceil(threshold * num_perm - 1e-9))

    def __len__(self) -> int:
        return self._n

    def _lean(self, sig: np.ndarray) -> LeanMinHash:
        return LeanMinHash(seed=self.seed, hashvalues=sig, scheme="affine32")

    def add(self, sig: np.ndarray, lean: LeanMinHash | None = None) -> int:
        """Insert one signature; returns its key (0, 1, 2, ... in insertion order)."""
        if self._n == len(self._sigs):
            grown = np.empty((2 * len(self._sigs), self.num_perm), dtype=np.uint32)
            grown[: self._n] = self._sigs[: self._n]
            self._sigs = grown
        key = self._n
        self._sigs[key] = sig
        self.lsh.insert(key, lean if lean is not None else self._lean(sig),
                        check_duplication=False)
        self._n += 1
        return key

    def query(self, sig: np.ndarray, lean: LeanMinHash | None = None) -> list[tuple[int, float]]:
        """Indexed keys whose estimated Jaccard with ``sig`` is >= threshold, ascending by key."""
        if self._n == 0:
            return []
        cands = self.lsh.query(lean if lean is not None else self._lean(sig))
        if not cands:
            return []
        self.candidates += len(cands)
        keys = np.fromiter(cands, dtype=np.int64, count=len(cands))
        keys.sort()
        equal = np.count_nonzero(self._sigs[keys] == sig, axis=1)
        ok = equal >= self._min_equal
        return [(int(k), float(e) / self.num_perm)
                for k, e in zip(keys[ok], equal[ok], strict=True)]

    def query_add(self, sig: np.ndarray) -> list[tuple[int, float]]:
        """:meth:`query` then :meth:`add` (one LeanMinHash view for both); the new key is
        ``len(index) - 1`` afterwards."""
        lean = self._lean(sig)
        matches = self.query(sig, lean)
        self.add(sig, lean)
        return matches

    def nbytes(self) -> int:
        """Bytes held by the signature store (the LSH tables are Python dicts, not counted)."""
        return int(self._sigs.nbytes)


# -- clustering ----------------------------------------------------------------------------------
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
    """(false positive, false negative) weights for datasketch's choice of LSH bands and rows."""

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


@dataclass
class Clustering:
    """Duplicate decisions and clusters over records ``0..n-1`` (in input order).

    Two views of the same verified pairs:

    * ``kept[i]``: the record i is removed in favour of (itself when kept). Decided greedily in
      input order: a record is removed when it is an exact duplicate of, or verified similar to, a
      record already kept; otherwise it is kept. So every removed record is directly similar to
      its kept twin (no drift along chains of small edits), and no two kept records are a
      verified pair.
    * ``roots[i]``: the first record of i's connected component under all verified pairs
      (union-find). Used where nothing is removed and whole components must move together (the
      split stage); chains do join here, on purpose.

    ``exact_rep[i]`` is the first record with the same normalised key, ``key_hash[i]`` that key's
    64-bit hash, ``similarity[i]`` the estimated Jaccard of i with ``kept[i]`` (1.0 for exact and
    kept records), ``edges`` the verified pairs ``(i, j, estimated_jaccard)``, ``i < j``, between
    first-of-key records.
    """

    kept: np.ndarray
    roots: np.ndarray
    exact_rep: np.ndarray
    key_hash: np.ndarray
    similarity: np.ndarray
    edges: list[tuple[int, int, float]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.kept)

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


def find_duplicates(texts: Iterable[str], config: DedupConfig | None = None, *,
                    guards: Sequence[Hashable] | None = None, batch_size: int = 2048,
                    on_batch: Callable[[int], None] | None = None,
                    stats: dict[str, Any] | None = None) -> Clustering:
    """Cluster texts into exact and near duplicates (see the module docstring).

    Records are streamed: only the 64-bit key hashes, one signature per distinct key and the LSH
    tables are held, never the texts. ``guards[i]`` (optional) must be equal for two records to be
    near duplicates, e.g. :func:`call_signature` so that dialogs making different tool calls are
    never merged; exact duplicates ignore it. ``on_batch(n)`` is called after each batch.
    ``stats``, when given, receives the LSH shape and the candidate counts.

    >>> r = find_duplicates(["北京新世界酒店的早餐服务", "北京新世界酒店的早餐服务！", "上海浦东"],
    ...                     DedupConfig(ngram=3))
    >>> r.kept.tolist(), r.clusters()
    ([0, 0, 2], {0: [0, 1]})
    """
    cfg = config or DedupConfig()
    hasher = MinHasher(cfg.num_perm, cfg.ngram, cfg.seed)
    capacity = len(texts) if isinstance(texts, Sequence) else 1024
    index = NearDupIndex(cfg.threshold, cfg.num_perm, cfg.seed, capacity=capacity,
                         weights=cfg.lsh_weights)
    index_to_record: list[int] = []
    first_of_key: dict[int, int] = {}
    key_hashes: list[int] = []
    exact_rep: list[int] = []
    kept: list[int] = []
    similarity: list[float] = []
    edges: list[tuple[int, int, float]] = []
    n = 0
    for batch in _batched(texts, batch_size):
        norm = [normalize_for_matching(t) for t in batch]
        new_rows: list[int] = []
        for row, t in enumerate(norm):
            rec = n + row
            h = exact_hash(t)
            key_hashes.append(h)
            rep = first_of_key.setdefault(h, rec)
            exact_rep.append(rep)
            # Provisional for a new key (decided below); an exact copy follows its first record,
            # which is always decided already because it came earlier.
            kept.append(rec if rep == rec else kept[rep])
            similarity.append(1.0 if rep == rec else similarity[rep])
            if rep == rec and t:
                new_rows.append(row)
        if cfg.near and new_rows:
            sigs = hasher.signatures([norm[r] for r in new_rows])
            for row, sig in zip(new_rows, sigs, strict=True):
                rec = n + row
                best: tuple[float, int] | None = None
                for key, sim in index.query_add(sig):
                    other = index_to_record[key]
                    if guards is not None and guards[other] != guards[rec]:
                        continue
                    edges.append((other, rec, sim))
                    if kept[other] == other and (best is None or sim > best[0]):
                        best = (sim, other)
                if best is not None:
                    similarity[rec], kept[rec] = best
                index_to_record.append(rec)
            # Exact copies of a record removed as a near duplicate in this same batch.
            for row in range(len(batch)):
                rep = exact_rep[n + row]
                if rep != n + row:
                    kept[n + row], similarity[n + row] = kept[rep], similarity[rep]
        n += len(batch)
        if on_batch is not None:
            on_batch(len(batch))
    if stats is not None:
        stats.update(lsh_bands=index.lsh.b, lsh_rows=index.lsh.r, indexed=len(index),
                     candidates=index.candidates, verified_pairs=len(edges),
                     signature_bytes=index.nbytes())
    rep_arr = np.asarray(exact_rep, dtype=np.int64)
    uf = UnionFind(n)
    uf.parent[:] = rep_arr  # every record points at the first record with its key (a root)
    for i, j, _ in edges:
        uf.union(i, j)
    return Clustering(kept=np.asarray(kept, dtype=np.int64), roots=uf.roots(), exact_rep=rep_arr,
                      key_hash=np.asarray(key_hashes, dtype=np.uint64),
                      similarity=np.asarray(similarity, dtype=np.float32), edges=edges)


def cross_matches(index_texts: Iterable[str], query_texts: Iterable[str],
                  config: DedupConfig | None = None, *,
                  index_guards: Sequence[Hashable] | None = None,
                  query_guards: Sequence[Hashable] | None = None) -> list[tuple[int, int, float]]:
    """Pairs ``(query_i, index_j, similarity)`` where a query text is an exact (similarity 1.0)
    or near duplicate of an indexed text (with equal guards, when given; see
    :func:`find_duplicates`). Used to audit leakage: index train, query dev/test.

    >>> cross_matches(["北京新世界酒店的早餐服务"], ["北京新世界酒店的早餐服务！", "上海"],
    ...               DedupConfig(ngram=3))
    [(0, 0, 1.0)]
    """
    cfg = config or DedupConfig()
    hasher = MinHasher(cfg.num_perm, cfg.ngram, cfg.seed)
    index = NearDupIndex(cfg.threshold, cfg.num_perm, cfg.seed, weights=cfg.lsh_weights)
    exact: dict[int, int] = {}
    index_rows: list[int] = []
    j0 = 0
    for batch in _batched(index_texts, 2048):
        norm = [normalize_for_matching(t) for t in batch]
        for row, t in enumerate(norm):
            exact.setdefault(exact_hash(t), j0 + row)
        rows = [r for r, t in enumerate(norm) if t]
        if cfg.near and rows:
            for r, sig in zip(rows, hasher.signatures([norm[r] for r in rows]), strict=True):
                index.add(sig)
                index_rows.append(j0 + r)
        j0 += len(batch)
    out: list[tuple[int, int, float]] = []
    i0 = 0
    for batch in _batched(query_texts, 2048):
        norm = [normalize_for_matching(t) for t in batch]
        sigs = hasher.signatures(norm) if cfg.near else None
        for row, t in enumerate(norm):
            j = exact.get(exact_hash(t))
            if j is not None:
                out.append((i0 + row, j, 1.0))
            elif sigs is not None and t:
                matches = index.query(sigs[row])
                if index_guards is not None and query_guards is not None:
                    mine = query_guards[i0 + row]
                    matches = [m for m in matches if index_guards[index_rows[m[0]]] == mine]
                if matches:
                    key, sim = max(matches, key=lambda m: (m[1], -m[0]))
                    out.append((i0 + row, index_rows[key], sim))
        i0 += len(batch)
    return out


def exact_jaccard(a: str, b: str, ngram: int = DEFAULT_NGRAM) -> float:
    """Jaccard similarity of the n-gram sets of two texts after normalisation (for reports).

    >>> round(exact_jaccard("北京新世界酒店", "北京新世界饭店", 2), 3)
    0.5
    """
    ids, counts = shingle_ids([normalize_for_matching(a), normalize_for_matching(b)], ngram)
    sa, sb = set(ids[: counts[0]].tolist()), set(ids[counts[0]:].tolist())
    if not sa and not sb:
        return 1.0
    return len(sa & sb) / len(sa | sb)


# -- leakage -------------------------------------------------------------------------------------
# Which split an input file stands for, by its file name (first matching pattern wins). Held-out
# names are tried before "train" so that e.g. "train_dev.jsonl" counts as held out.
DEFAULT_SOURCE_SPLITS: dict[str, str] = {
    "*dev*": "dev", "*valid*": "dev", "*val.*": "dev", "*_val*": "dev", "*-val*": "dev",
    "*test*": "test", "*train*": "train",
}


def source_split(source: str, patterns: dict[str, str] | None = None) -> str | None:
    """The split an input file stands for, from glob patterns on its file name (case-insensitive),
    or None when no pattern matches.

    >>> source_split("../lab/dev.chatglm3.jsonl"), source_split("x/train.jsonl"), source_split("a")
    ('dev', 'train', None)
    """
    name = PurePath(source).name.lower()
    for pattern, split in (patterns if patterns is not None else DEFAULT_SOURCE_SPLITS).items():
        if fnmatch.fnmatchcase(name, pattern.lower()):
            return split
    return None


def held_out_matches(result: Clustering, splits: Sequence[str | None],
                     train: str = "train") -> list[tuple[int, int, float]]:
    """For every record whose split is not ``train`` (and not None), its best match among the
    ``train`` records: ``(record, train_record, similarity)``, similarity 1.0 for an exact
    duplicate. Direct matches only (the same normalised key, or one verified pair), never chains.

    >>> r = find_duplicates(["北京的酒店", "北京的酒店！", "上海"])
    >>> held_out_matches(r, ["train", "dev", "dev"])
    [(1, 0, 1.0)]
    """
    train_member: dict[int, int] = {}
    for i, split in enumerate(splits):
        if split == train:
            train_member.setdefault(int(result.exact_rep[i]), i)
    near: dict[int, tuple[float, int]] = {}
    for a, b, sim in result.edges:
        for mine, other in ((a, b), (b, a)):
            j = train_member.get(other)
            if j is not None and (mine not in near or (sim, -j) > (near[mine][0], -near[mine][1])):
                near[mine] = (sim, j)
    out: list[tuple[int, int, float]] = []
    for i, split in enumerate(splits):
        if split is None or split == train:
            continue
        rep = int(result.exact_rep[i])
        if rep in train_member:
            out.append((i, train_member[rep], 1.0))
        elif rep in near:
            sim, j = near[rep]
            out.append((i, j, sim))
    return out
