"""Duplicate detection engine: matching normalisation, character n-gram shingles, MinHash + LSH,
clusters, exact hashing. Shared by the ``dedup`` stage, the ``split`` stage's decontamination and
the benches.

How a record is matched:

1. :func:`sample_key` picks the fields that define a sample (for a dialog: the user turns and the
   tool calls; for an SPO record: the source text; ...).
2. :func:`normalize_for_matching` makes width, case, punctuation and whitespace changes invisible
   (:func:`normalize_batch` computes the same for a batch on code point arrays).
3. Exact duplicates share a 64-bit hash of the normalised key.
4. Near duplicates: MinHash (rensa's ``RMinHash``, :mod:`.minhash`) over the set of character
   n-grams of the normalised key; LSH candidates from sorted band hashes (:mod:`.lsh`); each
   candidate verified by the estimated Jaccard similarity of the two signatures
   (``>= threshold``).
5. Decisions: in input order, a record is removed when it is an exact copy of, or verified similar
   to, a record already kept (so the first record of a cluster is kept, and every removed record is
   directly similar to its kept twin); connected components over all verified pairs are what the
   split stage moves together (:mod:`.engine`).

>>> result = find_duplicates(["北京新世界酒店，早餐服务。", "北京新世界酒店早餐服务", "上海"])
>>> result.kept.tolist(), result.reason(1)
([0, 0, 2], 'exact_duplicate')
"""

from dataprep.dedup.engine import (
    DEFAULT_LSH_WEIGHTS,
    DEFAULT_NGRAM,
    DEFAULT_NUM_PERM,
    DEFAULT_SEED,
    DEFAULT_THRESHOLD,
    Clustering,
    DedupConfig,
    UnionFind,
    cross_matches,
    exact_jaccard,
    find_duplicates,
)
from dataprep.dedup.keys import FIELDS, call_signature, sample_key
from dataprep.dedup.leakage import DEFAULT_SOURCE_SPLITS, held_out_matches, source_split
from dataprep.dedup.lsh import BandIndex, optimal_bands
from dataprep.dedup.minhash import MAX_SHINGLES, MinHasher, shingle_hashes
from dataprep.dedup.normalize import exact_hash, normalize_batch, normalize_for_matching

__all__ = [
    "DEFAULT_LSH_WEIGHTS", "DEFAULT_NGRAM", "DEFAULT_NUM_PERM", "DEFAULT_SEED",
    "DEFAULT_SOURCE_SPLITS", "DEFAULT_THRESHOLD", "FIELDS", "MAX_SHINGLES", "BandIndex",
    "Clustering", "DedupConfig", "MinHasher", "UnionFind", "call_signature", "cross_matches",
    "exact_hash", "exact_jaccard", "find_duplicates", "held_out_matches", "normalize_batch",
    "normalize_for_matching", "optimal_bands", "sample_key", "shingle_hashes", "source_split",
]
