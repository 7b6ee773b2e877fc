"""The Data Docs of a real run: nothing from the network, a filled index, the run's verdict as the
status, a small folder, and a way to skip them."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from dataprep.reporting.datadocs import SITE, VENDOR
from dataprep.stages.expectations import Expectations

# Attributes and CSS through which a page loads something by itself.
REMOTE = re.compile(r"""<(?:script|img|iframe|source|embed|audio|video)\b[^>]*\bsrc\s*=\s*["']?"""
                    r"""(?:https?:)?//|<link\b[^>]*\bhref\s*=\s*["']?(?:https?:)?//|"""
                    r"""url\(\s*["']?(?:https?:)?//|@import\s+["'](?:https?:)?//""", re.I)


def test_pages_reference_nothing_remote(hotel_warning_run: Path) -> None:
    site = hotel_warning_run / "gx" / SITE
    files = [p for p in site.rglob("*") if p.is_file()]
    assert files
    for path in files:
        if path.suffix in (".html", ".css"):
            text = path.read_text(encoding="utf-8")
            assert not REMOTE.search(text), (path, REMOTE.search(text))
            for ref in re.findall(r"""(?:src|href)\s*=\s*["']([^"'#]+)["']""", text):
                if not re.match(r"(?:https?:|mailto:|data:)", ref):  # a link, not a load
                    assert (path.parent / ref).resolve().is_file(), (path, ref)
    vendored = sorted(p.name for p in (site / "static" / "vendor").glob("*"))
    if all(Path(c[0]).is_file() for c in VENDOR.values()):  # Debian's libjs-* installed
        assert vendored == sorted(VENDOR)
    else:
        assert "<style>" in (site / "index.html").read_text(encoding="utf-8")


def test_index_lists_the_validation_and_status_agrees(hotel_warning_run: Path) -> None:
    manifest = json.loads((hotel_warning_run / "manifest.json").read_text(encoding="utf-8"))
    result = manifest["artifacts"]["expectations"]
    # Augmented records are left out of the split shares: only the forced warning fails.
    assert [f["name"] for f in result["failed"]] == ["max_message_chars"]
    assert result["critical_success"] and not result["success"]
    site = hotel_warning_run / "gx" / SITE
    index = (site / "index.html").read_text(encoding="utf-8")
    rows = re.findall(r'<tr><td>([^<]*)</td><td><a href="([^"]+)">dataprep_hotel</a>', index)
    assert len(rows) == 1 and rows[0][0] == "Passed with warnings"
    validation = site / rows[0][1]
    text = validation.read_text(encoding="utf-8")
    assert 'data-dataprep-status="warnings">Passed with warnings' in text
    assert not re.search(r"Status:</span>\s*(?:<i[^>]*></i>)?\s*Failed", text)
    assert 'href="expectations/dataprep_hotel.html"' in index


def test_footprint_and_skipping(hotel_warning_run: Path, tmp_path: Path) -> None:
    gx = hotel_warning_run / "gx"
    size = sum(p.stat().st_size for p in gx.rglob("*") if p.is_file())
    assert size < 1_000_000, size  # GX's own site is 4.2 MB, mostly GIFs and fonts
    site = json.loads((hotel_warning_run / "manifest.json").read_text(encoding="utf-8"))[
        "artifacts"]["expectations"]["data_docs_site"]
    assert site["bytes_before"] > 3_000_000 and site["bytes_after"] == size
    copy = tmp_path / "run"
    shutil.copytree(hotel_warning_run, copy)
    result = Expectations(data_docs=False).validate(copy, [0.8, 0.1, 0.1])
    assert result["data_docs"] is None and result["suites"]["hotel"]["evaluated"] == 13
    assert not (copy / "gx").exists()
