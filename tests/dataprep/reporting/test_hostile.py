"""Issue 9 item 2: markup and script in every data field come out as text, in the Data Docs and in
the report (ids, labels, every message role, tool names, parameters, observations, a raw line)."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

from tests.dataprep.reporting.conftest import PAYLOAD

SCRIPT = "<script>alert('gx')"
IMG = "<img src=x"


def _pages(out: Path) -> list[Path]:
    return sorted((out / "gx" / "uncommitted" / "data_docs" / "local_site").rglob("*.html"))


def test_data_docs_show_hostile_values_as_text(hostile_run: Path) -> None:
    manifest = json.loads((hostile_run / "manifest.json").read_text(encoding="utf-8"))
    failed = {f["name"]: f for f in manifest["artifacts"]["expectations"]["failed"]}
    # The duplicate id is what GX lists as an unexpected value; our summary has it unescaped.
    assert failed["id_unique"]["observed"]["partial_unexpected_list"] == [PAYLOAD, PAYLOAD]
    pages = _pages(hostile_run)
    assert len(pages) == 3
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert SCRIPT not in text and IMG not in text, page
    validation = next(p for p in pages if "validations" in p.parts).read_text(encoding="utf-8")
    assert html.escape(PAYLOAD, quote=True) in validation  # shown, as text
    # A critical failure (the duplicate id) keeps GX's "Failed": only warnings are softened.
    assert re.search(r"Status:</span>\s*<i[^>]*></i>\s*Failed", validation)
    assert "data-dataprep-status" not in validation


def test_report_shows_hostile_values_as_text(hostile_run: Path) -> None:
    text = (hostile_run / "report" / "index.html").read_text(encoding="utf-8")
    assert SCRIPT not in text and IMG not in text
    assert "&lt;script&gt;alert(&#39;gx&#39;)&lt;/script&gt;" in text  # labels, rejects, summary
    # The record browser's JSON keeps every field, with <, > and & as \\u escapes.
    marker = '<script type="application/json" id="browser-data">'
    start = text.index(marker) + len(marker)
    data = json.loads(text[start:text.index("</script>", start)])
    rec = next(r for r in data["records"] if r.get("id") == PAYLOAD and r["label"] == PAYLOAD)
    assert [m["c"].endswith(PAYLOAD) for m in rec["m"] if m["r"] != "tool"] == [True] * 3
    tool = next(m for m in rec["m"] if m["r"] == "tool")
    assert PAYLOAD in tool["p"] and PAYLOAD in tool["o"]
    reject = next(r for r in data["records"] if r["k"] == "rejected")
    assert "alert('gx')" in reject["raw"]
