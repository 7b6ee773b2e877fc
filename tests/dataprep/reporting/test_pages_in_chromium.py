"""The report and the Data Docs in a real headless Chromium (Debian's ``chromium``), with every
host name unresolvable: the pages load nothing from the network, every chart and the record
browser render, Chinese labels are drawn in Chinese, and each page leaves a screenshot under the
test's output folder (``DATAPREP_SCREENSHOTS=DIR`` copies them there as well)."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from dataprep.reporting.datadocs import SITE
from dataprep.reporting.fonts import find_cjk_font
from tests.dataprep.reporting.test_datadocs import REMOTE
from tests.dataprep.stages.test_report import glyph_ids

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's headless chromium (apt-get install chromium; "
    ".ci/run installs it before the tests)")


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


def _chromium(url: str, profile: Path, *args: str) -> str:
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-dev-shm-usage", "--no-first-run", "--disable-extensions",
           "--disable-background-networking", "--disable-component-update",
           "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}",
           "--hide-scrollbars", *args, url]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def _load(page: Path, shots: Path, name: str, fragment: str = "",
          height: int = 1600) -> str:
    """The DOM after the page's scripts ran, and a screenshot of the window."""
    url = page.resolve().as_uri() + fragment
    profile = shots / f".profile-{name}"
    dom = _chromium(url, profile, "--virtual-time-budget=3000", "--dump-dom")
    png = shots / f"{name}.png"
    _chromium(url, profile, f"--window-size=1200,{height}", f"--screenshot={png}")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 15_000, name  # a blank window is ~5 KB
    if os.environ.get("DATAPREP_SCREENSHOTS"):
        dest = Path(os.environ["DATAPREP_SCREENSHOTS"])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, dest / png.name)
    assert not REMOTE.search(dom), REMOTE.search(dom)
    return dom


def test_report_renders_offline_with_chinese_charts(spo_run: Path, shots: Path) -> None:
    dom = _load(spo_run / "report" / "index.html", shots, "report-spo")
    charts = re.findall(r'<img class="chart" data-chart="([^"]+)" src="([^"]+)"', dom)
    assert {c for c, _ in charts} == {"labels", "balance", "length-chars", "rejects"}
    assert all(src.startswith("data:image/svg+xml;base64,") for _, src in charts)
    labels = base64.b64decode(dict(charts)["labels"].split(",", 1)[1]).decode("utf-8")
    if find_cjk_font():
        assert len(set(glyph_ids(labels, "性能故障"))) == 4 and 'id="font-note"' not in dom
    else:
        assert 'id="font-note"' in dom
    # The record browser drew its first page from the embedded data.
    assert len(re.findall(r'<div class="card kind-', dom)) == 20
    assert re.search(r'<span id="b-page">page 1 of \d+</span>', dom)


def test_record_browser_alone(hotel_warning_run: Path, shots: Path) -> None:
    dom = _load(hotel_warning_run / "report" / "index.html", shots, "record-browser",
                "#records", height=1400)
    assert '<body class="records-only">' in dom
    kinds = set(re.findall(r'<div class="card kind-(\w+)">', dom))
    assert {"train", "dev", "rejected", "removed"} <= kinds
    assert '<div class="msg role-tool">' in dom and "<ins>" in dom  # tool calls, a rewrite diff
    assert '<div class="sub">kept twin ' in dom  # a removed duplicate beside its kept twin


def test_data_docs_render_offline(hotel_warning_run: Path, shots: Path) -> None:
    site = hotel_warning_run / "gx" / SITE
    index = _load(site / "index.html", shots, "datadocs-index", height=700)
    rows = re.findall(r'<td>Passed with warnings</td><td><a href="([^"]+)">', index)
    assert len(rows) == 1
    page = _load(site / rows[0], shots, "datadocs-validation")
    assert "Passed with warnings" in page and "max_chars" in page


def test_hostile_data_stays_text(hostile_run: Path, shots: Path) -> None:
    for name, page in (("hostile-report", hostile_run / "report" / "index.html"),
                       ("hostile-validation", next((hostile_run / "gx" / SITE).rglob(
                           "validations/**/*.html")))):
        dom = _load(page, shots, name, "#records" if "report" in name else "")
        assert "<img src=\"x\"" not in dom and "onerror=\"alert" not in dom
        assert "<script>alert" not in dom
        assert "&lt;script&gt;alert('gx')&lt;/script&gt;" in dom  # shown as text
