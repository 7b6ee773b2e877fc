"""Build a pipeline from a config and run it: readers -> stages -> splits, rejects, manifest ->
post-run steps (expectations, report)."""

from __future__ import annotations

import importlib.metadata
import platform
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import dataprep
from dataprep.config import RunConfig
from dataprep.errors import AccountingError, ConfigError
from dataprep.io import prepare_out_dir, sha256_file, write_json_atomic
from dataprep.matching import Matching, matching_config
from dataprep.progress import RunProgress, make_progress
from dataprep.readers.base import Reader
from dataprep.record import Conversation, Reject
from dataprep.registry import is_post_run, reader_class, stage_class
from dataprep.resources import Resources
from dataprep.run_folder import commit_generation, discard_generation, new_generation
from dataprep.stages.base import (
    FinishedRun,
    PostRunStep,
    RunContext,
    Stage,
    StageStats,
    json_default,
    timed,
)
from dataprep.stages.split import Split

VERSIONED = ("datasets", "pandas", "jsonschema", "openai", "transformers", "torch", "peft",
             "bitsandbytes", "great_expectations", "rensa", "sentencepiece", "opencc",
             "pyyaml")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "chatglm-dataprep": dataprep.__version__}
    for name in VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def build_reader(name: str, path: str, options: dict[str, Any] | None = None,
                 hotel_db: str | None = None, seed: int | None = None) -> Reader:
    cls = reader_class(name)
    opts = dict(options or {})
    if getattr(cls, "uses_seed", False) and seed is not None and "seed" not in opts:
        opts["seed"] = seed
    if getattr(cls, "needs_hotel_db", False) and "hotel_db" not in opts:
        if not hotel_db:
            raise ConfigError(f"reader {name!r} needs the hotel database: set 'hotel_db: PATH' "
                              "in the config (or pass --hotel-db)")
        opts["hotel_db"] = hotel_db
    try:
        return cls(path, **opts)
    except TypeError as e:
        raise ConfigError(f"reader {name!r}: bad options {sorted(opts)}: {e}") from e


def build_resources(config: RunConfig) -> Resources:
    """The run's shared resources; the matching config is resolved here, once."""
    return Resources(hotel_db_path=config.hotel_db, tokenizer_path=config.tokenizer,
                     llm=dict(config.llm),
                     matching=Matching(matching_config(config.matching, config.stages)))


def build_stages(specs: list[dict[str, Any]],
                 resources: Resources | None = None) -> tuple[list[Stage], list[PostRunStep]]:
    """Stages and post-run steps from the config's ``stages`` list, options checked."""
    resources = resources if resources is not None else Resources()
    stages: list[Stage] = []
    post: list[PostRunStep] = []
    for spec in specs:
        opts = {k: v for k, v in spec.items() if k != "name"}
        step = stage_class(spec["name"])(resources=resources, **opts)
        (post if is_post_run(spec["name"]) else stages).append(step)
    names = [s.name for s in stages]
    if "write" not in names:
        raise ConfigError("the pipeline has no 'write' stage: add it (after 'split')")
    if "split" not in names or names.index("split") > names.index("write"):
        raise ConfigError("the pipeline needs a 'split' stage before 'write'")
    return stages, post


def read_all(readers: list[Reader], ctx: RunContext) -> Iterator[Conversation]:
    """Count every input record once, route rejects to the context, yield conversations."""
    for reader in readers:
        items: Iterable[Conversation | Reject] = reader.read()
        for item in items:
            ctx.count_input()
            if isinstance(item, Reject):
                ctx.reject(item)
            else:
                yield item


class Pipeline:
    """Readers and stages from a :class:`RunConfig`.

    >>> Pipeline(load_config("configs/spo.yaml")).run("out/spo")  # doctest: +SKIP
    {'counts': {...}, ...}
    """

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.readers = [build_reader(s.reader, s.path, s.options, config.hotel_db, config.seed)
                        for s in config.inputs]
        self.resources = build_resources(config)
        self.stages, self.post_run = build_stages(config.stages, self.resources)

    def run(self, out_dir: str | Path | None = None,
            progress: bool | RunProgress = True) -> dict[str, Any]:
        """Run into ``out_dir`` as one generation: everything is written into a fresh sibling
        folder that replaces ``out_dir`` in one atomic swap once complete (see
        :mod:`dataprep.run_folder`); a failed or killed run leaves ``out_dir`` as it was.

        ``progress``: True for the default display on stderr (see :mod:`dataprep.progress`),
        False for none, or a :class:`RunProgress` of the caller's."""
        if not isinstance(progress, RunProgress):
            progress = make_progress(verbosity=1 if progress else 0)
        try:
            home = prepare_out_dir(out_dir or self.config.out or f"out/{self.config.name}",
                                   create=False)
            work = new_generation(home)
            try:
                manifest, post_error = self._run(work, home, progress)
            except BaseException:
                discard_generation(work, home)
                raise
            commit_generation(work, home)
        finally:
            progress.close()
        # A failed post-run step (a critical expectation) fails the run, but its outputs and
        # the report that explains the failure are a complete generation: they are kept.
        if post_error is not None:
            raise post_error
        return manifest

    def _run(self, out: Path, home: Path, progress: RunProgress
             ) -> tuple[dict[str, Any], BaseException | None]:
        ctx = RunContext(out, seed=self.config.seed, strict=self.config.strict, home=home)
        started = time.time()
        try:
            for _ in self.stream(ctx, progress):
                pass
        except BaseException:
            ctx.discard_rejects()
            raise
        finally:
            # The stages' record stores (dataprep.spill) are scratch: never part of a generation.
            ctx.remove_spill()
        ctx.write_rejects()
        finish_seconds: dict[str, float] = {}
        for stage in self.stages:
            t0 = time.perf_counter()
            ctx.current_stage = stage.name
            if type(stage).finish is Stage.finish:  # nothing to show for a no-op hook
                stage.finish(ctx)
            else:
                with progress.step(stage.name):
                    stage.finish(ctx)
            finish_seconds[stage.name] = time.perf_counter() - t0
        left, right = ctx.counts.balance()
        if left != right:
            raise AccountingError(
                f"records unaccounted for: input − rejected − removed + added = {left} but "
                f"train + dev + test = {right}; a stage dropped records without a reason")
        manifest = self.manifest(ctx, home, started, finish_seconds)
        write_json_atomic(out / "manifest.json", manifest)
        try:
            self.run_post_steps(out, manifest, progress, home)
        except Exception as e:  # noqa: BLE001 - raised by run() after the swap
            return manifest, e
        return manifest, None

    def stream(self, ctx: RunContext, progress: RunProgress) -> Iterable[Conversation]:
        """The records coming out of the last stage (the engine's part: :mod:`dataprep.ray_engine`
        runs the same stages on a Ray cluster)."""
        stream: Iterable[Conversation] = progress.track(
            "read", timed("read", read_all(self.readers, ctx), ctx))
        for stage in self.stages:
            stream = progress.track(stage.name, timed(stage.name, stage.run(stream, ctx), ctx))
        return stream

    def run_post_steps(self, out: Path, manifest: dict[str, Any],
                       progress: RunProgress | None = None, home: Path | None = None) -> None:
        """Each post-run step once, in config order. A failing step (expectations) does not stop
        the later ones (the report explains the failure); the first error is raised after."""

        def publish(stats: StageStats) -> None:
            _merge_artifacts(manifest["artifacts"], _plain(stats.artifacts))
            write_json_atomic(out / "manifest.json", manifest)

        progress = progress or make_progress(verbosity=0)
        split = next(s for s in self.stages if isinstance(s, Split))
        run = FinishedRun(out, manifest, split.ratios, publish, home=home)
        first_error: BaseException | None = None
        for step in self.post_run:
            t0 = time.perf_counter()
            try:
                with progress.step(step.name):
                    step.run(run)
            except Exception as e:  # noqa: BLE001 - re-raised below
                first_error = first_error or e
            manifest["seconds"]["post_run"][step.name] = round(time.perf_counter() - t0, 4)
            if step.stats:
                manifest["stage_stats"][step.name] = _plain(dict(step.stats))
            publish(step.stats)
        if first_error is not None:
            raise first_error

    def manifest(self, ctx: RunContext, out: Path, started: float,
                 finish_seconds: dict[str, float] | None = None) -> dict[str, Any]:
        # Timings are cumulative along the generator chain; subtract to get each stage's own,
        # then add what its finish() hook took after the stream ended.
        order = ["read", *[s.name for s in self.stages]]
        own, prev = {}, 0.0
        for name in order:
            cum = ctx.timings.get(name, 0.0)
            own[name] = round(max(cum - prev, 0.0) + (finish_seconds or {}).get(name, 0.0), 4)
            prev = max(prev, cum)
        cfg = dict(self.config.raw)
        if "llm" in cfg:
            cfg["llm"] = {k: v for k, v in cfg["llm"].items() if "key" not in k.lower()
                          or k.lower().endswith("_env")}
        artifacts: dict[str, Any] = {}
        for stage in self.stages:
            _merge_artifacts(artifacts, _plain(stage.stats.artifacts))
        return {
            "name": self.config.name,
            "dataprep_version": dataprep.__version__,
            "config": cfg,
            "seed": self.config.seed,
            "inputs": [{"reader": s.reader, "path": s.path, "sha256": sha256_file(s.path),
                        "bytes": Path(s.path).stat().st_size} for s in self.config.inputs],
            "packages": package_versions(),
            "counts": ctx.counts.as_manifest(),
            "identity": "input - rejected - removed + added = train + dev + test",
            "matching": self.resources.matching.config.as_dict(),
            "stages": [{"name": s.name, "options": _plain(s.describe())} for s in self.stages],
            "post_run": [{"name": s.name, "options": _plain(s.describe())}
                         for s in self.post_run],
            "stage_stats": {s.name: _plain(dict(s.stats)) for s in self.stages if s.stats},
            "seconds": {"total": round(time.time() - started, 3), "by_stage": own,
                        "post_run": {}},
            "outputs": {name: str(out / f"{name}.jsonl") for name in ("train", "dev", "test",
                                                                       "rejects")},
            "artifacts": artifacts,
        }


def _merge_artifacts(into: dict[str, Any], new: dict[str, Any]) -> None:
    """Add a step's artifacts; a mapping already there (the leakage audit) is merged key by key."""
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            into[key].update(value)
        else:
            into[key] = value


def _plain(obj: Any) -> Any:
    """Make stats JSON-safe (sets, paths, tuples)."""
    import json

    return json.loads(json.dumps(obj, default=json_default, ensure_ascii=False))
