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
* Stages that need the whole stream (dedup, split, balance, augment, write) run on the driver.

Without an address a local Ray starts (``ray.init(num_cpus=...)``); with one the driver joins
that cluster, whose workers need this package installed (``pip install .[ray]``) or shipped in a
``runtime_env``.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterable, Iterator
from typing import Any

from dataprep.config import RunConfig
from dataprep.errors import DataprepError
from dataprep.pipeline import Pipeline
from dataprep.readers.base import Reader
from dataprep.record import Conversation, Reject
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
    ``auto``); otherwise a local Ray with ``num_cpus`` CPUs starts (and stops after the run)."""

    def __init__(self, config: RunConfig, *, address: str | None = None,
                 num_cpus: int | None = None, batch_size: int = 512) -> None:
        super().__init__(config)
        self.address = address
        self.num_cpus = num_cpus
        self.batch_size = batch_size
        from dataprep.dedup.distributed import find_duplicates_ray

        self.resources.matching.find_duplicates = find_duplicates_ray

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

        data_ctx = ray.data.DataContext.get_current()
        data_ctx.execution_options.preserve_order = True
        data_ctx.enable_progress_bars = False
        data_ctx.print_on_execution_start = False
        data_ctx.execution_options.verbose_progress = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
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

