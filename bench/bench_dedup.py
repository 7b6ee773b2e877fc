"""Dedup throughput and peak memory on 10k, 100k and 1M synthetic near-duplicate Chinese records.

The records are made from the real texts in ``../shared/corpora`` (lab dialog keys, SPO texts,
CMRC passages, DuReader paragraphs): each synthetic base text joins 2-4 real sentences drawn at
random (so there are as many distinct bases as needed), and each base appears 1-4 times (mean
2.2), every extra copy perturbed like the labelled set of ``bench/neardup_eval.py`` (characters
edited, punctuation, width, sentence order). About 55% of the records are near duplicates.

Each size runs in its own subprocess, so its peak RSS is its own: the texts are generated first,
then ``dataprep.dedup.find_duplicates`` runs over them; "bytes/record" is (peak RSS - RSS before
dedup) / records, i.e. what dedup itself holds (signatures, LSH tables, per-record arrays), not
the input texts.

    python -m bench.bench_dedup [--sizes 10000,100000,1000000] [--compare-minhash]

The script prints records/s, CPU time per record, bytes/record, LSH candidates per record and
the ratio of per-record times at the largest two sizes (1.0 = linear cost). Measured on the
project's 2-core machine (defaults: threshold 0.65, 4-grams, 128 permutations, LSH 21 bands x 6
rows; records of 119 characters on average):

    records   dedup s  rec/s  us/rec  peak RSS  bytes/rec  candidates/rec
      10k       1.2    8,018   125     258 MB   (15,140: fixed costs dominate)  0.96
     100k      13.0    7,699   130     870 MB    7,681                          1.76
       1M     161.0    6,210   161   7,320 MB    7,251                         10.38

1M vs 100k: 1.24x the time per record, 0.94x the bytes per record. The extra time follows the
LSH candidates to verify (6x more per record at 1M): the synthetic bases reuse a fixed pool of
real sentences (25,798 of them: at 1M each is in ~53 bases), so partial overlaps become
candidates more often. Of the ~7.2 KB per record, 512 bytes are the signature, ~0.4 KB the per-record arrays and
dicts, and the rest datasketch's LSH tables (a bytes key and a Python ``set`` per band; measured
alone, ~415 bytes per band per record for distinct signatures, 21 bands here). MinHash itself:
``--compare-minhash`` measured 240-250 us per record for datasketch's per-record
``MinHash.update_batch`` against 20-45 us batched.
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
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` and `dataprep` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.neardup_eval import load_real_texts, perturb  # noqa: E402
from dataprep.dedup import (  # noqa: E402
    DedupConfig,
    MinHasher,
    find_duplicates,
    normalize_for_matching,
    shingle_ids,
)

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


def synthetic_records(n: int, pool: list[str], seed: int = 0) -> list[str]:
    """``n`` texts: random 2-4 sentence bases, each repeated 1-4 times with perturbed copies.

    >>> len(synthetic_records(10, ["北京新世界酒店很好。", "早餐服务不错。", "房间干净。", "价格合理。"]))
    10
    """
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        base = "".join(rng.sample(pool, rng.randint(2, 4)))
        out.append(base)
        for _ in range(rng.choice(COPIES) - 1):
            out.append(perturb(base, rng)[0])
    del out[n:]
    rng.shuffle(out)
    return out


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def run_size(n: int, corpora: Path, cfg: DedupConfig) -> dict:
    """Generate ``n`` records, dedup them, report time and memory (run in a fresh process)."""
    t0 = time.perf_counter()
    texts = synthetic_records(n, sentence_pool(corpora))
    gen_s = time.perf_counter() - t0
    mean_chars = sum(map(len, texts)) / n
    gc.collect()
    rss_before = _rss_bytes()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0, c0 = time.perf_counter(), time.process_time()
    engine: dict = {}
    result = find_duplicates(texts, cfg, stats=engine)
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "records": n, "mean_chars": round(mean_chars, 1), "generate_s": round(gen_s, 1),
        "dedup_s": round(secs, 2), "records_per_s": round(n / secs),
        "us_per_record": round(secs / n * 1e6, 1),
        # CPU time of this process: the wall time on a shared 2-core machine includes waiting.
        "cpu_s": round(cpu, 2), "cpu_us_per_record": round(cpu / n * 1e6, 1),
        "peak_rss_mb": round(peak / 2**20), "rss_before_mb": round(rss_before / 2**20),
        # If generation peaked higher than dedup, the delta understates dedup: flag it.
        "peak_from_dedup": peak > peak_before,
        "bytes_per_record": round((peak - rss_before) / n),
        "removed": result.removed(), "clusters": len(result.clusters()),
        "lsh_bands": [engine["lsh_bands"], engine["lsh_rows"]],
        # Candidate pairs per record: what the cost per record follows (see the docstring).
        "candidates_per_record": round(engine["candidates"] / n, 2),
        "verified_per_record": round(engine["verified_pairs"] / n, 2),
        "signature_bytes_per_record": round(engine["signature_bytes"] / n),
    }


def compare_minhash(corpora: Path, n: int = 10_000, cfg: DedupConfig | None = None) -> dict:
    """The measured reason for batching MinHash with numpy: datasketch's own per-record path
    (``MinHash.update_batch`` over UTF-8 shingles, SHA-1 hashed) vs ``MinHasher.signatures``."""
    from datasketch import MinHash

    cfg = cfg or DedupConfig()
    texts = [normalize_for_matching(t) for t in synthetic_records(n, sentence_pool(corpora))]
    t0 = time.perf_counter()
    for t in texts:
        m = MinHash(num_perm=cfg.num_perm, seed=cfg.seed)
        grams = {t[i:i + cfg.ngram] for i in range(max(1, len(t) - cfg.ngram + 1))}
        m.update_batch([g.encode("utf-8") for g in grams])
    lib_s = time.perf_counter() - t0
    hasher = MinHasher(cfg.num_perm, cfg.ngram, cfg.seed)
    t0 = time.perf_counter()
    for i in range(0, n, 2048):
        hasher.signatures(texts[i:i + 2048])
    ours_s = time.perf_counter() - t0
    ids, _ = shingle_ids(texts[:1], cfg.ngram)
    return {"records": n, "datasketch_us_per_record": round(lib_s / n * 1e6, 1),
            "batched_us_per_record": round(ours_s / n * 1e6, 1),
            "speedup": round(lib_s / ours_s, 1), "example_shingles": int(ids.size)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    p.add_argument("--sizes", default="10000,100000,1000000",
                   help="comma-separated record counts (default 10k, 100k, 1M)")
    p.add_argument("--threshold", type=float, default=DedupConfig.threshold)
    p.add_argument("--ngram", type=int, default=DedupConfig.ngram)
    p.add_argument("--num-perm", type=int, default=DedupConfig.num_perm)
    p.add_argument("--compare-minhash", action="store_true",
                   help="also time datasketch's per-record MinHash against the batched one")
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    corpora = args.shared / "corpora"
    if not corpora.is_dir():
        print(f"bench_dedup: no corpora at {corpora}; pass --shared", file=sys.stderr)
        return 2
    cfg = DedupConfig(args.threshold, args.ngram, args.num_perm)
    if args.worker:
        print(json.dumps(run_size(args.worker, corpora, cfg)))
        return 0
    print(f"dedup bench: threshold={cfg.threshold} ngram={cfg.ngram} num_perm={cfg.num_perm}, "
          f"one subprocess per size")
    if args.compare_minhash:
        c = compare_minhash(corpora, cfg=cfg)
        print(f"MinHash on {c['records']} records: datasketch per record "
              f"{c['datasketch_us_per_record']} us, batched numpy {c['batched_us_per_record']} us "
              f"({c['speedup']}x)")
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        cmd = [sys.executable, "-m", "bench.bench_dedup", "--worker", str(n),
               "--shared", str(args.shared), "--threshold", str(cfg.threshold),
               "--ngram", str(cfg.ngram), "--num-perm", str(cfg.num_perm)]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 1
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(f"{r['records']:>9,} records ({r['mean_chars']} chars): {r['dedup_s']:>8.1f} s, "
              f"{r['records_per_s']:>7,} rec/s, {r['us_per_record']:>6.1f} us/rec wall, "
              f"{r['cpu_us_per_record']:>6.1f} us/rec CPU, peak RSS "
              f"{r['peak_rss_mb']:,} MB ({r['bytes_per_record']:,} B/rec over "
              f"{r['rss_before_mb']:,} MB before), removed {r['removed']:,}, "
              f"LSH {r['lsh_bands'][0]}x{r['lsh_bands'][1]}, "
              f"{r['candidates_per_record']} candidates/rec")
    if len(rows) >= 2:
        a, b = rows[-2], rows[-1]
        print(f"per-record time {b['records']:,} vs {a['records']:,}: wall "
              f"{b['us_per_record'] / a['us_per_record']:.2f}x, CPU "
              f"{b['cpu_us_per_record'] / a['cpu_us_per_record']:.2f}x; bytes/record "
              f"{b['bytes_per_record'] / max(1, a['bytes_per_record']):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
