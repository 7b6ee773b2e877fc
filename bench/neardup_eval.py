"""Near-duplicate recall and precision on a labelled set built from real Chinese records.

The set: real texts from four corpora in ``../shared/corpora`` (the fine-tuning-lab dialogs' sample
keys = user turns + tool calls, SPO car-fault texts, CMRC 2018 passages, DuReader paragraphs). Per
corpus, some texts become *originals* and get perturbed copies (positives); others stay untouched
(negatives). A perturbed copy gets one or more of: characters inserted, deleted or replaced (about
1.5% of its characters on average, at least one), punctuation swapped between Chinese and ASCII or
dropped, letters and digits switched between half and full width, two sentences swapped.

Ground truth "distinct" needs care: the lab's dialogs are template-generated, so two untouched real
records can be genuine paraphrases of each other (``请帮我找一个价格低于1200的酒店`` vs
``帮我找一个价格低于1200的酒店`` with the same tool call). Counting such pairs as false positives
would punish correct answers, so each corpus pool is first thinned, independently of the MinHash
engine, to texts whose exact character-3-gram Jaccard with every other kept text is below
``distinct_below`` (0.7) and, for lab dialogs, whose tool calls differ from every other kept
dialog's. Hard negatives stay: templated hotel requests that differ in a name or a price, car-fault
reports that share their boilerplate.

Metrics, on the dedup decision (a kept record and the records removed as its twins form one
cluster) and on the union-find components the split stage moves: recall = perturbed copies that
share a cluster with their original / all copies; precision = 1 - (pairs sharing a cluster that
are two distinct records) / (all pairs sharing a cluster).

    python -m bench.neardup_eval [--shared ../shared] [--grid] [--per-source 150] [--seed 7]

Measured at the defaults (threshold 0.65, 4-grams, 128 permutations) on the default set (2588
records: 600 originals, 788 copies, 1200 negatives): recall 0.949, precision 1.000 (see
``RECORDED``). ``--grid`` prints the sweep the defaults were chosen from; e.g. 5-grams at 0.7:
recall 0.78; 3-grams at 0.7: recall 0.957, precision 0.995. ``tests/dataprep/test_neardup_eval.py``
asserts recall >= 0.93 and precision >= 0.99 on the same builder.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse

from dataprep.dedup import (
    DEFAULT_NGRAM,
    DEFAULT_NUM_PERM,
    DEFAULT_THRESHOLD,
    DedupConfig,
    find_duplicates,
    normalize_for_matching,
    sample_key,
)
from dataprep.record import Conversation

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("lab", "spo", "cmrc", "dureader")
MIN_CHARS = 30  # normalised characters; shorter keys are matched exactly only (see the report)

# Printed by `python -m bench.neardup_eval` at the defaults (threshold 0.65, 4-grams, 128
# permutations) on the default set (seed 7): 748 of 788 copies found, 0 of 909 clustered pairs
# distinct; union-find components (what split moves) recall 0.9784, precision 1.0 (rensa
# signatures; datasketch's affine32 ones, before issue 14: 747 of 788, 0 of 905, 0.9797).
RECORDED = {"recall": 0.949, "precision": 1.0}

_SENTENCE = re.compile(r"(?<=[。！？；!?;\n])")
_TO_ASCII_PUNCT = {"，": ",", "。": ".", "！": "!", "？": "?", "；": ";", "：": ":", "（": "(",
                   "）": ")", "“": '"', "”": '"'}
_TO_CJK_PUNCT = {v: k for k, v in _TO_ASCII_PUNCT.items()}
# Common Chinese characters to insert or substitute (the most frequent ones in modern text).
_FILLER = (
    "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动"
    "同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自"
    "二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日"
    "那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变"
    "条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总"
    "次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指"
    "几九区强放决西被干做必战先回则任取据处理"
)


# -- real texts -----------------------------------------------------------------------------------
def load_real_texts(corpora: Path) -> dict[str, list[tuple[str, str | None]]]:
    """Real texts per corpus as ``(text, meaning)``, at least ``MIN_CHARS`` normalised
    characters, exact duplicates (after normalisation) dropped, in file order.

    ``meaning`` is what makes two records the same sample regardless of wording, where the corpus
    has it: for a lab dialog, its tool calls (two dialogs making the same searches are paraphrases
    of one sample); None elsewhere.

    >>> load_real_texts(Path("../shared/corpora"))["spo"][0][0][:5]  # doctest: +SKIP
    '故障现象：'
    """
    lab = corpora / "crosswoz-hotel-finetune-lab"
    raw: dict[str, list[tuple[str, str | None]]] = {s: [] for s in SOURCES}
    for name in ("train.chatglm3.jsonl", "dev.chatglm3.jsonl"):
        for line in (lab / name).read_text(encoding="utf-8").split("\n"):
            if line.strip():
                obj = json.loads(line)
                # The lab double-encodes tools: a list holding one JSON string.
                obj["tools"] = json.loads(obj["tools"][0])
                conv = Conversation.from_chatglm3(obj)
                calls = json.dumps([[m.name, m.parameters] for m in conv.messages
                                    if m.role == "tool"], sort_keys=True, ensure_ascii=False)
                raw["lab"].append((sample_key(conv), calls))
    # split("\n"), not splitlines(): DuReader paragraphs contain U+2028, a line break to Python.
    for line in (corpora / "spo-repair-records/spo_0.subset.json").read_text("utf-8").split("\n"):
        if line.strip():
            raw["spo"].append((json.loads(line)["text"], None))
    cmrc = json.loads((corpora / "cmrc2018/cmrc2018_dev.json").read_text(encoding="utf-8"))
    raw["cmrc"] = [(p["context"], None) for art in cmrc["data"] for p in art["paragraphs"]]
    for line in (corpora / "dureader-2.0-demo/search.train.json").read_text("utf-8").split("\n"):
        if line.strip():
            for doc in json.loads(line)["documents"]:
                raw["dureader"].extend((p, None) for p in doc["paragraphs"])
    out: dict[str, list[tuple[str, str | None]]] = {}
    for src, items in raw.items():
        seen: set[str] = set()
        out[src] = []
        for text, meaning in items:
            norm = normalize_for_matching(text)
            if len(norm) >= MIN_CHARS and norm not in seen:
                seen.add(norm)
                out[src].append((text, meaning))
    return out


def distinct_subset(items: list[tuple[str, str | None]], below: float = 0.7,
                    ngram: int = 3) -> list[str]:
    """Greedily keep texts whose exact n-gram Jaccard with every kept text is below ``below`` and
    whose meaning (when known) differs from every kept text's.

    Exact set arithmetic with a sparse matrix product, on purpose independent of MinHash and LSH.

    >>> distinct_subset([("北京新世界酒店早餐", None), ("北京新世界酒店早餐好", None),
    ...                  ("上海浦东国际机场", "a"), ("上海虹桥火车站", "a")])
    ['北京新世界酒店早餐', '上海浦东国际机场']
    """
    texts = [t for t, _ in items]
    meanings: set[str] = set()
    vocab: dict[str, int] = {}
    rows, cols = [], []
    for i, t in enumerate(texts):
        norm = normalize_for_matching(t)
        grams = {norm[k:k + ngram] for k in range(max(1, len(norm) - ngram + 1))}
        for g in grams:
            rows.append(i)
            cols.append(vocab.setdefault(g, len(vocab)))
    m = sparse.csr_matrix((np.ones(len(rows), dtype=np.int32), (rows, cols)),
                          shape=(len(texts), len(vocab)))
    sizes = np.asarray(m.sum(axis=1)).ravel()
    inter = (m @ m.T).tocsr()
    kept: list[int] = []
    kept_mask = np.zeros(len(texts), dtype=bool)
    for i in range(len(texts)):
        lo, hi = inter.indptr[i], inter.indptr[i + 1]
        js, common = inter.indices[lo:hi], inter.data[lo:hi]
        sel = kept_mask[js]
        jacc = common[sel] / (sizes[i] + sizes[js[sel]] - common[sel])
        meaning = items[i][1]
        if not np.any(jacc >= below) and (meaning is None or meaning not in meanings):
            kept.append(i)
            kept_mask[i] = True
            if meaning is not None:
                meanings.add(meaning)
    return [texts[i] for i in kept]


# -- perturbations --------------------------------------------------------------------------------
def _edit_chars(text: str, rng: random.Random, k: int) -> str:
    chars = list(text)
    for _ in range(k):
        op = rng.choice(("insert", "delete", "replace"))
        pos = rng.randrange(len(chars) + (op == "insert"))
        if op == "insert":
            chars.insert(pos, rng.choice(_FILLER))
        elif op == "delete" and len(chars) > 1:
            del chars[pos]
        elif chars:
            chars[min(pos, len(chars) - 1)] = rng.choice(_FILLER)
    return "".join(chars)


def _punctuation(text: str, rng: random.Random) -> str:
    mode = rng.choice(("ascii", "cjk", "drop"))
    if mode == "ascii":
        return "".join(_TO_ASCII_PUNCT.get(c, c) for c in text)
    if mode == "cjk":
        return "".join(_TO_CJK_PUNCT.get(c, c) for c in text)
    return "".join(c for c in text if c not in _TO_ASCII_PUNCT and c not in _TO_CJK_PUNCT)


def _width(text: str, rng: random.Random) -> str:
    if rng.random() < 0.5:  # half -> full width for ASCII letters, digits and punctuation
        return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)
    return "".join(chr(ord(c) - 0xFEE0) if "！" <= c <= "～" else c for c in text)


def _reorder(text: str, rng: random.Random) -> str:
    parts = [p for p in _SENTENCE.split(text) if p]
    if len(parts) < 2:
        return text
    i, j = rng.sample(range(len(parts)), 2)
    parts[i], parts[j] = parts[j], parts[i]
    return "".join(parts)


def perturb(text: str, rng: random.Random, edit_rate: float = 0.03) -> tuple[str, list[str]]:
    """A near-duplicate copy of ``text`` and the list of operations applied.

    Character edits: uniformly 1..max(1, edit_rate * length) of them (so about 1.5% of characters
    on average); each of punctuation, width and sentence-order changes with probability 1/2.

    >>> perturb("北京新世界酒店，早餐服务很好。房间干净。", random.Random(1))[1]
    ['edit:1', 'punct', 'width', 'reorder']
    """
    ops: list[str] = []
    k = rng.randint(1, max(1, round(edit_rate * len(text))))
    out = _edit_chars(text, rng, k)
    ops.append(f"edit:{k}")
    if rng.random() < 0.5:
        out = _punctuation(out, rng)
        ops.append("punct")
    if rng.random() < 0.5:
        out = _width(out, rng)
        ops.append("width")
    if rng.random() < 0.5:
        out = _reorder(out, rng)
        ops.append("reorder")
    return out, ops


# -- the labelled set -----------------------------------------------------------------------------
@dataclass
class LabelledSet:
    """Texts with ground truth: records with the same ``group`` are duplicates of each other."""

    texts: list[str] = field(default_factory=list)
    group: list[int] = field(default_factory=list)
    source: list[str] = field(default_factory=list)
    kind: list[str] = field(default_factory=list)  # original | copy | negative
    ops: list[list[str]] = field(default_factory=list)

    def same_group_pairs(self) -> set[tuple[int, int]]:
        """Every pair that may share a cluster (original-copy and copy-copy)."""
        by_group: dict[int, list[int]] = {}
        for i, g in enumerate(self.group):
            by_group.setdefault(g, []).append(i)
        return {p for members in by_group.values() for p in combinations(sorted(members), 2)}

    def positive_pairs(self) -> set[tuple[int, int]]:
        """The pairs recall is measured on: each perturbed copy with its original."""
        return {(i, j) for i, j in self.same_group_pairs()
                if "original" in (self.kind[i], self.kind[j])}


def build_labelled_set(corpora: Path, per_source: int = 150, negatives_per_source: int = 300,
                       seed: int = 7, distinct_below: float = 0.7) -> LabelledSet:
    """Originals with 1-2 perturbed copies each, plus untouched distinct negatives, per corpus,
    shuffled into one deterministic order.

    >>> ls = build_labelled_set(Path("../shared/corpora"), per_source=10)  # doctest: +SKIP
    >>> len(ls.positive_pairs()) >= 10  # doctest: +SKIP
    True
    """
    rng = random.Random(seed)
    pools = load_real_texts(corpora)
    rows: list[tuple[str, int, str, str, list[str]]] = []
    group = 0
    for src in SOURCES:
        pool = distinct_subset(pools[src], below=distinct_below)
        need = per_source + negatives_per_source
        if len(pool) < need:
            raise ValueError(f"{src}: only {len(pool)} distinct texts, need {need}; lower "
                             "per_source/negatives_per_source")
        picked = rng.sample(pool, need)
        for text in picked[:per_source]:
            rows.append((text, group, src, "original", []))
            for _ in range(rng.choice((1, 1, 2))):
                copy, ops = perturb(text, rng)
                rows.append((copy, group, src, "copy", ops))
            group += 1
        for text in picked[per_source:]:
            rows.append((text, group, src, "negative", []))
            group += 1
    rng.shuffle(rows)
    out = LabelledSet()
    for text, g, src, kind, ops in rows:
        out.texts.append(text)
        out.group.append(g)
        out.source.append(src)
        out.kind.append(kind)
        out.ops.append(ops)
    return out


def _metrics(ls: LabelledSet, clusters: dict[int, list[int]], scope: str) -> dict[str, Any]:
    def keep(p: tuple[int, int]) -> bool:
        return scope == "all" or ls.source[p[0]] == scope

    positives = {p for p in ls.positive_pairs() if keep(p)}
    allowed = {p for p in ls.same_group_pairs() if keep(p)}
    predicted = {p for members in clusters.values() for p in combinations(sorted(members), 2)
                 if keep(p)}
    found = positives & predicted
    wrong = predicted - allowed
    return {"recall": round(len(found) / len(positives), 4) if positives else 1.0,
            "precision": round(1 - len(wrong) / len(predicted), 4) if predicted else 1.0,
            "positive_pairs": len(positives), "found": len(found),
            "predicted_pairs": len(predicted), "false_pairs": len(wrong),
            "_missed": sorted(positives - predicted), "_wrong": sorted(wrong)}


def evaluate(ls: LabelledSet, config: DedupConfig | None = None) -> dict[str, Any]:
    """Recall (perturbed copy in its original's cluster) and precision (predicted same-cluster
    pairs that are not two distinct records), overall and per corpus, for the dedup decision
    (``clusters``: kept record + its removed twins) and for the union-find components the split
    stage moves (``components``).

    >>> evaluate(build_labelled_set(Path("../shared/corpora")))["recall"]  # doctest: +SKIP
    0.95...
    """
    cfg = config or DedupConfig()
    t0 = time.perf_counter()
    result = find_duplicates(ls.texts, cfg)
    seconds = time.perf_counter() - t0
    overall = _metrics(ls, result.clusters(), "all")
    missed, wrong = overall.pop("_missed"), overall.pop("_wrong")
    comp = _metrics(ls, result.components(), "all")
    out: dict[str, Any] = {"threshold": cfg.threshold, "ngram": cfg.ngram,
                           "num_perm": cfg.num_perm, "records": len(ls.texts),
                           "seconds": round(seconds, 3), **overall,
                           "components": {"recall": comp["recall"],
                                          "precision": comp["precision"]}}
    out["by_source"] = {}
    for src in SOURCES:
        m = _metrics(ls, result.clusters(), src)
        out["by_source"][src] = {k: v for k, v in m.items() if not k.startswith("_")}
    out["missed_examples"] = [{"original": ls.texts[i][:120], "copy": ls.texts[j][:120],
                               "ops": ls.ops[i] or ls.ops[j]} for i, j in missed[:5]]
    out["false_examples"] = [{"a": ls.texts[i][:120], "b": ls.texts[j][:120]}
                             for i, j in wrong[:5]]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    p.add_argument("--per-source", type=int, default=150)
    p.add_argument("--negatives", type=int, default=300)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    p.add_argument("--ngram", type=int, default=DEFAULT_NGRAM)
    p.add_argument("--num-perm", type=int, default=DEFAULT_NUM_PERM)
    p.add_argument("--grid", action="store_true",
                   help="also sweep threshold x ngram x num_perm (how the defaults were chosen)")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    args = p.parse_args(argv)
    corpora = args.shared / "corpora"
    if not corpora.is_dir():
        print(f"neardup_eval: no corpora at {corpora}; pass --shared", file=sys.stderr)
        return 2
    ls = build_labelled_set(corpora, args.per_source, args.negatives, args.seed)
    n_copy = ls.kind.count("copy")
    print(f"labelled set: {len(ls.texts)} records ({n_copy} perturbed copies of "
          f"{ls.kind.count('original')} originals, {ls.kind.count('negative')} distinct "
          f"negatives), {len(ls.positive_pairs())} original-copy pairs")
    res = evaluate(ls, DedupConfig(args.threshold, args.ngram, args.num_perm))
    if args.json:
        print(json.dumps(res, ensure_ascii=False, indent=2))
    print(f"threshold={res['threshold']} ngram={res['ngram']} num_perm={res['num_perm']}: "
          f"recall={res['recall']:.4f} precision={res['precision']:.4f} "
          f"({res['found']}/{res['positive_pairs']} copies found, {res['false_pairs']} of "
          f"{res['predicted_pairs']} clustered pairs distinct, {res['seconds']}s)")
    print(f"  union-find components (what split moves): recall="
          f"{res['components']['recall']:.4f} precision={res['components']['precision']:.4f}")
    for src, m in res["by_source"].items():
        print(f"  {src:9s} recall={m['recall']:.4f} precision={m['precision']:.4f} "
              f"({m['found']}/{m['positive_pairs']} found, {m['false_pairs']} false pairs)")
    if args.grid:
        print("\nthreshold ngram num_perm  recall precision  (components: recall precision)")
        for ngram in (3, 4, 5):
            for threshold in (0.6, 0.65, 0.7, 0.75, 0.8):
                for num_perm in (64, 128, 256):
                    r = evaluate(ls, DedupConfig(threshold, ngram, num_perm))
                    c = r["components"]
                    print(f"{threshold:9.2f} {ngram:5d} {num_perm:8d}  {r['recall']:.4f} "
                          f"{r['precision']:.4f}     {c['recall']:.4f} {c['precision']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
