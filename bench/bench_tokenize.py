"""Tokenization throughput: the CLI's default path against a plain per-sample reference loop.

Input: the lab train file (crosswoz-hotel-finetune-lab/train.chatglm3.jsonl, 1,602 samples), the
file the issue's anchor was measured on: ChatGLM3's official tokenizer code + official legacy
preprocessing gave about 1,465 samples/s there, and the official code is not part of this repo.
The reference loop here is its plain equivalent: read, ``json.loads`` and ``encode_conversation``
+ ``fit_length`` one sample at a time. Rows:

- plain per-sample loop (the reference);
- ``encode_dataset`` exactly as ``dataprep-train tokenize`` calls it with default options
  (one process, no cache: the batch encoder);
- the whole ``dataprep-train tokenize`` command, writing its tokens file;
- ``datasets.map`` with an on-disk cache, in one process (the train command's default path) and
  with ``--num-proc`` workers (CPU time of the workers is not counted in its CPU column).

Every path's ids and labels must equal the loop's, sample for sample (asserted). Prints wall-clock
samples/s and CPU time per sample (the median of ``--repeat`` runs; CPU time is the steadier figure
on a shared machine); asserts nothing about timings.

    .venv/bin/python bench/bench_tokenize.py [--repeat 5] [--max-length 2048] [--num-proc 2]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
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
OFFICIAL_ANCHOR = 1465  # samples/s, official code on the lab train file (issue 11)


def plain_loop(path: Path, tok, max_length: int | None, truncation: str) -> list:
    from trainer_plugin.data import load_samples
    from trainer_plugin.encoding import encode_conversation, fit_length

    out = []
    for s in load_samples(path):
        enc, _ = fit_length(encode_conversation(s, tok), max_length, truncation)
        out.append((enc.input_ids, enc.labels) if enc is not None else ([], []))
    return out


def timed(fn, repeat: int) -> tuple[float, float, object]:
    """Median wall seconds, median CPU seconds, and the last result of ``fn()``."""
    walls, cpus, result = [], [], None
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        result = fn()
        cpus.append(time.process_time() - c)
        walls.append(time.perf_counter() - w)
    return statistics.median(walls), statistics.median(cpus), result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=LAB / "train.chatglm3.jsonl")
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--truncation", choices=("drop", "cut"), default="cut")
    p.add_argument("--num-proc", type=int, default=2, help="workers for the datasets.map row")
    p.add_argument("--repeat", type=int, default=5, help="runs per path; the median is reported")
    args = p.parse_args(argv)
    if not args.data.is_file() or not TOKENIZER.is_dir():
        print(f"needs the shared corpora at {SHARED}", file=sys.stderr)
        return 2

    import datasets

    from dataprep.tokenizer import load_tokenizer
    from trainer_plugin.cli import main as cli_main
    from trainer_plugin.data import encode_dataset

    datasets.disable_progress_bars()
    tok = load_tokenizer(TOKENIZER)
    work = Path(tempfile.mkdtemp(prefix="bench_tokenize_"))
    print(
        f"{args.data.name}, max_length {args.max_length}, {args.truncation}; "
        f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}"
    )

    def cli_default():
        return encode_dataset(
            args.data, tok, max_length=args.max_length, truncation=args.truncation,
            use_cache=False,
        )

    out_file = work / "tokens.jsonl"
    command = ["tokenize", "--tokenizer", str(TOKENIZER), "--input", str(args.data),
               "--output", str(out_file), "--truncation", args.truncation]
    if args.max_length:
        command += ["--max-length", str(args.max_length)]

    def whole_command():
        with contextlib.redirect_stderr(io.StringIO()):
            assert cli_main(command) == 0

    def command_output():
        rows = [json.loads(line) for line in out_file.read_text(encoding="utf-8").splitlines()]
        return [(r.get("input_ids", []), r.get("labels", [])) for r in rows]

    runs = {"map": 0}

    def mapped(num_proc: int):
        def run():
            runs["map"] += 1  # a fresh cache folder per run: we time the encoding, not a hit
            return encode_dataset(
                args.data, tok, max_length=args.max_length, truncation=args.truncation,
                num_proc=num_proc, cache_dir=work / f"cache-{runs['map']}",
            )
        return run

    def dataset_output(ds):
        return list(zip(ds["input_ids"], ds["labels"], strict=True))

    wall, cpu, reference = timed(
        lambda: plain_loop(args.data, tok, args.max_length, args.truncation), args.repeat
    )
    n = len(reference)  # type: ignore[arg-type]
    rows = [("plain per-sample loop (reference)", wall, cpu)]
    # Only the path itself is timed; turning its output into Python lists to compare is not.
    for name, fn, output in (
        ("CLI default: encode_dataset", cli_default, dataset_output),
        ("dataprep-train tokenize (writes)", whole_command, lambda _: command_output()),
        ("train's path: datasets.map, cached", mapped(1), dataset_output),
        (f"datasets.map num_proc={args.num_proc}, cached", mapped(args.num_proc), dataset_output),
    ):
        wall, cpu, result = timed(fn, args.repeat)
        assert output(result) == reference, f"{name}: ids/labels differ from the reference loop"
        rows.append((name, wall, cpu))
    print(f"outputs identical to the reference loop: {n} samples, "
          f"{sum(len(i) for i, _ in reference)} tokens")  # type: ignore[union-attr]
    print(f"{'path':<40} {'samples/s':>10} {'CPU us/sample':>14} {'x loop (wall)':>14} "
          f"{'x loop (CPU)':>13}")
    ref_wall, ref_cpu = rows[0][1], rows[0][2]
    for name, wall, cpu in rows:
        print(f"{name:<40} {n / wall:10.0f} {cpu / n * 1e6:14.1f} {ref_wall / wall:14.2f} "
              f"{ref_cpu / cpu:13.2f}")
    # Why the loop stands in for the official code: the previous CLI path was 1.8x the official
    # code in the measurement and 1.86x this loop when measured here before the change.
    print(f"anchor: official code ~{OFFICIAL_ANCHOR} samples/s on the issue's machine (about this "
          "loop's speed); target: >= 5x")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
