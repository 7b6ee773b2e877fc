"""``expectations``: a Great Expectations suite per corpus over the written splits, plus Data Docs.

A post-run step: once the splits are on disk it reads ``OUT/{train,dev,test}.jsonl`` back, which checks the files a trainer will read rather than the
objects in memory, builds one row per sample, and runs one suite per corpus through a
file-backed GE context in ``OUT/gx``, so the Data Docs site is rendered by GE itself
(``OUT/gx/uncommitted/data_docs/local_site/index.html``).

Expectations (name, default severity; any list in ``critical`` replaces the default set):

- ``id_not_null``, ``id_unique`` (critical): every sample has an id, no id twice in the corpus;
- ``roles_valid`` (critical): every message role is one of the five ChatGLM3 roles;
- ``first_turn_user``, ``last_turn_assistant``, ``min_messages`` (critical): the shape the
  trainer relies on (a user opens, an assistant turn or a call closes, a call being an assistant
  turn with loss; at least two messages);
- ``no_empty_text`` (critical): no text message is empty;
- ``max_message_chars`` (warning): the longest text message has at most ``max_chars``;
- ``max_tokens`` (warning, only with a tokenizer): a sample's text is at most ``max_tokens``;
- ``label_not_null`` (warning): every sample has a label (stratification and balance use it);
- ``tool_call_rate`` (critical): the share of samples with a tool call lies in the corpus's
  ``tool_call_rate`` bounds, declared by each corpus package (hotel 0.5–1.0: a hotel set without
  calls means a broken reader; spo/docqa exactly 0);
- ``split_share_train|dev|test`` (warning): each split's share of the corpus is within
  ``split_tolerance`` (+ one record) of the split stage's ratios, judged on the records the
  split stage divided: derived records (augmentation, upsampled copies: anything with a parent)
  are left out (``row_condition``), since augmenting and balancing train after the split
  enlarge it on purpose.

``data_docs`` (default true) builds the Data Docs site, rewritten to work offline and to agree
with the run's verdict (:mod:`dataprep.reporting.datadocs`); false runs the suites in memory and
writes no ``gx/`` folder.

``fail_on``: ``critical`` (default) makes the run fail with :class:`ExpectationError` when a
critical expectation fails, ``any`` on any failure, ``never`` only records. The error is raised
after ``manifest.json`` is written (the manifest and the report, which the pipeline still builds,
show what failed); the results go to the manifest's ``artifacts.expectations``: ``success``, ``failed`` (corpus, name, severity, observed),
``suites`` and ``data_docs`` (relative to the run folder).

>>> Expectations(fail_on="never", tool_call_rate={"hotel": [0.6, 1.0]}).fail_on
'never'
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dataprep.corpora import tool_call_rates
from dataprep.errors import ConfigError, ExpectationError
from dataprep.record import ROLES
from dataprep.stages.base import FinishedRun, PostRunStep, StageOptions
from dataprep.stages.split import SPLITS

FAIL_ON = ("critical", "any", "never")
DEFAULT_CRITICAL = ("id_not_null", "id_unique", "roles_valid", "first_turn_user",
                    "last_turn_assistant", "min_messages", "no_empty_text", "tool_call_rate")
ALL_EXPECTATIONS = ("id_not_null", "id_unique", "roles_valid", "first_turn_user",
                    "last_turn_assistant", "min_messages", "no_empty_text", "max_message_chars",
                    "max_tokens", "label_not_null", "tool_call_rate", "split_share_train",
                    "split_share_dev", "split_share_test")
DATA_DOCS = Path("gx") / "uncommitted" / "data_docs" / "local_site" / "index.html"
_ROLES_RE = "^(?:{r})(?:,(?:{r}))*$".format(r="|".join(ROLES))


def sample_rows(out_dir: str | Path, tokenizer: Any = None) -> list[dict[str, Any]]:
    """One row per written sample (all three splits) with the columns the suites check.

    >>> sample_rows("out/spo")[0]["roles"]  # doctest: +SKIP
    'user,assistant'
    """
    rows = []
    for split in SPLITS:
        path = Path(out_dir) / f"{split}.jsonl"
        if not path.is_file():
            continue
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    rows.append(_row(json.loads(line), split, tokenizer))
    return rows


def _row(d: dict[str, Any], split: str, tokenizer: Any) -> dict[str, Any]:
    msgs = [m for m in d.get("conversations") or [] if isinstance(m, dict)]
    roles = [str(m.get("role")) for m in msgs]
    body = roles[1:] if roles[:1] == ["system"] else roles
    texts = [m["content"] for m in msgs if isinstance(m.get("content"), str)]
    ops = (d.get("lineage") or {}).get("ops") or []
    row: dict[str, Any] = {
        "id": d.get("id"), "corpus": d.get("corpus") or "default", "split": split,
        "label": d.get("label"), "n_messages": len(msgs), "roles": ",".join(roles),
        "first_turn": body[0] if body else None, "last_role": roles[-1] if roles else None,
        "min_chars": min((len(t) for t in texts), default=0),
        "max_chars": max((len(t) for t in texts), default=0),
        "total_chars": sum(len(t) for t in texts),
        "has_tool_call": int("tool" in roles),
        "is_derived": int(bool((d.get("lineage") or {}).get("parent_id"))
                       or "balance_upsample" in ops),
        **{f"is_{s}": int(s == split) for s in SPLITS},
    }
    if tokenizer is not None:
        row["text_tokens"] = sum(len(tokenizer.encode(t)) for t in texts)
    return row


@dataclass
class ExpectationsOptions(StageOptions):
    """``fail_on`` (critical|any|never), ``critical`` (names; default in the module docstring),
    ``max_chars`` (default 32768), ``max_tokens`` (default 8192, the ChatGLM3 context),
    ``tool_call_rate`` (corpus -> [low, high], merged over the defaults), ``split_tolerance``
    (absolute share, default 0.05), ``ratios`` (default: the split stage's), ``data_docs``
    (default true: build the offline Data Docs; false: suites in memory, no ``gx/``)."""

    fail_on: str = "critical"
    critical: list[str] | None = None
    max_chars: int = 32768
    max_tokens: int = 8192
    tool_call_rate: dict[str, list[float]] | None = None
    split_tolerance: float = 0.05
    ratios: list[float] | None = None
    data_docs: bool = True

    def __post_init__(self) -> None:
        if self.fail_on not in FAIL_ON:
            raise ConfigError(f"expectations.fail_on must be one of {', '.join(FAIL_ON)}, "
                              f"got {self.fail_on!r}")
        unknown = set(self.critical or ()) - set(ALL_EXPECTATIONS)
        if unknown:
            raise ConfigError(f"expectations.critical: unknown expectations {sorted(unknown)}; "
                              f"available: {', '.join(ALL_EXPECTATIONS)}")
        for corpus, bounds in (self.tool_call_rate or {}).items():
            if (not isinstance(bounds, (list, tuple)) or len(bounds) != 2
                    or not 0 <= bounds[0] <= bounds[1] <= 1):
                raise ConfigError(f"expectations.tool_call_rate.{corpus} must be [low, high] "
                                  f"with 0 <= low <= high <= 1, got {bounds!r}")
        if self.ratios is not None and (len(self.ratios) != 3 or sum(self.ratios) <= 0):
            raise ConfigError(f"expectations.ratios must be three numbers, got {self.ratios!r}")


class Expectations(PostRunStep):
    """A post-run step: the suites over the written splits. Options:
    :class:`ExpectationsOptions`; resources: the tokenizer (``max_tokens``, when configured)."""

    name = "expectations"
    Options = ExpectationsOptions
    uses = ("tokenizer",)
    options: ExpectationsOptions

    def setup(self) -> None:
        o = self.options
        self.fail_on = o.fail_on
        self.critical = list(o.critical) if o.critical is not None else list(DEFAULT_CRITICAL)
        self.max_chars = int(o.max_chars)
        self.max_tokens = int(o.max_tokens)
        rates = {k: tuple(v) for k, v in tool_call_rates().items()}
        for corpus, bounds in (o.tool_call_rate or {}).items():
            rates[corpus] = (float(bounds[0]), float(bounds[1]))
        self.tool_call_rate = {k: list(v) for k, v in rates.items()}
        self.split_tolerance = float(o.split_tolerance)
        self.ratios = list(o.ratios) if o.ratios is not None else None
        self.data_docs = bool(o.data_docs)

    def run(self, run: FinishedRun) -> None:
        """Validate the written splits and build the Data Docs; raise when the run must fail."""
        ratios = list(self.ratios or run.ratios)
        ratios = [float(r) / float(sum(ratios)) for r in ratios]
        result = self.validate(run.out_dir, ratios, self.resources.tokenizer)
        self.stats.artifacts["expectations"] = result
        self.check(result, run.shown_dir)

    def check(self, result: dict[str, Any], out_dir: Path) -> None:
        """Raise :class:`ExpectationError` when ``result`` (from :meth:`validate`) fails the run
        under ``fail_on``."""
        failed = result.get("failed", [])
        if self.fail_on == "never" or not failed:
            return
        bad = failed if self.fail_on == "any" else [f for f in failed if f["critical"]]
        if not bad:
            return
        lines = "; ".join(f"{f['corpus']}: {f['name']}: {f['summary']}" for f in bad[:5])
        more = f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""
        raise ExpectationError(
            f"{len(bad)} {'critical ' if self.fail_on == 'critical' else ''}expectation(s) "
            f"failed on the final splits: {lines}{more}. The splits are written; see "
            f"{out_dir / (result.get('data_docs') or 'manifest.json')} "
            "(set expectations.fail_on: never to accept)")

    # -- the suites ----------------------------------------------------------------------------
    def validate(self, out_dir: str | Path, ratios: list[float],
                 tokenizer: Any = None) -> dict[str, Any]:
        """Run the suites on ``out_dir``'s splits; returns the artifact dict (see module doc)."""
        import pandas as pd

        from dataprep.reporting import datadocs

        out = Path(out_dir)
        rows = sample_rows(out, tokenizer)
        frames: dict[str, Any] = {}
        if rows:
            df = pd.DataFrame(rows)
            # Escaped before GX sees it: its renderers write values into the pages unescaped.
            frames = {corpus: datadocs.escape_frame(part.reset_index(drop=True))
                      for corpus, part in df.groupby("corpus", sort=True)}
        with _quiet_gx():
            context = _fresh_context(out, self.data_docs)
            suites: dict[str, Any] = {}
            failed: list[dict[str, Any]] = []
            for corpus, frame in frames.items():
                summary, fails = self._run_suite(context, corpus, frame, ratios,
                                                 tokenizer is not None)
                suites[corpus] = summary
                failed.extend(fails)
            site = None
            if self.data_docs:
                context.build_data_docs()
                verdicts = {f"dataprep_{re.sub(r'[^A-Za-z0-9_]', '_', c)}": {
                    "success": not any(f["corpus"] == c for f in failed),
                    "critical_success": not any(f["corpus"] == c and f["critical"]
                                                for f in failed)} for c in suites}
                site = datadocs.finish_site(out / "gx", verdicts)
        return {
            "success": not failed,
            "critical_success": not any(f["critical"] for f in failed),
            "fail_on": self.fail_on,
            "failed": failed,
            "suites": suites,
            "rows": len(rows),
            "data_docs": DATA_DOCS.as_posix() if self.data_docs else None,
            "data_docs_site": site,
        }

    def _expectations(self, corpus: str, frame: Any, ratios: list[float],
                      with_tokens: bool) -> list[Any]:
        import great_expectations.expectations as gxe

        def sev(name: str) -> str:
            return "critical" if name in self.critical else "warning"

        def meta(name: str, **extra: Any) -> dict[str, Any]:
            return {"name": name, **extra}

        exps = [
            gxe.ExpectColumnValuesToNotBeNull(column="id", severity=sev("id_not_null"),
                                              meta=meta("id_not_null")),
            gxe.ExpectColumnValuesToBeUnique(column="id", severity=sev("id_unique"),
                                             meta=meta("id_unique")),
            gxe.ExpectColumnValuesToMatchRegex(column="roles", regex=_ROLES_RE,
                                               severity=sev("roles_valid"),
                                               meta=meta("roles_valid")),
            gxe.ExpectColumnValuesToBeInSet(column="first_turn", value_set=["user"],
                                            severity=sev("first_turn_user"),
                                            meta=meta("first_turn_user")),
            gxe.ExpectColumnValuesToBeInSet(column="last_role", value_set=["assistant", "tool"],
                                            severity=sev("last_turn_assistant"),
                                            meta=meta("last_turn_assistant")),
            gxe.ExpectColumnValuesToBeBetween(column="n_messages", min_value=2,
                                              severity=sev("min_messages"),
                                              meta=meta("min_messages")),
            gxe.ExpectColumnValuesToBeBetween(column="min_chars", min_value=1,
                                              severity=sev("no_empty_text"),
                                              meta=meta("no_empty_text")),
            gxe.ExpectColumnValuesToBeBetween(column="max_chars", max_value=self.max_chars,
                                              severity=sev("max_message_chars"),
                                              meta=meta("max_message_chars")),
            gxe.ExpectColumnValuesToNotBeNull(column="label", severity=sev("label_not_null"),
                                              meta=meta("label_not_null")),
        ]
        if with_tokens:
            exps.append(gxe.ExpectColumnValuesToBeBetween(
                column="text_tokens", max_value=self.max_tokens, severity=sev("max_tokens"),
                meta=meta("max_tokens")))
        if corpus in self.tool_call_rate:
            lo, hi = self.tool_call_rate[corpus]
            exps.append(gxe.ExpectColumnMeanToBeBetween(
                column="has_tool_call", min_value=lo, max_value=hi,
                severity=sev("tool_call_rate"), meta=meta("tool_call_rate")))
        originals = int((frame["is_derived"] == 0).sum())
        slack = self.split_tolerance + (1.0 / originals if originals else 0.0)
        for split, ratio in zip(SPLITS, ratios, strict=True):
            name = f"split_share_{split}"
            exps.append(gxe.ExpectColumnMeanToBeBetween(
                column=f"is_{split}", min_value=max(0.0, round(ratio - slack, 6)),
                max_value=min(1.0, round(ratio + slack, 6)),
                row_condition="is_derived == 0", condition_parser="pandas",
                severity=sev(name), meta=meta(name, configured_ratio=round(ratio, 6))))
        return exps

    def _run_suite(self, context: Any, corpus: str, frame: Any, ratios: list[float],
                   with_tokens: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        import great_expectations as gx

        key = re.sub(r"[^A-Za-z0-9_]", "_", corpus)
        source = context.data_sources.add_or_update_pandas(f"dataprep_{key}")
        batch_def = source.add_dataframe_asset(name=f"{key}_splits") \
            .add_batch_definition_whole_dataframe("train_dev_test")
        suite = gx.ExpectationSuite(name=f"dataprep_{key}")
        for exp in self._expectations(corpus, frame, ratios, with_tokens):
            suite.add_expectation(exp)
        suite = context.suites.add_or_update(suite)
        vdef = context.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=f"dataprep_{key}", data=batch_def, suite=suite))
        # No UpdateDataDocsAction: the site is built once, after every suite has run.
        checkpoint = context.checkpoints.add_or_update(gx.Checkpoint(
            name=f"dataprep_{key}", validation_definitions=[vdef]))
        result = checkpoint.run(batch_parameters={"dataframe": frame})
        fails = []
        evaluated = successful = 0
        for vres in result.run_results.values():
            for r in vres.results:
                evaluated += 1
                if r.success:
                    successful += 1
                    continue
                cfg = r.expectation_config
                name = (cfg.meta or {}).get("name", cfg.type)
                fails.append({
                    "corpus": corpus, "name": name, "expectation": cfg.type,
                    "critical": str(getattr(cfg.severity, "value", cfg.severity)) == "critical",
                    "kwargs": {k: v for k, v in cfg.kwargs.items() if k != "batch_id"},
                    "observed": _observed(r.result, r.exception_info),
                    "summary": _summary(cfg.type, cfg.kwargs, r.result, r.exception_info),
                })
        summary = {"rows": len(frame), "evaluated": evaluated, "successful": successful,
                   "success": not fails}
        return summary, json.loads(json.dumps(fails, default=_jsonable))


def _fresh_context(out: Path, file_backed: bool = True) -> Any:
    """A new file-backed context in ``out/gx`` (the Data Docs must show this run only), or an
    in-memory one when no Data Docs are wanted."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    shutil.rmtree(out / "gx", ignore_errors=True)
    if not file_backed:
        return gx.get_context(mode="ephemeral")
    context = gx.get_context(mode="file", project_root_dir=str(out))
    context.variables.progress_bars = ProgressBarsConfig(globally=False,
                                                         metric_calculations=False)
    context.variables.save()
    return context


@contextlib.contextmanager
def _quiet_gx() -> Iterator[None]:
    """GE logs and prints progress by default; a library run should do neither (and must not
    phone home: analytics off unless the user set the variable)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    logger = logging.getLogger("great_expectations")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _observed(result: dict[str, Any], exception_info: Any) -> Any:
    if isinstance(exception_info, dict) and exception_info.get("raised_exception"):
        return {"exception": exception_info.get("exception_message")}
    if "observed_value" in result:
        return result["observed_value"]
    from dataprep.reporting.datadocs import unescape

    return {k: unescape(result.get(k)) for k in ("element_count", "unexpected_count",
                                                 "partial_unexpected_list") if k in result}


def _summary(kind: str, kwargs: dict[str, Any], result: dict[str, Any], exc: Any) -> str:
    """One human line: what was expected and what was found."""
    if isinstance(exc, dict) and exc.get("raised_exception"):
        return f"{kind} raised {exc.get('exception_message')}"
    col = kwargs.get("column")
    if "observed_value" in result:
        observed = _jsonable(result["observed_value"])
        if isinstance(observed, float):
            observed = round(observed, 4)
        return (f"{col}: observed {str(observed)[:40]}, expected between "
                f"{kwargs.get('min_value')} and {kwargs.get('max_value')}")
    from dataprep.reporting.datadocs import unescape

    examples = ", ".join(repr(unescape(v))[:40]
                         for v in (result.get("partial_unexpected_list") or [])[:3])
    return (f"{col}: {result.get('unexpected_count')} of {result.get('element_count')} values "
            f"unexpected (e.g. {examples})")


def _jsonable(o: Any) -> Any:
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    if isinstance(o, (str, int, float, bool, list, dict)) or o is None:
        return o
    return str(o)
