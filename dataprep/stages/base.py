"""The stage protocol, the post-run step protocol and the run context that keeps the books.

A stage is an object with a ``name`` and ``run(records, ctx)``, a generator over conversations.
Whatever it does not pass on it must hand to ``ctx.remove`` or ``ctx.reject`` with a reason code,
and whatever it creates it must announce with ``ctx.add``: that is what lets every run prove

    input − rejected − removed + added = train + dev + test.

A stage is built from a typed options object (a dataclass, ``Options``; an unknown option is a
one-line :class:`ConfigError` naming the valid ones) and the typed :class:`Resources` it declares
in ``uses``. What it reports goes into its own :class:`StageStats`; no stage reads another's.
A post-run step (:class:`PostRunStep`: expectations, report) runs once after the manifest is
written, on the finished run folder.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar

from dataprep.errors import ConfigError, StrictModeError
from dataprep.io import AtomicWriter, dumps_evidence
from dataprep.record import Conversation, Reject
from dataprep.resources import Resources
from dataprep.spill import SPILL_DIR, RecordStore


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
    """The books of one run: counts, rejects, which stage is running. Nothing else is shared."""

    def __init__(self, out_dir: str | Path, *, seed: int = 42, strict: bool = False,
                 home: str | Path | None = None) -> None:
        # out_dir: where this run's generation is written (a temp sibling of --out until the
        # pipeline swaps it in); home: the --out folder itself, named in anything the user reads
        # and holding what outlives a generation (the LLM cache). See dataprep.run_folder.
        self.out_dir = Path(out_dir)
        self.home = Path(home) if home is not None else self.out_dir
        self.seed = seed
        self.strict = strict
        self.counts = Counts()
        self.timings: dict[str, float] = Counter()
        # Rejects go to OUT/rejects.jsonl as they happen (a temp file, renamed by
        # write_rejects): a run never holds them with their records in memory.
        self._rejects_writer: AtomicWriter | None = None
        self._rejects_fh: IO[str] | None = None
        # The stage whose code is running right now (maintained by ``timed``), so that an
        # addition is credited to the stage that made it.
        self.current_stage = "read"
        self._stores = 0

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
        # Evidence is written whatever it holds (NaN, a lone surrogate): a reject that cannot
        # be written would lose the record and abort the run.
        self._rejects_file().write(dumps_evidence(rej.to_dict()) + "\n")

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

    def record_store(self, name: str) -> RecordStore:
        """A fresh disk-backed store (:mod:`dataprep.spill`) for a stage that needs every record,
        in the generation's hidden spill folder; the stage closes it when its stream ends."""
        self._stores += 1
        return RecordStore(self.out_dir / SPILL_DIR / f"{name}-{self._stores}.sqlite")

    def remove_spill(self) -> None:
        """Remove the spill folder (the pipeline calls it before the generation is committed,
        whether the stream ended or failed)."""
        shutil.rmtree(self.out_dir / SPILL_DIR, ignore_errors=True)

    def _rejects_file(self) -> IO[str]:
        if self._rejects_fh is None:
            self._rejects_writer = AtomicWriter(self.out_dir / "rejects.jsonl")
            self._rejects_fh = self._rejects_writer.__enter__()
        return self._rejects_fh

    @property
    def rejects(self) -> list[Reject]:
        """The rejects so far, read back from the file being written (for tests and tools)."""
        if self._rejects_fh is None or self._rejects_writer is None:
            return []
        self._rejects_fh.flush()
        with open(self._rejects_writer.temp_path, encoding="utf-8") as fh:
            return [Reject(**json.loads(line)) for line in fh]

    def write_rejects(self) -> Path:
        """Commit ``rejects.jsonl`` (empty when nothing was rejected)."""
        self._rejects_file()
        assert self._rejects_writer is not None
        self._rejects_writer.__exit__(None, None, None)
        self._rejects_writer = self._rejects_fh = None
        return self.out_dir / "rejects.jsonl"

    def discard_rejects(self) -> None:
        """Drop the rejects file being written (the run failed: the previous file stays)."""
        if self._rejects_writer is not None:
            self._rejects_writer.__exit__(RuntimeError, None, None)
            self._rejects_writer = self._rejects_fh = None


class StageStats(dict):
    """What one stage or post-run step reports: its counters (the manifest's
    ``stage_stats.NAME``) and, in ``artifacts``, the larger things it produced (the manifest's
    ``artifacts``: duplicate clusters, the leakage audit, expectation results)."""

    def __init__(self) -> None:
        super().__init__()
        self.artifacts: dict[str, Any] = {}

    def inc(self, key: str, n: int = 1) -> None:
        self[key] = self.get(key, 0) + n


@dataclass
class StageOptions:
    """Base of every ``Options`` dataclass. Subclasses check values in ``__post_init__``."""


def parse_options(cls: type[StageOptions], owner: str, given: dict[str, Any],
                  moved: dict[str, str] | None = None) -> StageOptions:
    """Build ``cls`` from a config mapping: an unknown or misspelled option is one line that
    names the valid ones.

    >>> parse_options(Split.Options, "stage 'split'", {"ratio": [1, 1, 1]})  # doctest: +SKIP
    ConfigError: stage 'split': unknown option 'ratio'; valid: ratios, stratify, ...
    """
    valid = [f.name for f in dataclasses.fields(cls)]
    for key in given:
        if key not in valid:
            hint = f" ({moved[key]})" if moved and key in moved else ""
            raise ConfigError(f"{owner}: unknown option {key!r}; valid: "
                              f"{', '.join(valid) or '(none)'}{hint}")
    try:
        return cls(**given)
    except TypeError as e:  # a required option is missing
        raise ConfigError(f"{owner}: {e}") from e


class _Configured:
    """Shared construction of stages and post-run steps: options + declared resources."""

    name: ClassVar[str] = "stage"
    kind: ClassVar[str] = "stage"
    Options: ClassVar[type[StageOptions]] = StageOptions
    uses: ClassVar[tuple[str, ...]] = ()
    """The :class:`Resources` this step reads (hotel_db, tokenizer, llm, matching)."""
    moved_options: ClassVar[dict[str, str]] = {}
    """Options that used to be accepted here -> where they went (for the error message)."""

    def __init__(self, options: StageOptions | None = None, /, *,
                 resources: Resources | None = None, **kwargs: Any) -> None:
        if options is None:
            options = parse_options(self.Options, f"{self.kind} {self.name!r}", kwargs,
                                    self.moved_options)
        elif kwargs:
            raise ConfigError(f"{self.kind} {self.name!r}: pass options either as an Options "
                              f"object or as keywords, not both")
        self.options = options
        self.resources = resources if resources is not None else Resources()
        self.resources.check(f"{self.kind} {self.name!r}", self.uses)
        self.stats = StageStats()
        self.setup()

    def setup(self) -> None:
        """Derive what the step needs from its options (override; called by ``__init__``)."""

    def describe(self) -> dict[str, Any]:
        """Options as resolved, for the manifest."""
        return dataclasses.asdict(self.options)


class Stage(_Configured):
    """Base class. Subclasses set ``name`` and ``Options`` and override :meth:`process` (one
    record in, zero or more out) or :meth:`run` (whole stream, for stages that need every record,
    like split). :meth:`finish` runs once after the stream has ended, before the manifest."""

    def run(self, records: Iterable[Conversation], ctx: RunContext) -> Iterator[Conversation]:
        for rec in records:
            yield from self.process(rec, ctx)

    def process(self, rec: Conversation, ctx: RunContext) -> Iterator[Conversation]:
        yield rec

    def finish(self, ctx: RunContext) -> None:
        """Called once after every record went through every stage (default: nothing)."""


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


def _no_publish(stats: StageStats) -> None:
    return None


@dataclass
class FinishedRun:
    """What a post-run step gets: the run folder (splits, rejects, manifest.json written), the
    manifest as written so far, the split ratios the run used, and ``publish(stats)``, which adds
    a step's artifacts to manifest.json right away (the pipeline does it after each step anyway;
    the report calls it because it renders the manifest)."""

    out_dir: Path
    manifest: dict[str, Any] = field(default_factory=dict)
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    publish: Callable[[StageStats], None] = _no_publish
    home: Path | None = None
    """The --out folder the run becomes once swapped in (paths shown to the user name it);
    ``out_dir`` is where the step reads and writes until then."""

    @property
    def shown_dir(self) -> Path:
        return self.home if self.home is not None else self.out_dir


class PostRunStep(_Configured):
    """A step that runs once, after ``manifest.json`` is written, on the finished run folder.

    :meth:`run` puts what it produced into ``self.stats.artifacts`` (the pipeline adds it to the
    manifest and rewrites it) and raises to fail the run; every post-run step gets its turn
    before the first error is raised, so the report explains a failed expectation run.
    """

    kind: ClassVar[str] = "post-run step"

    def run(self, run: FinishedRun) -> None:
        raise NotImplementedError


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
