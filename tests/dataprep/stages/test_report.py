"""``report``: the HTML page of a real run, checked against its manifest; rebuilt by the CLI."""

from __future__ import annotations

import base64
import json
import re
import shutil
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from dataprep.cli import main
from dataprep.config import config_from_dict
from dataprep.errors import InputError
from dataprep.pipeline import Pipeline
from dataprep.reporting.fonts import find_cjk_font
from dataprep.stages.report import rebuild_report


class _Page(HTMLParser):
    """Collects every data-* attribute value with the text of its element, and the images."""

    def __init__(self) -> None:
        super().__init__()
        self.data: dict[str, dict[str, str]] = {}
        self.images: dict[str, str] = {}  # data-chart name -> src
        self.links: list[str] = []
        self._open: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        d = dict(attrs)
        if tag == "img":
            self.images[d.get("data-chart") or "?"] = d["src"] or ""
        if tag == "a" and d.get("href"):
            self.links.append(d["href"] or "")
        self._open = [(k[5:], v or "") for k, v in attrs if k.startswith("data-")]
        for key, value in self._open:
            self.data.setdefault(key, {})[value] = ""

    def handle_data(self, data: str) -> None:
        for key, value in self._open:
            self.data[key][value] += data

    def handle_endtag(self, tag: str) -> None:
        self._open = []


def glyph_ids(svg: str, text: str) -> list[str]:
    """The glyph ids matplotlib used to draw ``text`` (it writes the text as a comment first)."""
    start = svg.index(f"<!-- {text} -->")
    end = svg.index("</g>", start)
    return re.findall(r'<use xlink:href="#([^"]+)"', svg[start:end])


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


@pytest.fixture(scope="module")
def run(corpora: Path, tokenizer_dir: Path,
        tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    base = tmp_path_factory.mktemp("report_run")
    # A second input whose rejected lines carry markup: the page must show it, escaped.
    evil = base / "evil.jsonl"
    evil.write_text(json.dumps({"text": "<script>alert('x')</script>发动机异响", "answer": ""},
                               ensure_ascii=False) + "\n", encoding="utf-8")
    cfg = {"name": "spo-report", "tokenizer": str(tokenizer_dir),
           "inputs": [{"reader": "spo", "path": str(evil)},
                      {"reader": "spo", "path": str(
                          corpora / "spo-repair-records" / "spo_0.subset.json")}],
           "stages": ["clean", "validate", "split",
                      {"name": "balance", "mode": "both", "cap": 2.0, "floor": 0.5}, "write",
                      {"name": "expectations", "fail_on": "never"}, "report"]}
    out = base / "out"
    return out, Pipeline(config_from_dict(cfg)).run(out, progress=False)


def test_counts_on_the_page_match_the_manifest(run: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = run
    index = out / "report" / "index.html"
    assert manifest["artifacts"]["report"] == str(index) and index.is_file()
    page = _parse(index)
    c = manifest["counts"]
    shown = {k: int(v) for k, v in page.data["count"].items()}
    assert shown == {"input": c["input"], "rejected": sum(c["rejected"].values()),
                     "removed": sum(c["removed"].values()), "added": c["added"],
                     "train": c["train"], "dev": c["dev"], "test": c["test"]}
    assert c["input"] == 1142 and c["rejected"] == {"no_triples": 17}
    assert {k: int(v) for k, v in page.data["rejected"].items()} == c["rejected"]
    assert {k: int(v) for k, v in page.data["removed"].items()} == c["removed"]
    assert {k: int(v) for k, v in page.data["added"].items()} == c["added_by_op"]
    # Records per stage: the last stage's output is what was written.
    outs = {k: int(v) for k, v in page.data["out"].items()}
    assert outs["read"] == 1142 - 17
    assert outs["write"] == c["train"] + c["dev"] + c["test"]
    assert "report" not in outs and "expectations" not in outs  # post-run steps, not stages
    assert outs["balance"] == outs["split"] - c["removed"]["balance_downsample"] + c["added"]
    # Rejects by (kind, stage, reason) add up to the manifest's totals.
    by_reason = Counter()
    for key, value in page.data["reason-count"].items():
        by_reason[key.split(":")[2]] += int(value)
    assert by_reason == {**c["rejected"], **c["removed"]}


def test_every_chart_exists(run: tuple[Path, dict[str, Any]]) -> None:
    out, _ = run
    page = _parse(out / "report" / "index.html")
    assert set(page.images) == {"labels", "balance", "length-chars", "length-tokens", "rejects"}
    for src in page.images.values():
        assert src.startswith("data:image/svg+xml;base64,")
        svg = base64.b64decode(src.split(",", 1)[1]).decode("utf-8")
        assert svg.lstrip().startswith("<?xml") and "<svg" in svg and len(svg) > 5000
    # One self-contained file: nothing is written or loaded beside it.
    assert [p.name for p in (out / "report").iterdir()] == ["index.html"]
    # The relation names are drawn in Chinese when a CJK font is installed, else keyed.
    labels_svg = base64.b64decode(page.images["labels"].split(",", 1)[1]).decode("utf-8")
    if find_cjk_font():
        glyphs = glyph_ids(labels_svg, "部件故障")
        assert len(glyphs) == 4 and len(set(glyphs)) == 4, glyphs  # four distinct glyphs
    else:
        assert "#1" in labels_svg and "No font with Chinese glyphs" in (
            out / "report" / "index.html").read_text(encoding="utf-8")


def test_sections_and_escaping(run: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = run
    html = (out / "report" / "index.html").read_text(encoding="utf-8")
    page = _parse(out / "report" / "index.html")
    # The Data Docs link points at the site GE built.
    docs = [link for link in page.links if "data_docs" in link]
    assert docs == ["../gx/uncommitted/data_docs/local_site/index.html"]
    assert (out / "report" / docs[0]).resolve().is_file()
    # Labels per split, balance before/after, validation rates, token lengths, the config.
    for text in ("部件故障", "检测工具", "balance_downsample", "triple_not_in_text",
                 "have subject and object", "ChatGLM3 tokens", "tokenizer:", "spo-report",
                 "holds"):
        assert text in html, text
    assert manifest["stage_stats"]["balance"]["after"]["检测工具"] > \
        manifest["stage_stats"]["balance"]["before"]["检测工具"]
    # Data from the corpus is escaped, never markup.
    assert "<script>alert" not in html and "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    assert "\\u003cscript\\u003ealert('x')" in html  # the record browser's data, inert


def test_rebuild_from_the_run_folder_alone(run: tuple[Path, dict[str, Any]],
                                           tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out, manifest = run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("report"))
    # Artifacts of stages this run did not have (dedup, leakage) are rendered when present.
    m = json.loads((copy / "manifest.json").read_text(encoding="utf-8"))
    m["artifacts"]["dedup_clusters"] = [{"kept_id": "spo:1", "kept_text": "风扇<b>低速</b>",
                                         "removed": [{"id": "spo:9", "text": "风扇低速转动",
                                                      "reason": "near_duplicate",
                                                      "similarity": 0.91}]}]
    m["artifacts"]["leakage"] = {"input": {"rate": 0.02, "leaked": 3, "dev_test": 150},
                                 "output": {"rate": 0.0, "leaked": 0, "moved_records": 4,
                                            "moved_clusters": 2}}
    (copy / "manifest.json").write_text(json.dumps(m, ensure_ascii=False), encoding="utf-8")
    assert main(["report", str(copy)]) == 0
    assert capsys.readouterr().out.strip() == f"report: {copy / 'report' / 'index.html'}"
    page = _parse(copy / "report" / "index.html")
    html = (copy / "report" / "index.html").read_text(encoding="utf-8")
    assert page.data["leakage"]["output.moved_records"] == "4"
    assert page.data["leakage"]["input.rate"] == "0.02"
    assert "near_duplicate" in html and "风扇&lt;b&gt;低速&lt;/b&gt;" in html
    assert {k: int(v) for k, v in page.data["count"].items()}["train"] == \
        manifest["counts"]["train"]
    assert page.images and all(src.startswith("data:") for src in page.images.values())


def test_not_a_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(InputError, match="no manifest.json"):
        rebuild_report(tmp_path)
    assert main(["report", str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err
