"""Charts for the report, as SVG inside ``data:`` URIs: the page stays one self-contained file.

- Categories (labels, reject reasons) are drawn as horizontal bars, so a long or Chinese name is
  read along its own line instead of overlapping its neighbours; only the ``top_k`` largest are
  drawn and the rest are summed into one "other (N labels)" bar, so 5,000 labels cost what 21 do.
- Length histograms are small multiples, one panel per split with the share of that split's
  samples per bin, so dev and test (a tenth of train each) are not flattened against train.
- Text is drawn with a CJK font when one is installed (:mod:`dataprep.reporting.fonts`); glyphs
  become SVG paths, so the reader's browser needs no font. Without one, non-ASCII names are drawn
  as ``#1``, ``#2`` … and :attr:`Chart.key` says which is which (the page says why).
- SVG in an ``<img>`` cannot run script, and separate images cannot clash on element ids.

>>> chart = bar_chart("Rejects", {"count": {"bad_json": 3, "too_long": 1}}, "records")
>>> chart.uri.startswith("data:image/svg+xml;base64,")
True
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dataprep.reporting.fonts import find_cjk_font

TOP_K = 20
MAX_LABEL_CHARS = 40


@dataclass
class Chart:
    uri: str  # data:image/svg+xml;base64,…
    labels: list[str]  # the categories drawn, top first ("other (…)" last when there is one)
    key: dict[str, str] = field(default_factory=dict)  # "#k" -> category, without a CJK font
    other: int = 0  # categories folded into "other"
    font: str | None = None


def top_k(series: Mapping[str, Mapping[str, float]], k: int = TOP_K
          ) -> tuple[list[str], dict[str, list[float]], int]:
    """The ``k`` categories largest over all series, each series' values for them, and how many
    categories were folded into a last "other" entry (whose values are the remainders).

    >>> top_k({"n": {"a": 5, "b": 1, "c": 2}}, k=2)
    (['a', 'c', 'other (1 more)'], {'n': [5, 2, 1]}, 1)
    """
    totals: dict[str, float] = {}
    for values in series.values():
        for cat, v in values.items():
            totals[cat] = totals.get(cat, 0.0) + float(v)
    ordered = sorted(totals, key=lambda c: (-totals[c], c))
    shown, rest = ordered[:k], ordered[k:]
    out = {name: [values.get(c, 0) for c in shown] for name, values in series.items()}
    if rest:
        shown = [*shown, f"other ({len(rest)} more)"]
        for name, values in series.items():
            out[name].append(sum(values.get(c, 0) for c in rest))
    return shown, out, len(rest)


def _tick_labels(categories: list[str], font: str | None) -> tuple[list[str], dict[str, str]]:
    ticks, key = [], {}
    for i, cat in enumerate(categories, start=1):
        text = cat if len(cat) <= MAX_LABEL_CHARS else cat[:MAX_LABEL_CHARS - 1] + "…"
        if font is None and not text.isascii():
            ticks.append(f"#{i}")
            key[f"#{i}"] = cat
        else:
            ticks.append(text)
    return ticks, key


def _safe_text(text: str) -> str:
    # matplotlib parses "$…$" as mathtext; a label such as "$\frac{1}{$" would raise. Escaping
    # the dollar signs draws the text as it is.
    return text.replace("$", r"\$")


def _rc(font: str | None) -> dict[str, Any]:
    family = ["DejaVu Sans", font] if font else ["DejaVu Sans"]
    return {"font.family": family, "svg.fonttype": "path", "svg.hashsalt": "dataprep",
            "axes.spines.top": False, "axes.spines.right": False, "font.size": 9}


def _to_uri(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def bar_chart(title: str, series: Mapping[str, Mapping[str, float]], xlabel: str,
              k: int = TOP_K, percent: bool = False) -> Chart:
    """Horizontal bars, one group per category (top ``k`` + other), one bar per series."""
    import warnings

    import matplotlib
    from matplotlib.figure import Figure

    font = find_cjk_font()
    cats, values, other = top_k(series, k)
    ticks, key = _tick_labels(cats, font)
    n_series = max(1, len(values))
    with matplotlib.rc_context(_rc(font)), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # glyph warnings: the key and the page explain
        height = 0.9 + 0.22 * len(cats) * (1 + 0.5 * (n_series - 1))
        fig = Figure(figsize=(7.5, max(1.8, height)), layout="constrained")
        ax = fig.add_subplot()
        bar = 0.8 / n_series
        for s, (name, vals) in enumerate(values.items()):
            ys = [len(cats) - 1 - i + (n_series - 1) / 2 * bar - s * bar for i in range(len(cats))]
            bars = ax.barh(ys, vals, height=bar, label=_safe_text(name))
            if n_series == 1:
                ax.bar_label(bars, labels=[f"{v:.1f}%" if percent else f"{v:,.0f}"
                                           for v in vals], padding=2, fontsize=8)
        ax.set_yticks(range(len(cats) - 1, -1, -1))
        ax.set_yticklabels([_safe_text(t) for t in ticks])
        ax.set_xlabel(_safe_text(xlabel))
        ax.set_title(_safe_text(title), loc="left")
        if n_series > 1:
            ax.legend(fontsize=8, loc="lower right")
        ax.margins(x=0.12)
        uri = _to_uri(fig)
    return Chart(uri=uri, labels=cats, key=key, other=other, font=font)


def small_multiples(title: str, edges: list[float], counts: Mapping[str, list[int]],
                    xlabel: str) -> Chart:
    """One panel per split: the share of that split's samples in each bin (shared x axis)."""
    import warnings

    import matplotlib
    from matplotlib.figure import Figure

    font = find_cjk_font()
    panels = [(s, c) for s, c in counts.items() if sum(c)]
    with matplotlib.rc_context(_rc(font)), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig = Figure(figsize=(7.5, 0.6 + 1.3 * max(1, len(panels))), layout="constrained")
        axes = fig.subplots(max(1, len(panels)), 1, sharex=True, squeeze=False)[:, 0]
        for ax, (split, c) in zip(axes, panels, strict=False):
            n = sum(c)
            ax.stairs([100 * v / n for v in c], edges, fill=True, alpha=0.6)
            ax.set_ylabel("% of split")
            ax.set_title(f"{split} ({n:,} samples)", loc="left", fontsize=9)
        axes[-1].set_xlabel(_safe_text(xlabel))
        fig.suptitle(_safe_text(title), x=0.02, ha="left")
        uri = _to_uri(fig)
    return Chart(uri=uri, labels=[s for s, _ in panels], font=font)


def svg_of(chart: Chart) -> str:
    """The SVG text of a chart (for tests and for anyone who wants the file)."""
    return base64.b64decode(chart.uri.split(",", 1)[1]).decode("utf-8")
