"""The report page of a finished run folder, as one self-contained HTML file.

Everything on the page comes from the folder: ``manifest.json`` (counts, stage options and stats,
artifacts such as the duplicate clusters, the leakage audit and the expectation results),
``rejects.jsonl``, ``augment_discarded.jsonl`` and the three splits. The page is rendered by a
Jinja2 template with autoescaping on, so corpus text can never inject markup; charts are SVG in
``data:`` URIs (:mod:`dataprep.reporting.charts`) and the record browser's data is JSON inside the
page (:mod:`dataprep.reporting.browser`), so nothing is loaded from beside the file or the
network.

>>> rebuild_report("out/spo")  # doctest: +SKIP
PosixPath('out/spo/report/index.html')
"""

from __future__ import annotations

import json
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dataprep.errors import InputError
from dataprep.io import AtomicWriter
from dataprep.reporting import browser, charts
from dataprep.reporting.flags import flag_rows
from dataprep.reporting.fonts import INSTALL_HINT
from dataprep.stages.split import SPLITS

REPORT_DIR = "report"
EXAMPLES_PER_REASON = 3
MAX_CLUSTERS = 20
SNIPPET = 160
TOKEN_BINS = 30
TABLE_ROWS = 50  # label tables show the largest classes; the rest are summed on one row


# -- reading the run folder ------------------------------------------------------------------
def _iter_split(out: Path, split: str) -> Iterator[dict[str, Any]]:
    path = out / f"{split}.jsonl"
    if not path.is_file():
        return
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def _texts(sample: dict[str, Any]) -> list[str]:
    return [m["content"] for m in sample.get("conversations") or []
            if isinstance(m, dict) and isinstance(m.get("content"), str)]


def token_length_histogram(out_dir: str | Path, tokenizer: Any) -> dict[str, Any]:
    """Per split: a histogram (shared bin edges) and summary of each sample's text tokens.

    >>> token_length_histogram("out/spo", tok)["summary"]["train"]["median"]  # doctest: +SKIP
    212
    """
    out = Path(out_dir)
    lengths = {s: [sum(len(tokenizer.encode(t)) for t in _texts(d)) for d in _iter_split(out, s)]
               for s in SPLITS}
    return {"unit": "tokens", **_histogram(lengths)}


def _histogram(lengths: dict[str, list[int]], bins: int = TOKEN_BINS) -> dict[str, Any]:
    """Shared bins over the observed range (not from 0: short corpora would sit in a corner)."""
    everything = [n for v in lengths.values() for n in v]
    lo, hi = min(everything, default=0), max(everything, default=1)
    step = max(1, -(-(hi - lo + 1) // bins))  # ceil
    lo -= lo % step  # round edges
    edges = [lo + i * step for i in range(bins + 1)]
    counts = {s: [0] * bins for s in lengths}
    for s, values in lengths.items():
        for n in values:
            counts[s][min((n - lo) // step, bins - 1)] += 1
    return {"edges": edges, "counts": counts,
            "summary": {s: _summary(v) for s, v in lengths.items()}}


def _summary(values: list[int]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "min": None, "median": None, "p95": None, "max": None}
    ordered = sorted(values)
    return {"n": len(values), "min": ordered[0], "median": statistics.median(ordered),
            "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], "max": ordered[-1]}


def _snippet(rej: dict[str, Any]) -> str:
    rec = rej.get("record")
    if isinstance(rec, dict):
        texts = _texts(rec) if "conversations" in rec else [json.dumps(rec, ensure_ascii=False)]
        text = " | ".join(texts)
    else:
        text = rej.get("raw") or ("(binary line, base64 kept)" if rej.get("raw_base64") else "")
    return text if len(text) <= SNIPPET else text[:SNIPPET] + "…"


def _read_rejects(out: Path) -> list[dict[str, Any]]:
    """Rejects grouped by (kind, stage, reason), with counts and a few examples each."""
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    path = out / "rejects.jsonl"
    if path.is_file():
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                rej = json.loads(line)
                key = (rej.get("kind", "rejected"), rej.get("stage", "?"), rej.get("reason", "?"))
                g = groups.setdefault(key, {"kind": key[0], "stage": key[1], "reason": key[2],
                                            "count": 0, "examples": []})
                g["count"] += 1
                if len(g["examples"]) < EXAMPLES_PER_REASON:
                    loc = str(rej.get("source", ""))
                    if rej.get("line") is not None:
                        loc = f"{Path(loc).name}:{rej['line']}"
                    g["examples"].append({"location": loc, "message": rej.get("message", ""),
                                          "text": _snippet(rej), "kept_id": rej.get("kept_id")})
    return sorted(groups.values(), key=lambda g: (g["kind"], -g["count"], g["reason"]))


# -- the page --------------------------------------------------------------------------------
def _stage_rows(manifest: dict[str, Any], rejects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records in/out per stage: rejects and removals by the stage named in rejects.jsonl,
    additions by the stage that made them (``counts.added_by_stage``)."""
    counts = manifest["counts"]
    names = ["read", *[s["name"] for s in manifest.get("stages", [])]]
    by_stage: dict[str, Counter[str]] = defaultdict(Counter)
    for g in rejects:
        by_stage[g["stage"]][g["kind"]] += g["count"]
    added: dict[str, int] = defaultdict(int)
    if "added_by_stage" in counts:  # the runner credits each addition to the stage that made it
        for stage, n in counts["added_by_stage"].items():
            added[stage if stage in names else "other"] += n
    else:  # manifests written before added_by_stage existed
        for op, n in (counts.get("added_by_op") or {}).items():
            owner = next((s for s in names if op == s or op.startswith(f"{s}_")), "other")
            added[owner] += n
    seconds = (manifest.get("seconds") or {}).get("by_stage") or {}
    options = {s["name"]: s.get("options") for s in manifest.get("stages", [])}
    rows, current = [], counts["input"]
    for name in names:
        rin = current
        rej, rem, add = by_stage[name]["rejected"], by_stage[name]["removed"], added[name]
        current = rin - rej - rem + add
        rows.append({"name": name, "in": rin, "rejected": rej, "removed": rem, "added": add,
                     "out": current, "seconds": seconds.get(name),
                     "options": options.get(name) or {}})
    if added.get("other"):
        rows.append({"name": "(other additions)", "in": current, "rejected": 0, "removed": 0,
                     "added": added["other"], "out": current + added["other"], "seconds": None,
                     "options": {}})
    return rows


def _readable(obj: Any) -> Any:
    """Stats made for reading: known list-shaped values become sentences (the LSH shape)."""
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if key == "lsh_bands_rows" and isinstance(value, list) and len(value) == 2:
                value = f"{value[0]} bands × {value[1]} rows"
            out[key] = _readable(value)
        return out
    if isinstance(obj, list):
        return [_readable(v) for v in obj]
    return obj


def _top_rows(counts: dict[str, Counter[str]], k: int = TABLE_ROWS
              ) -> tuple[list[str], dict[str, dict[str, int]], int]:
    """Label rows for the tables: the ``k`` largest classes plus one "other" row."""
    cats, values, other = charts.top_k(counts, k)
    return cats, {s: dict(zip(cats, (int(v) for v in vals), strict=True))
                  for s, vals in values.items()}, other


def _clusters(manifest: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
    clusters = (manifest.get("artifacts") or {}).get("dedup_clusters") or []

    def cut(text: Any) -> str:
        text = str(text or "")
        return text if len(text) <= SNIPPET else text[:SNIPPET] + "…"

    shown = []
    for c in clusters[:MAX_CLUSTERS]:
        shown.append({"kept_id": c.get("kept_id"), "kept_text": cut(c.get("kept_text")),
                      "removed": [{"id": r.get("id"), "text": cut(r.get("text")),
                                   "reason": r.get("reason"), "similarity": r.get("similarity")}
                                  for r in (c.get("removed") or [])[:5]],
                      "more": max(0, len(c.get("removed") or []) - 5)})
    # artifacts["dedup_clusters"] holds examples only (capped by dedup.max_examples); the total
    # comes from the stage's own count.
    dedup_stats = (manifest.get("stage_stats") or {}).get("dedup") or {}
    total = dedup_stats.get("clusters", len(clusters))
    return max(int(total), len(clusters)), shown


def _browser_js() -> str:
    from importlib.resources import files

    return (files("dataprep") / "templates" / "browser.js").read_text(encoding="utf-8")


def rebuild_report(out_dir: str | Path) -> Path:
    """(Re)build ``OUT/report/index.html`` and its charts from a finished run folder.

    >>> rebuild_report("out/spo")  # doctest: +SKIP
    PosixPath('out/spo/report/index.html')
    """
    import jinja2
    import yaml

    out = Path(out_dir)
    manifest_path = out / "manifest.json"
    if not manifest_path.is_file():
        raise InputError(f"{out}: no manifest.json; is this the output folder of a finished "
                         "run ('dataprep run CONFIG --out OUT')?")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"{manifest_path}: not valid JSON ({e}); rerun the pipeline") from e
    folder = out / REPORT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):  # charts are inline now; images of older runs go
        old.unlink()
    counts = manifest["counts"]
    stats = manifest.get("stage_stats") or {}
    artifacts = manifest.get("artifacts") or {}
    rejects = _read_rejects(out)

    labels: dict[str, Counter[str]] = {}
    char_lengths: dict[str, list[int]] = {}
    for split in SPLITS:
        labels[split], char_lengths[split] = Counter(), []
        for d in _iter_split(out, split):
            labels[split][str(d.get("label")) if d.get("label") is not None else "(none)"] += 1
            char_lengths[split].append(sum(len(t) for t in _texts(d)))

    page_charts: dict[str, charts.Chart] = {}
    if any(labels.values()):
        totals = {s: sum(labels[s].values()) for s in SPLITS}
        page_charts["labels"] = charts.bar_chart(
            "Labels: share of each split", {s: {lab: 100 * n / totals[s] for lab, n in
                                               labels[s].items()} for s in SPLITS if totals[s]},
            "% of the split's samples", percent=True)
    balance = stats.get("balance") or {}
    if balance.get("before"):
        page_charts["balance"] = charts.bar_chart(
            f"Balance ({balance.get('mode')}, {', '.join(balance.get('splits') or []) or 'all'})",
            {"before": balance["before"], "after": balance.get("after") or {}},
            "samples" if balance.get("mode") != "weight" else "weighted samples")
    chars_hist = _histogram(char_lengths)
    if any(char_lengths.values()):
        page_charts["chars"] = charts.small_multiples(
            "Sample length (characters)", chars_hist["edges"], chars_hist["counts"],
            "characters per sample (text messages)")
    tokens = artifacts.get("token_lengths")
    if tokens and any(sum(v) for v in tokens["counts"].values()):
        page_charts["tokens"] = charts.small_multiples(
            "Sample length (ChatGLM3 tokens)", tokens["edges"], tokens["counts"],
            "tokens per sample (text messages)")
    if rejects:
        reasons: Counter[str] = Counter()
        for g in rejects:
            reasons[f"{g['kind']}: {g['reason']}"] += g["count"]
        page_charts["rejects"] = charts.bar_chart("Rejected and removed, by reason",
                                                  {"records": reasons}, "records")
    keyed = any(c.key for c in page_charts.values())
    label_rows, label_table, label_other = _top_rows(labels)

    expectations = artifacts.get("expectations")
    data_docs = None
    if expectations and expectations.get("data_docs"):
        target = out / expectations["data_docs"]
        data_docs = {"href": "../" + expectations["data_docs"], "exists": target.is_file()}
    n_clusters, clusters = _clusters(manifest)
    left = (counts["input"] - sum(counts["rejected"].values()) - sum(counts["removed"].values())
            + counts["added"])
    page = {
        "manifest": manifest, "counts": counts,
        "rejected_total": sum(counts["rejected"].values()),
        "removed_total": sum(counts["removed"].values()),
        "identity_left": left, "identity_right": counts["train"] + counts["dev"] + counts["test"],
        "stage_rows": _stage_rows(manifest, rejects), "rejects": rejects,
        "post_run": [{"name": s.get("name"), "options": s.get("options") or {},
                      "seconds": ((manifest.get("seconds") or {}).get("post_run") or {}).get(
                          s.get("name"))} for s in manifest.get("post_run") or []],
        "clean": stats.get("clean"), "validate": stats.get("validate"), "balance": balance,
        "flags": flag_rows(out, stats.get("validate")),
        "dedup_stats": _readable(stats.get("dedup") or {}), "n_clusters": n_clusters,
        "clusters": clusters,
        "leakage": {k: _readable(v) for k, v in (artifacts.get("leakage") or {}).items()
                    if isinstance(v, dict)},
        "label_rows": label_rows, "label_table": label_table, "label_other": label_other,
        "keyed": keyed, "font_hint": INSTALL_HINT,
        "lengths": {"chars": chars_hist["summary"],
                    "tokens": (tokens or {}).get("summary")},
        "charts": page_charts, "expectations": expectations, "data_docs": data_docs,
        "config_yaml": yaml.safe_dump(manifest.get("config") or {}, allow_unicode=True,
                                      sort_keys=False),
        "other_stats": {k: _readable(v) for k, v in stats.items()
                        if k not in ("clean", "validate", "balance", "dedup")},
        "browser_json": browser.embed_json(browser.browser_data(out)),
        "browser_js": _browser_js(),
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "splits": SPLITS,
    }
    env = jinja2.Environment(loader=jinja2.PackageLoader("dataprep", "templates"),
                             autoescape=True,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["is_mapping"] = lambda v: isinstance(v, dict)
    env.filters["is_list"] = lambda v: isinstance(v, list)
    html_text = env.get_template("report.html.j2").render(**page)
    index = folder / "index.html"
    with AtomicWriter(index) as fh:
        fh.write(html_text)
    index.chmod(0o644)  # the atomic writer's temp file is private; a report is for sharing
    return index
