"""One duplicate-matching setup per run, shared by ``dedup``, ``split`` and the leakage audit.

The config (top-level ``matching:``; for old configs also the matching options of the ``dedup``
stage) says what defines a sample (``fields``), how similar two samples must be (``threshold``
on ``ngram`` shingles, ``num_perm`` MinHash permutations seeded by ``seed``, LSH shape from
``lsh_weights``), whether dialogs must make the same tool calls (``match_calls``) and which input
files stand for which split in the input leakage audit (``source_splits``).

:class:`Matching` runs the engine (:func:`dataprep.dedup.find_duplicates`) and remembers its last
result. Whoever clusters first (``dedup``, or ``split`` when no dedup ran) also produces the input
leakage audit, before anything is removed. When ``split`` later asks for the records that survived
``dedup``, the answer is cut out of dedup's result instead of being computed again: pairs are
decided pairwise (LSH buckets and MinHash estimates of two records do not depend on the others),
so the pairs among a subset are exactly the full result's pairs between members of that subset.

Its users hold no records: they fill a :class:`KeyTable` (per record only its id, source file,
sample key and call guard) as the records stream past, and cluster that.

    matching: {threshold: 0.65, ngram: 4, fields: auto}

>>> Matching(MatchingConfig(threshold=0.7)).config.engine().threshold
0.7
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import PurePath
from typing import Any, ClassVar

import numpy as np

from dataprep.dedup import (
    DEFAULT_LSH_WEIGHTS,
    DEFAULT_NGRAM,
    DEFAULT_NUM_PERM,
    DEFAULT_SEED,
    DEFAULT_THRESHOLD,
    FIELDS,
    Clustering,
    DedupConfig,
    UnionFind,
    call_signature,
    find_duplicates,
    held_out_matches,
    sample_key,
    source_split,
)
from dataprep.errors import ConfigError
from dataprep.record import Conversation

TEXT_CHARS = 200  # report examples are truncated to this many characters


def _short(text: str) -> str:
    return text if len(text) <= TEXT_CHARS else text[: TEXT_CHARS - 1] + "…"


@dataclass(frozen=True)
class MatchingConfig:
    """What makes two records duplicates; see the module docstring."""

    threshold: float = DEFAULT_THRESHOLD
    """Estimated Jaccard similarity at or above which two records are near duplicates."""
    ngram: int = DEFAULT_NGRAM
    """Characters per shingle."""
    num_perm: int = DEFAULT_NUM_PERM
    """MinHash permutations."""
    seed: int = DEFAULT_SEED
    """Seed of the MinHash permutations."""
    lsh_weights: tuple[float, float] = DEFAULT_LSH_WEIGHTS
    """(false positive, false negative) weights for the LSH shape."""
    fields: str = "auto"
    """What defines a sample: auto, user, user+tools, all, source, qa."""
    match_calls: bool = True
    """Dialogs are near duplicates only when they make the same tool calls."""
    source_splits: dict[str, str] | None = None
    """File-name glob -> split, for the input leakage audit (default: *train*/*dev*/*test*/*val*)."""

    KEYS: ClassVar[tuple[str, ...]] = ("threshold", "ngram", "num_perm", "seed", "lsh_weights",
                                       "fields", "match_calls", "source_splits")

    def __post_init__(self) -> None:
        if self.fields not in FIELDS:
            raise ConfigError(f"matching.fields must be one of {', '.join(FIELDS)}, "
                              f"got {self.fields!r}")
        weights = self.lsh_weights
        if not isinstance(weights, (list, tuple)) or len(weights) != 2:
            raise ConfigError(f"matching.lsh_weights must be [false_positive, false_negative], "
                              f"got {weights!r}")
        splits = self.source_splits
        if splits is not None and (not isinstance(splits, dict) or any(
                v not in ("train", "dev", "test") for v in splits.values())):
            raise ConfigError("matching.source_splits must map file-name globs to train, dev or "
                              f"test, e.g. {{'*dev*': dev}}; got {splits!r}")
        engine = self.engine()  # checks threshold, ngram, num_perm and the weights' sum
        object.__setattr__(self, "threshold", engine.threshold)
        object.__setattr__(self, "lsh_weights", engine.lsh_weights)

    @classmethod
    def from_options(cls, options: dict[str, Any], where: str = "matching") -> MatchingConfig:
        """From a config mapping; an unknown key is a one-line error naming the valid ones.

        >>> MatchingConfig.from_options({"ngram": 5}).ngram
        5
        """
        unknown = [k for k in options if k not in cls.KEYS]
        if unknown:
            raise ConfigError(f"{where}: unknown option {unknown[0]!r}; valid: "
                              f"{', '.join(cls.KEYS)}")
        return cls(**options)

    def engine(self, near: bool = True) -> DedupConfig:
        """The engine's parameters (``near=False``: exact duplicates only)."""
        return DedupConfig(threshold=self.threshold, ngram=self.ngram, num_perm=self.num_perm,
                           seed=self.seed, near=near,
                           lsh_weights=(self.lsh_weights[0], self.lsh_weights[1]))

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lsh_weights"] = list(self.lsh_weights)
        return d


@dataclass
class KeyTable:
    """What matching keeps of each record instead of the record: its id, source file (interned:
    one string per file), sample key and, with ``match_calls``, call guard; lists in input order.
    Filled by :meth:`Matching.add` as the records stream past."""

    ids: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    guards: list[str | None] | None = None

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class MatchResult:
    """The records' keys (a :class:`KeyTable`) and the engine's clustering of them."""

    table: KeyTable
    clustering: Clustering
    engine_stats: dict[str, Any] = field(default_factory=dict)
    reused: bool = False  # cut out of an earlier result rather than computed

    @property
    def keys(self) -> list[str]:
        return self.table.keys

    @property
    def guards(self) -> list[str | None] | None:
        return self.table.guards


class Matching:
    """The run's matching setup and the state it keeps between its users (see module doc)."""

    def __init__(self, config: MatchingConfig | None = None) -> None:
        self.config = config or MatchingConfig()
        self.input_leakage: dict[str, Any] | None = None
        # The engine: find_duplicates, or the Ray one (same signature, same result).
        self.find_duplicates = find_duplicates
        self._last: MatchResult | None = None
        self._near = True

    def table(self, records: Iterable[Conversation] = ()) -> KeyTable:
        """A :class:`KeyTable` of ``records`` (empty by default: fill it with :meth:`add`)."""
        table = KeyTable(guards=[] if self.config.match_calls else None)
        for rec in records:
            self.add(table, rec)
        return table

    def add(self, table: KeyTable, rec: Conversation) -> None:
        """Append what matching needs of ``rec`` to ``table``."""
        table.ids.append(rec.id)
        table.sources.append(sys.intern(rec.lineage.source))
        table.keys.append(sample_key(rec, self.config.fields))
        if table.guards is not None:
            table.guards.append(call_signature(rec))

    def cluster(self, records: KeyTable | Sequence[Conversation], near: bool = True
                ) -> MatchResult:
        """Cluster the records (their :class:`KeyTable`, or the records themselves); the first
        call of a run also audits the input's leakage."""
        table = records if isinstance(records, KeyTable) else self.table(records)
        result = self._restrict(table) if near and self._near else None
        if result is None:
            stats: dict[str, Any] = {}
            clustering = self.find_duplicates(table.keys, self.config.engine(near),
                                              guards=table.guards, stats=stats)
            result = MatchResult(table, clustering, stats)
            self._last, self._near = result, near
        if self.input_leakage is None:
            self.input_leakage = leakage_report(table, result.clustering,
                                                self.config.source_splits)
        return result

    def _restrict(self, table: KeyTable) -> MatchResult | None:
        """The last result cut down to ``table``, or None when its records are not a subset of
        the last result's first-of-key records in the same order (then the engine has to run).

        A record is found by its sample key: the first-of-key records have distinct normalised,
        hence distinct raw keys, and a clustering depends on nothing but the keys and guards."""
        last = self._last
        if last is None or not len(table):
            return None
        full = last.clustering
        # Only first-of-key records were indexed for near matching; an exact copy of a record
        # that is not in the subset would be indexed in a fresh run and could find pairs.
        first = np.flatnonzero(full.exact_rep == np.arange(len(full.exact_rep)))
        where = {last.keys[i]: i for i in first.tolist()}
        guards, last_guards = table.guards, last.guards
        idx: list[int] = []
        for k, key in enumerate(table.keys):
            i = where.get(key)
            if (i is None or (idx and i <= idx[-1])
                    or (guards is not None and (last_guards is None
                                                or last_guards[i] != guards[k]))):
                return None
            idx.append(i)
        del where
        pos = {i: k for k, i in enumerate(idx)}
        edges = [(pos[a], pos[b], s) for a, b, s in full.edges if a in pos and b in pos]
        n = len(idx)
        uf = UnionFind(n)
        for a, b, _ in edges:
            uf.union(a, b)
        kept = np.arange(n, dtype=np.int64)
        similarity = np.ones(n, dtype=np.float32)
        for a, b, s in sorted(edges, key=lambda e: (e[1], -e[2], e[0])):
            # Greedy in input order, as the engine decides: b goes with its best kept partner.
            if kept[b] == b and kept[a] == a and a < b:
                kept[b], similarity[b] = a, s
        idx_arr = np.asarray(idx, dtype=np.int64)
        clustering = Clustering(kept=kept, roots=uf.roots(), exact_rep=np.arange(n, dtype=np.int64),
                                key_hash=full.key_hash[idx_arr], similarity=similarity,
                                edge_i=np.asarray([e[0] for e in edges], dtype=np.int64),
                                edge_j=np.asarray([e[1] for e in edges], dtype=np.int64),
                                edge_sim=np.asarray([e[2] for e in edges], dtype=np.float32))
        return MatchResult(table, clustering, {}, reused=True)


def leakage_report(table: KeyTable, result: Clustering, source_splits: dict[str, str] | None,
                   max_examples: int = 20) -> dict[str, Any]:
    """The input leakage audit: of the records (their :class:`KeyTable`) from held-out files,
    how many have an exact or near duplicate in a train file.

    >>> leakage_report(table, find_duplicates(table.keys), None)["rate"]  # doctest: +SKIP
    0.0199
    """
    ids, sources, keys = table.ids, table.sources, table.keys
    by_source = {s: source_split(s, source_splits) for s in set(sources)}
    splits = [by_source[s] for s in sources]
    matches = held_out_matches(result, splits)
    held_out = Counter(s for s in splits if s not in (None, "train"))
    leaked = Counter(splits[i] for i, _, _ in matches)
    n_held, n_leaked = sum(held_out.values()), len(matches)
    exact = {i for i, j, _ in matches if result.key_hash[i] == result.key_hash[j]}
    by_file = sorted({(PurePath(source).name, split) for source, split in by_source.items()})
    return {
        "rate": round(n_leaked / n_held, 4) if n_held else 0.0,
        "leaked": n_leaked,
        "dev_test": n_held,
        "exact": len(exact),
        "by_source_split": {s: {"records": n, "leaked": leaked.get(s, 0),
                                "rate": round(leaked.get(s, 0) / n, 4)}
                            for s, n in sorted(held_out.items())},
        "sources": {name: split for name, split in by_file},
        "pairs_examples": [
            {"id": ids[i], "split": splits[i], "text": _short(keys[i]),
             "train_id": ids[j], "train_text": _short(keys[j]),
             "similarity": round(sim, 4), "kind": "exact" if i in exact else "near"}
            for i, j, sim in matches[:max_examples]],
    }


def matching_config(section: dict[str, Any] | None,
                    stage_specs: list[dict[str, Any]]) -> MatchingConfig:
    """The run's config from the ``matching:`` section and, for configs written before it
    existed, the matching options given to the ``dedup`` stage (a key set in both places to
    different values is an error).

    >>> matching_config({"ngram": 5}, [{"name": "dedup", "threshold": 0.7}]).threshold
    0.7
    """
    if section is not None and not isinstance(section, dict):
        raise ConfigError(f"'matching' must be a mapping of options, got {section!r}")
    opts = dict(section or {})
    for spec in stage_specs:
        if spec.get("name") != "dedup":
            continue
        for key in MatchingConfig.KEYS:
            if key in spec:
                if key in opts and opts[key] != spec[key]:
                    raise ConfigError(f"matching.{key} is {opts[key]!r} but stage 'dedup' sets "
                                      f"{key}: {spec[key]!r}; set it once, under 'matching:'")
                opts[key] = spec[key]
    return MatchingConfig.from_options(opts)

