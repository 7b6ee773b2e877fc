"""Leakage between splits: which split an input file stands for, and which held-out records have
a duplicate in train."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from pathlib import PurePath

from dataprep.dedup.engine import Clustering

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

    >>> from dataprep.dedup import find_duplicates
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
