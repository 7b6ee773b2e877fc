"""Issue 9 item 5: a run's outputs appear as one generation.

The kill test runs the real pipeline on the real SPO corpus in a subprocess, kills it with SIGKILL
at random points (seeded delays, several seeds), and checks after each kill and after a rerun
into the same folder that the folder holds exactly one complete generation (the manifest's counts
match the files, no record is in two splits) and that no temp file or folder is left.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dataprep import run_folder
from dataprep.run_folder import check_run_folder, clean_leftovers, commit_generation

REPO = Path(__file__).resolve().parents[2]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftovers_of_dead_runs_are_cleaned_and_live_ones_kept(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "train.jsonl").write_text("{}\n")
    dead = _dead_pid()
    (tmp_path / f"out.tmp-{dead}").mkdir()
    (tmp_path / f"out.tmp-{dead}" / "llm_cache").mkdir()
    (tmp_path / f"out.tmp-{dead}" / "llm_cache" / "answers.sqlite").write_text("x")
    (tmp_path / f"out.tmp-{os.getpid()}").mkdir()  # a live run's folder is not touched
    (tmp_path / "outside.tmp-1").mkdir()           # another folder's name is not touched
    removed = clean_leftovers(out)
    assert removed == [tmp_path / f"out.tmp-{dead}"]
    assert (out / "llm_cache" / "answers.sqlite").read_text() == "x"  # the cache is rescued
    assert (tmp_path / f"out.tmp-{os.getpid()}").is_dir()
    assert (tmp_path / "outside.tmp-1").is_dir()


def test_a_generation_caught_between_two_renames_is_put_back(tmp_path: Path) -> None:
    out = tmp_path / "out"
    old = tmp_path / f"out.old-{_dead_pid()}"
    old.mkdir()
    (old / "manifest.json").write_text("{}")
    clean_leftovers(out)
    assert (out / "manifest.json").is_file() and not old.exists()


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_commit_swaps_the_whole_folder(exchange: bool, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    if not exchange:
        monkeypatch.setattr(run_folder, "_exchange", lambda a, b: False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "train.jsonl").write_text("old\n")
    (out / "stale.txt").write_text("from the previous generation\n")
    (out / "llm_cache").mkdir()
    (out / "llm_cache" / "a").write_text("cached")
    new = run_folder.new_generation(out)
    (new / "train.jsonl").write_text("new\n")
    commit_generation(new, out)
    assert (out / "train.jsonl").read_text() == "new\n"
    assert not (out / "stale.txt").exists()
    assert (out / "llm_cache" / "a").read_text() == "cached"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# -- kill -9 at random points of a real run -------------------------------------------------------
def _config(tmp_path: Path, corpora: Path) -> Path:
    cfg = tmp_path / "spo.yaml"
    spo = corpora / "spo-repair-records" / "spo_0.subset.json"
    cfg.write_text(
        "name: spo\nseed: 1\n"
        f"inputs:\n  - {{reader: spo, path: {spo}}}\n"
        "stages:\n  - clean\n  - validate\n  - dedup\n"
        "  - {name: split, ratios: [0.8, 0.1, 0.1]}\n  - write\n  - report\n",
        encoding="utf-8")
    return cfg


def _run(cfg: Path, out: Path, seed: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "dataprep.cli", "run", str(cfg), "--out",
                             str(out), "--quiet", "--set", f"seed={seed}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


def _assert_one_complete_generation(out: Path) -> dict:
    manifest = check_run_folder(out)  # counts match the files, every line valid
    seen: dict[str, str] = {}
    for split in ("train", "dev", "test"):
        for line in (out / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
            rid = json.loads(line)["id"]
            assert rid not in seen, f"{rid} in {seen.get(rid)} and {split}"
            seen[rid] = split
    return manifest


def _no_temp_files(out: Path) -> None:
    siblings = sorted(p.name for p in out.parent.iterdir() if p.name.startswith(out.name))
    assert siblings == [out.name], siblings
    temps = [p for p in out.rglob("*") if p.name.endswith(".tmp") or ".tmp-" in p.name]
    assert temps == []


def test_kill_9_at_random_points_leaves_one_complete_generation(tmp_path: Path,
                                                                corpora: Path) -> None:
    cfg = _config(tmp_path, corpora)
    out = tmp_path / "out"
    t0 = time.monotonic()
    first = _run(cfg, out, seed=100)
    assert first.wait(timeout=600) == 0, first.stderr.read()
    # Only to spread the kill points over a whole run; nothing is asserted about time.
    duration = time.monotonic() - t0
    previous = _assert_one_complete_generation(out)["seed"]
    for seed in range(4):
        delay = random.Random(seed).uniform(0.0, duration * 1.1)
        proc = _run(cfg, out, seed=seed)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        # Killed or finished: the folder is the previous generation or this run's, never a mix.
        seed_now = _assert_one_complete_generation(out)["seed"]
        assert seed_now in (previous, seed)
        rerun = _run(cfg, out, seed=seed)
        assert rerun.wait(timeout=600) == 0, rerun.stderr.read()
        assert _assert_one_complete_generation(out)["seed"] == seed
        _no_temp_files(out)
        previous = seed
