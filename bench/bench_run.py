"""Time `dataprep run` on the full shared corpora; print records/s and peak memory per corpus.

Each corpus runs as its own `dataprep run` subprocess so that peak RSS is that run's alone.

    python bench/bench_run.py [--shared ../shared] [--stages validate,split,write] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def corpus_configs(shared: Path) -> dict[str, dict]:
    c = shared / "corpora"
    lab = c / "crosswoz-hotel-finetune-lab"
    return {
        "spo": {"inputs": [{"reader": "spo", "path": str(c / "spo-repair-records/spo_0.subset.json")}]},
        "docqa": {"inputs": [
            {"reader": "cmrc2018", "path": str(c / "cmrc2018/cmrc2018_dev.json")},
            {"reader": "dureader", "path": str(c / "dureader-2.0-demo/search.train.json")},
            {"reader": "dureader", "path": str(c / "dureader-2.0-demo/search.test.json")},
            {"reader": "multidoc_qa", "path": str(c / "multi-doc-qa-chinese/sample_old_format.jsonl")},
        ]},
        "hotel": {"hotel_db": str(c / "crosswoz/database/hotel_db.json"), "inputs": [
            {"reader": "crosswoz", "path": str(c / "crosswoz/val.json.zip")},
            {"reader": "lab_dialog", "path": str(lab / "raw_dialogs.jsonl")},
            {"reader": "lab_chatglm3", "path": str(lab / "train.chatglm3.jsonl")},
            {"reader": "lab_chatglm3", "path": str(lab / "dev.chatglm3.jsonl")},
        ]},
    }


def run_one(name: str, cfg: dict, stages: list, workdir: Path) -> dict:
    cfg = {"name": name, "seed": 42, **cfg, "stages": stages}
    cfg_path = workdir / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    out = workdir / name
    code = ("import resource, sys; from dataprep.cli import main; rc = main(sys.argv[1:]); "
            "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); "
            "sys.exit(rc)")
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code, "run", str(cfg_path), "--out", str(out),
                          "--quiet"], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{name}: dataprep run failed:\n{res.stderr}")
    rss_kb = int(next(line.split()[1] for line in res.stderr.splitlines()
                      if line.startswith("MAXRSS_KB")))
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    counts = manifest["counts"]
    return {"corpus": name, "input": counts["input"],
            "written": counts["train"] + counts["dev"] + counts["test"],
            "wall_s": wall, "pipeline_s": manifest["seconds"]["total"],
            "rec_per_s": counts["input"] / manifest["seconds"]["total"],
            "peak_rss_mb": rss_kb / 1024, "by_stage": manifest["seconds"]["by_stage"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=str(ROOT.parent / "shared"))
    ap.add_argument("--stages", default="validate,split,write",
                    help="comma-separated stage names (default: the foundation pipeline), or "
                    "'config' for each corpus's full pipeline in configs/")
    ap.add_argument("--corpora", default="spo,docqa,hotel")
    args = ap.parse_args()
    shared = Path(args.shared)
    if not (shared / "corpora").is_dir():
        raise SystemExit(f"no shared corpora at {shared}")
    configs = corpus_configs(shared)
    if args.stages == "config":
        # The full pipeline of each shipped demo config (clean ... report), on the real files.
        stage_lists = {name: yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text(
            encoding="utf-8"))["stages"] for name in configs}
        label = "the stages of configs/NAME.yaml"
    else:
        stage_lists = {name: args.stages.split(",") for name in configs}
        label = " -> ".join(args.stages.split(","))
    print(f"dataprep run on the full shared corpora; stages: {label}")
    print(f"{'corpus':8} {'input':>7} {'written':>8} {'pipeline s':>11} {'wall s':>8} "
          f"{'records/s':>10} {'peak RSS MB':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.corpora.split(","):
            r = run_one(name, configs[name], stage_lists[name], Path(tmp))
            print(f"{r['corpus']:8} {r['input']:>7} {r['written']:>8} {r['pipeline_s']:>11.2f} "
                  f"{r['wall_s']:>8.2f} {r['rec_per_s']:>10.0f} {r['peak_rss_mb']:>12.0f}")
            print(f"         by stage (s): {r['by_stage']}")


if __name__ == "__main__":
    main()
