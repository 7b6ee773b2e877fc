"""A file of deliberately broken lines: each becomes a reject with its line and reason, the good
lines go through, and the accounting identity holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dataprep.config import config_from_dict
from dataprep.pipeline import Pipeline

GOOD = {"text": "发动机怠速抖动，火花塞积碳。", "answer": "发动机_性能故障_怠速抖动\n火花塞_部件故障_积碳"}

# (line content as bytes, expected reason or None for a good line)
CASES: list[tuple[bytes, str | None]] = [
    (json.dumps(GOOD, ensure_ascii=False).encode(), None),
    (b'{"text": "\xe5\x8f\x91\xe5\x8a\xa8\xe6\x9c\xba", "answer": "x_', "malformed_json"),  # truncated
    (json.dumps({"text": 42, "answer": "a_部件故障_b"}).encode(), "wrong_type"),
    (json.dumps({"text": None, "answer": "a_部件故障_b"}).encode(), "null_value"),
    (json.dumps({"text": "只有文本"}, ensure_ascii=False).encode(), "missing_field"),
    ('{"text": "刹车异响", "answer": "刹车_部件故障_异响"}'.encode("gbk"), "undecodable_bytes"),
    (b"\xef\xbb\xbf" + json.dumps(GOOD, ensure_ascii=False).encode(), "bom_inside_file"),
    (b"", "empty_line"),
    (b"   \t", "empty_line"),
    (json.dumps({"text": "长" * (5 * 1024 * 1024 // 3 + 10), "answer": "a_部件故障_b"},
                ensure_ascii=False).encode(), "line_too_long"),
    (b"[1, 2, 3]", "wrong_type"),
    (json.dumps({"text": "变速箱漏油。", "answer": "变速箱_部件故障_漏油"}, ensure_ascii=False).encode(),
     None),
]


@pytest.fixture()
def broken_file(tmp_path: Path) -> Path:
    path = tmp_path / "broken.jsonl"
    path.write_bytes(b"\n".join(line for line, _ in CASES) + b"\n")
    return path


def test_each_broken_line_is_a_reject_with_line_and_reason(broken_file: Path, tmp_path: Path) -> None:
    cfg = config_from_dict({"name": "broken", "inputs": [{"reader": "spo", "path": str(broken_file)}],
                            "stages": ["validate", {"name": "split", "ratios": [1, 0, 0]}, "write"]})
    manifest = Pipeline(cfg).run(tmp_path / "out", progress=False)

    rejects = [json.loads(x) for x in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    got = {r["line"]: r["reason"] for r in rejects}
    expected = {i: reason for i, (_, reason) in enumerate(CASES, start=1) if reason}
    assert got == expected
    for r in rejects:
        assert r["source"] == str(broken_file)
        assert r["message"]
        # Nothing is lost: the original bytes are kept, as text or base64 when not UTF-8.
        assert ("raw" in r) or ("raw_base64" in r)
    gbk = next(r for r in rejects if r["reason"] == "undecodable_bytes")
    assert "GBK" in gbk["message"]
    big = next(r for r in rejects if r["reason"] == "line_too_long")
    assert len(big["raw"]) > 1_000_000

    counts = manifest["counts"]
    assert counts["input"] == len(CASES)
    assert sum(counts["rejected"].values()) == len(expected)
    good = len(CASES) - len(expected)
    assert counts["train"] + counts["dev"] + counts["test"] == good
    assert counts["input"] - sum(counts["rejected"].values()) - sum(counts["removed"].values()) \
        + counts["added"] == counts["train"] + counts["dev"] + counts["test"]
    written = (tmp_path / "out" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(x)["lineage"]["line"] for x in written] == [1, 12]


def test_bom_at_file_start_is_accepted(tmp_path: Path) -> None:
    from dataprep.corpora.spo.reader import SpoReader

    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD, ensure_ascii=False).encode() + b"\n")
    items = list(SpoReader(path).read())
    assert len(items) == 1 and items[0].meta["triples"][0] == ["发动机", "性能故障", "怠速抖动"]


def test_strict_stops_at_first_reject(broken_file: Path, tmp_path: Path) -> None:
    from dataprep.errors import StrictModeError

    cfg = config_from_dict({"name": "b", "strict": True,
                            "inputs": [{"reader": "spo", "path": str(broken_file)}]})
    with pytest.raises(StrictModeError, match=r"broken.jsonl:2: malformed JSON"):
        Pipeline(cfg).run(tmp_path / "out", progress=False)
    # An aborted run leaves no split file behind (they are renamed into place only on success).
    assert not (tmp_path / "out" / "train.jsonl").exists()
