"""The CLI contract: exit codes, one-line errors, INPUT:LINE messages, --help everywhere."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dataprep.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dataprep.cli", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("cmd", [[], ["run"], ["convert"], ["validate"], ["report"]])
def test_help_everywhere(cmd: list[str]) -> None:
    res = run_cli(*cmd, "--help")
    assert res.returncode == 0 and "usage: dataprep" in res.stdout


@pytest.mark.parametrize("args, fragment", [
    (["run", "no/such.yaml"], "no/such.yaml: no such config file"),
    (["convert", "--from", "spo", "missing.jsonl", "--out", "x.jsonl"], "missing.jsonl: no such file"),
    (["convert", "--from", "nope", "a", "--out", "b"], "invalid choice: 'nope'"),
    (["validate", "missing.jsonl"], "missing.jsonl: no such file"),
    (["frobnicate"], "invalid choice"),
])
def test_unusable_arguments_exit_2_with_one_line(args: list[str], fragment: str, tmp_path) -> None:
    res = subprocess.run([sys.executable, "-m", "dataprep.cli", *args], capture_output=True,
                         text=True, cwd=tmp_path, timeout=60)
    assert res.returncode == 2
    assert fragment in res.stderr
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_convert_prints_input_line_reason_and_keeps_rejects(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "水泵漏水。", "answer": "水泵_部件故障_漏水"}\n{"text": 1, "answer": ""}\n', encoding="utf-8")
    out = tmp_path / "o.jsonl"
    assert main(["convert", "--from", "spo", str(src), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{src}:2: " in err and "[wrong_type]" in err
    assert len(out.read_text(encoding="utf-8").splitlines()) == 1
    rej = [json.loads(x) for x in (tmp_path / "o.rejects.jsonl").read_text().splitlines()]
    assert rej[0]["line"] == 2 and rej[0]["raw"] == '{"text": 1, "answer": ""}'
    src.write_text('{"text": "水泵漏水。", "answer": "水泵_部件故障_漏水"}\n', encoding="utf-8")
    assert main(["convert", "--from", "spo", str(src), "--out", str(out)]) == 0


def test_validate_reports_file_line_pointer(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    good = {"conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    bad_role = {"conversations": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]}
    bad_tool = {"tools": [{"name": "search_hotels", "parameters": {
        "type": "object", "properties": {"price_range_upper": {"type": "number"}},
        "additionalProperties": False}}],
        "conversations": [{"role": "user", "content": "hi"},
                          {"role": "tool", "name": "search_hotels",
                           "parameters": {"price_range_upper": "300"}},
                          {"role": "assistant", "content": "ok"}]}
    late_system = {"conversations": [{"role": "user", "content": "a"},
                                     {"role": "system", "content": "s"},
                                     {"role": "assistant", "content": "b"}]}
    ends_user = {"conversations": [{"role": "user", "content": "a"},
                                   {"role": "assistant", "content": "b"},
                                   {"role": "user", "content": "c"}]}
    path = tmp_path / "v.jsonl"
    path.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in
                              (good, bad_role, bad_tool, late_system, ends_user)) + "\n")
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert any(o.startswith(f"{path}:2: /conversations/1/role: expected one of") for o in out)
    assert any(o.startswith(f"{path}:3: /conversations/1/parameters/price_range_upper: expected "
                            "number, found string") for o in out)
    assert any(o.startswith(f"{path}:4: /conversations/1: a system message") for o in out)
    assert any(o.startswith(f"{path}:5: /conversations/2: expected the last message") for o in out)
    assert not any(o.startswith(f"{path}:1:") for o in out)
    path.write_text(json.dumps(good) + "\n")
    assert main(["validate", str(path)]) == 0


def test_run_then_validate_every_output_line(tmp_path: Path, repo_root: Path) -> None:
    res = run_cli("run", str(repo_root / "configs" / "spo.yaml"), "--out", str(tmp_path), "--quiet")
    assert res.returncode == 0, res.stderr
    assert "train" in res.stdout and str(tmp_path) in res.stdout
    # the config dedups and decontaminates; 6 dev/test since rare relations are pooled (issue 9)
    assert "leakage:  output 0 of 6 dev/test" in res.stdout
    for split in ("train", "dev", "test"):
        v = run_cli("validate", str(tmp_path / f"{split}.jsonl"))
        assert v.returncode == 0, v.stdout
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["counts"]["input"] == 32 and sum(m["counts"]["rejected"].values()) == 5


def test_convert_exits_0_when_only_removals_by_design(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                      repo_root: Path) -> None:
    # The shipped CrossWOZ sample holds dialogues without a separable hotel part (removed by
    # design) and one deliberately broken dialogue (rejected); keep all but the broken one.
    sample = json.loads((repo_root / "data" / "crosswoz_sample.json").read_text(encoding="utf-8"))
    src = tmp_path / "cw.json"
    out = tmp_path / "cw.jsonl"
    args = ["convert", "--from", "crosswoz", str(src), "--out", str(out),
            "--hotel-db", str(repo_root / "data" / "hotel_db_sample.json")]
    src.write_text(json.dumps(sample, ensure_ascii=False), encoding="utf-8")
    assert main(args) == 1
    assert "[wrong_type]" in capsys.readouterr().err
    sample = {k: v for k, v in sample.items() if k != "1011"}
    src.write_text(json.dumps(sample, ensure_ascii=False), encoding="utf-8")
    rc = main(args)
    captured = capsys.readouterr()
    assert "(removed by design)" in captured.err
    assert "0 rejected" in captured.out
    assert rc == 0
