"""What a run shows while it works: plain lines without escape codes off a terminal, one live
line with totals and an ETA on a (pseudo-)terminal, nothing with --quiet."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import yaml

from dataprep.progress import LogProgress, make_progress

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _cli(repo_root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(repo_root))
    return subprocess.run([sys.executable, "-m", "dataprep.cli", *args], cwd=repo_root,
                          capture_output=True, text=True, env=env, timeout=600)


def _synthetic_config(tmp: Path, n: int) -> Path:
    """n distinct two-turn dialogs: enough records that the stages after reading take a while."""
    data = tmp / "dialogs.jsonl"
    with data.open("w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({"conversations": [
                {"role": "user", "content": f"第{i}号问题：酒店{i % 97}有没有停车场？"},
                {"role": "assistant", "content": f"第{i}号回答：有，停车场在{i % 13}号楼。"}]},
                ensure_ascii=False) + "\n")
    cfg = tmp / "synthetic.yaml"
    cfg.write_text(yaml.safe_dump({"name": "synthetic", "inputs": [
        {"reader": "chatglm3", "path": str(data)}], "stages": ["clean", "split", "write"]}),
        encoding="utf-8")
    return cfg


def test_no_escape_codes_when_stderr_is_not_a_terminal(repo_root: Path, tmp_path: Path) -> None:
    res = _cli(repo_root, "run", "configs/hotel.yaml", "--out", str(tmp_path / "a"))
    assert res.returncode == 0, res.stderr
    assert "\x1b" not in res.stderr and "\x1b" not in res.stdout
    assert "\r" not in res.stderr
    # The summary starts at column 0 (no progress bar left the cursor mid-line).
    assert res.stdout.splitlines()[0].startswith("hotel: 33 input")
    assert "[dataprep] read: done, 27 records to process" in res.stderr.splitlines()

    verbose = _cli(repo_root, "run", "configs/hotel.yaml", "--out", str(tmp_path / "b"), "-v")
    assert verbose.returncode == 0 and "\x1b" not in verbose.stderr
    lines = verbose.stderr.splitlines()
    assert "[dataprep] validate: started (27 records)" in lines
    assert any(re.fullmatch(r"\[dataprep\] dedup: 27 in, 25 out, [\d.]+ s", x) for x in lines)
    assert any(re.fullmatch(r"\[dataprep\] expectations: done in [\d.]+ s", x) for x in lines)

    config = _synthetic_config(tmp_path, 50)  # -q shows nothing whatever the stages: a small run
    quiet = _cli(repo_root, "run", str(config), "--out", str(tmp_path / "c"), "-q")
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert quiet.stdout.startswith("synthetic: 50 input")


def test_log_lines_carry_totals_rate_and_eta() -> None:
    buf = io.StringIO()
    p = LogProgress(verbosity=1, stream=buf, interval=0.0)
    for _ in p.track("split", p.track("read", range(50))):
        time.sleep(0.01)
    p.close()
    text = buf.getvalue()
    assert "read: done, 50 records to process" in text
    assert re.search(r"split: \d+/50 records, [\d,]+ rec/s, ETA \d+:\d\d:\d\d", text), text
    assert make_progress(verbosity=0, stream=buf).__class__.__name__ == "RunProgress"


def _run_in_pty(argv: list[str], cwd: Path) -> tuple[int, str]:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    env = dict(os.environ, TERM="xterm-256color", COLUMNS="120", PYTHONPATH=str(cwd))
    proc = subprocess.Popen(argv, cwd=cwd, stdin=slave, stdout=slave, stderr=slave, env=env,
                            close_fds=True)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(timeout=60), b"".join(chunks).decode("utf-8", "replace")


def test_live_display_in_a_terminal_shows_totals_and_eta(repo_root: Path, tmp_path: Path) -> None:
    config = _synthetic_config(tmp_path, 4000)
    rc, raw = _run_in_pty([sys.executable, "-m", "dataprep.cli", "run", str(config), "--out",
                           str(tmp_path / "out")], repo_root)
    assert rc == 0, raw[-2000:]
    assert "\x1b[" in raw  # a live display was drawn
    frames = [ANSI.sub("", f) for f in re.split(r"\r|\n", raw)]
    # After reading, the current stage shows records done / the exact total, a rate and an ETA.
    live = [f for f in frames if re.search(r"\b\d+/4000\b.*rec/s\s+ETA \d+:\d\d:\d\d", f)]
    assert live, "\n".join(frames[-40:])
    assert any(re.search(r"\bread\b", f) for f in frames)
    # The display is gone before the summary, which starts at column 0.
    summary = [f for f in frames if "4000 input" in f]
    assert summary and summary[-1].startswith("synthetic: 4000 input"), summary


def test_version(repo_root: Path) -> None:
    import dataprep

    res = _cli(repo_root, "--version")
    assert res.returncode == 0 and res.stdout.strip() == f"dataprep {dataprep.__version__}"


def test_log_goes_on_while_a_stage_works_without_output() -> None:
    buf = io.StringIO()
    p = LogProgress(verbosity=1, stream=buf, interval=0.2)

    def barrier(records):  # like dedup: swallows everything, works, then passes records on
        items = list(records)
        time.sleep(1.0)
        yield from items

    assert len(list(p.track("dedup", barrier(p.track("read", range(30)))))) == 30
    p.close()
    lines = buf.getvalue().splitlines()
    assert sum(line.startswith("[dataprep] dedup: 0/30 records") for line in lines) >= 2, lines
