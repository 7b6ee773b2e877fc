"""Run a pipeline on Ray: ``dataprep run CONFIG --engine ray [--ray-address ADDR]``.

The same stages, options and seed as the local engine, and the same outputs byte for byte
(splits, rejects, manifest counts):

* Consecutive per-record stages (those that only implement ``process``: clean, validate) run as
  one Ray Data ``map_batches`` over windows of the input, order preserved. Each batch returns
  its events in the order the local engine would produce them (a record's rejects, then what it
  yields), the records its stages created, and what its stages counted; the driver replays the
  events into the run's books and merges the counts into its copy of each stage.
* Dedup (and split's clustering when it runs without dedup) uses
  :func:`dataprep.dedup.distributed.find_duplicates_ray`: signatures as a Ray Data map, one LSH
  band per task, the decisions on the driver.
* Dedup's components and keep decisions run on the cluster too (star rounds over the verified
  pairs); the driver gets back the record -> (component, kept twin) mapping and the pairs.
* ``augment`` runs on the driver, except its shardable ops (``rewrite_llm``: the LLM stage),
  whose records go in batches through a Ray Data actor pool (:func:`derive_on_ray`). Every actor
  opens the same on-disk answer cache (sqlite in WAL mode: one connection and transactions per
  process, writers serialised by sqlite's lock); an answer already stored wins over a
  concurrent one, so the outputs match the cache. The batches' outcomes, discarded rewrites
  and client stats are replayed on the driver in record order. On a multi-node cluster put
  ``llm.cache_dir`` on a filesystem every node shares (otherwise each node keeps its own cache),
  and give the workers the API key in their environment.
* Other stages that need the whole stream (split, balance, write) run on the driver.

Without an address a local Ray starts (``ray.init(num_cpus=...)``); with one the driver joins
that cluster, whose workers need this package installed (``pip install .[ray]``) or shipped in a
``runtime_env``.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import pickle
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from dataprep.config import RunConfig
from dataprep.corpora.base import AugmentOp, OpRun
from dataprep.errors import DataprepError
from dataprep.pipeline import Pipeline
from dataprep.readers.base import Reader
from dataprep.record import Conversation, Reject
from dataprep.resources import Resources
from dataprep.stages.augment import Augment
from dataprep.stages.base import RunContext, Stage, StageStats, timed

# Records per Ray dataset: bounds what the driver holds while a window is in flight.
WINDOW = 50_000


def per_record(stage: Stage) -> bool:
    """True for a stage that handles each record on its own (only ``process`` implemented)."""
    return type(stage).run is Stage.run


def merge_stats(into: dict[str, Any], part: dict[str, Any]) -> None:
    """Add one batch's stage counters to the driver's: integers add, mappings merge key by key,
    anything else (a unit name, a threshold) is taken as is. A ``rate`` next to ``checked`` is
    recomputed from the summed counts (``failed``, ``grounded`` or ``mentions`` over
    ``checked``), as the stages compute it."""
    for key, value in part.items():
        old = into.get(key)
        if isinstance(value, dict):
            if not isinstance(old, dict):
                into[key] = old = {}
            merge_stats(old, value)
        elif type(value) is int and type(old) is int:
            into[key] = old + value
        else:
            into[key] = value
    if "rate" in into and into.get("checked"):
        for num in ("failed", "grounded", "mentions"):
            if isinstance(into.get(num), int):
                into["rate"] = round(into[num] / into["checked"], 6)


class _Recorder(RunContext):
    """A worker's books: rejects are recorded as events in order, never written or raised."""

    def __init__(self, seed: int) -> None:
        super().__init__(".", seed=seed, strict=False)
        self.events: list[tuple[str, Any]] = []

    def reject(self, rej: Reject) -> None:
        self.events.append(("reject", rej))


class _Segment:
    """The Ray Data map: items (conversations, or the readers' rejects passed through in place)
    through a chain of per-record stages."""

    def __init__(self, stages_blob: bytes, seed: int) -> None:
        from ray import cloudpickle

        self.stages: list[Stage] = cloudpickle.loads(stages_blob)
        self.seed = seed

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        for stage in self.stages:
            stage.stats = StageStats()
        ctx = _Recorder(self.seed)
        events: list[tuple[str, Any]] = []
        for blob in batch["item"]:
            item = pickle.loads(blob)
            if isinstance(item, Reject):
                events.append(("reject", item))
                continue
            stream: Iterable[Conversation] = iter([item])
            for stage in self.stages:
                stream = timed(stage.name, stage.run(stream, ctx), ctx)
            for rec in stream:
                events.extend(ctx.events)
                ctx.events.clear()
                events.append(("out", rec))
            events.extend(ctx.events)
            ctx.events.clear()
        stats = {s.name: (dict(s.stats), s.stats.artifacts) for s in self.stages}
        result = (events, stats, ctx.counts.added, ctx.counts.added_by_stage)
        return {"result": [pickle.dumps(result)]}


class RayPipeline(Pipeline):
    """A :class:`~dataprep.pipeline.Pipeline` whose per-record stages and duplicate search run
    on Ray (see the module docstring). ``address``: a running cluster (``ray://...`` or
    ``auto``); otherwise a local Ray with ``num_cpus`` CPUs starts (and stops after the run).
    ``batch_size``: records per per-record map batch; ``llm_batch_size``: records per batch of
    a shardable augment op."""

    def __init__(self, config: RunConfig, *, address: str | None = None,
                 num_cpus: int | None = None, batch_size: int = 512,
                 llm_batch_size: int = 32) -> None:
        super().__init__(config)
        self.address = address
        self.num_cpus = num_cpus
        self.batch_size = batch_size
        from dataprep.dedup.distributed import find_duplicates_ray

        self.resources.matching.find_duplicates = find_duplicates_ray
        for stage in self.stages:
            if isinstance(stage, Augment):
                stage.sharded = functools.partial(derive_on_ray, batch_size=llm_batch_size)

    def run(self, out_dir: Any = None, progress: Any = True) -> dict[str, Any]:
        import ray

        started = not ray.is_initialized()
        if started:
            ray.init(address=self.address, num_cpus=None if self.address else self.num_cpus,
                     include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            return super().run(out_dir, progress)
        finally:
            if started:
                ray.shutdown()

    def stream(self, ctx: RunContext, progress: Any = None) -> Iterable[Conversation]:
        stream: Iterable[Conversation | Reject] = _items(self.readers, ctx)
        raw = True  # the stream still carries the readers' rejects
        i = 0
        while i < len(self.stages):
            j = i
            while j < len(self.stages) and per_record(self.stages[j]):
                j += 1
            if j > i:
                segment = self.stages[i:j]
                stream = timed(segment[-1].name, self._on_ray(segment, stream, ctx), ctx)
                i = j
            else:
                if raw:
                    stream = _route_rejects(stream, ctx)
                stream = timed(self.stages[i].name, self.stages[i].run(stream, ctx), ctx)
                i += 1
            raw = False
        return stream  # type: ignore[return-value]

    def _on_ray(self, segment: list[Stage], items: Iterable[Conversation | Reject],
                ctx: RunContext) -> Iterator[Conversation]:
        import ray.data
        from ray import cloudpickle

        _quiet_data()
        # cloudpickle: a stage's Options class can be made at run time (validate's, from the
        # corpus rules), which plain pickle cannot name.
        blob = cloudpickle.dumps(segment)
        for window in _windows(items, WINDOW):
            ds = ray.data.from_items([{"item": pickle.dumps(x)} for x in window])
            del window
            mapped = ds.map_batches(_Segment, fn_constructor_args=(blob, ctx.seed),
                                    batch_size=self.batch_size, batch_format="numpy",
                                    concurrency=max(1, int(ray.cluster_resources().get("CPU", 1))))
            for row in _rows(mapped):
                events, stats, added, added_by_stage = pickle.loads(row["result"])
                for stage in segment:
                    counters, artifacts = stats[stage.name]
                    merge_stats(stage.stats, counters)
                    stage.stats.artifacts.update(artifacts)
                ctx.counts.added.update(added)
                ctx.counts.added_by_stage.update(added_by_stage)
                for kind, value in events:
                    if kind == "reject":
                        ctx.reject(value)
                    else:
                        yield value


def _quiet_data() -> None:
    import ray.data

    data_ctx = ray.data.DataContext.get_current()
    data_ctx.execution_options.preserve_order = True
    data_ctx.enable_progress_bars = False
    data_ctx.print_on_execution_start = False
    data_ctx.execution_options.verbose_progress = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def _absolute(path: Any) -> Any:
    # Workers need not share the driver's working directory.
    return os.path.abspath(path) if isinstance(path, (str, Path)) and str(path) else path


def _with_absolute_cache(llm: dict[str, Any] | None) -> dict[str, Any]:
    llm = dict(llm or {})
    if llm.get("cache_dir"):
        llm["cache_dir"] = _absolute(llm["cache_dir"])
    return llm


class _Derive:
    """The actor pool's worker for one shardable augment op: loads the op's resources once
    (the hotel database, the slot extractor), then derives batches of records."""

    def __init__(self, op_blob: bytes, resources: Resources, seed: int, out_dir: str,
                 state_dir: str | None) -> None:
        from ray import cloudpickle

        self.op: AugmentOp = cloudpickle.loads(op_blob)
        self.resources = resources
        self.seed = seed
        self.out_dir = Path(out_dir)
        self.state_dir = Path(state_dir) if state_dir else None

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from dataprep.stages.augment import _rng

        recs = [pickle.loads(b) for b in batch["item"]]
        turns: list[tuple[str, str]] = []
        discarded: list[dict[str, Any]] = []
        artifacts: dict[str, Any] = {}
        run = OpRun(seed=self.seed, resources=self.resources, out_dir=self.out_dir,
                    count_turn=lambda op, outcome: turns.append((op, outcome)),
                    discard=discarded.append, artifacts=artifacts, state_dir=self.state_dir)
        made = self.op.derive_many(recs, run, lambda r: _rng(self.seed, self.op.name, r.id))
        items = [(int(k), child, outcome)
                 for k, (_, child, outcome) in zip(batch["k"], made, strict=True)]
        return {"result": [pickle.dumps((items, turns, discarded, artifacts))]}


def derive_on_ray(op: AugmentOp, chosen: list[Conversation], run: OpRun, *,
                  batch_size: int = 32) -> list[tuple[Conversation, Conversation | None, str]]:
    """``op.derive_many(chosen, ...)`` as a Ray Data actor pool over batches of ``batch_size``
    records (at most one actor per CPU of the cluster); what the batches counted, discarded and
    reported is replayed into ``run`` in record order, and the LLM client's stats of all batches
    are combined, so the stage's output, evidence and stats are the local ones."""
    import ray
    import ray.data
    from ray import cloudpickle

    from dataprep.llm.client import combine_stats

    _quiet_data()
    shipped = cloudpickle.loads(cloudpickle.dumps(op))
    if hasattr(shipped.options, "llm"):
        shipped.options.llm = _with_absolute_cache(shipped.options.llm)
    res = run.resources
    resources = Resources(hotel_db_path=_absolute(res.hotel_db_path),
                          tokenizer_path=_absolute(res.tokenizer_path),
                          llm=_with_absolute_cache(res.llm))
    ds = ray.data.from_items([{"k": k, "item": pickle.dumps(r)} for k, r in enumerate(chosen)])
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    mapped = ds.map_batches(
        _Derive, fn_constructor_args=(cloudpickle.dumps(shipped), resources, run.seed,
                                      _absolute(run.out_dir), _absolute(run.state_dir)),
        batch_size=batch_size, batch_format="numpy",
        concurrency=max(1, min(cpus, math.ceil(len(chosen) / batch_size))))
    parts = [pickle.loads(row["result"]) for row in _rows(mapped)]
    parts.sort(key=lambda part: part[0][0][0] if part[0] else -1)
    made: list[tuple[Conversation, Conversation | None, str]] = []
    llm_stats: list[dict[str, Any]] = []
    for items, turns, discarded, artifacts in parts:
        made.extend((chosen[k], child, outcome) for k, child, outcome in items)
        for op_name, outcome in turns:
            run.count_turn(op_name, outcome)
        for item in discarded:
            run.discard(item)
        if "llm" in artifacts:
            llm_stats.append(artifacts.pop("llm"))
        run.artifacts.update(artifacts)
    if llm_stats:
        run.artifacts["llm"] = combine_stats(llm_stats)
    return made


def _rows(dataset: Any) -> Iterator[dict[str, Any]]:
    """The dataset's rows; a library error raised on a worker (a bad option, strict mode)
    comes out as itself, not wrapped in Ray's task errors, so the CLI prints its one line."""
    try:
        yield from dataset.iter_rows()
    except Exception as e:
        cause: BaseException | None = e
        while cause is not None and not isinstance(cause, DataprepError):
            cause = getattr(cause, "cause", None) or cause.__cause__
        if cause is not None:
            raise cause from None
        raise


def _items(readers: list[Reader], ctx: RunContext) -> Iterator[Conversation | Reject]:
    """Every input item, counted once: conversations and the readers' rejects, in order."""
    for reader in readers:
        for item in reader.read():
            ctx.count_input()
            yield item


def _route_rejects(items: Iterable[Conversation | Reject], ctx: RunContext
                   ) -> Iterator[Conversation]:
    for item in items:
        if isinstance(item, Reject):
            ctx.reject(item)
        else:
            yield item


def _windows(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    window: list[Any] = []
    for item in items:
        window.append(item)
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window

