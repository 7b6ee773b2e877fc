"""The record browser's data: a bounded sample of a run's records, as JSON for the report page.

Every record a run touched is a candidate: the three splits, ``rejects.jsonl`` (rejected and
removed) and ``augment_discarded.jsonl`` (rewrites that failed the slot check). The page renders
them client-side with a small vanilla-JS script (``templates/browser.js``) that pages and filters
by split/kind, label, reason (reject reason or validation flag) and augment op, and builds every
element with ``textContent``, so hostile data stays text.

How it stays fast for 100k records: a first pass reads only each record's facets and byte size;
the sample then takes records round-robin over the facet combinations (split, label, reason, op)
until ``max_bytes`` of JSON is reached, so every combination is shown at least once before any
gets a second record; a second pass reads the chosen records. Long texts are cut to
``MAX_TEXT`` characters. Parents of shown rewrites and kept twins of shown duplicates are added
(within a further quarter of the budget), so a rewrite can be diffed and a duplicate compared;
the diffs of shown rewrites come on top (about the size of the changed turns).
The page says how many records it holds out of how many.

>>> data = browser_data("out/hotel")  # doctest: +SKIP
>>> data["shown"] <= data["total"]  # doctest: +SKIP
True
"""

from __future__ import annotations

import difflib
import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dataprep.record import lineage_extra
from dataprep.stages.split import SPLITS

MAX_BYTES = 4_000_000  # embedded JSON, before the parents and twins
MAX_TEXT = 2_000
DISCARDED_FILE = "augment_discarded.jsonl"


def _cut(text: Any, limit: int = MAX_TEXT) -> str:
    if not isinstance(text, str):
        text = json.dumps(text, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + f"… [{len(text) - limit} more chars]"


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    if not path.is_file():
        return
    with path.open(encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh, start=1):
            if line.strip():
                yield n, line


def _load(line: str) -> dict[str, Any]:
    try:
        d = json.loads(line)
    except ValueError:
        return {"raw": line}
    return d if isinstance(d, dict) else {"raw": line}


def _messages(conv: Any) -> list[dict[str, str]]:
    out = []
    for m in conv if isinstance(conv, list) else []:
        if not isinstance(m, dict):
            out.append({"r": "?", "c": _cut(m)})
            continue
        msg = {"r": str(m.get("role", "?")), "c": _cut(m.get("content") or "")}
        if m.get("name"):
            msg["n"] = _cut(m["name"], 200)
        if "parameters" in m:
            msg["p"] = _cut(m["parameters"])
        if "observation" in m:
            msg["o"] = _cut(m["observation"])
        out.append(msg)
    return out


def _facets(kind: str, d: dict[str, Any]) -> tuple[str, str, str, str]:
    """(kind, label, reason, op) of one line of a split, of rejects.jsonl or of the discards."""
    if kind == "discarded":
        return kind, "", ",".join(map(str, d.get("reasons") or [])), str(d.get("op") or "")
    rec = d.get("record") if kind in ("rejected", "removed") else d
    rec = rec if isinstance(rec, dict) else {}
    lineage = rec.get("lineage") if isinstance(rec.get("lineage"), dict) else {}
    ops = lineage.get("ops") or []
    try:
        flags = lineage_extra(lineage).get("flags") or []
    except ValueError:
        flags = []
    reason = str(d.get("reason") or "") if kind in ("rejected", "removed") else ",".join(
        map(str, flags))
    label = rec.get("label")
    return (kind, "" if label is None else str(label), reason,
            str(ops[-1]) if isinstance(ops, list) and ops else "")


def _sources(out: Path) -> list[tuple[str, Path]]:
    return [*[(s, out / f"{s}.jsonl") for s in SPLITS], ("rejects", out / "rejects.jsonl"),
            ("discarded", out / DISCARDED_FILE)]


def _entry(kind: str, d: dict[str, Any], loc: str) -> dict[str, Any]:
    kind, label, reason, op = _facets(kind, d)
    e: dict[str, Any] = {"k": kind, "label": label, "reason": reason, "op": op, "at": loc}
    if kind == "discarded":
        e.update(id=str(d.get("record_id") or ""), turn=d.get("turn"),
                 diff=_diff(str(d.get("original") or ""), str(d.get("rewrite") or "")),
                 msg="; ".join(map(str, d.get("reasons") or [])))
        return e
    rec = d.get("record") if kind in ("rejected", "removed") else d
    if kind in ("rejected", "removed"):
        e.update(msg=_cut(d.get("message") or "", 1000), stage=str(d.get("stage") or ""),
                 where=f"{Path(str(d.get('source') or '')).name}:{d.get('line') or d.get('item') or ''}")
        if d.get("kept_id"):
            e["twin"] = str(d["kept_id"])
        if d.get("raw") is not None:
            e["raw"] = _cut(d["raw"], 4000)
        elif d.get("raw_base64"):
            e["raw"] = "(binary line; base64 kept in rejects.jsonl)"
    if isinstance(rec, dict):
        e["id"] = str(rec.get("id") or "")
        if isinstance(rec.get("conversations"), list):
            e["m"] = _messages(rec["conversations"])
        elif "raw" not in e:
            e["raw"] = _cut(rec, 4000)
        lineage = rec.get("lineage") if isinstance(rec.get("lineage"), dict) else {}
        if lineage.get("parent_id"):
            e["parent"] = str(lineage["parent_id"])
        e["ops"] = [str(o) for o in lineage.get("ops") or []]
    return e


def _diff(a: str, b: str) -> list[list[str]]:
    """Character diff as [[tag, text], …] with tag '=', '-' or '+' (difflib, no hand-made LCS)."""
    ops: list[list[str]] = []
    sm = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag == "equal":
            ops.append(["=", a[i1:i2]])
            continue
        if i2 > i1:
            ops.append(["-", a[i1:i2]])
        if j2 > j1:
            ops.append(["+", b[j1:j2]])
    return ops


def _turn_diffs(child: dict[str, Any], parent: dict[str, Any]) -> list[dict[str, Any]]:
    pm, cm = parent.get("m") or [], child.get("m") or []
    diffs = []
    for i, (p, c) in enumerate(zip(pm, cm, strict=False)):
        if p.get("c") != c.get("c"):
            diffs.append({"turn": i, "role": c.get("r"), "ops": _diff(p.get("c", ""),
                                                                       c.get("c", ""))})
    if len(cm) != len(pm):
        diffs.append({"turn": min(len(pm), len(cm)), "role": "",
                      "ops": [["+" if len(cm) > len(pm) else "-",
                               f"{abs(len(cm) - len(pm))} message(s) "
                               f"{'added' if len(cm) > len(pm) else 'removed'}"]]})
    return diffs


def browser_data(out_dir: str | Path, max_bytes: int = MAX_BYTES) -> dict[str, Any]:
    """The sample described in the module docstring, ready for ``json.dumps``."""
    out = Path(out_dir)
    groups: dict[tuple[str, str, str, str], list[tuple[str, int, int]]] = defaultdict(list)
    where: dict[str, tuple[str, int]] = {}  # record id -> (source, line) in the splits
    facet_counts: dict[str, dict[str, int]] = {f: defaultdict(int) for f in
                                               ("k", "label", "reason", "op")}
    total = 0
    for source, path in _sources(out):
        for n, line in _lines(path):
            d = _load(line)
            kind = source if source != "rejects" else str(d.get("kind") or "rejected")
            if kind not in ("removed", "rejected", "discarded", *SPLITS):
                kind = "rejected"
            f = _facets(kind, d)
            groups[f].append((source, n, len(line.encode("utf-8"))))
            for name, value in zip(("k", "label", "reason", "op"), f, strict=True):
                facet_counts[name][value] += 1
            if source in SPLITS and d.get("id") is not None:
                where[str(d["id"])] = (source, n)
            total += 1
    # Round-robin over the facet combinations until the byte budget is spent.
    chosen: dict[tuple[str, int], None] = {}
    budget = max_bytes
    queues = [list(reversed(v)) for _, v in sorted(groups.items())]
    while budget > 0 and any(queues):
        for q in queues:
            if q and budget > 0:
                source, n, size = q.pop()
                chosen[(source, n)] = None
                budget -= min(size, 6 * MAX_TEXT * 3)  # what _entry keeps of a long line
    entries = _fit(_read_entries(out, chosen), max_bytes)
    # Parents of rewrites and kept twins of duplicates, so both sides can be shown.
    have = {e.get("id") for e in entries if e["k"] in SPLITS}
    extra: dict[tuple[str, int], None] = {}
    for e in entries:
        for ref in (e.get("parent"), e.get("twin")):
            if ref and ref not in have and ref in where:
                extra[where[ref]] = None
    entries += _fit(_read_entries(out, extra), max_bytes // 4)
    by_id = {e["id"]: e for e in entries if e["k"] in SPLITS and e.get("id")}
    for e in entries:
        parent = by_id.get(e.get("parent", ""))
        if parent is not None and e.get("m"):
            e["diff"] = _turn_diffs(e, parent)
    return {"records": entries, "total": total, "shown": len(entries),
            "facets": {k: dict(sorted(v.items(), key=lambda kv: (-kv[1], kv[0])))
                       for k, v in facet_counts.items()},
            "max_bytes": max_bytes}


def _fit(entries: list[dict[str, Any]], max_bytes: int) -> list[dict[str, Any]]:
    """The longest head of ``entries`` whose JSON fits in ``max_bytes``."""
    total = 0
    for i, e in enumerate(entries):
        total += len(json.dumps(e, ensure_ascii=False).encode("utf-8")) + 1
        if total > max_bytes:
            return entries[:i]
    return entries


def _read_entries(out: Path, chosen: dict[tuple[str, int], None]) -> list[dict[str, Any]]:
    """The chosen lines as entries, in the order chosen (round-robin: the first page shows one
    record of each facet combination)."""
    found: dict[tuple[str, int], dict[str, Any]] = {}
    for source, path in _sources(out):
        wanted = {n for s, n in chosen if s == source}
        if not wanted:
            continue
        for n, line in _lines(path):
            if n in wanted:
                d = _load(line)
                kind = source if source != "rejects" else str(d.get("kind") or "rejected")
                if kind not in ("removed", "rejected", "discarded", *SPLITS):
                    kind = "rejected"
                found[(source, n)] = _entry(kind, d, f"{path.name}:{n}")
    return [found[key] for key in chosen if key in found]


def embed_json(data: Any) -> str:
    """JSON safe inside ``<script type="application/json">``: no ``</script>``, no ``<!--``."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
