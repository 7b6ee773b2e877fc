"""``report``: one self-contained HTML page per run (``OUT/report/index.html``).

Everything on the page comes from the finished run folder (see :mod:`dataprep.reporting.page`),
which is what lets ``dataprep report OUT`` rebuild it later and why it is a post-run step. The
one thing the folder cannot give is token counts (the tokenizer is not part of it), so the step
first puts a token-length histogram of the written splits into the manifest when the run has a
tokenizer, then renders the page from the manifest as rewritten.

>>> rebuild_report("out/spo")  # doctest: +SKIP
PosixPath('out/spo/report/index.html')
"""

from __future__ import annotations

from dataprep.reporting.page import REPORT_DIR, rebuild_report, token_length_histogram
from dataprep.stages.base import FinishedRun, PostRunStep

__all__ = ["Report", "rebuild_report", "token_length_histogram"]


class Report(PostRunStep):
    """A post-run step without options; the page is built from the finished run folder.
    Resources: the tokenizer (a token-length histogram, when the run has one)."""

    name = "report"
    uses = ("tokenizer",)

    def run(self, run: FinishedRun) -> None:
        self.stats.artifacts["report"] = str(run.out_dir / REPORT_DIR / "index.html")
        if self.resources.tokenizer_path:
            self.stats.artifacts["token_lengths"] = token_length_histogram(
                run.out_dir, self.resources.tokenizer)
        run.publish(self.stats)  # the page is built from manifest.json: put them there first
        rebuild_report(run.out_dir)
