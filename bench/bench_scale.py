"""The full pipeline at scale: 100k and 1M synthetic dialogs through ``dataprep run`` on the local
engine and on Ray; records/s, peak memory and the Ray/local ratio.

The input is a ChatGLM3 JSONL file of single-turn dialogs whose user turns are the near-duplicate
texts of ``bench/bench_dedup.py`` (real sentences from ``../shared/corpora``, ~55% perturbed
copies) and whose replies are real sentences; a few lines are broken on purpose, so the readers
and validate reject something. Stages: clean, validate, dedup, split, write. Each run is its own
subprocess; "driver MB" is the driver's peak RSS, "all MB" the peak of the summed PSS of the
driver and every process under it (Ray's workers and object store included), sampled each second.

    python -m bench.bench_scale [--sizes 100000,1000000] [--engines local,ray] [--ray-cpus 2]
                                [--ray-address ADDR] [--ray-sizes 100000]
                                [--anchor DIR [--parallel]]

``--anchor DIR``: a checkout of the code to compare with (``git worktree add /tmp/base REV``);
each run is repeated with that code on the same input and printed next to it, with the ratios
of peak memory and records/s and whether the splits and rejects are byte-identical. The anchor
for the streaming whole-stream stages (records on disk, keys in memory) is the commit before
them, 70efd2d. ``--parallel`` runs the two at once (halves the wall time on a loaded machine;
peak memory is each process's own, but records/s then compete for the same CPUs).

On a cluster: start Ray there (``ray start --head`` on one node, ``ray start --address HEAD:6379``
on the others, this package installed on all of them with ``pip install .[ray]``), put the
inputs where every node can read them, and pass ``--ray-address auto`` (on the head node) or
``--ray-address ray://HEAD:10001``; per-record stages and the MinHash signatures then spread
over the cluster's CPUs, while the driver keeps the books and the whole-stream stages.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

if __package__ in (None, ""):  # run as a script: make `bench` and `dataprep` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_dedup import sentence_pool, synthetic_records  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STAGES = ["clean", "validate", "dedup", {"name": "split", "ratios": [0.8, 0.1, 0.1]}, "write"]


def write_input(path: Path, n: int, corpora: Path, seed: int = 0) -> None:
    """``n`` lines of ChatGLM3 JSON: near-duplicate user turns, real replies; 1 in 5,000 broken."""
    pool = sentence_pool(corpora)
    texts, _ = synthetic_records(n, pool, seed)
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as fh:
        for i, text in enumerate(texts):
            if i % 5000 == 4999:
                fh.write('{"conversations": [\n')  # a truncated line: a reader reject
                continue
            obj = {"conversations": [{"role": "user", "content": text},
                                     {"role": "assistant", "content": rng.choice(pool)}]}
            fh.write(json.dumps(obj, ensure_ascii=False) + "\n")


class _TreeMemory:
    """Samples the summed PSS of a process and all its descendants until stopped; keeps the
    peak. Ray's workers are descendants of the driver when it starts a local Ray."""

    def __init__(self, pid: int, every_s: float = 1.0) -> None:
        self.peak_mb = 0
        self._stop = threading.Event()
        try:
            import psutil  # ray's dependency
        except ImportError:
            return
        self._root = psutil.Process(pid)
        self._psutil = psutil
        self._every = every_s
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        psutil = self._psutil
        while not self._stop.is_set():
            total = 0
            try:
                procs = [self._root, *self._root.children(recursive=True)]
            except psutil.Error:
                return
            for p in procs:
                with contextlib.suppress(psutil.Error):  # a process that just ended
                    total += p.memory_full_info().pss
            self.peak_mb = max(self.peak_mb, round(total / 2**20))
            self._stop.wait(self._every)

    def stop(self) -> None:
        self._stop.set()
        if hasattr(self, "_thread"):
            self._thread.join()


def start_one(input_path: Path, engine: str, workdir: Path, ray_cpus: int,
              ray_address: str | None, code_root: Path = ROOT, tag: str = ""
              ) -> tuple[subprocess.Popen, Path, float, _TreeMemory]:
    """Start one ``dataprep run`` of ``code_root``'s code; :func:`finish_one` collects it."""
    name = f"scale-{engine}{tag}"
    cfg = {"name": name, "seed": 42, "stages": STAGES,
           "inputs": [{"reader": "chatglm3", "path": str(input_path)}]}
    cfg_path = workdir / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    out = workdir / name
    args = ["run", str(cfg_path), "--out", str(out), "--quiet", "--engine", engine]
    if engine == "ray":
        args += (["--ray-address", ray_address] if ray_address else
                 ["--ray-cpus", str(ray_cpus)])
    code = ("import resource, sys; from dataprep.cli import main; rc = main(sys.argv[1:]); "
            "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
            "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
            "sys.exit(rc)")
    env = {**os.environ, "PYTHONPATH": str(code_root)}
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=code_root, env=env)
    return proc, out, time.perf_counter(), _TreeMemory(proc.pid)


def finish_one(started: tuple[subprocess.Popen, Path, float, _TreeMemory], engine: str) -> dict:
    proc, out, t0, peak = started
    _, stderr = proc.communicate()
    peak.stop()
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1):  # 1: the data had rejects, as intended
        raise SystemExit(f"{out.name}: dataprep run failed:\n{stderr[-3000:]}")
    line = next(x for x in stderr.splitlines() if x.startswith("MAXRSS_KB"))
    own_kb, child_kb = (int(v) for v in line.split()[1:3])
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    counts = manifest["counts"]
    digest = hashlib.sha256()
    for f in ("train.jsonl", "dev.jsonl", "test.jsonl", "rejects.jsonl"):
        digest.update((out / f).read_bytes())
    return {"engine": engine, "input": counts["input"], "wall_s": round(wall, 1),
            "pipeline_s": manifest["seconds"]["total"],
            "records_per_s": round(counts["input"] / manifest["seconds"]["total"]),
            "peak_mb": round(own_kb / 1024), "largest_child_mb": round(child_kb / 1024),
            "tree_mb": peak.peak_mb,
            "counts": {k: counts[k] for k in ("train", "dev", "test")},
            "removed": counts["removed"], "by_stage": manifest["seconds"]["by_stage"],
            "outputs_sha256": digest.hexdigest()}


def run_one(input_path: Path, engine: str, workdir: Path, ray_cpus: int,
            ray_address: str | None, code_root: Path = ROOT, tag: str = "") -> dict:
    return finish_one(start_one(input_path, engine, workdir, ray_cpus, ray_address, code_root,
                                tag), engine)


def _row(n: int, label: str, r: dict) -> str:
    c = r["counts"]
    return (f"{n:>9,} {label:<13} {r['records_per_s']:>10,} {r['pipeline_s']:>10.1f} "
            f"{r['peak_mb']:>9,} {r['tree_mb']:>8,}  "
            f"{c['train']}/{c['dev']}/{c['test']}  by stage: {r['by_stage']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    p.add_argument("--sizes", default="100000,1000000")
    p.add_argument("--engines", default="local,ray")
    p.add_argument("--ray-cpus", type=int, default=2)
    p.add_argument("--ray-address", default=None)
    p.add_argument("--anchor", type=Path, default=None,
                   help="a checkout of the code to compare with, run on the same input")
    p.add_argument("--parallel", action="store_true",
                   help="run the anchor at the same time as this code")
    p.add_argument("--ray-sizes", default=None,
                   help="run Ray only at these sizes (default: every size)")
    args = p.parse_args(argv)
    ray_sizes = None if args.ray_sizes is None else {int(x) for x in args.ray_sizes.split(",")}
    corpora = args.shared / "corpora"
    if not corpora.is_dir():
        print(f"bench_scale: no corpora at {corpora}; pass --shared", file=sys.stderr)
        return 2
    if args.anchor is not None and not (args.anchor / "dataprep" / "cli.py").is_file():
        print(f"bench_scale: {args.anchor} is not a checkout of this project", file=sys.stderr)
        return 2
    print(f"{'records':>9} {'engine':<13} {'records/s':>10} {'pipeline s':>10} "
          f"{'driver MB':>9} {'all MB':>8}  train/dev/test")
    by_engine: dict[str, dict[int, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for n in (int(x) for x in args.sizes.split(",")):
            input_path = work / f"scale_{n}.jsonl"
            write_input(input_path, n, corpora)
            rows = {}
            for engine in args.engines.split(","):
                if engine == "ray" and ray_sizes is not None and n not in ray_sizes:
                    continue
                runs = [("", ROOT)] + ([("-anchor", args.anchor)] if args.anchor else [])
                if args.parallel:
                    started = [start_one(input_path, engine, work, args.ray_cpus,
                                         args.ray_address, root, tag) for tag, root in runs]
                    results = [finish_one(s, engine) for s in started]
                else:
                    results = [run_one(input_path, engine, work, args.ray_cpus,
                                       args.ray_address, root, tag) for tag, root in runs]
                rows[engine] = r = by_engine.setdefault(engine, {})[n] = results[0]
                print(_row(n, engine, r), flush=True)
                if args.anchor:
                    a = results[1]
                    print(_row(n, f"{engine}-anchor", a), flush=True)
                    print(f"{n:>9,} {engine} vs anchor ({args.anchor}): peak memory "
                          f"{r['peak_mb']:,} / {a['peak_mb']:,} MB = "
                          f"{r['peak_mb'] / max(1, a['peak_mb']):.2f}x (all: "
                          f"{r['tree_mb'] / max(1, a['tree_mb']):.2f}x), records/s "
                          f"{r['records_per_s'] / max(1, a['records_per_s']):.2f}x"
                          f"{' (run side by side)' if args.parallel else ''}; splits and "
                          f"rejects byte-identical: {r['outputs_sha256'] == a['outputs_sha256']}",
                          flush=True)
            input_path.unlink()
            if {"local", "ray"} <= rows.keys():
                a, b = rows["local"], rows["ray"]
                same = a["counts"] == b["counts"] and a["removed"] == b["removed"]
                print(f"{n:>9,} ray/local: time {b['pipeline_s'] / a['pipeline_s']:.2f}x, "
                      f"memory (all) {b['tree_mb'] / max(1, a['tree_mb']):.2f}x; "
                      f"same counts: {same}", flush=True)
    for engine, by_size in by_engine.items():
        if len(by_size) > 1:
            lo, hi = min(by_size), max(by_size)
            a, b = by_size[lo], by_size[hi]
            per_record = (b["pipeline_s"] / hi) / (a["pipeline_s"] / lo)
            print(f"{engine:<6} {hi:,} vs {lo:,}: time per record {per_record:.2f}x, "
                  f"memory (all) {b['tree_mb'] / max(1, a['tree_mb']):.2f}x, driver "
                  f"{b['peak_mb'] / max(1, a['peak_mb']):.2f}x")
    print(f"(max RSS of this bench process: "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
