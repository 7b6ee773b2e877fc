"""The stage protocol and the run context that keeps the books.

A stage is an object with a ``name`` and ``run(records, ctx)``, a generator over conversations.
Whatever it does not pass on it must hand to ``ctx.remove`` or ``ctx.reject`` with a reason code,
and whatever it creates it must announce with ``ctx.add``: that is what lets every run prove

    input − rejected − removed + added = train + dev + test.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from dataprep.errors import ConfigError, StrictModeError
from dataprep.io import AtomicWriter, dumps
from dataprep.record import Conversation, Reject


@dataclass
class Counts:
    input: int = 0
    rejected: Counter = field(default_factory=Counter)
    removed: Counter = field(default_factory=Counter)
    added: Counter = field(default_factory=Counter)
    added_by_stage: Counter = field(default_factory=Counter)
    splits: Counter = field(default_factory=Counter)

    def as_manifest(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "rejected": dict(sorted(self.rejected.items())),
            "removed": dict(sorted(self.removed.items())),
            "added": sum(self.added.values()),
            "added_by_op": dict(sorted(self.added.items())),
            "added_by_stage": dict(sorted(self.added_by_stage.items())),
            "train": self.splits.get("train", 0),
            "dev": self.splits.get("dev", 0),
            "test": self.splits.get("test", 0),
        }

    def balance(self) -> tuple[int, int]:
        """(input − rejected − removed + added, train + dev + test)."""
        left = (self.input - sum(self.rejected.values()) - sum(self.removed.values())
                + sum(self.added.values()))
        return left, sum(self.splits.values())


class RunContext:
    """Shared state of one run: counts, rejects file, per-stage stats, lazily loaded resources."""

    def __init__(self, out_dir: str | Path, *, seed: int = 42, strict: bool = False,
                 config: dict[str, Any] | None = None, tokenizer_path: str | None = None,
                 hotel_db_path: str | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.seed = seed
        self.strict = strict
        self.config = config or {}
        self.tokenizer_path = tokenizer_path
        self.hotel_db_path = hotel_db_path
        self.counts = Counts()
        self.stats: dict[str, dict[str, Any]] = defaultdict(dict)
        self.timings: dict[str, float] = defaultdict(float)
        self.rejects: list[Reject] = []
        self._tokenizer: Any = None
        self._hotel_db: Any = None
        self.artifacts: dict[str, Any] = {}
        # The stage whose code is running right now (maintained by ``timed``), so that an
        # addition is credited to the stage that made it.
        self.current_stage = "read"

    # -- bookkeeping -------------------------------------------------------------------------
    def count_input(self, n: int = 1) -> None:
        self.counts.input += n

    def reject(self, rej: Reject) -> None:
        """Record bad input (``kind="rejected"``) or a record filtered by design (``"removed"``)."""
        if rej.kind == "removed":
            self.counts.removed[rej.reason] += 1
        else:
            self.counts.rejected[rej.reason] += 1
            if self.strict:
                raise StrictModeError(f"{rej.location()}: {rej.message} [{rej.reason}]")
        self.rejects.append(rej)

    def reject_record(self, rec: Conversation, reason: str, message: str, *, stage: str,
                      kind: str = "rejected", kept_id: str | None = None) -> None:
        """Reject or remove a conversation that a stage will not pass on, keeping it as evidence."""
        self.reject(Reject(reason=reason, source=rec.lineage.source, line=rec.lineage.line,
                           item=rec.lineage.item, message=message, kind=kind, stage=stage,
                           record=rec.to_chatglm3(), kept_id=kept_id))

    def remove(self, rec: Conversation, reason: str, message: str, *, stage: str,
               kept_id: str | None = None) -> None:
        self.reject_record(rec, reason, message, stage=stage, kind="removed", kept_id=kept_id)

    def add(self, rec: Conversation, op: str) -> Conversation:
        """Announce a record a stage created (augmentation, upsampling)."""
        self.counts.added[op] += 1
        self.counts.added_by_stage[self.current_stage] += 1
        return rec

    def stat(self, stage: str, key: str, inc: int = 1) -> None:
        self.stats[stage][key] = self.stats[stage].get(key, 0) + inc

    def write_rejects(self) -> Path:
        path = self.out_dir / "rejects.jsonl"
        with AtomicWriter(path) as fh:
            for rej in self.rejects:
                fh.write(dumps(rej.to_dict()) + "\n")
        return path

    # -- shared resources --------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        """The ChatGLM3 tokenizer when the config names one (``tokenizer: PATH``), else None."""
        if self._tokenizer is None and self.tokenizer_path:
            from dataprep.tokenizer import load_tokenizer

            self._tokenizer = load_tokenizer(self.tokenizer_path)
        return self._tokenizer

    @property
    def hotel_db(self) -> Any:
        if self._hotel_db is None:
            if not self.hotel_db_path:
                raise ConfigError("this stage needs the hotel database: set 'hotel_db: PATH' "
                                  "in the config (or --hotel-db)")
            from dataprep.hotel_db import HotelDB

            self._hotel_db = HotelDB.load(self.hotel_db_path)
        return self._hotel_db


class Stage:
    """Base class. Subclasses set ``name`` and override :meth:`process` (one record in, zero or
    more out) or :meth:`run` (whole stream, for stages that need every record, like split)."""

    name: ClassVar[str] = "stage"

    def __init__(self, **options: Any) -> None:
        if options:
            raise ConfigError(f"stage {self.name!r} got unknown options {sorted(options)}")

    def run(self, records: Iterable[Conversation], ctx: RunContext) -> Iterator[Conversation]:
        for rec in records:
            yield from self.process(rec, ctx)

    def process(self, rec: Conversation, ctx: RunContext) -> Iterator[Conversation]:
        yield rec

    def describe(self) -> dict[str, Any]:
        """Options as resolved, for the manifest."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


class Filter(Stage):
    """A stage that keeps or drops each record: override :meth:`check` to return None (keep) or
    ``(reason, message)`` (drop). ``drop_kind`` says whether a drop is a reject or a removal."""

    drop_kind: ClassVar[str] = "rejected"

    def check(self, rec: Conversation, ctx: RunContext) -> tuple[str, str] | None:
        return None

    def process(self, rec: Conversation, ctx: RunContext) -> Iterator[Conversation]:
        verdict = self.check(rec, ctx)
        if verdict is None:
            yield rec
        else:
            reason, message = verdict
            ctx.reject_record(rec, reason, message, stage=self.name, kind=self.drop_kind)


def timed(stage_name: str, records: Iterable[Conversation], ctx: RunContext) -> Iterator[Conversation]:
    """Attribute wall time spent inside a stage's generator to that stage."""
    it = iter(records)
    while True:
        t0 = time.perf_counter()
        outer, ctx.current_stage = ctx.current_stage, stage_name
        try:
            rec = next(it)
        except StopIteration:
            return
        finally:
            ctx.current_stage = outer
            ctx.timings[stage_name] += time.perf_counter() - t0
        yield rec


def json_default(o: Any) -> Any:
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    if isinstance(o, Path):
        return str(o)
    return json.JSONEncoder().default(o)
