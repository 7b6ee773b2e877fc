"""Show that a code change left the pipeline's outputs alone: byte-identical splits and rejects,
equal manifest counts.

Two steps. ``snapshot`` runs the shipped demo configs (configs/spo|docqa|hotel.yaml) and, when the
shared corpora are there, the same pipelines on the real corpora (the inputs of bench/bench_run.py),
and saves train/dev/test/rejects.jsonl plus the manifest counts and the stages' stats and
artifacts (duplicate clusters, leakage audit, balance classes; without timings) under DIR/NAME/. ``compare`` runs
them again with the code as it is now and compares with a saved snapshot::

    python bench/compare_outputs.py snapshot /tmp/arch-baseline          # on the old code
    python bench/compare_outputs.py compare /tmp/arch-baseline           # on the new code

Exit status 0 when everything matches, 1 (with one line per difference) when not.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from bench_run import corpus_configs  # noqa: E402

FILES = ("train.jsonl", "dev.jsonl", "test.jsonl", "rejects.jsonl")
DEMOS = ("spo", "docqa", "hotel")
# Post-run steps do not change the splits; leaving them out keeps the real-corpus runs short.
POST_RUN = {"expectations", "report"}


def _stage_name(st: object) -> str:
    if isinstance(st, str):
        return st
    if isinstance(st, dict) and "name" in st:
        return str(st["name"])
    return str(next(iter(st)))  # type: ignore[arg-type]


def run_configs(shared: Path) -> dict[str, Path]:
    """Name -> config file to run: the demos as shipped, and the real corpora when present."""
    tmp = Path(tempfile.mkdtemp(prefix="compare-cfg-"))
    out = {f"demo-{n}": ROOT / "configs" / f"{n}.yaml" for n in DEMOS}
    if (shared / "corpora").is_dir():
        for name, cfg in corpus_configs(shared).items():
            stages = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text(encoding="utf-8"))
            stages = [st for st in stages["stages"] if _stage_name(st) not in POST_RUN]
            path = tmp / f"real-{name}.yaml"
            path.write_text(yaml.safe_dump({"name": name, "seed": 42, **cfg, "stages": stages},
                                           allow_unicode=True), encoding="utf-8")
            out[f"real-{name}"] = path
    return out


def run_one(cfg: Path, out: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "dataprep.cli", "run", str(cfg), "--out", str(out),
                          "--quiet"], capture_output=True, text=True, cwd=ROOT)
    # Exit 1 means "the data had rejects", which is a normal outcome here.
    if res.returncode not in (0, 1) or not (out / "manifest.json").is_file():
        raise SystemExit(f"{cfg}: dataprep run failed (exit {res.returncode}):\n{res.stderr}")


def _stats(manifest: dict, out: Path) -> dict:
    """What the stages reported (stats and artifacts), without what varies from run to run:
    timings, package versions, the output folder's and the checkout's names."""
    stats = {"stage_stats": manifest.get("stage_stats", {}),
             "artifacts": {k: v for k, v in manifest.get("artifacts", {}).items()
                           if k not in ("report", "gx")}}
    text = json.dumps(stats, ensure_ascii=False)
    return json.loads(text.replace(str(out), "OUT").replace(str(ROOT), "ROOT"))


def snapshot(dest: Path, shared: Path, only: set[str] | None) -> None:
    for name, cfg in run_configs(shared).items():
        if only and name not in only:
            continue
        target = dest / name
        if target.exists():
            shutil.rmtree(target)
        with tempfile.TemporaryDirectory() as tmp:
            run_one(cfg, Path(tmp))
            target.mkdir(parents=True)
            for f in FILES:
                (target / f).write_bytes(_portable(Path(tmp) / f))
            manifest = json.loads((Path(tmp) / "manifest.json").read_text(encoding="utf-8"))
            (target / "counts.json").write_text(json.dumps(manifest["counts"], indent=1,
                                                           sort_keys=True, ensure_ascii=False),
                                                encoding="utf-8")
            (target / "stats.json").write_text(json.dumps(_stats(manifest, Path(tmp)), indent=1,
                                                          sort_keys=True, ensure_ascii=False),
                                               encoding="utf-8")
        print(f"{name}: saved to {target}")


def _portable(path: Path) -> bytes:
    """The file's bytes with this checkout's folder written as ROOT: the demo configs name their
    inputs relative to themselves, so the lineage of a demo record holds the checkout's path,
    and a snapshot made in another checkout (a ``git worktree`` of the old commit) must match."""
    return path.read_bytes().replace(str(ROOT).encode(), b"ROOT")


def _digest(path: Path) -> str:
    return hashlib.sha256(_portable(path)).hexdigest()


def compare(base: Path, shared: Path, only: set[str] | None) -> int:
    differences = 0
    for name, cfg in run_configs(shared).items():
        if only and name not in only:
            continue
        if not (base / name).is_dir():
            print(f"{name}: no baseline under {base / name}")
            differences += 1
            continue
        with tempfile.TemporaryDirectory() as tmp:
            run_one(cfg, Path(tmp))
            bad = [f for f in FILES if _digest(Path(tmp) / f) != _digest(base / name / f)]
            manifest = json.loads((Path(tmp) / "manifest.json").read_text(encoding="utf-8"))
            counts = manifest["counts"]
            old = json.loads((base / name / "counts.json").read_text(encoding="utf-8"))
            if counts != old:
                bad.append(f"manifest counts ({old} -> {counts})")
            stats_path = base / name / "stats.json"  # absent in snapshots made before it was
            if stats_path.is_file():
                old_stats = json.loads(stats_path.read_text(encoding="utf-8"))
                new_stats = _stats(manifest, Path(tmp))
                for part in ("stage_stats", "artifacts"):
                    for key in sorted(set(old_stats[part]) | set(new_stats[part])):
                        if old_stats[part].get(key) != new_stats[part].get(key):
                            bad.append(f"manifest {part}.{key}")
        differences += len(bad)
        print(f"{name}: {'identical' if not bad else 'DIFFERENT: ' + ', '.join(bad)}")
    return 1 if differences else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=("snapshot", "compare"))
    ap.add_argument("dir", type=Path)
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    ap.add_argument("--only", help="comma-separated run names (demo-spo, real-hotel, ...)")
    args = ap.parse_args()
    only = set(args.only.split(",")) if args.only else None
    if args.action == "snapshot":
        snapshot(args.dir, args.shared, only)
        return 0
    return compare(args.dir, args.shared, only)


if __name__ == "__main__":
    sys.exit(main())
