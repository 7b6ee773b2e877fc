"""Dedup engines side by side on one labelled set of 100k (and 1M) near-duplicate Chinese records.

The records are made from the real texts in ``../shared/corpora`` (lab dialog keys, SPO texts,
CMRC passages, DuReader paragraphs): each synthetic base text joins 2-4 real sentences drawn at
random, and each base appears 1-4 times (mean 2.2), every extra copy perturbed like the labelled
set of ``bench/neardup_eval.py`` (characters edited, punctuation, width, sentence order). Truth:
a record is a duplicate when an earlier record has the same base (~55% of the records).

Engines, each as its users would run it, on the same records:

* ``ours``: ``dataprep.dedup.find_duplicates`` at its defaults (normalised text, 4-grams, 128
  permutations, threshold 0.65, LSH 21x6 leaning to recall, candidates verified);
* ``rensa-raw``: rensa 0.5 ``RMinHash`` over raw-text 5-grams, 128 permutations, its
  ``RMinHashLSH`` with 16 bands, candidates verified by ``jaccard >= 0.7``;
* ``rensa-norm``: the same with our normalisation, 4-grams, threshold 0.65 (16x8 bands);
* ``datasketch``: datasketch ``MinHash`` over raw-text 5-grams (UTF-8), 128 permutations, its
  ``MinHashLSH`` at 0.7 (a record is a duplicate when the query returns anything).

The streaming engines (all but ours) insert only the records they keep. Each engine and size runs
in its own subprocess: the texts are generated, the peak-RSS counter is reset
(``/proc/self/clear_refs``), and "bytes/rec" is (peak RSS during dedup - RSS before) / records:
what the engine holds (signatures, LSH tables, per-record arrays), not the input texts. RSS, not
tracemalloc, because rensa's tables live in Rust allocations that tracemalloc does not see.

    python -m bench.bench_dedup [--sizes 100000,1000000] [--engines ours,rensa-raw,...]
                                [--big-engines ours]

``--big-engines`` lists the engines also run at sizes above 100k (default: ours and rensa;
datasketch needs ~7 GB at 1M). The figures are wall time on a shared machine: expect noise.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import re
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` and `dataprep` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bench.neardup_eval import load_real_texts, perturb  # noqa: E402
from dataprep.dedup import find_duplicates, normalize_for_matching  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
_SENTENCE = re.compile(r"(?<=[。！？；!?;\n])")
COPIES = (1, 1, 2, 3, 4)  # occurrences of one base text: mean 2.2


def sentence_pool(corpora: Path) -> list[str]:
    """Real sentences of 8-120 characters from every corpus of the labelled set."""
    out = []
    for items in load_real_texts(corpora).values():
        for text, _ in items:
            out.extend(s.strip() for s in _SENTENCE.split(text) if 8 <= len(s.strip()) <= 120)
    return out


def synthetic_records(n: int, pool: list[str], seed: int = 0) -> tuple[list[str], list[int]]:
    """``n`` texts: random 2-4 sentence bases, each repeated 1-4 times with perturbed copies;
    and the base number of each text (the truth: a text is a duplicate when an earlier text has
    the same base).

    >>> texts, bases = synthetic_records(10, ["北京新世界酒店很好。", "早餐服务不错。", "房间干净。",
    ...                                       "价格合理。"])
    >>> len(texts), len(bases)
    (10, 10)
    """
    rng = random.Random(seed)
    out: list[tuple[str, int]] = []
    base_no = 0
    while len(out) < n:
        base = "".join(rng.sample(pool, rng.randint(2, 4)))
        out.append((base, base_no))
        for _ in range(rng.choice(COPIES) - 1):
            out.append((perturb(base, rng)[0], base_no))
        base_no += 1
    del out[n:]
    rng.shuffle(out)
    return [t for t, _ in out], [b for _, b in out]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def _reset_peak() -> bool:
    # Linux: writing 5 resets VmHWM (the peak RSS) to the current RSS.
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _raw_grams(text: str, n: int) -> list[str]:
    return [text[i:i + n] for i in range(max(1, len(text) - n + 1))]


def _norm_grams(text: str, n: int) -> list[str]:
    return _raw_grams(normalize_for_matching(text), n)


def run_ours(texts: list[str]) -> list[bool]:
    result = find_duplicates(texts)
    return (result.kept != np.arange(len(texts))).tolist()


def run_rensa(texts: list[str], ngram: int, threshold: float, normalise: bool) -> list[bool]:
    import rensa

    grams = _norm_grams if normalise else _raw_grams
    lsh = rensa.RMinHashLSH(threshold, 128, 16)
    kept: dict[int, Any] = {}
    out = []
    for start in range(0, len(texts), 4096):
        batch = texts[start:start + 4096]
        for k, m in enumerate(rensa.RMinHash.from_token_sets(
                [grams(t, ngram) for t in batch], 128, 42)):
            dup = any(m.jaccard(kept[c]) >= threshold for c in lsh.query(m))
            if not dup:
                kept[start + k] = m
                lsh.insert(start + k, m)
            out.append(dup)
    return out


def run_datasketch(texts: list[str]) -> list[bool]:
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=0.7, num_perm=128)
    out = []
    for i, t in enumerate(texts):
        m = MinHash(num_perm=128)
        m.update_batch([g.encode("utf-8") for g in set(_raw_grams(t, 5))])
        dup = bool(lsh.query(m))
        if not dup:
            lsh.insert(i, m)
        out.append(dup)
    return out


ENGINES: dict[str, Callable[[list[str]], list[bool]]] = {
    "ours": run_ours,
    "rensa-raw": lambda t: run_rensa(t, 5, 0.7, normalise=False),
    "rensa-norm": lambda t: run_rensa(t, 4, 0.65, normalise=True),
    "datasketch": run_datasketch,
}


def scores(predicted: list[bool], bases: list[int]) -> dict[str, float]:
    """Precision, recall and F1 of "is a duplicate of an earlier record"."""
    seen: set[int] = set()
    tp = fp = fn = 0
    for dup, base in zip(predicted, bases, strict=True):
        truth = base in seen
        seen.add(base)
        tp += dup and truth
        fp += dup and not truth
        fn += truth and not dup
    p = tp / (tp + fp) if tp + fp else 1.0
    r = tp / (tp + fn) if tp + fn else 1.0
    return {"precision": round(p, 4), "recall": round(r, 4),
            "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0}


def run_one(engine: str, n: int, corpora: Path) -> dict:
    """Generate ``n`` records, run one engine, report time, memory and quality (in a fresh
    process)."""
    texts, bases = synthetic_records(n, sentence_pool(corpora))
    gc.collect()
    rss_before = _rss_bytes()
    reset = _reset_peak()
    t0, c0 = time.perf_counter(), time.process_time()
    predicted = ENGINES[engine](texts)
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = _peak_bytes()
    return {"engine": engine, "records": n, "mean_chars": round(sum(map(len, texts)) / n, 1),
            "seconds": round(secs, 2), "docs_per_s": round(n / secs),
            "us_per_doc": round(secs / n * 1e6, 1), "cpu_us_per_doc": round(cpu / n * 1e6, 1),
            "bytes_per_doc": round((peak - rss_before) / n), "peak_reset": reset,
            "peak_rss_mb": round(peak / 2**20), **scores(predicted, bases)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    p.add_argument("--sizes", default="100000,1000000")
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument("--big-engines", default="ours,rensa-raw,rensa-norm",
                   help="engines also run at sizes above 100k")
    p.add_argument("--worker", nargs=2, metavar=("ENGINE", "N"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    corpora = args.shared / "corpora"
    if not corpora.is_dir():
        print(f"bench_dedup: no corpora at {corpora}; pass --shared", file=sys.stderr)
        return 2
    if args.worker:
        print(json.dumps(run_one(args.worker[0], int(args.worker[1]), corpora)))
        return 0
    engines = args.engines.split(",")
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        print(f"bench_dedup: unknown engine {unknown[0]!r}; choose from {', '.join(ENGINES)}",
              file=sys.stderr)
        return 2
    big = set(args.big_engines.split(","))
    print(f"{'engine':<11} {'records':>9} {'docs/s':>8} {'us/doc':>7} {'CPU us':>7} "
          f"{'precision':>9} {'recall':>7} {'F1':>6} {'bytes/doc':>9}  (RSS peak delta)")
    rows: dict[tuple[str, int], dict] = {}
    for n in (int(x) for x in args.sizes.split(",")):
        for engine in engines:
            if n > 100_000 and engine not in big:
                continue
            cmd = [sys.executable, "-m", "bench.bench_dedup", "--shared", str(args.shared),
                   "--worker", engine, str(n)]
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                return 1
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            rows[engine, n] = r
            print(f"{engine:<11} {n:>9,} {r['docs_per_s']:>8,} {r['us_per_doc']:>7} "
                  f"{r['cpu_us_per_doc']:>7} {r['precision']:>9.4f} {r['recall']:>7.4f} "
                  f"{r['f1']:>6.4f} {r['bytes_per_doc']:>9,}", flush=True)
    sizes = sorted({n for _, n in rows})
    for engine in engines:
        have = [n for n in sizes if (engine, n) in rows]
        if len(have) >= 2:
            a, b = rows[engine, have[0]], rows[engine, have[-1]]
            print(f"{engine}: {have[-1]:,} vs {have[0]:,} per record: time "
                  f"{b['us_per_doc'] / a['us_per_doc']:.2f}x (CPU "
                  f"{b['cpu_us_per_doc'] / a['cpu_us_per_doc']:.2f}x), bytes "
                  f"{b['bytes_per_doc'] / max(1, a['bytes_per_doc']):.2f}x "
                  f"(targets: <= 1.3x, <= 1.1x)")
    if ("ours", 100_000) in rows:
        r = rows["ours", 100_000]
        ok = r["f1"] >= 0.93 and r["docs_per_s"] >= 30_000 and r["bytes_per_doc"] <= 2048
        print(f"ours at 100k: F1 {r['f1']} (>= 0.93), {r['docs_per_s']:,} docs/s (>= 30,000), "
              f"{r['bytes_per_doc']:,} bytes/doc (<= 2,048): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
