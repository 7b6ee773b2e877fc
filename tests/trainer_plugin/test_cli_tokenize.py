"""``dataprep-train tokenize`` and the subcommand table."""

from __future__ import annotations

import json
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from dataprep.tokenizer import load_tokenizer
from trainer_plugin.cli import SUBCOMMANDS, build_parser, main
from trainer_plugin.encoding import encode_conversation

SAMPLES = [
    {
        "conversations": [
            {"role": "user", "content": "你好"},
            {"role": "assistant", "content": "你好！"},
        ]
    },
    {"conversations": [{"role": "user", "content": "只有用户"}]},
    {
        "conversations": [
            {"role": "user", "content": "查询北京天气"},
            {"role": "assistant", "content": "好的。"},
            {"role": "observation", "content": '{"weather": "晴"}'},
            {"role": "assistant", "content": "北京今天晴。"},
        ]
    },
]


@pytest.fixture
def input_file(tmp_path: Path) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text(
        "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in SAMPLES), encoding="utf-8"
    )
    return path


def run(tokenizer_dir: Path, input_file: Path, output: Path, *extra: str) -> int:
    return main(
        [
            "tokenize",
            "--tokenizer",
            str(tokenizer_dir),
            "--input",
            str(input_file),
            "--output",
            str(output),
            *extra,
        ]
    )


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_one_output_line_per_input_sample(tokenizer_dir, input_file, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    assert run(tokenizer_dir, input_file, out) == 0
    rows = read_jsonl(out)
    tok = load_tokenizer(tokenizer_dir)
    assert len(rows) == len(SAMPLES)
    for k in (0, 2):
        enc = encode_conversation(SAMPLES[k], tok)
        assert rows[k] == {"input_ids": enc.input_ids, "labels": enc.labels}
    assert rows[1] == {
        "dropped": "no_trained_tokens",
        "line": 2,
        "n_tokens": len(encode_conversation(SAMPLES[1], tok)),
    }
    err = capsys.readouterr().err
    assert "kept 2" in err and "dropped: no_trained_tokens 1" in err


def test_compat_official_learns_the_observation(tokenizer_dir, input_file, tmp_path):
    default, official = tmp_path / "d.jsonl", tmp_path / "o.jsonl"
    assert run(tokenizer_dir, input_file, default) == 0
    assert run(tokenizer_dir, input_file, official, "--compat", "official") == 0
    d, o = read_jsonl(default)[2], read_jsonl(official)[2]
    assert d["input_ids"] == o["input_ids"]
    learned = sum(x != -100 for x in o["labels"]) - sum(x != -100 for x in d["labels"])
    tok = load_tokenizer(tokenizer_dir)
    # the observation's "\n" + content tokens, and the <|assistant|> after it
    assert learned == len(tok.encode("\n")) + len(tok.encode('{"weather": "晴"}')) + 1


def test_max_length_cut_and_drop(tokenizer_dir, input_file, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    assert run(tokenizer_dir, input_file, out, "--max-length", "20", "--show", "3") == 0
    assert "== sample 3 (input line 3, cut at a message boundary) ==" in capsys.readouterr().out
    cut = read_jsonl(out)[2]
    assert cut["cut"] == "cut_at_message_boundary"
    assert len(cut["input_ids"]) <= 20 and cut["input_ids"][-1] == 2 == cut["labels"][-1]
    assert run(tokenizer_dir, input_file, out, "--max-length", "20", "--truncation", "drop") == 0
    assert read_jsonl(out)[2]["dropped"] == "too_long"


def test_show_prints_aligned_token_id_label_columns(tokenizer_dir, input_file, tmp_path, capsys):
    assert run(tokenizer_dir, input_file, tmp_path / "o.jsonl", "--show", "2") == 0
    stdout = capsys.readouterr().out
    assert "== sample 1 (input line 1) ==" in stdout
    assert "== sample 2 (input line 2) ==\ndropped: no_trained_tokens" in stdout
    assert "== sample 3" not in stdout
    table = stdout.split("== sample 2")[0].splitlines()[1:]
    header, rows = table[0], table[1:]
    assert header.split() == ["#", "token", "id", "label"]
    tok = load_tokenizer(tokenizer_dir)
    enc = encode_conversation(SAMPLES[0], tok)
    assert len(rows) == len(enc.input_ids)
    # right-aligned columns: every id ends under "id", every label under "label", counted in
    # terminal cells (a Chinese character takes two), so rows holding '你' line up too
    id_end = cells(header[: header.index("id") + 2])
    label_end = cells(header[: header.index("label") + 5])
    assert any(cells(r) != len(r) for r in rows)  # some rows do hold wide characters
    for line, i, lab in zip(rows, enc.input_ids, enc.labels, strict=True):
        assert at_cells(line, id_end).endswith(f" {i}")
        assert at_cells(line, label_end).endswith(f" {lab}")
        assert line.endswith("*") == (lab != -100)
    assert rows[2].split()[:3] == ["2", "'<|user|>'", "64795"]


def cells(text: str) -> int:
    """Terminal cells: East Asian wide/full-width characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def at_cells(line: str, n: int) -> str:
    """The prefix of ``line`` that fills the first ``n`` terminal cells."""
    out = ""
    for c in line:
        if cells(out + c) > n:
            break
        out += c
    return out


def test_show_collapses_long_masked_runs_and_show_all_expands(tokenizer_dir, corpora, tmp_path,
                                                             capsys):
    lab = corpora / "crosswoz-hotel-finetune-lab" / "train.chatglm3.jsonl"
    first = tmp_path / "one.jsonl"
    first.write_text(lab.read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")
    tok = load_tokenizer(tokenizer_dir)
    enc = encode_conversation(json.loads(first.read_text(encoding="utf-8")), tok)
    (schema,) = [sp for sp in enc.spans if sp.index is None]  # the tool system prompt

    assert run(tokenizer_dir, first, tmp_path / "o.jsonl", "--show", "1") == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    n = schema.end - schema.start
    assert f"…  {n} masked tokens (tool schema), rows 2-{schema.end - 1}: '<|system|>" in rows[2]
    assert any("masked tokens (observation)" in r for r in rows)
    assert len(rows) < len(enc.input_ids) // 3
    # every trained token still has its own row, and the rows before and after a run are there
    trained = [k for k, lab in enumerate(enc.labels) if lab != -100]
    assert [int(r.split()[0]) for r in rows if r.endswith("*")] == trained
    assert rows[:2] == [r for r in rows if r.split()[0] in ("0", "1")]

    assert run(tokenizer_dir, first, tmp_path / "o.jsonl", "--show", "1", "--show-all") == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    assert len(rows) == len(enc.input_ids) and not any("masked tokens" in r for r in rows)


def test_length_summary_gives_each_truncation_mode_its_line(tokenizer_dir, input_file, tmp_path,
                                                            capsys):
    assert run(tokenizer_dir, input_file, tmp_path / "o.jsonl", "--max-length", "20") == 0
    err = capsys.readouterr().err.splitlines()
    (k,) = [k for k, line in enumerate(err) if line.startswith("tokens per sample")]
    assert err[k].endswith("; 1 over max_length 20")
    assert err[k + 1] == "  --truncation cut:  1 kept (cut at a message boundary), 0 dropped"
    assert err[k + 2] == "  --truncation drop: 1 dropped"


def test_version(capsys):
    from trainer_plugin import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"dataprep-train {__version__}\n"


@pytest.mark.parametrize(
    "argv",
    [
        ["tokenize", "--tokenizer", "TOK", "--input", "MISSING.jsonl", "--output", "OUT"],
        ["tokenize", "--tokenizer", "MISSING_DIR", "--input", "IN", "--output", "OUT"],
        ["tokenize", "--tokenizer", "TOK", "--input", "IN", "--output", "NO_DIR/out.jsonl"],
        ["tokenize", "--tokenizer", "TOK", "--input", "IN", "--output", "OUT", "--truncation", "x"],
        [
            "tokenize",
            "--tokenizer",
            "TOK",
            "--input",
            "IN",
            "--output",
            "OUT",
            "--max-length",
            "-1",
        ],
        ["tokenize", "--tokenizer", "TOK", "--input", "IN", "--output", "OUT", "--show", "many"],
        ["tokenize", "--input", "IN"],
        ["no-such-command"],
        [],
    ],
)
def test_bad_arguments_exit_2_with_one_line(tokenizer_dir, input_file, tmp_path, capsys, argv):
    subst = {
        "TOK": str(tokenizer_dir),
        "IN": str(input_file),
        "OUT": str(tmp_path / "o.jsonl"),
        "MISSING.jsonl": str(tmp_path / "missing.jsonl"),
        "MISSING_DIR": str(tmp_path / "nope"),
        "NO_DIR/out.jsonl": str(tmp_path / "no" / "out.jsonl"),
    }
    assert main([subst.get(a, a) for a in argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dataprep-train: error: "), captured.err
    assert "Traceback" not in captured.err


def test_invalid_sample_stops_with_its_line_or_is_written_as_dropped(
    tokenizer_dir, tmp_path, capsys
):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps(SAMPLES[0])
        + "\n"
        + json.dumps({"conversations": [{"role": "function", "content": "x"}]})
        + "\n",
        encoding="utf-8",
    )
    out = tmp_path / "out.jsonl"
    assert run(tokenizer_dir, bad, out) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2: conversations[0]: unknown role 'function'" in err
    assert len(err.splitlines()) == 1
    assert run(tokenizer_dir, bad, out, "--on-error", "drop") == 0
    assert read_jsonl(out)[1]["dropped"] == "invalid_sample"
    assert "unknown role 'function'" in read_jsonl(out)[1]["error"]
    bad.write_text("{not json\n", encoding="utf-8")
    assert run(tokenizer_dir, bad, out) == 2
    assert f"{bad}:1: not valid JSON" in capsys.readouterr().err


def test_help_on_every_command(capsys):
    assert main(["--help"]) == 0
    top = capsys.readouterr().out
    for cmd in SUBCOMMANDS:
        assert cmd.name in top
        assert main([cmd.name, "--help"]) == 0
        assert capsys.readouterr().out.startswith(f"usage: dataprep-train {cmd.name}")


def test_subcommand_table_entries_resolve():
    names = [c.name for c in SUBCOMMANDS]
    assert names[0] == "tokenize" and len(set(names)) == len(names)
    parser = build_parser()
    args = parser.parse_args(["tokenize", "--tokenizer", "t", "--input", "i", "--output", "o"])
    assert args._run == "trainer_plugin.cli:run_tokenize"


def test_console_script_is_installed(tokenizer_dir, input_file, tmp_path):
    script = Path(sys.executable).parent / "dataprep-train"
    done = subprocess.run(
        [str(script), "tokenize", "--help"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and "--truncation {drop,cut}" in done.stdout
    done = subprocess.run(
        [
            str(script),
            "tokenize",
            "--tokenizer",
            str(tokenizer_dir),
            "--input",
            str(tmp_path / "missing.jsonl"),
            "--output",
            str(tmp_path / "o.jsonl"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"dataprep-train: error: --input: file not found: {tmp_path / 'missing.jsonl'}"
    )
