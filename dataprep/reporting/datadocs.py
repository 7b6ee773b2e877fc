"""Great Expectations' Data Docs made offline, truthful and small, and safe against the data.

GX renders its site with Bootstrap, jQuery, bootstrap-table, Font Awesome and Vega from CDNs, a
logo from S3 and a newsletter footer; offline the pages are unstyled and the index (a
bootstrap-table filled by script) is an empty list. GX has no switch for any of that, so after
``build_data_docs`` every page is rewritten here:

- every ``<script src>``, ``<link href>`` and ``<img src>`` pointing at the network is removed,
  and so are ``url(http…)`` in inline styles; Bootstrap 4 and jQuery are copied into
  ``static/vendor/`` from Debian's ``libjs-bootstrap4`` and ``libjs-jquery`` when installed
  (``.ci/run`` installs them; a run never downloads anything), else a small stylesheet of ours
  keeps the tables readable. These files are not committed to the repository: the packages
  provide them.
- the index's two script-filled tables become plain HTML tables (bootstrap-table is in no
  package we can rely on, and a static list needs no script);
- a validation page whose only failures are warning-severity expectations says "Passed with
  warnings" instead of "Failed", in agreement with the run's verdict;
- GX's ``static/`` folder (3.9 MB of GIFs, PNGs and fonts no rewritten page uses) is removed.

Data reaches GX's renderers unescaped (a duplicate id ``<script>…`` would be written verbatim
into the validation page), so :func:`escape_frame` HTML-escapes every string cell before the
suites run; the pages then show the text as it is.

>>> escape_frame(pd.DataFrame({"id": ["<b>x</b>"]}))["id"][0]  # doctest: +SKIP
'&lt;b&gt;x&lt;/b&gt;'
"""

from __future__ import annotations

import html
import os
import re
import shutil
from pathlib import Path
from typing import Any

SITE = Path("uncommitted") / "data_docs" / "local_site"
# vendored name -> where Debian's packages put it (libjs-bootstrap4, libjs-jquery)
VENDOR = {
    "bootstrap.min.css": ("/usr/share/javascript/bootstrap4/css/bootstrap.min.css",),
    "jquery.min.js": ("/usr/share/javascript/jquery/jquery.min.js",),
    "bootstrap.bundle.min.js": ("/usr/share/javascript/bootstrap4/js/bootstrap.bundle.min.js",),
}
_REMOTE = r"""["'](?:https?:)?//[^"']*["']"""
_REMOTE_TAGS = [
    re.compile(r"<script\b[^>]*\bsrc\s*=\s*" + _REMOTE + r"[^>]*>\s*</script>", re.I | re.S),
    re.compile(r"<link\b[^>]*\bhref\s*=\s*" + _REMOTE + r"[^>]*>", re.I | re.S),
    re.compile(r"<img\b[^>]*\bsrc\s*=\s*" + _REMOTE + r"[^>]*>", re.I | re.S),
    re.compile(r"<link\b[^>]*\bhref\s*=\s*[\"'][^\"']*static/[^\"']*[\"'][^>]*>", re.I | re.S),
]
_REMOTE_URL_CSS = re.compile(r"url\(\s*['\"]?(?:https?:)?//[^)]*\)", re.I)
_FOOTERS = re.compile(r"<footer\b.*?</footer>", re.I | re.S)
_TABLE_SCRIPTS = re.compile(r"<script>(?:(?!</script>).)*?bootstrapTable\((?:(?!</script>).)*?"
                            r"</script>", re.S)
_STATUS_FAILED = re.compile(r"(Status:</span>\s*)<i\b[^>]*></i>\s*Failed", re.S)
FALLBACK_CSS = """
body { font-family: system-ui, sans-serif; margin: 1em 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { border: 1px solid #ddd;
padding: 2px 6px; vertical-align: top; } .alert { background: #f4f4f4; padding: 0.4em; }
.text-danger { color: #b00020; } .text-success { color: #17772f; } .hide, .invisible,
[hidden] { display: none; } .cooltip .top { display: none; } ul.nav { list-style: none; }
"""
# Font Awesome is not packaged in the version GX uses; the few status icons become characters.
ICON_CSS = """
.fas.fa-check-circle::before { content: "\u2714"; color: #17772f; }
.fas.fa-times::before, .fas.fa-times-circle::before { content: "\u2718"; color: #b00020; }
.fas { font-style: normal; }
"""


def escape_frame(frame: Any) -> Any:
    """A copy of ``frame`` whose string cells are HTML-escaped (numbers and nulls unchanged)."""
    from pandas.api.types import is_object_dtype, is_string_dtype

    out = frame.copy()
    for col in out.columns:
        # pandas 3 gives text its own "str" dtype; older versions use object
        if is_string_dtype(out[col]) or is_object_dtype(out[col]):
            out[col] = out[col].map(lambda v: html.escape(v, quote=True) if isinstance(v, str)
                                    else v)
    return out


def unescape(value: Any) -> Any:
    """Undo :func:`escape_frame` on values GX hands back (unexpected values in results)."""
    if isinstance(value, str):
        return html.unescape(value)
    if isinstance(value, list):
        return [unescape(v) for v in value]
    return value


def vendor_files(dest: Path) -> list[str]:
    """Copy the packaged Bootstrap and jQuery into ``dest``; the names copied."""
    copied = []
    for name, candidates in VENDOR.items():
        src = next((Path(c) for c in candidates if os.path.isfile(c)), None)
        if src is not None:
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest / name)
            copied.append(name)
    return copied


def finish_site(gx_dir: str | Path, suites: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Rewrite the site under ``gx_dir`` as described in the module docstring.

    ``suites``: suite name -> ``{"success": bool, "critical_success": bool}`` (our verdicts).
    Returns what was done (vendored files, pages rewritten, bytes before and after).
    """
    site = Path(gx_dir) / SITE
    before = _size(Path(gx_dir))
    shutil.rmtree(site / "static", ignore_errors=True)
    vendored = vendor_files(site / "static" / "vendor")
    pages = sorted(site.rglob("*.html"))
    for page in pages:
        rel = os.path.relpath(site, page.parent).replace(os.sep, "/")
        prefix = "" if rel == "." else rel + "/"
        text = page.read_text(encoding="utf-8")
        text = _offline(text, prefix, vendored)
        if page.parent == site and page.name == "index.html":
            text = _static_index(text, site, suites)
        text = _status(text, page, site, suites)
        page.write_text(text, encoding="utf-8")
    return {"vendored": vendored, "pages": len(pages), "bytes_before": before,
            "bytes_after": _size(Path(gx_dir))}


def _offline(text: str, prefix: str, vendored: list[str]) -> str:
    for pattern in _REMOTE_TAGS:
        text = pattern.sub("", text)
    text = _REMOTE_URL_CSS.sub("none", text)
    text = _FOOTERS.sub("", text)
    text = _TABLE_SCRIPTS.sub("", text)
    head = [f"<style>{ICON_CSS}</style>"]
    if "bootstrap.min.css" in vendored:
        head.append(f'<link rel="stylesheet" href="{prefix}static/vendor/bootstrap.min.css">')
    else:
        head.append(f"<style>{FALLBACK_CSS}</style>")
    for js in ("jquery.min.js", "bootstrap.bundle.min.js"):
        if js in vendored:
            head.append(f'<script src="{prefix}static/vendor/{js}"></script>')
    return re.sub(r"</head>", "\n".join(head) + "\n</head>", text, count=1, flags=re.I)


def _verdict(v: dict[str, Any] | None) -> str:
    if v is None:
        return "unknown"
    if v.get("success"):
        return "Passed"
    return "Passed with warnings" if v.get("critical_success") else "Failed"


def _suite_of(page: Path, site: Path) -> str | None:
    parts = page.relative_to(site).parts
    if len(parts) >= 2 and parts[0] in ("validations", "expectations"):
        return parts[1] if parts[0] == "validations" else Path(parts[1]).stem
    return None


def _status(text: str, page: Path, site: Path, suites: dict[str, dict[str, Any]]) -> str:
    suite = _suite_of(page, site)
    verdict = _verdict(suites.get(suite or ""))
    if verdict != "Passed with warnings":
        return text
    note = ('<span class="text-warning" data-dataprep-status="warnings">Passed with warnings'
            "</span> (only warning-severity expectations failed; the run's verdict)")
    return _STATUS_FAILED.sub(lambda m: m.group(1) + note, text)


def _static_index(text: str, site: Path, suites: dict[str, dict[str, Any]]) -> str:
    """Fill the index's two empty tables with plain rows (validations, then suites)."""
    rows = []
    for page in sorted((site / "validations").rglob("*.html")):
        suite = _suite_of(page, site) or ""
        href = html.escape(page.relative_to(site).as_posix(), quote=True)
        rows.append(f"<tr><td>{html.escape(_verdict(suites.get(suite)))}</td>"
                    f'<td><a href="{href}">{html.escape(suite)}</a></td>'
                    f"<td>{html.escape(page.parent.name)}</td></tr>")
    validations = ('<table class="table table-sm" data-dataprep-index="validations">'
                   "<thead><tr><th>Status</th><th>Expectation suite</th><th>Run</th></tr></thead>"
                   f"<tbody>{''.join(rows)}</tbody></table>")
    srows = []
    for page in sorted((site / "expectations").glob("*.html")):
        href = html.escape(page.relative_to(site).as_posix(), quote=True)
        srows.append(f'<tr><td><a href="{href}">{html.escape(page.stem)}</a></td></tr>')
    expectations = ('<table class="table table-sm" data-dataprep-index="suites">'
                    "<thead><tr><th>Expectation suite</th></tr></thead>"
                    f"<tbody>{''.join(srows)}</tbody></table>")
    text = re.sub(r'<div id="[^"]*-body-table-toolbar".*?</div>', "", text, flags=re.S)
    tables = re.findall(r'<table\s+id="[^"]*-body-table"[^>]*>\s*</table>', text)
    if len(tables) >= 1:
        text = text.replace(tables[0], validations, 1)
    if len(tables) >= 2:
        text = text.replace(tables[1], expectations, 1)
    # The tabs need Bootstrap's script; without it both lists are shown one after the other.
    if not (site / "static" / "vendor" / "bootstrap.bundle.min.js").is_file():
        text = text.replace('class="tab-pane fade"', 'class="tab-pane"')
    return text


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
