"""``report``: one self-contained HTML page per run (``OUT/report/index.html``).

Everything on the page comes from the finished run folder (see :mod:`dataprep.reporting.page`),
which is what lets ``dataprep report OUT`` rebuild it later and why the stage does its work in
``after_manifest``. The one thing the folder cannot give is token counts (the tokenizer is not
part of it), so the stage's ``finish`` puts a token-length histogram of the written splits into
the manifest when the run has a tokenizer.

>>> rebuild_report("out/spo")  # doctest: +SKIP
PosixPath('out/spo/report/index.html')
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from dataprep.reporting.page import REPORT_DIR, rebuild_report, token_length_histogram
from dataprep.stages.base import RunContext, Stage

__all__ = ["Report", "rebuild_report", "token_length_histogram"]


class Report(Stage):
    """No options. Put it anywhere in the stage list (it passes records through); the page is
    built after ``manifest.json`` is written."""

    name = "report"

    def run(self, records: Iterable[Any], ctx: RunContext) -> Iterator[Any]:
        yield from records

    def finish(self, ctx: RunContext) -> None:
        ctx.artifacts["report"] = str(ctx.out_dir / REPORT_DIR / "index.html")
        if ctx.tokenizer_path:
            ctx.artifacts["token_lengths"] = token_length_histogram(ctx.out_dir, ctx.tokenizer)

    def after_manifest(self, ctx: RunContext, manifest: dict[str, Any]) -> None:
        rebuild_report(ctx.out_dir)
