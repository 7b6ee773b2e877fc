"""Issue 9 items 7 (YAML aliases) and 9: every unusable argument is one line on stderr, exit 2,
naming the flag or file and what to do, never a traceback or a misleading line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_cmd(*args: str, cwd: Path, module: str = "dataprep.cli", prefix: tuple[str, ...] = ()
            ) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([*prefix, sys.executable, "-m", module, *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300, env=env)


def one_line(res: subprocess.CompletedProcess, fragment: str) -> str:
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, res.stderr
    assert fragment in lines[0], lines[0]
    return lines[0]


SPO = str(REPO / "data" / "spo_sample.jsonl")
SPO_CONFIG = str(REPO / "configs" / "spo.yaml")


@pytest.mark.parametrize("args, fragment", [
    (["run", SPO_CONFIG, "--out", "afile"], "--out afile: is a file"),
    (["run", SPO_CONFIG, "--out", "afile/sub"], "--out afile/sub: lies under afile"),
    (["convert", "--from", "spo", SPO, "--out", "."], "--out .: is a folder"),
    (["convert", "--from", "spo", SPO, "--out", "afile/o.jsonl"], "lies under afile"),
    (["convert", "--from", "spo", SPO, "--out", "o.jsonl", "--option", "max_line_bytes=abc"],
     "reader option 'max_line_bytes' (spo): expected a positive whole number of bytes, found 'abc'"),
    (["convert", "--from", "spo", SPO, "--out", "o.jsonl", "--option", "max_line_bytes=-1"],
     "found -1"),
    (["convert", "--from", "spo", SPO, "--out", "o.jsonl", "--option", "prompt=[1,2]"],
     "reader option 'prompt' (spo): expected str, found list [1, 2]"),
    (["convert", "--from", "spo", SPO, "--out", "o.jsonl", "--option", "noequals"],
     "--option expects key=value"),
    (["convert", "--from", "spo", SPO, "--out", "o.jsonl", "--option", "prompt=[1"],
     "--option prompt:1:3: not valid YAML"),
    (["run", SPO_CONFIG, "--out", "o", "--set", "stages.clean.max_chars=-5"],
     "clean.max_chars must be a non-negative integer, got -5"),
    (["run", SPO_CONFIG, "--out", "o", "--set", "tokenizer=/nope"],
     "tokenizer: /nope: no tokenizer.model there"),
    (["convert", "--from", "spo", str(REPO / "data"), "--out", "o.jsonl"],
     "data: is a folder, expected a file"),
    (["validate", str(REPO / "data")], "data: is a folder, expected a file"),
    (["run", str(REPO / "data")], "data: is a folder, expected a YAML config file"),
    (["report", "afile"], "afile: is a file"),
    (["run", SPO_CONFIG, "--out", "o", "--set", "stages.split.ratios=[.nan,1,1]"],
     "--set stages.split.ratios: expected a finite number, found NaN [non_finite_number]"),
    (["run", SPO_CONFIG, "--out", "o", "--set", 'name="\\ud800"'], "[lone_surrogate]"),
    (["run", SPO_CONFIG, "--out", "o", "--set", "inputs=5"], "'inputs' must be a list"),
    (["run", SPO_CONFIG, "--out", "o", "--set", "stages=5"], "'stages' must be a list"),
])
def test_usage_errors_are_one_line(args: list[str], fragment: str, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a folder\n")
    one_line(run_cmd(*args, cwd=tmp_path), fragment)


def test_unwritable_out_is_one_line(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    # root writes anywhere: drop the capability that lets it, as an ordinary user would be.
    prefix = ("setpriv", "--bounding-set", "-dac_override") if os.geteuid() == 0 else ()
    res = run_cmd("run", SPO_CONFIG, "--out", str(ro / "out"), cwd=tmp_path, prefix=prefix)
    one_line(res, "cannot write there: Permission denied")
    res = run_cmd("convert", "--from", "spo", SPO, "--out", str(ro / "o.jsonl"), cwd=tmp_path,
                  prefix=prefix)
    one_line(res, "cannot write there: Permission denied")


def test_yaml_error_is_one_line_with_file_line_column(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ninputs: [\n  - a: b\nstages: {\n", encoding="utf-8")
    line = one_line(run_cmd("run", str(bad), cwd=tmp_path), "bad.yaml:3:3: not valid YAML")
    assert "expected the node content" in line


def test_yaml_alias_bomb_is_refused(tmp_path: Path) -> None:
    """The 1.4 KB "billion laughs" config that became a 400 MB manifest."""
    rows = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, cur in zip("abcdefgh", "bcdefghi", strict=True):
        rows.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    rows += ["name: bomb", "inputs: [{reader: spo, path: x.jsonl}]", "stages: [*i]"]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert bomb.stat().st_size < 2048
    one_line(run_cmd("run", str(bomb), cwd=tmp_path),
             "bomb.yaml:2:8: not valid YAML: YAML aliases (*a) are not allowed in a config")


def test_malformed_lab_index_is_one_line(tmp_path: Path, corpora: Path) -> None:
    lab = corpora / "crosswoz-hotel-finetune-lab"
    src = tmp_path / "raw_dialogs.jsonl"
    src.write_bytes(b"".join((lab / "raw_dialogs.jsonl").open("rb").readlines()[:3]))
    rows = (lab / "raw_dialogs.index.tsv").read_text(encoding="utf-8").splitlines()[:4]
    db = corpora / "crosswoz" / "database" / "hotel_db.json"
    index = tmp_path / "raw_dialogs.index.tsv"
    for broken, fragment in [
        ([rows[0], rows[1], "three\t" + rows[2].split("\t", 1)[1]], "index.tsv:3: expected a line"),
        (["lines\tpath", "1\ta.json"], "expected a tab-separated header with 'line'"),
        ([rows[0], "\t".join([*rows[1].split("\t")[:2], "x", *rows[1].split("\t")[3:]])],
         "index.tsv:2: expected a line number, a source path and an empty or whole-number"),
    ]:
        index.write_text("\n".join(broken) + "\n", encoding="utf-8")
        one_line(run_cmd("convert", "--from", "lab_dialog", str(src), "--out", "o.jsonl",
                         "--hotel-db", str(db), cwd=tmp_path), fragment)


def test_train_with_missing_model_fails_before_tokenizing(tmp_path: Path,
                                                          tokenizer_dir: Path) -> None:
    data = REPO / "data" / "lab_chatglm3_sample.jsonl"
    empty = tmp_path / "empty_model"
    empty.mkdir()
    for model, fragment in [("/nope", "--model /nope: no such folder"),
                            (str(empty), "no config.json in this folder"),
                            ("THUDM/chatglm3-6b", "--model THUDM/chatglm3-6b: no such folder")]:
        res = run_cmd("train", "--model", model, "--tokenizer", str(tokenizer_dir), "--data",
                      str(data), "--output-dir", str(tmp_path / "run"), cwd=tmp_path,
                      module="trainer_plugin.cli")
        line = one_line(res, fragment)
        assert "Repo id" not in line
        assert "samples" not in res.stdout  # the token-length summary never ran
