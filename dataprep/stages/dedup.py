"""``dedup``: remove exact and near duplicates, audit the input's train/held-out leakage.

The engine is :mod:`dataprep.dedup`. Each record is matched on its sample key (for a dialog: the
user turns and the tool calls, see :func:`dataprep.dedup.sample_key`) after normalisation (NFKC,
lower case, no punctuation or spaces). Exact duplicates share the normalised key; near duplicates
have an estimated Jaccard similarity of character n-gram sets at or above ``threshold`` (MinHash
with LSH candidates). The first record in input order is kept; every other one goes to
``rejects.jsonl`` as ``exact_duplicate`` or ``near_duplicate`` with the id of its kept twin, and a
removed record is always directly similar to that twin (never through a chain).

The input leakage audit runs here, before anything is removed, because removal is what hides it:
records read from held-out files (file name matching ``*dev*``, ``*test*``, ``*val*``; see
``source_splits``) that have an exact or near duplicate in a ``*train*`` file. The split stage
reports the output side.

Config::

    stages:
      - {name: dedup, threshold: 0.65, ngram: 4, num_perm: 128, fields: auto}
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import PurePath
from typing import Any

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
    call_signature,
    find_duplicates,
    held_out_matches,
    sample_key,
    source_split,
)
from dataprep.errors import ConfigError
from dataprep.record import Conversation
from dataprep.stages.base import RunContext, Stage

TEXT_CHARS = 200  # report examples are truncated to this many characters


def _short(text: str) -> str:
    return text if len(text) <= TEXT_CHARS else text[: TEXT_CHARS - 1] + "…"


def leakage_report(recs: list[Conversation], keys: list[str], result: Clustering,
                   source_splits: dict[str, str] | None, max_examples: int = 20) -> dict[str, Any]:
    """The input leakage audit: of the records from held-out files, how many have an exact or
    near duplicate in a train file. Shared with the split stage (when no dedup stage ran).

    >>> leakage_report(recs, keys, find_duplicates(keys), None)["rate"]  # doctest: +SKIP
    0.0199
    """
    splits = [source_split(r.lineage.source, source_splits) for r in recs]
    matches = held_out_matches(result, splits)
    held_out = Counter(s for s in splits if s not in (None, "train"))
    leaked = Counter(splits[i] for i, _, _ in matches)
    n_held, n_leaked = sum(held_out.values()), len(matches)
    exact = {i for i, j, _ in matches if result.key_hash[i] == result.key_hash[j]}
    by_file = sorted({(PurePath(r.lineage.source).name, s) for r, s in zip(recs, splits,
                                                                            strict=True)})
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
            {"id": recs[i].id, "split": splits[i], "text": _short(keys[i]),
             "train_id": recs[j].id, "train_text": _short(keys[j]),
             "similarity": round(sim, 4), "kind": "exact" if i in exact else "near"}
            for i, j, sim in matches[:max_examples]],
    }


class Dedup(Stage):
    """Options: ``threshold`` (estimated Jaccard at or above which two records are near
    duplicates), ``ngram`` (characters per shingle), ``num_perm`` (MinHash permutations),
    ``fields`` (what defines a sample: auto, user, user+tools, all, source, qa), ``near`` (False:
    exact duplicates only), ``match_calls`` (dialogs are near duplicates only if they make the
    same tool calls; default true), ``seed`` (MinHash permutations), ``lsh_weights`` (LSH false
    positive/negative weights), ``source_splits`` (file-name glob -> split, for the leakage
    audit), ``max_examples`` (clusters kept in the report).

    >>> Dedup(threshold=0.7, ngram=5).describe()["num_perm"]
    128
    """

    name = "dedup"

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, ngram: int = DEFAULT_NGRAM,
                 num_perm: int = DEFAULT_NUM_PERM, fields: str = "auto", near: bool = True,
                 match_calls: bool = True, seed: int = DEFAULT_SEED,
                 lsh_weights: list[float] | tuple[float, float] = DEFAULT_LSH_WEIGHTS,
                 source_splits: dict[str, str] | None = None, max_examples: int = 50) -> None:
        if fields not in FIELDS:
            raise ConfigError(f"dedup.fields must be one of {', '.join(FIELDS)}, got {fields!r}")
        if len(lsh_weights) != 2:
            raise ConfigError(f"dedup.lsh_weights must be [false_positive, false_negative], "
                              f"got {lsh_weights!r}")
        if source_splits is not None and (
                not isinstance(source_splits, dict)
                or any(v not in ("train", "dev", "test") for v in source_splits.values())):
            raise ConfigError("dedup.source_splits must map file-name globs to train, dev or "
                              f"test, e.g. {{'*dev*': dev}}; got {source_splits!r}")
        self._config = DedupConfig(threshold=threshold, ngram=ngram, num_perm=num_perm,
                                   seed=seed, near=near,
                                   lsh_weights=(lsh_weights[0], lsh_weights[1]))
        self.threshold = self._config.threshold
        self.ngram = ngram
        self.num_perm = num_perm
        self.fields = fields
        self.near = near
        self.match_calls = match_calls
        self.seed = seed
        self.lsh_weights = list(self._config.lsh_weights)
        self.source_splits = source_splits
        self.max_examples = max_examples

    def run(self, records: Iterable[Conversation], ctx: RunContext) -> Iterator[Conversation]:
        # Union-find can join a record to an earlier cluster only after later records are seen,
        # and the leakage audit needs every record: this stage consumes the stream first.
        recs = list(records)
        keys = [sample_key(r, self.fields) for r in recs]
        guards = [call_signature(r) for r in recs] if self.match_calls else None
        engine: dict[str, Any] = {}
        result = find_duplicates(keys, self._config, guards=guards, stats=engine)
        ctx.artifacts.setdefault("leakage", {})["input"] = leakage_report(
            recs, keys, result, self.source_splits)
        removed = Counter()
        for i, rec in enumerate(recs):
            reason = result.reason(i)
            if reason is None:
                yield rec
                continue
            twin = recs[int(result.kept[i])]
            removed[reason] += 1
            what = ("same normalised sample key" if reason == "exact_duplicate" else
                    f"estimated Jaccard {float(result.similarity[i]):.2f} >= {self.threshold} on "
                    f"{self.ngram}-grams")
            ctx.remove(rec, reason, f"duplicate of {twin.id} ({what})", stage=self.name,
                       kept_id=twin.id)
        clusters = result.clusters()
        ctx.stats[self.name].update({
            "exact_removed": removed["exact_duplicate"],
            "near_removed": removed["near_duplicate"],
            # Records whose normalised key occurred earlier, whatever their kept twin: an exact
            # copy of a record that is itself a near duplicate is removed as near_duplicate of
            # the kept record, but it is still an exact copy.
            "exact_copies": int((result.exact_rep != np.arange(len(recs))).sum()),
            "clusters": len(clusters),
            "threshold": self.threshold,
            "ngram": self.ngram,
            "num_perm": self.num_perm,
            "fields": self.fields,
            "records_in": len(recs),
            "near_pairs_verified": len(result.edges),
            "lsh_candidates": engine["candidates"],
            "lsh_bands_rows": [engine["lsh_bands"], engine["lsh_rows"]],
            "components": len(result.components()),
        })
        ctx.artifacts["dedup_clusters"] = self._examples(recs, keys, result, clusters)

    def _examples(self, recs: list[Conversation], keys: list[str], result: Clustering,
                  clusters: dict[int, list[int]]) -> list[dict[str, Any]]:
        # Largest clusters first: they are where a template or a copy-paste went wrong.
        ranked = sorted(clusters.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        out = []
        for kept, members in ranked[: self.max_examples]:
            out.append({
                "kept_id": recs[kept].id,
                "kept_text": _short(keys[kept]),
                "size": len(members),
                "removed": [{"id": recs[m].id, "text": _short(keys[m]),
                             "reason": result.reason(m),
                             "similarity": round(float(result.similarity[m]), 4)}
                            for m in members[1:11]],
            })
        return out
