"""``report``: one HTML page per run (``OUT/report/index.html``) plus its chart images.

Everything on the page comes from the finished run folder: ``manifest.json`` (counts, stage
options and stats, artifacts such as the duplicate clusters, the leakage audit and the
expectation results), ``rejects.jsonl`` (rejects and removals with their evidence) and the three
splits. That is what lets ``dataprep report OUT`` rebuild the page later, and why it is a post-run
step. The one thing the folder cannot give is token counts (the tokenizer is not part of it), so
the step first puts a token-length histogram of the written splits into the manifest when the run
has a tokenizer, then renders the page from the manifest as rewritten.

The page is rendered by a Jinja2 template with autoescaping on, so corpus text can never inject
markup; charts are PNGs drawn by matplotlib's object API (no pyplot, no global backend switch).
Axis text is ASCII unless a CJK font is installed: class names such as "部件故障" are then drawn
as "#1", "#2" and the table next to each chart says which is which (a missing glyph would
otherwise print an empty box and a warning per character).

>>> rebuild_report("out/spo")  # doctest: +SKIP
PosixPath('out/spo/report/index.html')
"""

from __future__ import annotations

import json
import statistics
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dataprep.errors import InputError
from dataprep.io import AtomicWriter
from dataprep.stages.base import FinishedRun, PostRunStep
from dataprep.stages.split import SPLITS

REPORT_DIR = "report"
EXAMPLES_PER_REASON = 3
MAX_CLUSTERS = 20
SNIPPET = 160
TOKEN_BINS = 30
_CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Zen Hei",
              "WenQuanYi Micro Hei", "SimHei", "Microsoft YaHei", "PingFang SC",
              "Droid Sans Fallback", "AR PL UMing CN", "Arial Unicode MS")


class Report(PostRunStep):
    """A post-run step without options; the page is built from the finished run folder.
    Resources: the tokenizer (a token-length histogram, when the run has one)."""

    name = "report"
    uses = ("tokenizer",)

    def run(self, run: FinishedRun) -> None:
        self.stats.artifacts["report"] = str(run.out_dir / REPORT_DIR / "index.html")
        if self.resources.tokenizer_path:
            self.stats.artifacts["token_lengths"] = token_length_histogram(
                run.out_dir, self.resources.tokenizer)
        run.publish(self.stats)  # the page is built from manifest.json: put them there first
        rebuild_report(run.out_dir)


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
    everything = [n for v in lengths.values() for n in v]
    hi = max(everything, default=1)
    step = max(1, -(-hi // bins))  # ceil
    edges = [i * step for i in range(bins + 1)]
    counts = {s: [0] * bins for s in lengths}
    for s, values in lengths.items():
        for n in values:
            counts[s][min(n // step, bins - 1)] += 1
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


# -- charts ----------------------------------------------------------------------------------
def _cjk_font() -> str | None:
    from matplotlib import font_manager

    names = {f.name for f in font_manager.fontManager.ttflist}
    return next((n for n in _CJK_FONTS if n in names), None)


class _Charts:
    """Draws PNGs into the report folder and remembers the file names."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.font = _cjk_font()
        self.files: list[str] = []

    def ticks(self, categories: list[str]) -> tuple[list[str], dict[str, str]]:
        """Tick labels, and a key for those drawn as "#k" because no font has their glyphs."""
        if self.font:
            return categories, {}
        ticks, key = [], {}
        for i, c in enumerate(categories, start=1):
            if c.isascii():
                ticks.append(c)
            else:
                ticks.append(f"#{i}")
                key[f"#{i}"] = c
        return ticks, key

    def _save(self, fig: Any, name: str) -> str:
        fig.tight_layout()
        fig.savefig(self.folder / name, dpi=90)
        self.files.append(name)
        return name

    def bars(self, name: str, title: str, categories: list[str],
             series: dict[str, list[float]], ylabel: str) -> tuple[str, dict[str, str]]:
        from matplotlib.figure import Figure

        ticks, key = self.ticks(categories)
        fig = Figure(figsize=(max(5.0, 0.6 * len(categories) * max(1, len(series)) + 2), 3.4))
        ax = fig.add_subplot()
        width = 0.8 / max(1, len(series))
        for k, (label, values) in enumerate(series.items()):
            xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(categories))]
            ax.bar(xs, values, width=width, label=label)
        ax.set_xticks(range(len(categories)))
        ax.set_xticklabels(ticks, rotation=30 if len(categories) > 6 else 0, ha="right"
                           if len(categories) > 6 else "center",
                           fontfamily=self.font or "DejaVu Sans")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        if len(series) > 1:
            ax.legend()
        return self._save(fig, name), key

    def histogram(self, name: str, title: str, edges: list[int],
                  counts: dict[str, list[int]], xlabel: str) -> str:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(7.0, 3.4))
        ax = fig.add_subplot()
        for split, values in counts.items():
            if sum(values):
                ax.stairs(values, edges, label=f"{split} ({sum(values)})", linewidth=1.5)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("samples")
        ax.set_title(title)
        ax.legend()
        return self._save(fig, name)


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
                     "options": json.dumps(options.get(name) or {}, ensure_ascii=False)})
    if added.get("other"):
        rows.append({"name": "(other additions)", "in": current, "rejected": 0, "removed": 0,
                     "added": added["other"], "out": current + added["other"], "seconds": None,
                     "options": ""})
    return rows


def _kv(obj: Any, limit: int = 8) -> list[tuple[str, str]]:
    """A mapping flattened to (key, short text) rows for generic tables."""
    rows = []
    for key, value in (obj or {}).items():
        if isinstance(value, list):
            head = ", ".join(json.dumps(v, ensure_ascii=False) for v in value[:limit])
            text = f"{len(value)} item(s)" + (f": {head}" if value else "")
            text += " …" if len(value) > limit else ""
        elif isinstance(value, dict):
            text = json.dumps(value, ensure_ascii=False)
        else:
            text = str(value)
        rows.append((str(key), text if len(text) <= 600 else text[:600] + "…"))
    return rows


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


def flag_rows(out: Path, validate: dict[str, Any] | None,
              examples: int = 3) -> list[dict[str, Any]]:
    """The report's "Flags" section: per flag reason (validate's ``flags`` counts: kept records
    a rule flagged instead of rejecting), how many were written and a few written examples with
    the rule's message. Most frequent first."""
    counts = (validate or {}).get("flags") or {}
    rows = {r: {"reason": r, "count": n, "written": 0, "examples": []}
            for r, n in counts.items()}
    for split in SPLITS:
        for d in _iter_split(out, split):
            extra = (d.get("lineage") or {}).get("extra") or {}
            for reason in extra.get("flags") or []:
                row = rows.setdefault(reason, {"reason": reason, "count": 0, "written": 0,
                                               "examples": []})
                row["written"] += 1
                if len(row["examples"]) < examples:
                    row["examples"].append({
                        "id": d.get("id"), "split": split,
                        "message": (extra.get("flag_messages") or {}).get(reason, "")})
    return sorted(rows.values(), key=lambda r: (-r["count"], r["reason"]))


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
    for old in folder.glob("*.png"):
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

    charts = _Charts(folder)
    page_charts: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # glyph and layout warnings: the page says it all
        all_labels = sorted({lab for c in labels.values() for lab in c})
        if all_labels:
            img, key = charts.bars("labels_by_split.png", "Labels per split", all_labels,
                                   {s: [labels[s][lab] for lab in all_labels] for s in SPLITS},
                                   "samples")
            page_charts["labels"] = {"img": img, "key": key}
        balance = stats.get("balance") or {}
        if balance.get("before"):
            cats = sorted(balance["before"])
            img, key = charts.bars("balance_before_after.png",
                                   f"Balance ({balance.get('mode')}, "
                                   f"{', '.join(balance.get('splits') or []) or 'all'})", cats,
                                   {"before": [balance["before"][c] for c in cats],
                                    "after": [balance["after"].get(c, 0) for c in cats]},
                                   "samples" if balance.get("mode") != "weight" else "weighted")
            page_charts["balance"] = {"img": img, "key": key}
        chars_hist = _histogram(char_lengths)
        if any(char_lengths.values()):
            page_charts["chars"] = {"img": charts.histogram(
                "length_chars.png", "Sample length (characters)", chars_hist["edges"],
                chars_hist["counts"], "characters per sample (text messages)")}
        tokens = artifacts.get("token_lengths")
        if tokens and any(sum(v) for v in tokens["counts"].values()):
            page_charts["tokens"] = {"img": charts.histogram(
                "length_tokens.png", "Sample length (ChatGLM3 tokens)", tokens["edges"],
                tokens["counts"], "tokens per sample (text messages)")}
        if rejects:
            reasons: Counter[str] = Counter()
            for g in rejects:
                reasons[f"{g['kind']}:{g['reason']}"] += g["count"]
            cats = [r for r, _ in reasons.most_common(15)]
            img, key = charts.bars("rejects_by_reason.png", "Rejected and removed, by reason",
                                   cats, {"records": [reasons[c] for c in cats]}, "records")
            page_charts["rejects"] = {"img": img, "key": key}

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
        "clean": stats.get("clean"), "validate": stats.get("validate"), "balance": balance,
        "flags": flag_rows(out, stats.get("validate")),
        "dedup_stats": _kv(stats.get("dedup")), "n_clusters": n_clusters, "clusters": clusters,
        "leakage": {k: _kv(v) for k, v in (artifacts.get("leakage") or {}).items()
                    if isinstance(v, dict)},
        "labels": {s: dict(labels[s].most_common()) for s in SPLITS}, "all_labels": all_labels,
        "lengths": {"chars": chars_hist["summary"],
                    "tokens": (tokens or {}).get("summary")},
        "charts": page_charts, "expectations": expectations, "data_docs": data_docs,
        "config_yaml": yaml.safe_dump(manifest.get("config") or {}, allow_unicode=True,
                                      sort_keys=False),
        "other_stats": {k: json.dumps(v, ensure_ascii=False, indent=1) for k, v in stats.items()
                        if k not in ("clean", "validate", "balance", "dedup")},
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "splits": SPLITS,
    }
    env = jinja2.Environment(loader=jinja2.PackageLoader("dataprep", "templates"),
                             autoescape=True,
                             trim_blocks=True, lstrip_blocks=True)
    html_text = env.get_template("report.html.j2").render(**page)
    index = folder / "index.html"
    with AtomicWriter(index) as fh:
        fh.write(html_text)
    index.chmod(0o644)  # the atomic writer's temp file is private; a report is for sharing
    return index
