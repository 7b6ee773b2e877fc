"""``augment``: named augmentation ops that ADD derived records next to their sources.

Runs after ``split`` and, by default, on the train split only. Every op reads an original record
and may derive one new record from it (``Conversation.derive``: new id ``<parent>~<op>``, the
parent id and the op in the lineage, the parent's group id and split); originals are never
modified or dropped, so the accounting is simply ``added`` per op. Ops never see each other's
output, which keeps every op's result a function of (seed, op, record) alone.

The ops belong to the corpus packages (:class:`dataprep.corpora.base.AugmentOp`, each with an
``Options`` dataclass): hotel ``rewrite_rules``, ``rewrite_llm`` (needs ``llm:``), ``followup``,
``closing``, ``name_query``, ``price_upper_query``; doc-QA ``docqa_contrastive``,
``docqa_unanswerable`` (see :mod:`dataprep.corpora.hotel.augment` and
:mod:`dataprep.corpora.docqa.augment`). ``ops:`` is a list of names or ``{name: ..., option:
value}``; the default is every op that needs no endpoint. An op runs on the records of its own
corpus; ``share`` is the fraction of them it is applied to, chosen by a hash of (seed, op, id).

Per-record outcomes are counted in ``stats["ops"][op]`` (``added``, ``not_selected``,
``kept:<reason>``, ``skipped:<reason>``), per-turn ones in ``stats["turns"][op]``; every
discarded rewrite is kept as evidence in ``augment_discarded.jsonl``; the LLM client's stats go to
the manifest's ``artifacts.llm``.

>>> Augment(ops=["followup", {"name": "closing", "share": 0.5}]).ops[1].options.share
0.5
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from dataprep import schema
from dataprep.corpora import op_class, op_names
from dataprep.corpora.base import AugmentOp, OpRun
from dataprep.errors import ConfigError
from dataprep.io import AtomicWriter, dumps_evidence
from dataprep.record import Conversation
from dataprep.stages.base import RunContext, Stage, StageOptions, parse_options
from dataprep.stages.split import SPLITS

# Ops that need an endpoint are left out of the default, so `make demo` augments offline.
NEEDS_ENDPOINT = ("rewrite_llm",)
DISCARDED_FILE = "augment_discarded.jsonl"


def default_ops() -> list[str]:
    return [name for name in op_names() if name not in NEEDS_ENDPOINT]


def parse_ops(specs: Iterable[Any] | None) -> list[AugmentOp]:
    """Build the ``ops`` option; raises :class:`ConfigError` naming what is wrong.

    >>> [o.name for o in parse_ops(["closing", {"name": "followup", "share": 0.5}])]
    ['closing', 'followup']
    """
    out: list[AugmentOp] = []
    seen = set()
    for i, spec in enumerate(default_ops() if specs is None else specs):
        if isinstance(spec, str):
            name, given = spec, {}
        elif isinstance(spec, dict) and isinstance(spec.get("name"), str):
            name, given = spec["name"], {k: v for k, v in spec.items() if k != "name"}
        elif isinstance(spec, dict) and len(spec) == 1:
            ((name, given),) = spec.items()
            given = dict(given or {})
        else:
            raise ConfigError(f"augment.ops[{i}]: expected an op name or {{name: ..., options}}, "
                              f"got {spec!r}")
        if name not in op_names():
            raise ConfigError(f"augment.ops[{i}]: unknown op {name!r}; available: "
                              f"{', '.join(op_names())}")
        if name in seen:
            raise ConfigError(f"augment.ops[{i}]: op {name!r} is listed twice")
        seen.add(name)
        cls = op_class(name)
        try:
            options = parse_options(cls.Options, f"augment op {name!r}", given)
        except ConfigError as e:
            msg = str(e)
            prefix = f"augment op {name!r}: "
            raise ConfigError(msg if msg.startswith(prefix) else prefix + msg) from e
        out.append(cls(options))
    return out


def selected(seed: int, op: str, rec_id: str, share: float) -> bool:
    """Whether ``op`` runs on record ``rec_id``: a hash, so the choice depends on neither the
    record order nor the other ops (and is the same in a resumed run).

    >>> selected(42, "followup", "a", 1.0), selected(42, "followup", "a", 0.0)
    (True, False)
    """
    digest = hashlib.sha256(f"{seed}\x1f{op}\x1f{rec_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def _rng(seed: int, op: str, rec_id: str) -> random.Random:
    # String seeds are hashed with sha512 by random.seed, so they do not depend on
    # PYTHONHASHSEED: the same record gets the same choices in every process.
    return random.Random(f"{seed}\x1f{op}\x1f{rec_id}")


@dataclass
class AugmentOptions(StageOptions):
    """``ops`` (see the module docstring), ``splits`` (default ``[train]``), ``seed`` (default:
    the run seed), ``evidence`` (write ``augment_discarded.jsonl``, default true)."""

    ops: list[Any] | None = None
    splits: list[str] | tuple[str, ...] = ("train",)
    seed: int | None = None
    evidence: bool = True

    def __post_init__(self) -> None:
        bad = sorted(set(self.splits) - set(SPLITS))
        if bad or not self.splits:
            raise ConfigError(f"augment.splits must be a non-empty subset of {list(SPLITS)}, "
                              f"got {list(self.splits)}")


class Augment(Stage):
    """Adds derived records (see the module docstring). Options: :class:`AugmentOptions`;
    resources: the hotel database, the tokenizer (``max_tokens``) and the ``llm:`` settings."""

    name = "augment"
    Options = AugmentOptions
    uses = ("hotel_db", "tokenizer", "llm")
    options: AugmentOptions

    #: Runs a shardable op's ``derive_many`` elsewhere: ``(op, chosen, run) -> made``, with
    #: outcomes, evidence and artifacts replayed into ``run`` in record order (the Ray engine
    #: sets it; see :meth:`dataprep.corpora.base.AugmentOp.shardable`).
    sharded: Callable[[AugmentOp, list[Conversation], OpRun],
                      list[tuple[Conversation, Conversation | None, str]]] | None = None

    def setup(self) -> None:
        self.ops = parse_ops(self.options.ops)
        self.splits = list(self.options.splits)
        self.seed = self.options.seed
        self.evidence = self.options.evidence

    def describe(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {"ops": [{"name": o.name, **asdict(o.options)} for o in self.ops],
                "splits": self.splits, "seed": self.seed, "evidence": self.evidence}

    def run(self, records: Iterable[Conversation], ctx: RunContext) -> Iterator[Conversation]:
        recs = list(records)
        seed = ctx.seed if self.seed is None else self.seed
        st = self.stats
        st.update({"records": len(recs), "in_scope": 0, "out_of_scope": {},
                   "ops": {o.name: {} for o in self.ops}, "turns": {}})
        scope = []
        out_of_scope: Counter[str] = Counter()
        for rec in recs:
            if rec.split is None:
                raise ValueError(f"record {rec.id} reached 'augment' without a split; put "
                                 "'augment' after 'split' in the stages list")
            if rec.split in self.splits:
                scope.append(rec)
            else:
                out_of_scope[rec.split] += 1
        st["in_scope"] = len(scope)
        st["out_of_scope"] = dict(sorted(out_of_scope.items()))
        discarded: list[dict[str, Any]] = []
        run = OpRun(seed=seed, resources=self.resources, out_dir=ctx.out_dir,
                    count_turn=self._count_turn, discard=discarded.append,
                    artifacts=self.stats.artifacts, state_dir=ctx.home)
        children = self._derive_all(scope, run)
        for rec in recs:
            yield rec
            for op, child in children.get(id(rec), []):
                ctx.add(child, op)
                yield child
        if self.evidence:
            path = ctx.out_dir / DISCARDED_FILE
            with AtomicWriter(path) as fh:
                for item in discarded:
                    fh.write(dumps_evidence(item) + "\n")
            self.stats.artifacts["augment"] = {"discarded": str(ctx.home / DISCARDED_FILE),
                                               "discarded_count": len(discarded)}

    def _count(self, op: str, outcome: str) -> None:
        ops = self.stats["ops"]
        ops[op][outcome] = ops[op].get(outcome, 0) + 1

    def _count_turn(self, op: str, outcome: str) -> None:
        turns = self.stats["turns"].setdefault(op, {})
        turns[outcome] = turns.get(outcome, 0) + 1

    def _derive_all(self, scope: list[Conversation],
                    run: OpRun) -> dict[int, list[tuple[str, Conversation]]]:
        children: dict[int, list[tuple[str, Conversation]]] = defaultdict(list)
        for op in self.ops:
            op.prepare(scope, run)
        for op in self.ops:
            chosen = []
            for rec in scope:
                if rec.corpus != op.corpus:
                    continue
                if selected(run.seed, op.name, rec.id, op.options.share):
                    chosen.append(rec)
                else:
                    self._count(op.name, "not_selected")
            if self.sharded is not None and chosen and op.shardable(run):
                made = self.sharded(op, chosen, run)
            else:
                made = op.derive_many(chosen, run,
                                      lambda r, name=op.name: _rng(run.seed, name, r.id))
            for parent, child, outcome in made:
                if child is None:
                    self._count(op.name, outcome)
                elif self._accept(op.name, child):
                    children[id(parent)].append((op.name, child))
        return children

    def _accept(self, op: str, child: Conversation) -> bool:
        # The writer would reject a bad line anyway; checking here keeps the reason with the op
        # that caused it instead of turning an op bug into a write-stage reject.
        problems = schema.output_problems(child.to_chatglm3())
        if problems:
            self._count(op, f"skipped:invalid:{problems[0][0]}")
            return False
        self._count(op, "added")
        return True
