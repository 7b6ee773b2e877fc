"""``balance``: even out a label's distribution by capping, flooring or weighting.

The label is chosen per corpus (``label``, a name or a mapping corpus -> name):

- ``label``: the record's own label (SPO: its rarest relation; whatever the reader set);
- ``meta.KEY``: any value the reader put in ``meta``;
- a label a corpus package declares (:mod:`dataprep.corpora`): ``scenario`` (hotel: facility /
  rating / price / name / type / followup / closing), ``answer_length`` / ``doc_length`` (doc-QA
  length buckets of the answer or of the positive documents, in characters; edges in
  ``buckets``).

Modes (default ``weight``: balancing never discards data unless the config asks for it):
``cap`` downsamples every class above ``cap`` records (seeded sample, removed with reason
``balance_downsample``); ``floor`` upsamples every class below ``floor`` with copies made by
``Conversation.derive`` (op ``balance_upsample``, same group id, so a copy always lands in its
parent's split); ``both`` does both; ``weight`` keeps every record and sets ``weight`` to
``total / (classes × class size)`` (mean weight 1; ``max_weight`` clips it; "after" then holds
each class's weighted mass). ``cap``/``floor``
are an integer count or a float ratio of the median class size (``cap: 2.0`` = twice the median).

Where it runs matters. After ``split`` it touches only ``splits`` (default ``[train]``): a copy of a
dev or test record would only inflate evaluation, and capping them would bias it. Before
``split`` it works on every record, and the splitter keeps each copy with its parent.

Sampling is deterministic: members of a class are sorted by id and shuffled with a generator
seeded by the run seed and the class, so the result does not depend on input order.

Each corpus, and after the split each balanced split, is balanced on its own (its own median).

The stage holds per record only its class and id; the records wait on disk
(:mod:`dataprep.spill`) and are read back to be passed on, removed (as evidence) or copied.

``Balance.stats``: label, mode, splits, ``before``/``after`` class sizes (flat, keyed
``corpus:label`` or ``corpus/split:label`` when several groups are balanced), ``by_corpus`` (one
entry per group) with the resolved cap, floor and median, ``removed``, ``added`` and, in weight
mode, ``weights``.

>>> Balance(mode="cap", cap=2.0).cap
2.0
"""

from __future__ import annotations

import random
import statistics
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from dataprep.errors import ConfigError
from dataprep.record import Conversation
from dataprep.spill import RecordStore
from dataprep.stages.base import RunContext, Stage, StageOptions

MODES = ("cap", "floor", "both", "weight")
NO_LABEL = "(none)"


def label_function(name: str, buckets: Iterable[int] | None = None) -> Callable[[Conversation], str]:
    """A function record -> class name for a ``label`` option value: ``label`` (the record's
    own), ``meta.KEY``, or a label a corpus package declares (``scenario``, ``answer_length``,
    ``doc_length``, ...; see :mod:`dataprep.corpora`).

    >>> from dataprep.record import Lineage, Message
    >>> rec = Conversation(id="a", messages=[Message("user", "q")], meta={"answer": "北京"},
    ...                    lineage=Lineage(source="s", line=1, group_id="a"))
    >>> label_function("answer_length")(rec)
    '0-10'
    """
    from dataprep.corpora import label_names, label_spec, load

    if name == "label":
        return lambda rec: rec.label if rec.label is not None else NO_LABEL
    if name.startswith("meta."):
        key = name[5:]
        return lambda rec: str(rec.meta[key]) if rec.meta.get(key) is not None else NO_LABEL
    spec = label_spec(name)
    if spec is None:
        raise ConfigError(f"balance.label: unknown label {name!r}; use label, "
                          f"{', '.join(label_names())} or meta.KEY")
    return load(spec)(buckets)


def resolve_count(name: str, value: int | float, median: float) -> int:
    """An absolute count, or a ratio of the median class size (floats).

    >>> resolve_count("cap", 2.0, 150), resolve_count("cap", 300, 150)
    (300, 300)
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"balance.{name} must be a positive count (int) or a ratio of the "
                          f"median class size (float), got {value!r}")
    return int(value) if isinstance(value, int) else max(1, round(value * median))


@dataclass
class BalanceOptions(StageOptions):
    """``label`` (name, or corpus -> name), ``mode`` (cap|floor|both|weight), ``cap``, ``floor``,
    ``max_weight``, ``splits`` (after split; default ``[train]``), ``buckets`` (length bucket
    edges), ``seed`` (default: the run seed). See the module docstring."""

    label: str | dict[str, str] = "label"
    mode: str = "weight"
    cap: int | float | None = None
    floor: int | float | None = None
    max_weight: float | None = None
    splits: list[str] | None = None
    buckets: list[int] | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        mode, cap, floor = self.mode, self.cap, self.floor
        if mode not in MODES:
            raise ConfigError(f"balance.mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode in ("cap", "both") and cap is None:
            raise ConfigError(f"balance: mode {mode!r} needs 'cap' (a count, or a float ratio "
                              "of the median class size such as 2.0)")
        if mode in ("floor", "both") and floor is None:
            raise ConfigError(f"balance: mode {mode!r} needs 'floor' (a count, or a float ratio "
                              "of the median class size such as 0.5)")
        if mode == "weight" and (cap is not None or floor is not None):
            raise ConfigError("balance: 'cap'/'floor' need mode cap, floor or both (the default "
                              "mode, weight, keeps every record and writes sample weights)")
        for opt, value in (("cap", cap), ("floor", floor)):
            if value is not None:
                resolve_count(opt, value, 1.0)  # type check now, not at the first record
        if self.max_weight is not None and self.max_weight <= 0:
            raise ConfigError(f"balance.max_weight must be positive, got {self.max_weight!r}")
        splits = self.splits
        if splits is not None and (not splits or not all(isinstance(x, str) for x in splits)):
            raise ConfigError(f"balance.splits must be a list of split names, got {splits!r}")


class Balance(Stage):
    """Options: :class:`BalanceOptions`. See the module docstring."""

    name = "balance"

    Options = BalanceOptions
    options: BalanceOptions

    def setup(self) -> None:
        o = self.options
        self.label, self.mode, self.cap, self.floor = o.label, o.mode, o.cap, o.floor
        self.max_weight, self.seed = o.max_weight, o.seed
        self.splits = list(o.splits) if o.splits is not None else None
        self.buckets = list(o.buckets) if o.buckets is not None else None
        for name in (o.label.values() if isinstance(o.label, dict) else [o.label]):
            label_function(name, self.buckets)  # an unknown label or bad buckets fail now

    def _label_of(self, corpus: str) -> Callable[[Conversation], str]:
        name = self.label.get(corpus, "label") if isinstance(self.label, dict) else self.label
        return label_function(name, self.buckets)

    def run(self, records: Iterable[Conversation], ctx: RunContext) -> Iterator[Conversation]:
        # Class sizes need every record. The records wait on disk (dataprep.spill); per record
        # this holds its store number in its class, its id (the sampling order) and, at the end,
        # whether it was removed and its weight.
        with ctx.record_store(self.name) as store:
            yield from self._balance(records, store, ctx)

    def _balance(self, records: Iterable[Conversation], store: RecordStore, ctx: RunContext
                 ) -> Iterator[Conversation]:
        # Classes per corpus and per split: each balanced split is balanced on its own. Whether
        # the run is past the split is known only at the end (any record with a split): until
        # then records without one are grouped under split None.
        found: dict[tuple[str, str | None], dict[str, list[int]]] = defaultdict(
            lambda: defaultdict(list))
        label_fns: dict[str, Callable[[Conversation], str]] = {}
        ids: dict[int, str] = {}
        after_split = False
        wanted = set(self.splits or ["train"])
        for rec in records:
            n = store.append(rec)
            if rec.split is not None:
                after_split = True
                if rec.split not in wanted:
                    continue
            if rec.corpus not in label_fns:
                label_fns[rec.corpus] = self._label_of(rec.corpus)
            label = sys.intern(label_fns[rec.corpus](rec))
            found[(sys.intern(rec.corpus), rec.split)][label].append(n)
            ids[n] = rec.id
        if self.splits is not None and not after_split:
            raise ConfigError("balance.splits only applies after the 'split' stage; put "
                              "'balance' after 'split' or drop the 'splits' option")
        targets = wanted if after_split else None
        classes: dict[tuple[str, str], dict[str, list[int]]] = {
            (corpus, split or ""): members for (corpus, split), members in found.items()
            if not (after_split and split is None)}  # after the split: only the target splits
        del found
        seed = ctx.seed if self.seed is None else self.seed

        removed = np.zeros(len(store), dtype=bool)
        weights = np.full(len(store), np.nan)
        copies: dict[int, list[tuple[str, str]]] = defaultdict(list)
        by_corpus: dict[str, Any] = {}
        several_splits = len({split for _, split in classes}) > 1
        for corpus, split in sorted(classes):
            key = corpus or "(none)"
            if several_splits:
                key = f"{key}/{split}"
            by_corpus[key] = self._balance_group(
                f"{corpus}:{split}", classes[(corpus, split)], ids, seed, ctx, store, removed,
                weights, copies)
        del classes, ids

        self._write_stats(by_corpus, after_split, targets)
        for n, rec in enumerate(store):
            if removed[n]:
                continue
            if not np.isnan(weights[n]):
                rec.weight = float(weights[n])
            # Copies are made before the parent is passed on: a later stage may change it.
            made = [ctx.add(rec.derive(new_id, "balance_upsample", balance_label=label),
                            "balance_upsample") for new_id, label in copies.get(n, [])]
            yield rec
            yield from made

    def _balance_group(self, group: str, members: dict[str, list[int]], ids: dict[int, str],
                       seed: int, ctx: RunContext, store: RecordStore, removed: np.ndarray,
                       weights: np.ndarray, copies: dict[int, list[tuple[str, str]]]
                       ) -> dict[str, Any]:
        sizes = {label: len(v) for label, v in members.items()}
        median = statistics.median(sizes.values())
        cap = resolve_count("cap", self.cap, median) if self.mode in ("cap", "both") else None
        floor = (resolve_count("floor", self.floor, median)
                 if self.mode in ("floor", "both") else None)
        if cap is not None and floor is not None and floor > cap:
            raise ConfigError(f"balance: floor {floor} is above cap {cap} for {group!r}")
        after: dict[str, float] = {}
        label_weights: dict[str, float] = {}
        total = sum(sizes.values())
        for label in sorted(members):
            # Sorted by id (stable: equal ids stay in input order), then a seeded shuffle.
            pool = sorted(members[label], key=ids.__getitem__)
            random.Random(f"{seed}:balance:{group}:{label}").shuffle(pool)
            n = len(pool)
            if cap is not None and n > cap:
                for k in pool[cap:]:
                    removed[k] = True
                    ctx.remove(store.get(k), "balance_downsample",
                               f"class {label!r} has {n} records, over cap {cap}; "
                               f"a seeded sample of {cap} is kept", stage=self.name)
                n = cap
            elif floor is not None and n < floor:
                need = floor - n
                made: Counter[str] = Counter()
                for j in range(need):
                    parent = pool[j % len(pool)]
                    made[ids[parent]] += 1
                    copies[parent].append((f"{ids[parent]}#up{made[ids[parent]]}", label))
                n = floor
            elif self.mode == "weight":
                w = total / (len(members) * n)
                if self.max_weight is not None:
                    w = min(w, self.max_weight)
                label_weights[label] = round(w, 6)
                weights[pool] = label_weights[label]
                after[label] = round(n * label_weights[label], 3)  # the class's effective mass
                continue
            after[label] = n
        info: dict[str, Any] = {
            "before": dict(sorted(sizes.items())), "after": after, "median": median, "cap": cap,
            "floor": floor, "removed": 0, "added": 0}
        if self.mode != "weight":
            info["removed"] = sum(max(sizes[k] - int(after[k]), 0) for k in sizes)
            info["added"] = sum(max(int(after[k]) - sizes[k], 0) for k in sizes)
        if self.mode == "weight":
            info["weights"] = label_weights
        return info

    def _write_stats(self, by_corpus: dict[str, Any], after_split: bool,
                     targets: set[str] | None) -> None:
        multi = len(by_corpus) > 1

        def flat(key: str) -> dict[str, Any]:
            return {(f"{c}:{label}" if multi else label): n
                    for c, info in by_corpus.items() for label, n in info[key].items()}

        before, after = flat("before"), flat("after")
        st = self.stats
        st.update({
            "label": self.label, "mode": self.mode,
            "applied": "after_split" if after_split else "before_split",
            "splits": sorted(targets) if targets is not None else "all",
            "before": before, "after": after, "by_corpus": by_corpus,
            "removed": sum(info["removed"] for info in by_corpus.values()),
            "added": sum(info["added"] for info in by_corpus.values()),
        })
        if self.mode == "weight":
            st["weights"] = flat("weights")
