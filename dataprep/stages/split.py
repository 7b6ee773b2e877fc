"""``split``: deterministic, group-aware, stratified train/dev/test assignment.

Records sharing ``lineage.group_id`` (a source and everything derived from it) always land in the
same split; within each label stratum, groups are shuffled with the run seed and dealt to whichever
split is furthest below its target share, so every stratum is split close to the ratios even when
it is small. Sorting before shuffling makes the result independent of input order.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator

from dataprep.errors import ConfigError
from dataprep.record import Conversation
from dataprep.stages.base import RunContext, Stage

SPLITS = ("train", "dev", "test")


def assign_splits(records: list[Conversation], ratios: tuple[float, float, float], seed: int,
                  stratify: bool = True) -> dict[str, str]:
    """Map group id -> split name.

    >>> assign_splits(recs, (0.8, 0.1, 0.1), seed=42)  # doctest: +SKIP
    {'spo:a.json:1': 'train', ...}
    """
    groups: dict[str, list[Conversation]] = defaultdict(list)
    for rec in records:
        groups[rec.lineage.group_id].append(rec)
    strata: dict[str, list[str]] = defaultdict(list)
    for gid, members in groups.items():
        label = Counter(m.label or "" for m in members).most_common(1)[0][0] if stratify else ""
        strata[label].append(gid)
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


class Split(Stage):
    """Options: ``ratios`` (three numbers, normalised; default 8:1:1), ``stratify`` (use each
    record's label), ``seed`` (defaults to the run seed)."""

    name = "split"

    def __init__(self, ratios: list[float] | tuple[float, ...] = (0.8, 0.1, 0.1),
                 stratify: bool = True, seed: int | None = None) -> None:
        if len(ratios) != 3 or any(r < 0 for r in ratios) or sum(ratios) <= 0:
            raise ConfigError(f"split.ratios must be three non-negative numbers for train, dev, "
                              f"test (e.g. [0.8, 0.1, 0.1]), got {list(ratios)}")
        s = float(sum(ratios))
        self.ratios = tuple(float(r) / s for r in ratios)
        self.stratify = stratify
        self.seed = seed

    def run(self, records: Iterable[Conversation], ctx: RunContext) -> Iterator[Conversation]:
        recs = list(records)
        seed = ctx.seed if self.seed is None else self.seed
        assignment = assign_splits(recs, self.ratios, seed, self.stratify)  # type: ignore[arg-type]
        for rec in recs:
            rec.split = assignment[rec.lineage.group_id]
        by_split = Counter(r.split for r in recs)
        ctx.stats[self.name].update({"records": dict(by_split), "groups": len(assignment)})
        yield from recs
