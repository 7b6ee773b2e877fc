"""Issue 9 items 3, 4, 7 (zip) and 10 (CrossWOZ ids): one bad record is a reject with a reason
code, one bad file is a one-line error; nothing crashes, and no NaN reaches an output.

Each case starts from the real record or file that triggered it (a line of the fine-tuning-lab
data, a CrossWOZ dialogue, the real hotel_db.json or val.json.zip) with the hostile part put in.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Any

import pytest

from dataprep.config import config_from_dict
from dataprep.io import UnwritableValue, dumps, dumps_evidence
from dataprep.pipeline import Pipeline
from dataprep.registry import reader_class
from tests.dataprep.guards import hang_guard

CrossWOZReader = reader_class("crosswoz")
STAGES = ["clean", "validate", "dedup", {"name": "split", "ratios": [0.8, 0.1, 0.1]}, "write"]


def cli(*args: str, cwd: Path | None = None, prefix: tuple[str, ...] = ()
        ) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run([*prefix, sys.executable, "-m", "dataprep.cli", *args],
                          capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


def assert_one_line_error(res: subprocess.CompletedProcess, fragment: str) -> None:
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, res.stderr
    assert fragment in lines[0]


def strict(text: str) -> Any:
    def refuse(name: str) -> Any:
        raise AssertionError(f"{name} in an output")
    return json.loads(text, parse_constant=refuse)


def run(tmp_path: Path, inputs: list[dict[str, Any]], hotel_db: Path | None = None,
        stages: list[Any] = STAGES) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    raw: dict[str, Any] = {"name": "hostile", "inputs": inputs, "stages": stages}
    if hotel_db is not None:
        raw["hotel_db"] = str(hotel_db)
    out = tmp_path / "out"
    with hang_guard(300):
        manifest = Pipeline(config_from_dict(raw)).run(out, progress=False)
    for split in ("train", "dev", "test"):
        for line in (out / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
            strict(line)
    rejects = [strict(x) for x in (out / "rejects.jsonl").read_text("utf-8").splitlines()]
    c = manifest["counts"]
    assert c["input"] - sum(c["rejected"].values()) - sum(c["removed"].values()) + c["added"] \
        == c["train"] + c["dev"] + c["test"]
    assert len(rejects) == sum(c["rejected"].values()) + sum(c["removed"].values())
    return manifest, rejects


def lab_lines(corpora: Path, name: str, n: int) -> list[str]:
    path = corpora / "crosswoz-hotel-finetune-lab" / name
    with path.open(encoding="utf-8") as fh:
        return [next(fh).rstrip("\n") for _ in range(n)]


# -- item 3: non-finite numbers ----------------------------------------------------------------
@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_prices_and_ratings_never_reach_train(literal: str, tmp_path: Path,
                                                         corpora: Path, hotel_db_path: Path
                                                         ) -> None:
    dialogs = lab_lines(corpora, "raw_dialogs.jsonl", 6)
    chatglm3 = lab_lines(corpora, "train.chatglm3.jsonl", 6)
    assert '"price": 446.0' in dialogs[0]
    dialogs[0] = dialogs[0].replace('"price": 446.0', f'"price": {literal}', 1)
    dialogs[1] = re.sub(r'"rating": [0-9.]+', f'"rating": {literal}', dialogs[1], count=1)
    assert literal in dialogs[1]
    # the chatglm3 export double-encodes observations' numbers in tool calls: a call argument
    i = chatglm3[0].index('"parameters": {') + len('"parameters": {')
    chatglm3[0] = chatglm3[0][:i] + f'"price_range_upper": {literal}, ' + chatglm3[0][i:]
    (tmp_path / "d.jsonl").write_text("\n".join(dialogs) + "\n", encoding="utf-8")
    (tmp_path / "c.jsonl").write_text("\n".join(chatglm3) + "\n", encoding="utf-8")
    generic = tmp_path / "g.jsonl"
    generic.write_text(json.dumps({"conversations": [
        {"role": "user", "content": "几点了"}, {"role": "assistant", "content": "三点"}],
        "weight": 1.0}).replace("1.0", literal) + "\n", encoding="utf-8")
    manifest, rejects = run(tmp_path, [
        {"reader": "lab_dialog", "path": str(tmp_path / "d.jsonl"), "options": {"index": False}},
        {"reader": "lab_chatglm3", "path": str(tmp_path / "c.jsonl")},
        {"reader": "chatglm3", "path": str(generic)}], hotel_db_path)
    bad = [(Path(r["source"]).name, r["line"]) for r in rejects
           if r["reason"] == "non_finite_number"]
    assert sorted(bad) == [("c.jsonl", 1), ("d.jsonl", 1), ("d.jsonl", 2), ("g.jsonl", 1)]
    assert manifest["counts"]["rejected"]["non_finite_number"] == 4


def test_crosswoz_non_finite_values_are_rejects(tmp_path: Path, corpora: Path,
                                                hotel_db_path: Path) -> None:
    data = json.loads(zipfile.ZipFile(corpora / "crosswoz" / "val.json.zip").read("val.json"))
    ids = [k for k, d in data.items() if any(
        a[:3] == ["Inform", "酒店", "价格"] for m in d["messages"] for a in m["dialog_act"])][:3]
    sub = {k: data[k] for k in ids}
    text = json.dumps(sub, ensure_ascii=False)
    first, second = (json.dumps(sub[k], ensure_ascii=False) for k in ids[:2])
    nan_goal = first.replace("[[1,", "[[NaN,", 1)
    assert nan_goal != first
    price = next(a[3] for m in sub[ids[1]]["messages"] for a in m["dialog_act"]
                 if a[:3] == ["Inform", "酒店", "价格"])
    huge = second.replace(f'"{price}"', f'"{"9" * 400}-500元"')
    text = text.replace(first, nan_goal).replace(second, huge)
    path = tmp_path / "val.json"
    path.write_text(text, encoding="utf-8")
    items = list(CrossWOZReader(path, hotel_db=str(hotel_db_path)).read())
    reasons = {getattr(x, "item", None): getattr(x, "reason", "ok") for x in items}
    assert reasons[ids[0]] == "non_finite_number"
    assert reasons[ids[1]] == "unparsable_slot"


def test_hotel_db_with_nan_price_is_one_line_error(tmp_path: Path, hotel_db_path: Path,
                                                   corpora: Path) -> None:
    text = hotel_db_path.read_text(encoding="utf-8")
    db = tmp_path / "hotel_db.json"
    db.write_text(text.replace('"价格": 446', '"价格": NaN', 1), encoding="utf-8")
    assert db.read_text(encoding="utf-8") != text
    src = corpora / "crosswoz-hotel-finetune-lab" / "dev.chatglm3.jsonl"
    res = cli("convert", "--from", "lab_chatglm3", str(src), "--out", str(tmp_path / "o.jsonl"),
              "--hotel-db", str(db))
    assert_one_line_error(res, "[non_finite_number]")


def test_validate_calls_non_finite_lines_invalid(tmp_path: Path, corpora: Path) -> None:
    line = lab_lines(corpora, "dev.chatglm3.jsonl", 1)[0]
    f = tmp_path / "train.jsonl"
    f.write_text(json.dumps({"conversations": [
        {"role": "user", "content": "价格"}, {"role": "assistant", "content": "好"}],
        "weight": float("nan")}) + "\n" + line + "\n", encoding="utf-8")
    res = cli("validate", str(f))
    assert res.returncode == 1
    assert f"{f}:1: " in res.stdout and "[non_finite_number]" in res.stdout


def test_writer_is_the_last_line_of_defence() -> None:
    with pytest.raises(UnwritableValue) as e:
        dumps({"conversations": [], "weight": float("inf")})
    assert e.value.reason == "non_finite_number"
    with pytest.raises(UnwritableValue) as e:
        dumps({"content": "半个表情\ud83d"})
    assert e.value.reason == "lone_surrogate"
    evidence = dumps_evidence({"content": "半个表情\ud83d", "weight": float("nan")})
    assert strict(evidence) == {"content": "半个表情\ud83d", "weight": "NaN"}


# -- item 4: one bad line, one reject ----------------------------------------------------------
def test_each_hostile_line_is_a_reject_and_the_run_finishes(tmp_path: Path, corpora: Path,
                                                            hotel_db_path: Path) -> None:
    lines = lab_lines(corpora, "raw_dialogs.jsonl", 8)
    hostile = {
        2: "[" * 100_000 + "]" * 100_000,                                    # RecursionError
        3: lines[2].replace('"price": ', '"price": ' + "7" * 5000 + ", \"p\": ", 1),
        4: lines[3].replace('"content": "', '"content": "\\ud800', 1),          # user content
        5: lines[4].replace('"records": [', '"records": [{"name": "\\udfff"}, ', 1),
        6: lines[5].replace('"arguments": {', '"arguments": {"\\ud83d": 1, ', 1),
    }
    for n, text in hostile.items():
        assert text != lines[n - 1] or n == 2
        lines[n - 1] = text
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    manifest, rejects = run(tmp_path, [{"reader": "lab_dialog", "path": str(tmp_path / "d.jsonl"),
                                        "options": {"index": False}}], hotel_db_path)
    got = {r["line"]: r["reason"] for r in rejects if r["kind"] == "rejected"}
    assert got == {2: "too_deeply_nested", 3: "number_too_long", 4: "lone_surrogate",
                   5: "lone_surrogate", 6: "lone_surrogate"}
    assert manifest["counts"]["input"] == 8


def _patch_zip(src: Path, dst: Path, *, flags: int | None = None, method: int | None = None,
               corrupt: bool = False) -> Path:
    data = bytearray(src.read_bytes())
    local = data.find(b"PK\x03\x04")
    central = data.find(b"PK\x01\x02")
    if flags is not None:
        struct.pack_into("<H", data, local + 6, flags)
        struct.pack_into("<H", data, central + 8, flags)
    if method is not None:
        struct.pack_into("<H", data, local + 8, method)
        struct.pack_into("<H", data, central + 10, method)
    if corrupt:
        mid = (local + central) // 2
        data[mid:mid + 64] = bytes(64)
    dst.write_bytes(bytes(data))
    return dst


@pytest.mark.parametrize("kind, fragment", [
    ("corrupt", "cannot read the zip archive"),
    ("encrypted", "is encrypted"),
    ("deflate64", "compression method 9 is not supported"),
    ("not a zip", "cannot read the zip archive"),
])
def test_bad_zip_members_are_one_line_errors(kind: str, fragment: str, tmp_path: Path,
                                             corpora: Path, hotel_db_path: Path) -> None:
    real = corpora / "crosswoz" / "val.json.zip"
    dst = tmp_path / "val.json.zip"
    if kind == "corrupt":
        _patch_zip(real, dst, corrupt=True)
    elif kind == "encrypted":
        _patch_zip(real, dst, flags=0x1)
    elif kind == "deflate64":
        _patch_zip(real, dst, method=9)
    else:
        dst.write_bytes(real.read_bytes()[: 1 << 16])
    res = cli("convert", "--from", "crosswoz", str(dst), "--out", str(tmp_path / "o.jsonl"),
              "--hotel-db", str(hotel_db_path))
    assert_one_line_error(res, fragment)


def _deflate_bomb(path: Path, megabytes: int, declared: int | None = None) -> None:
    """A zip whose one member inflates from ~1 KB per MB: 2 MB of deflate -> 2 GB of zeros.
    Written by hand so that the test never holds the inflated bytes."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(1 << 20)
    block = comp.compress(chunk) + comp.flush(zlib.Z_FULL_FLUSH)  # same bytes for every MB
    tail = comp.flush()
    crc = 0
    for _ in range(megabytes):
        crc = zlib.crc32(chunk, crc)
    size = declared if declared is not None else megabytes << 20
    csize = len(block) * megabytes + len(tail)
    name = b"val.json"
    with path.open("wb") as fh:
        fh.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, crc, csize, size,
                             len(name), 0) + name)
        for _ in range(megabytes):
            fh.write(block)
        fh.write(tail)
        cd_offset = fh.tell()
        cd = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0, crc, csize, size,
                         len(name), 0, 0, 0, 0, 0, 0) + name
        fh.write(cd)
        fh.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(cd), cd_offset, 0))


@pytest.mark.parametrize("declared", [None, 1 << 20], ids=["honest-header", "lying-header"])
def test_zip_bomb_is_refused_without_inflating(declared: int | None, tmp_path: Path,
                                               hotel_db_path: Path) -> None:
    bomb = tmp_path / "val.json.zip"
    _deflate_bomb(bomb, 1908, declared)  # 2.0 GB of zeros in 2 MB
    assert bomb.stat().st_size < 3 << 20
    # Peak memory of the convert process alone (a fresh parent, so no other child counts).
    probe = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], "
             "capture_output=True, text=True); sys.stderr.write(r.stderr); "
             "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    res = subprocess.run([sys.executable, "-c", probe, sys.executable, "-m", "dataprep.cli",
                          "convert", "--from", "crosswoz", str(bomb), "--out",
                          str(tmp_path / "o.jsonl"), "--hotel-db", str(hotel_db_path)],
                         capture_output=True, text=True, timeout=600, env=env)
    rc, max_kib = map(int, res.stdout.split())
    assert rc == 2 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert ("over the limit" in res.stderr) if declared is None else \
        ("cannot read the zip archive" in res.stderr)
    assert max_kib < 1024 * 1024  # under 1 GiB: the 2 GB were never held


def test_unreadable_file_is_one_line_error(tmp_path: Path, corpora: Path) -> None:
    src = tmp_path / "spo.jsonl"
    shutil.copy(corpora / "spo-repair-records" / "spo_0.subset.json", src)
    src.chmod(0)
    # root reads anything: drop the capabilities that let it, as an ordinary user would be.
    prefix = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search") \
        if os.geteuid() == 0 else ()
    res = cli("convert", "--from", "spo", str(src), "--out", str(tmp_path / "o.jsonl"),
              prefix=prefix)
    assert_one_line_error(res, "Permission denied")


# -- item 10: duplicate CrossWOZ dialogue ids --------------------------------------------------
def test_duplicate_dialogue_ids_keep_the_first_and_reject_the_rest(tmp_path: Path, corpora: Path,
                                                                   hotel_db_path: Path) -> None:
    data = json.loads(zipfile.ZipFile(corpora / "crosswoz" / "val.json.zip").read("val.json"))
    ids = list(data)[:3]
    body = [f'"{k}": {json.dumps(data[k], ensure_ascii=False)}' for k in ids]
    # the third dialogue written again under the first one's id
    body.append(f'"{ids[0]}": {json.dumps(data[ids[2]], ensure_ascii=False)}')
    path = tmp_path / "val.json"
    path.write_text("{" + ", ".join(body) + "}", encoding="utf-8")
    items = list(CrossWOZReader(path, hotel_db=str(hotel_db_path)).read())
    assert len(items) == 4
    dup = [x for x in items if getattr(x, "reason", None) == "duplicate_dialogue_id"]
    assert len(dup) == 1 and dup[0].item == ids[0] and dup[0].kind == "rejected"
    assert dup[0].record == data[ids[2]]  # the dropped one is kept as evidence
    first = [x for x in items if getattr(x, "item", None) == ids[0] or
             getattr(getattr(x, "lineage", None), "item", None) == ids[0]]
    assert len(first) == 2


# -- item 4: a tampered run folder -------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> Path:
    out = tmp_path_factory.mktemp("run") / "spo"
    cfg = config_from_dict({"name": "spo", "inputs": [
        {"reader": "spo", "path": str(repo_root / "data" / "spo_sample.jsonl")}],
        "stages": ["validate", {"name": "split", "ratios": [0.5, 0.25, 0.25]}, "write"]})
    Pipeline(cfg).run(out, progress=False)
    return out


@pytest.mark.parametrize("tamper, fragment", [
    (lambda o: (o / "manifest.json").write_text('{"counts": {"input": 3', "utf-8"),
     "manifest.json: not strict JSON"),
    (lambda o: (o / "manifest.json").write_text('{"counts": {"input": "many"}}', "utf-8"),
     "counts.input must be a whole number"),
    (lambda o: (o / "train.jsonl").open("a").write('{"conversations": 5}\n'),
     "the manifest counts"),
    (lambda o: (o / "dev.jsonl").write_text(
        (o / "dev.jsonl").read_text("utf-8").replace('"conversations": [', '"conversations": [5,',
                                                      1), "utf-8"),
     "dev.jsonl: record 1"),
    (lambda o: (o / "test.jsonl").unlink(), "test.jsonl: missing"),
    (lambda o: (o / "rejects.jsonl").write_text("NaN\n", "utf-8"), "rejects.jsonl:1"),
    (lambda o: (o / "manifest.json").write_text(
        (o / "manifest.json").read_text("utf-8").replace('"stage_stats": {',
                                                         '"stage_stats": {"balance": 7, ', 1),
        "utf-8"), "does not have the shape"),
], ids=["truncated-manifest", "counts-string", "extra-line", "bad-record", "missing-split",
        "nan-reject", "stats-shape"])
def test_tampered_run_folder_is_one_line_error(tamper: Any, fragment: str, finished_run: Path,
                                               tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(finished_run, out)
    tamper(out)
    res = cli("report", str(out))
    assert_one_line_error(res, fragment)


# -- no input can hang the clean stage ---------------------------------------------------------
@pytest.mark.parametrize("hostile", ["<!--" * 250_000, "<br" + " " * 1_000_000],
                         ids=["unclosed-comments", "unclosed-tag"])
def test_html_cleaning_is_linear_on_hostile_text(hostile: str, tmp_path: Path,
                                                 corpora: Path) -> None:
    """Each of these took hours in the clean stage (quadratic regex scans)."""
    real = json.loads((corpora / "spo-repair-records" / "spo_0.subset.json")
                      .read_text(encoding="utf-8").splitlines()[0])
    real["text"] = real["text"] + hostile
    src = tmp_path / "spo.jsonl"
    src.write_text(json.dumps(real, ensure_ascii=False) + "\n", encoding="utf-8")
    manifest, _ = run(tmp_path, [{"reader": "spo", "path": str(src)}],
                      stages=["clean", {"name": "split", "ratios": [1, 0, 0]}, "write"])
    assert manifest["counts"]["train"] == 1
