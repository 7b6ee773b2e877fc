"""Report costs that grow with the data: a chart of 5,000 labels, and the record browser of a
100k-record run.

- Chart: ``bar_chart`` over 5,000 distinct labels (top 20 + "other"). Anchor (issue 9, item 7):
  the chart drawn with one bar per label took 47 s and 2.5 GB.
- Browser: a synthetic run folder with 100,000 train records (Chinese two-turn dialogs, 30
  labels, 1,000 rewrites with parents) and 2,000 rejects; ``browser_data`` reads it twice (facets
  first, then the sampled lines) and embeds at most ``MAX_BYTES`` of JSON. Printed: seconds,
  records embedded, embedded MB, peak RSS.

Each part runs in its own subprocess so that its peak RSS is its own.

    python -m bench.bench_report
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _chart() -> None:
    from dataprep.reporting.charts import bar_chart

    t0 = time.perf_counter()
    chart = bar_chart("labels", {"train": {f"标签{i:05d}": (i * 7919) % 97 + 1
                                           for i in range(5000)}}, "samples")
    took = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"chart, 5,000 labels: {took:.2f} s, peak RSS {rss:.0f} MB, {len(chart.labels)} bars "
          f"drawn, {len(chart.uri) / 1024:.0f} KB inline (anchor: 47 s, 2.5 GB)")


def _browser() -> None:
    from dataprep.reporting.browser import browser_data, embed_json

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        with (out / "train.jsonl").open("w", encoding="utf-8") as fh:
            for i in range(100_000):
                lineage = {"source": "x.jsonl", "line": i, "ops": []}
                if i >= 99_000:
                    lineage.update(parent_id=f"r{i - 99_000}", ops=["rewrite_rules"])
                fh.write(json.dumps({"id": f"r{i}", "label": f"类{i % 30}", "conversations": [
                    {"role": "user", "content": f"第{i}个问题：这家酒店有没有停车场和早餐？"},
                    {"role": "assistant", "content": f"第{i}个回答：有停车场，早餐七点开始。"}],
                    "lineage": lineage}, ensure_ascii=False) + "\n")
        with (out / "rejects.jsonl").open("w", encoding="utf-8") as fh:
            for i in range(2000):
                fh.write(json.dumps({"kind": "rejected", "reason": f"reason_{i % 7}",
                                     "stage": "read", "source": "x.jsonl", "line": i,
                                     "message": "bad", "raw": "{" * 200}) + "\n")
        t0 = time.perf_counter()
        data = browser_data(out)
        text = embed_json(data)
        took = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"record browser, 102,000 records: {took:.2f} s, {data['shown']:,} embedded, "
          f"{len(text.encode('utf-8')) / 1e6:.1f} MB of JSON, peak RSS {rss:.0f} MB")


def main() -> None:
    if len(sys.argv) > 1:
        {"chart": _chart, "browser": _browser}[sys.argv[1]]()
        return
    for part in ("chart", "browser"):
        subprocess.run([sys.executable, "-m", "bench.bench_report", part], check=True)


if __name__ == "__main__":
    main()
