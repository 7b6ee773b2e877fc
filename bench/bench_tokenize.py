"""Tokenization throughput: our datasets.map path (worker processes) vs a plain Python loop.

Both use the same ChatGLM3 tokenizer and options on the full hotel data
(crosswoz-hotel-finetune-lab train + dev, chatglm3 format); the outputs must be identical.
Prints samples/s; asserts nothing about timings.

    .venv/bin/python bench/bench_tokenize.py [--num-proc 2] [--max-length 2048] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("DATAPREP_SHARED", REPO.parent / "shared"))
LAB = SHARED / "corpora" / "crosswoz-hotel-finetune-lab"
TOKENIZER = SHARED / "corpora" / "chatglm3-6b-tokenizer"


def plain_loop(samples: list[dict], tok, max_length: int | None, truncation: str) -> list:
    from trainer_plugin.encoding import encode_conversation, fit_length

    out = []
    for s in samples:
        enc, _ = fit_length(encode_conversation(s, tok), max_length, truncation)
        if enc is not None:
            out.append((enc.input_ids, enc.labels))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-proc", type=int, default=os.cpu_count() or 1)
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--truncation", choices=("drop", "cut"), default="cut")
    p.add_argument("--repeat", type=int, default=3, help="runs per path; the median is reported")
    args = p.parse_args(argv)
    if not LAB.is_dir():
        print(f"needs the shared corpora at {SHARED}", file=sys.stderr)
        return 2

    import datasets

    from dataprep.tokenizer import load_tokenizer
    from trainer_plugin.data import build_dataset, load_samples

    datasets.disable_progress_bars()
    tok = load_tokenizer(TOKENIZER)
    work = Path(tempfile.mkdtemp(prefix="bench_tokenize_"))
    # Both paths start from one JSONL file (train + dev), so both pay for reading and parsing.
    data = work / "hotel.chatglm3.jsonl"
    data.write_bytes(
        (LAB / "train.chatglm3.jsonl").read_bytes() + (LAB / "dev.chatglm3.jsonl").read_bytes()
    )
    n = len(load_samples(data))
    print(
        f"{n} samples (train + dev), max_length {args.max_length}, {args.truncation}; "
        f"{os.cpu_count()} CPU cores"
    )

    loop_times, loop_out = [], None
    for _ in range(args.repeat):
        t = time.perf_counter()
        loop_out = plain_loop(load_samples(data), tok, args.max_length, args.truncation)
        loop_times.append(time.perf_counter() - t)

    def timed_map(num_proc: int) -> tuple[list[float], list]:
        times, out = [], None
        for k in range(args.repeat):
            # A fresh cache folder per run: we time the encoding, not a cache hit.
            cache = work / f"cache-{num_proc}-{k}"
            t = time.perf_counter()
            ds, _ = build_dataset(
                data,
                tok,
                max_length=args.max_length,
                truncation=args.truncation,
                num_proc=num_proc,
                cache_dir=cache,
            )
            times.append(time.perf_counter() - t)
            out = list(zip(ds["input_ids"], ds["labels"], strict=True))
        return times, out

    rows = [("plain Python loop", loop_times)]
    for num_proc in sorted({1, args.num_proc}):
        times, out = timed_map(num_proc)
        assert out == loop_out, f"datasets.map (num_proc={num_proc}) differs from the loop"
        rows.append((f"datasets.map num_proc={num_proc}", times))
    print(
        f"outputs identical: {len(loop_out)} kept samples, "
        f"{sum(len(i) for i, _ in loop_out)} tokens"
    )
    for name, times in rows:
        med = statistics.median(times)
        print(f"{name:<28} {n / med:9.0f} samples/s  (median of {len(times)}: {med:.3f} s)")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
