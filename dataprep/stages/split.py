"""``split``: deterministic, group-aware, stratified train/dev/test assignment.

Records sharing ``lineage.group_id`` (a source and everything derived from it) always land in the
same split; within each label stratum, groups are shuffled with the run seed and dealt to whichever
split is furthest below its target share, so every stratum is split close to the ratios even when
it is small. Sorting before shuffling makes the result independent of input order.

Decontamination (``decontaminate: true``, the default): after the assignment, the records are
clustered with the run's matching (:mod:`dataprep.matching`, the same configuration as ``dedup``;
after a ``dedup`` stage the clustering is cut out of dedup's result, not searched again), across
splits. Every connected cluster of
duplicates (exact or near, joined transitively, together with the whole group of each member) that
spans more than one split is moved entirely into one split: the one that already holds most of its
records, ties to train, then dev. As that pulls records towards train, whole components that have
no duplicate outside themselves are then moved back to the splits left short, so the ratios hold
(``rebalance``). The output leakage (dev/test records with an exact or near
duplicate in train, and dev/test pairs) is then recomputed independently, by indexing the final
train split and querying dev and test with it, and must be 0.

The stage holds per record only its id, group id, label and sample key (:class:`Rows`, and the
matching's :class:`~dataprep.matching.KeyTable`); the records wait on disk
(:mod:`dataprep.spill`) until the splits are decided and they are passed on.
"""

from __future__ import annotations

import math
import random
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dataprep.dedup import Clustering, DedupConfig, UnionFind, cross_matches, find_duplicates
from dataprep.errors import ConfigError
from dataprep.matching import KeyTable
from dataprep.record import Conversation
from dataprep.stages.base import RunContext, Stage, StageOptions

SPLITS = ("train", "dev", "test")
# The stratum of labels too rare to be split alone. "" (records without a label) is a stratum of
# its own; this key cannot be a label read from data.
POOLED = "\x00pooled"


@dataclass
class Rows:
    """What the splitter keeps of each record instead of the record: parallel lists, in input
    order, of ids, group ids, labels (interned: a few distinct strings) and, once assigned,
    splits. The functions below take it, or a list of records (``Rows.of``)."""

    ids: list[str] = field(default_factory=list)
    group_ids: list[str] = field(default_factory=list)
    labels: list[str | None] = field(default_factory=list)
    splits: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, rec: Conversation) -> None:
        self.ids.append(rec.id)
        self.group_ids.append(rec.lineage.group_id)
        self.labels.append(None if rec.label is None else sys.intern(rec.label))
        self.splits.append(rec.split)

    @classmethod
    def of(cls, records: Rows | Sequence[Conversation]) -> Rows:
        if isinstance(records, Rows):
            return records
        rows = cls()
        for rec in records:
            rows.add(rec)
        return rows


def min_stratum_groups(ratios: tuple[float, float, float]) -> int:
    """Fewest groups a label needs to be split by itself: enough for the smallest non-empty
    split to get one group at its ratio (10 for 8:1:1).

    >>> min_stratum_groups((0.8, 0.1, 0.1)), min_stratum_groups((0.5, 0.5, 0.0))
    (10, 2)
    """
    smallest = min(r for r in ratios if r > 0)
    return max(1, math.ceil(1 / smallest - 1e-9))


def assign_splits(records: Rows | Sequence[Conversation], ratios: tuple[float, float, float], seed: int,
                  stratify: bool = True, min_groups: int | None = None,
                  report: dict[str, Any] | None = None) -> dict[str, str]:
    """Map group id -> split name.

    Labels with fewer than ``min_groups`` groups (default :func:`min_stratum_groups`) cannot be
    split by themselves: dealt alone, each one's first groups all fall to train (a label with
    at most 3 groups went 100% to train at 8:1:1, so 600 one-group labels gave 600/0/0). They are
    pooled into one unstratified stratum that is split by the ratios as a whole; ``report``
    (when given) receives how many labels were stratified and how many pooled.

    >>> assign_splits(recs, (0.8, 0.1, 0.1), seed=42)  # doctest: +SKIP
    {'spo:a.json:1': 'train', ...}
    """
    rows = Rows.of(records)
    groups: dict[str, list[str | None]] = defaultdict(list)  # group id -> its records' labels
    for gid, label in zip(rows.group_ids, rows.labels, strict=True):
        groups[gid].append(label)
    strata: dict[str, list[str]] = defaultdict(list)
    for gid, labels in groups.items():
        label = Counter(x or "" for x in labels).most_common(1)[0][0] if stratify else ""
        strata[label].append(gid)
    need = min_stratum_groups(ratios) if min_groups is None else min_groups
    rare = sorted(label for label, gids in strata.items() if len(gids) < need) if stratify else []
    pooled: list[str] = []
    for label in rare:
        pooled.extend(strata.pop(label))
    if pooled:
        strata[POOLED].extend(pooled)
    if report is not None:
        report.update({"min_groups_per_label": need,
                       "stratified_labels": len([k for k in strata if k != POOLED]),
                       "pooled_labels": len(rare),
                       "pooled_records": sum(len(groups[g]) for g in pooled)})
    rng = random.Random(seed)
    assignment: dict[str, str] = {}
    total = [0, 0, 0]
    for label in sorted(strata):
        gids = sorted(strata[label])
        rng.shuffle(gids)
        filled = [0, 0, 0]
        stratum_size = sum(len(groups[g]) for g in gids)
        for gid in gids:
            size = len(groups[gid])
            # Deficit against the stratum's target; ties go to the split that is globally
            # furthest behind, so tiny strata don't all pile into train.
            best = max(range(3), key=lambda i: (
                ratios[i] * (stratum_size) - filled[i] if ratios[i] > 0 else float("-inf"),
                ratios[i] * (sum(total) + size) - total[i],
                -i))
            filled[best] += size
            total[best] += size
            assignment[gid] = SPLITS[best]
    return assignment


def decontaminate(records: Rows | Sequence[Conversation], assignment: dict[str, str], keys: list[str],
                  config: DedupConfig | None = None, guards: list[str | None] | None = None,
                  result: Clustering | None = None) -> dict[str, Any]:
    """Move every duplicate cluster that spans splits into one split, in place in ``assignment``
    (group id -> split). Returns what moved. ``result`` is ``find_duplicates(keys, config,
    guards=guards)`` when the caller has it already.

    A cluster is a connected component of exact and verified near-duplicate pairs, closed over
    groups (a record drags its whole group along, and the group's other records drag their
    duplicates). Target: the split holding most of the cluster's records; ties -> train, dev, test.

    >>> moves = decontaminate(recs, assignment, keys)  # doctest: +SKIP
    >>> moves["moved_records"], moves["moved_clusters"]  # doctest: +SKIP
    (12, 5)
    """
    rows = Rows.of(records)
    group_ids, labels = rows.group_ids, rows.labels
    if result is None:
        result = find_duplicates(keys, config, guards=guards)
    uf = UnionFind(len(rows))
    uf.parent[:] = result.roots  # components of duplicates (roots are their own parents)
    first_of_group: dict[str, int] = {}
    for i, gid in enumerate(group_ids):
        uf.union(first_of_group.setdefault(gid, i), i)
    del first_of_group
    roots = uf.roots()
    order = np.argsort(roots, kind="stable")
    bounds = np.flatnonzero(np.diff(roots[order])) + 1
    moved_records = moved_clusters = 0
    frozen: set[str] = set()  # groups of the clusters that were moved: rebalancing leaves them
    left: dict[str, Counter] = defaultdict(Counter)  # split -> labels of the records it lost
    examples: list[dict[str, Any]] = []
    for members in np.split(order, bounds):
        if len(members) < 2:
            continue
        gids = sorted({group_ids[m] for m in members})
        counts = Counter(assignment[group_ids[m]] for m in members)
        if len(counts) < 2:
            continue
        target = max(SPLITS, key=lambda s: (counts.get(s, 0), -SPLITS.index(s)))
        moving = [int(m) for m in members if assignment[group_ids[m]] != target]
        for m in moving:
            left[assignment[group_ids[m]]][labels[m] or ""] += 1
        moved_records += len(moving)
        moved_clusters += 1
        if len(examples) < 20:
            examples.append({"to": target, "from": dict(sorted(counts.items())),
                             "ids": [rows.ids[m] for m in moving[:10]]})
        for gid in gids:
            assignment[gid] = target
        frozen.update(gids)
    return {"moved_records": moved_records, "moved_clusters": moved_clusters,
            "near_pairs_verified": int(result.edge_i.size), "examples": examples,
            "components": roots, "frozen": frozen, "left": left}


def rebalance(records: Rows | Sequence[Conversation], assignment: dict[str, str],
              ratios: tuple[float, float, float], seed: int, components: np.ndarray,
              frozen: set[str], lost: dict[str, Counter] | None = None) -> int:
    """Restore the ratios after decontamination by moving whole, untouched components.

    Decontamination pulls clusters towards train (where most records are), so dev and test end up
    short. A component (records joined by duplicates and groups; ``components[i]`` is record i's
    root) that lies entirely in one split has no duplicate anywhere else, so moving it cannot leak.
    Each split below its target takes, in a seeded order, components no larger than its remaining
    deficit from splits that stay at or above theirs, first of the labels it lost (``lost``: split
    -> label counts, to keep strata balanced), then of any label. Groups in ``frozen`` (the moved
    clusters) stay put. Returns the number of records moved.

    >>> moves = decontaminate(recs, assignment, keys)  # doctest: +SKIP
    >>> rebalance(recs, assignment, (0.8, 0.1, 0.1), 42, moves["components"], moves["frozen"],
    ...           moves["left"])  # doctest: +SKIP
    11
    """
    rows = Rows.of(records)
    group_ids, labels = rows.group_ids, rows.labels
    members: dict[int, list[int]] = defaultdict(list)
    for i, root in enumerate(components.tolist()):
        members[root].append(i)
    comps = []
    for root in sorted(members):
        gids = {group_ids[i] for i in members[root]}
        if gids & frozen:
            continue
        label = Counter(labels[i] or "" for i in members[root]).most_common(1)[0][0]
        comps.append((root, len(members[root]), label, sorted(gids)))
    del members
    random.Random(seed).shuffle(comps)
    total = len(rows)
    sizes = Counter(assignment[gid] for gid in group_ids)
    target = {s: ratios[k] * total for k, s in enumerate(SPLITS)}
    moved = 0
    used: set[int] = set()
    for receiver in SPLITS:
        wanted = Counter((lost or {}).get(receiver, {}))
        for prefer_lost in (True, False):
            for root, size, label, gids in comps:
                need = target[receiver] - sizes[receiver]
                if need < 0.5:
                    break
                donor = assignment[gids[0]]
                if (root in used or donor == receiver or size > need + 0.5
                        or sizes[donor] - size < target[donor] - 0.5
                        or (prefer_lost and wanted[label] <= 0)):
                    continue
                for gid in gids:
                    assignment[gid] = receiver
                sizes[donor] -= size
                sizes[receiver] += size
                wanted[label] -= size
                used.add(root)
                moved += size
    return moved


def output_leakage(records: Rows | Sequence[Conversation], keys: list[str],
                   config: DedupConfig | None = None,
                   guards: list[str | None] | None = None) -> dict[str, Any]:
    """Independent audit of the final splits: index train, query dev and test with it (and index
    dev, query test). ``rate`` = dev/test records with an exact or near duplicate in train.

    >>> output_leakage(recs, keys)["leaked"]  # doctest: +SKIP
    0
    """
    rows = Rows.of(records)
    by_split: dict[str, list[int]] = {s: [] for s in SPLITS}
    for i, split in enumerate(rows.splits):
        if split in by_split:
            by_split[split].append(i)
    held = by_split["dev"] + by_split["test"]

    def hits(index: list[int], query: list[int]) -> list[tuple[int, int, float]]:
        return cross_matches(
            [keys[i] for i in index], [keys[i] for i in query], config,
            index_guards=None if guards is None else [guards[i] for i in index],
            query_guards=None if guards is None else [guards[i] for i in query])

    train_hits = hits(by_split["train"], held)
    dev_test_hits = hits(by_split["dev"], by_split["test"])
    leaked = len({q for q, _, _ in train_hits})
    return {
        "rate": round(leaked / len(held), 4) if held else 0.0,
        "leaked": leaked,
        "dev_test": len(held),
        "dev_test_pairs": len(dev_test_hits),
        "pairs_examples": [{"id": rows.ids[held[q]], "train_id": rows.ids[by_split["train"][t]],
                            "similarity": round(sim, 4)} for q, t, sim in train_hits[:20]],
    }


MATCHING_MOVED = "matching options are set once per run, under the top-level 'matching:' section"


@dataclass
class SplitOptions(StageOptions):
    """``ratios`` (three numbers, normalised; default 8:1:1), ``stratify`` (use each record's
    label), ``seed`` (defaults to the run seed), ``decontaminate`` (move duplicate clusters that
    span splits into one split, then prove the output has no train/dev/test duplicates; when
    false the output leakage is still measured and reported), ``rebalance`` (after the moves,
    restore the ratios by moving whole duplicate-free components), ``min_groups_per_label``
    (labels with fewer groups are pooled into one unstratified stratum; default: enough for the
    smallest split to get one group, 10 at 8:1:1). What counts as a duplicate is the run's
    ``matching:`` configuration, the same as for ``dedup``."""

    ratios: list[float] | tuple[float, ...] = (0.8, 0.1, 0.1)
    stratify: bool = True
    seed: int | None = None
    decontaminate: bool = True
    rebalance: bool = True
    min_groups_per_label: int | None = None

    def __post_init__(self) -> None:
        r = self.ratios
        if (not isinstance(r, (list, tuple)) or len(r) != 3 or any(x < 0 for x in r)
                or sum(r) <= 0):
            raise ConfigError(f"split.ratios must be three non-negative numbers for train, dev, "
                              f"test (e.g. [0.8, 0.1, 0.1]), got {list(r)}")
        s = float(sum(r))
        self.ratios = tuple(float(x) / s for x in r)
        m = self.min_groups_per_label
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise ConfigError(f"split.min_groups_per_label must be a whole number >= 1, got {m!r}")


class Split(Stage):
    """Options: :class:`SplitOptions`; resources: ``matching``.

    >>> Split(ratios=[0.8, 0.1, 0.1]).describe()["decontaminate"]
    True
    """

    name = "split"
    Options = SplitOptions
    uses = ("matching",)
    options: SplitOptions
    moved_options = dict.fromkeys(("threshold", "ngram", "num_perm", "fields", "match_calls",
                                   "source_splits"), MATCHING_MOVED)

    def setup(self) -> None:
        self.ratios: tuple[float, float, float] = self.options.ratios  # type: ignore[assignment]

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["ratios"] = list(self.ratios)
        return d

    def run(self, records: Iterable[Conversation], ctx: RunContext) -> Iterator[Conversation]:
        # Every record is needed before the first can be assigned: the records wait on disk
        # (dataprep.spill) while this stage holds their ids, groups, labels and sample keys.
        matching = self.resources.matching
        rows, table = Rows(), matching.table()
        with ctx.record_store(self.name) as store:
            for rec in records:
                store.append(rec)
                rows.add(rec)
                matching.add(table, rec)
            splits = self._assign(rows, table, ctx)
            for i, rec in enumerate(store):
                rec.split = splits[i]
                yield rec

    def _assign(self, rows: Rows, table: KeyTable, ctx: RunContext) -> list[str | None]:
        """Each record's split (and the stats), from what the stage kept of the records."""
        o, matching = self.options, self.resources.matching
        seed = ctx.seed if o.seed is None else o.seed
        # Which labels were split on their own and which were pooled: in the stats, so the
        # manifest and the report say it (it used to collapse rare labels into train silently).
        stratification: dict[str, Any] = {}
        assignment = assign_splits(rows, self.ratios, seed, o.stratify,
                                   o.min_groups_per_label, stratification)
        if o.stratify:
            self.stats["stratification"] = stratification
        # After dedup this is cut out of dedup's result (no second search over everything);
        # without dedup it is the first clustering of the run and also audits the input.
        match = matching.cluster(table)
        keys, guards, result = match.keys, match.guards, match.clustering
        config = matching.config.engine()
        moves: dict[str, Any] = {"moved_records": 0, "moved_clusters": 0}
        if o.decontaminate:
            before = Counter(assignment[gid] for gid in rows.group_ids)
            moves = decontaminate(rows, assignment, keys, config, guards, result)
            rebalanced = 0
            if o.rebalance and moves["moved_records"]:
                rebalanced = rebalance(rows, assignment, self.ratios, seed,
                                       moves["components"], moves["frozen"], moves["left"])
            self.stats["decontamination"] = {
                "moved_records": moves["moved_records"],
                "moved_clusters": moves["moved_clusters"],
                "rebalanced_records": rebalanced,
                "near_pairs_verified": moves["near_pairs_verified"],
                "records_before": dict(before),
                "moves": moves["examples"],
            }
        rows.splits = [assignment[gid] for gid in rows.group_ids]
        # Recomputed from the final splits with a fresh index, not taken from the moves above.
        audit = output_leakage(rows, keys, config, guards)
        if o.decontaminate and (audit["leaked"] or audit["dev_test_pairs"]):
            raise RuntimeError(
                f"split: {audit['leaked']} dev/test records still have a duplicate in train "
                f"and {audit['dev_test_pairs']} test records one in dev after "
                "decontamination; this is a bug in dataprep.stages.split")
        self.stats.artifacts["leakage"] = {
            "input": matching.input_leakage,
            "output": {**audit, "moved_records": moves["moved_records"],
                       "moved_clusters": moves["moved_clusters"]}}
        by_split = Counter(rows.splits)
        self.stats.update({"records": dict(by_split), "groups": len(assignment),
                           "matching_reused": match.reused})
        return rows.splits
