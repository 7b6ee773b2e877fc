"""The record browser's sample: bounded in size however large the run, every facet combination
present, parents of rewrites and kept twins of duplicates included."""

from __future__ import annotations

import json
from pathlib import Path

from dataprep.reporting.browser import browser_data, embed_json


def _rec(i: int, label: str, text: str, **lineage: object) -> dict[str, object]:
    return {"id": f"r{i}", "label": label, "corpus": "spo",
            "conversations": [{"role": "user", "content": text},
                              {"role": "assistant", "content": f"回答{i}" * 20}],
            "lineage": {"source": "x.jsonl", "line": i, "ops": [], **lineage}}


def _run_folder(out: Path, n: int) -> None:
    out.mkdir()
    with (out / "train.jsonl").open("w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps(_rec(i, f"类{i % 30}", f"第{i}条：发动机异响，检查皮带。" * 5),
                                ensure_ascii=False) + "\n")
        for i in range(50):  # rewrites of the first 50 records
            child = _rec(n + i, f"类{i % 30}", f"第{i}条：引擎有怪声，看看皮带。" * 5,
                         parent_id=f"r{i}", ops=["rewrite_rules"])
            fh.write(json.dumps(child, ensure_ascii=False) + "\n")
    (out / "dev.jsonl").write_text(json.dumps(_rec(10**6, "类1", "开发集"),
                                              ensure_ascii=False) + "\n", encoding="utf-8")
    with (out / "rejects.jsonl").open("w", encoding="utf-8") as fh:
        for i in range(200):
            fh.write(json.dumps({"kind": "removed", "reason": "exact_duplicate", "stage": "dedup",
                                 "source": "x.jsonl", "line": i, "message": "duplicate",
                                 "kept_id": f"r{n - 1 - i}",
                                 "record": _rec(10**7 + i, "类0", "重复")},
                                ensure_ascii=False) + "\n")
            fh.write(json.dumps({"kind": "rejected", "reason": "malformed_json", "stage": "read",
                                 "source": "x.jsonl", "line": i, "message": "bad",
                                 "raw": "{" * 50}) + "\n")
    (out / "augment_discarded.jsonl").write_text(json.dumps(
        {"record_id": "r3", "op": "rewrite_llm", "turn": 0, "original": "价格两百",
         "rewrite": "价格三百", "reasons": ["numbers_changed"]}, ensure_ascii=False) + "\n",
        encoding="utf-8")


def test_sample_is_bounded_and_covers_every_facet(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _run_folder(out, 5000)
    data = browser_data(out, max_bytes=200_000)
    assert data["total"] == 5000 + 50 + 1 + 400 + 1
    size = len(embed_json(data).encode("utf-8"))
    assert size < 200_000 * 1.6, size  # the budget, plus parents/twins (a quarter) and keys
    assert data["shown"] < data["total"] / 3
    recs = data["records"]
    shown = {(r["k"], r["label"], r["reason"], r["op"]) for r in recs}
    assert {(k, "", r, o) for k, r, o in (("rejected", "malformed_json", ""),
                                          ("discarded", "numbers_changed", "rewrite_llm"))} <= shown
    assert {r["label"] for r in recs if r["k"] == "train"} == {f"类{i}" for i in range(30)}
    assert data["facets"]["k"] == {"train": 5050, "rejected": 200, "removed": 200, "dev": 1,
                                   "discarded": 1}
    # A shown rewrite comes with its parent, diffed turn by turn.
    child = next(r for r in recs if r["op"] == "rewrite_rules")
    assert any(r.get("id") == child["parent"] for r in recs)
    ops = {op for d in child["diff"] for op, _ in d["ops"]}
    assert ops == {"=", "-", "+"} and child["diff"][0]["turn"] == 0
    # A shown duplicate comes with its kept twin.
    dup = next(r for r in recs if r["k"] == "removed")
    assert any(r.get("id") == dup["twin"] and r["k"] == "train" for r in recs)
    assert next(r for r in recs if r["k"] == "discarded")["diff"] == [
        ["=", "价格"], ["-", "两"], ["+", "三"], ["=", "百"]]


def test_embedded_json_cannot_close_its_script_element() -> None:
    text = embed_json({"x": "</script><!-- & -->"})
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"x": "</script><!-- & -->"}
