"""``dedup``: remove exact and near duplicates, audit the input's train/held-out leakage.

The engine is :mod:`dataprep.dedup`. Each record is matched on its sample key (for a dialog: the
user turns and the tool calls, see :func:`dataprep.dedup.sample_key`) after normalisation (NFKC,
lower case, no punctuation or spaces). Exact duplicates share the normalised key; near duplicates
have an estimated Jaccard similarity of character n-gram sets at or above ``threshold`` (MinHash
with LSH candidates). The first record in input order is kept; every other one goes to
``rejects.jsonl`` as ``exact_duplicate`` or ``near_duplicate`` with the id of its kept twin, and a
removed record is always directly similar to that twin (never through a chain).

The stage holds per record only its id, source file and sample key, plus the engine's hashes and
signatures; the records wait on disk (:mod:`dataprep.spill`) until they are passed on or removed.

The input leakage audit (:mod:`dataprep.matching`) runs here, before anything is removed, because removal is what hides it:
records read from held-out files (file name matching ``*dev*``, ``*test*``, ``*val*``; see
``source_splits``) that have an exact or near duplicate in a ``*train*`` file. The split stage
reports the output side.

Config::

    stages:
      - {name: dedup, near: true, max_examples: 50}

with the matching options (threshold, ngram, num_perm, fields, ...) under the top-level
``matching:`` section (or, as in older configs, on this stage).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from dataprep.dedup import Clustering
from dataprep.errors import ConfigError
from dataprep.matching import KeyTable, Matching, MatchingConfig, _short, leakage_report
from dataprep.record import Conversation
from dataprep.spill import RecordStore
from dataprep.stages.base import RunContext, Stage, StageOptions

__all__ = ["Dedup", "DedupOptions", "leakage_report"]


@dataclass
class DedupOptions(StageOptions):
    """``near`` (False: exact duplicates only), ``max_examples`` (clusters kept in the report).
    The matching options (``threshold``, ``ngram``, ``num_perm``, ``fields``, ``match_calls``,
    ``seed``, ``lsh_weights``, ``source_splits``) belong to the run's ``matching:`` section; given
    here (as configs written before it did) they set it, for dedup, split and the audit alike."""

    near: bool = True
    max_examples: int = 50
    threshold: float | None = None
    ngram: int | None = None
    num_perm: int | None = None
    fields: str | None = None
    match_calls: bool | None = None
    seed: int | None = None
    lsh_weights: list[float] | tuple[float, float] | None = None
    source_splits: dict[str, str] | None = None

    def matching(self) -> dict[str, Any]:
        """The matching options given here."""
        return {k: getattr(self, k) for k in MatchingConfig.KEYS if getattr(self, k) is not None}


class Dedup(Stage):
    """Removes exact and near duplicates (see the module docstring). Options:
    :class:`DedupOptions`; resources: ``matching``.

    >>> Dedup(threshold=0.7, ngram=5).describe()["num_perm"]
    128
    """

    name = "dedup"
    Options = DedupOptions
    uses = ("matching",)
    options: DedupOptions

    def setup(self) -> None:
        given = self.options.matching()
        current = self.resources.matching.config
        wanted = MatchingConfig.from_options({**current.as_dict(), **given}, "stage 'dedup'")
        if wanted != current:
            if current != MatchingConfig():
                raise ConfigError("stage 'dedup': its matching options differ from the run's "
                                  "'matching:' section; set them once, under 'matching:'")
            # Built on its own (a test, a library call): these options are the matching.
            self.resources = dataclasses.replace(self.resources, matching=Matching(wanted))
        self.matching = self.resources.matching

    def describe(self) -> dict[str, Any]:
        return {"near": self.options.near, "max_examples": self.options.max_examples,
                **self.matching.config.as_dict()}

    def run(self, records: Iterable[Conversation], ctx: RunContext) -> Iterator[Conversation]:
        # Union-find can join a record to an earlier cluster only after later records are seen,
        # and the leakage audit needs every record: this stage consumes the stream first. It
        # keeps each record's id, source and sample key (a KeyTable) and the records themselves
        # on disk (dataprep.spill), read back in order as they are passed on or removed.
        table = self.matching.table()
        with ctx.record_store(self.name) as store:
            for rec in records:
                store.append(rec)
                self.matching.add(table, rec)
            yield from self._decide(table, store, ctx)

    def _decide(self, table: KeyTable, store: RecordStore, ctx: RunContext
                ) -> Iterator[Conversation]:
        cfg = self.matching.config
        match = self.matching.cluster(table, near=self.options.near)
        result, engine = match.clustering, match.engine_stats
        removed: Counter[str] = Counter()
        for i, rec in enumerate(store):
            reason = result.reason(i)
            if reason is None:
                yield rec
                continue
            twin = table.ids[int(result.kept[i])]
            removed[reason] += 1
            what = ("same normalised sample key" if reason == "exact_duplicate" else
                    f"estimated Jaccard {float(result.similarity[i]):.2f} >= {cfg.threshold} on "
                    f"{cfg.ngram}-grams")
            ctx.remove(rec, reason, f"duplicate of {twin} ({what})", stage=self.name,
                       kept_id=twin)
        clusters = result.clusters()
        self.stats.update({
            "exact_removed": removed["exact_duplicate"],
            "near_removed": removed["near_duplicate"],
            # Records whose normalised key occurred earlier, whatever their kept twin: an exact
            # copy of a record that is itself a near duplicate is removed as near_duplicate of
            # the kept record, but it is still an exact copy.
            "exact_copies": int((result.exact_rep != np.arange(len(table))).sum()),
            "clusters": len(clusters),
            "threshold": cfg.threshold,
            "ngram": cfg.ngram,
            "num_perm": cfg.num_perm,
            "fields": cfg.fields,
            "records_in": len(table),
            "near_pairs_verified": int(result.edge_i.size),
            "lsh_candidates": engine.get("candidates", 0),
            "lsh_bands_rows": [engine.get("lsh_bands"), engine.get("lsh_rows")],
            "components": len(result.components()),
        })
        self.stats.artifacts["dedup_clusters"] = self._examples(table, result, clusters)

    def _examples(self, table: KeyTable, result: Clustering,
                  clusters: dict[int, list[int]]) -> list[dict[str, Any]]:
        # Largest clusters first: they are where a template or a copy-paste went wrong.
        ranked = sorted(clusters.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        ids, keys = table.ids, table.keys
        out = []
        for kept, members in ranked[: self.options.max_examples]:
            out.append({
                "kept_id": ids[kept],
                "kept_text": _short(keys[kept]),
                "size": len(members),
                "removed": [{"id": ids[m], "text": _short(keys[m]),
                             "reason": result.reason(m),
                             "similarity": round(float(result.similarity[m]), 4)}
                            for m in members[1:11]],
            })
        return out
