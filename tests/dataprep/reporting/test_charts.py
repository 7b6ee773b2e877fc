"""Charts: top-k + other for any number of classes, labels that are not mathtext, and a CJK font
found even when matplotlib's font cache predates it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dataprep.reporting.charts import bar_chart, small_multiples, svg_of, top_k


def test_top_k_folds_the_tail_into_other() -> None:
    counts = {f"类{i:04d}": 5000 - i for i in range(5000)}
    cats, values, other = top_k({"n": counts}, k=20)
    assert cats[:2] == ["类0000", "类0001"] and cats[-1] == "other (4980 more)"
    assert other == 4980 and len(values["n"]) == 21
    assert sum(values["n"]) == sum(counts.values())  # nothing is lost, only grouped


def test_5000_labels_draw_21_bars() -> None:
    chart = bar_chart("labels", {"train": {f"label {i}": i % 7 + 1 for i in range(5000)}},
                      "samples")
    svg = svg_of(chart)
    assert len(chart.labels) == 21 and chart.other == 4980
    assert len(re.findall(r'<g id="patch_\d+">', svg)) < 40  # bars + axes, not 5,000 bars
    assert "<!-- other (4980 more) -->" in svg


def test_labels_are_text_not_mathtext() -> None:
    # "$\frac{1}{$" used to stop the report with a mathtext parse error (issue 9, item 4).
    chart = bar_chart("rejects", {"n": {r"$\frac{1}{$": 2, "a $ b": 1}}, "records")
    assert chart.labels == [r"$\frac{1}{$", "a $ b"]
    panels = small_multiples("lengths", [0, 10, 20], {"train": [3, 1], "dev": [0, 1],
                                                      "test": [0, 0]}, "chars")
    assert panels.labels == ["train", "dev"]  # an empty split gets no panel


def _cjk_font_files() -> list[str]:
    from matplotlib import font_manager

    return [p for p in font_manager.findSystemFonts() if "CJK" in Path(p).name]


@pytest.mark.skipif(not _cjk_font_files(), reason="needs a CJK font file (apt-get install "
                    "fonts-noto-cjk; .ci/run installs it before the tests)")
def test_cjk_font_found_despite_a_stale_font_cache(tmp_path: Path, repo_root: Path) -> None:
    """A cache written before the font was installed lists no CJK family: the font is still
    found, and the cache is rewritten so that the next process knows it."""
    env = dict(os.environ, MPLCONFIGDIR=str(tmp_path), PYTHONPATH=str(repo_root))
    stale = ("from matplotlib import font_manager as fm, get_cachedir\n"
             "fm.fontManager.ttflist = [f for f in fm.fontManager.ttflist if 'CJK' not in "
             "f.name and 'CJK' not in f.fname]\n"
             "import pathlib; p = pathlib.Path(get_cachedir()) / "
             "f'fontlist-v{fm.FontManager.__version__}.json'\n"
             "fm.json_dump(fm.fontManager, p); print(p)\n")
    cache = Path(subprocess.run([sys.executable, "-c", stale], env=env, capture_output=True,
                                text=True, check=True).stdout.strip())
    assert "CJK" not in cache.read_text(encoding="utf-8")
    probe = ("from dataprep.reporting.fonts import find_cjk_font\n"
             "print(find_cjk_font())\n")
    found = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                           text=True, check=True).stdout.strip()
    assert "CJK" in found
    families = {f["name"] for f in json.loads(cache.read_text(encoding="utf-8"))["ttflist"]}
    assert found in families  # the rewritten cache knows it now


def test_without_a_cjk_font_the_page_says_why_labels_are_keyed(
        spo_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from dataprep.reporting import charts
    from dataprep.reporting.page import rebuild_report

    copy = tmp_path / "run"
    shutil.copytree(spo_run, copy)
    monkeypatch.setattr(charts, "find_cjk_font", lambda: None)
    text = rebuild_report(copy).read_text(encoding="utf-8")
    assert 'id="font-note"' in text and "apt-get install fonts-noto-cjk" in text
    assert re.search(r"<figcaption class=\"muted\">#1 = [^<]*部件故障|#\d = 部件故障", text)
