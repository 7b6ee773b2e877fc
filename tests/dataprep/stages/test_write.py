"""The writer's one-schema check, as ``datasets.load_dataset("json")`` reads a split: chunks of
10 MB, every later chunk cast to the first one's schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dataprep.errors import SplitSchemaError
from dataprep.record import Conversation, Lineage, Message
from dataprep.stages.write import DATASETS_JSON_CHUNK, check_arrow_schema


def _lines_past_one_chunk(path: Path, last: dict) -> None:
    filler = {"id": "r", "meta": {"a": 1, "pad": "填" * 200}}
    line = json.dumps(filler, ensure_ascii=False) + "\n"
    with path.open("w", encoding="utf-8") as fh:
        for _ in range(DATASETS_JSON_CHUNK // len(line.encode()) + 10):
            fh.write(line)
        fh.write(json.dumps(last, ensure_ascii=False) + "\n")


def test_a_key_first_seen_after_the_first_chunk_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    _lines_past_one_chunk(path, {"id": "r", "meta": {"a": 1, "pad": "x", "late": 2}})
    with pytest.raises(SplitSchemaError, match=r"train\.jsonl: fields take a new shape after the "
                                               r"first 10 MB.*meta: struct<.*late"):
        check_arrow_schema(path, "train")


def test_a_key_missing_later_and_small_files_pass(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    _lines_past_one_chunk(path, {"id": "r", "meta": {"pad": "x"}})  # datasets fills null
    check_arrow_schema(path, "train")
    small = tmp_path / "dev.jsonl"
    small.write_text('{"a": {"x": 1}}\n{"a": {"y": 2}}\n', encoding="utf-8")
    check_arrow_schema(small, "dev")  # one chunk: unified as it is read
    small.write_text('{"a": [1]}\n{"a": "1"}\n', encoding="utf-8")
    with pytest.raises(SplitSchemaError, match=r"dev\.jsonl: its lines do not share one schema"):
        check_arrow_schema(small, "dev")


def test_lineage_extra_is_json_text_whatever_its_keys(tmp_path: Path) -> None:
    """Keys of ``lineage.extra`` vary per record (and some are maps keyed by data), so it is
    written as JSON text: a late record with new keys keeps the split's one schema."""
    import datasets

    recs = [Conversation(id=f"c{i}", messages=[Message("user", "问" * 300),
                                                Message("assistant", "答")],
                         lineage=Lineage(source="x.jsonl", line=i, group_id=f"c{i}",
                                         extra={"tool_origin": "ours"}))
            for i in range(DATASETS_JSON_CHUNK // 900 + 10)]
    recs[-1].lineage.extra = {"flags": ["late_flag"], "facilities_original": {"无线网络": "wifi"}}
    path = tmp_path / "train.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for r in recs:
            fh.write(json.dumps(r.to_chatglm3(), ensure_ascii=False) + "\n")
    assert path.stat().st_size > DATASETS_JSON_CHUNK
    check_arrow_schema(path, "train")
    loaded = datasets.load_dataset("json", data_files=str(path), split="train",
                                   cache_dir=str(tmp_path / "hf"))
    assert json.loads(loaded[-1]["lineage"]["extra"])["facilities_original"] == {"无线网络": "wifi"}
    back = Conversation.from_chatglm3(json.loads(path.read_text(encoding="utf-8").splitlines()[-1]))
    assert back.lineage.extra == recs[-1].lineage.extra
