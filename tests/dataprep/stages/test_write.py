"""The writer's one-schema check, as ``datasets.load_dataset("json")`` reads a split: chunks of
10 MB, every later chunk cast to the first one's schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dataprep.config import config_from_dict
from dataprep.errors import SplitSchemaError
from dataprep.pipeline import Pipeline
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


def _tool_dialogs(path: Path, n: int, late: dict, odd: dict) -> None:
    """``n`` ChatGLM3 dialogs with a tool call; the last one's call has a parameter no earlier
    line has (``late``), one in the middle has an observation of another kind (``odd``)."""
    tools = [{"name": "f", "description": "d", "parameters": {"type": "object"}}]
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            call = {"role": "tool", "name": "f", "parameters": {"q": "问" * 300, "i": i},
                    "observation": [{"hit": i}]}
            if i == n - 1:
                call["parameters"].update(late)
            if i == n // 2:
                call["observation"] = odd
            fh.write(json.dumps({"id": f"r{i}", "tools": tools, "conversations": [
                {"role": "user", "content": f"第{i}个问题"}, call,
                {"role": "assistant", "content": "好的"}]}, ensure_ascii=False) + "\n")


def test_the_writer_keeps_one_shape_per_split(tmp_path: Path) -> None:
    """A field of another kind is a reject naming it; a field first seen after the first 10 MB
    moves its line to the front. Every record is accounted for and datasets loads the split."""
    import datasets

    src = tmp_path / "in.jsonl"
    n = DATASETS_JSON_CHUNK // 900 + 50
    _tool_dialogs(src, n, late={"rare": ["x"]}, odd=True)
    cfg = config_from_dict({"name": "shape", "seed": 1,
                            "inputs": [{"reader": "chatglm3", "path": str(src)}],
                            "stages": [{"name": "split", "ratios": [1.0, 0.0, 0.0]}, "write"]})
    out = tmp_path / "out"
    manifest = Pipeline(cfg).run(out, progress=False)
    assert manifest["counts"]["rejected"] == {"inconsistent_shape": 1}
    assert manifest["counts"]["train"] == n - 1
    reject = json.loads((out / "rejects.jsonl").read_text(encoding="utf-8"))
    assert reject["record"]["id"] == f"r{n // 2}"
    assert reject["message"].startswith("/conversations/-/observation: expected array (as in "
                                        "the train split's earlier lines), found boolean")
    assert manifest["stage_stats"]["write"]["moved_to_front"] == {"train": 1}
    lines = (out / "train.jsonl").read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0])["id"] == f"r{n - 1}" and json.loads(lines[1])["id"] == "r0"
    loaded = datasets.load_dataset("json", data_files=str(out / "train.jsonl"), split="train",
                                   cache_dir=str(tmp_path / "hf"))
    assert loaded.num_rows == n - 1 and loaded[0]["conversations"][1]["parameters"]["rare"] == ["x"]


def test_null_fits_every_kind_but_its_first_real_value_after_the_first_chunk_moves() -> None:
    """CrossWOZ records have no line number (null), lab records do: both in one split is one
    shape. A field null throughout the first chunk is typed null there, so its first real value
    after that chunk is as late as a new field."""
    from dataprep.arrow_shape import SplitShape

    shape = SplitShape(chunk=100)
    shape.admit({"lineage": {"line": None}}, 0, 0)
    assert shape.conflict({"lineage": {"line": 7}}) is None
    shape.admit({"lineage": {"line": 7}}, 1, 50)
    assert shape.late == []
    late = SplitShape(chunk=100)
    late.admit({"lineage": {"line": None}}, 0, 0)
    late.admit({"lineage": {"line": 3}}, 1, 150)
    assert late.late == [1]
    assert late.conflict({"lineage": {"line": "x"}}) == ("/lineage/line", "number", "string")
    # A field null so far still takes one kind within a line.
    shape.admit({"a": [None]}, 2, 0)
    assert shape.conflict({"a": [1, "x"]}) == ("/a/-", "number", "string")


def test_records_with_and_without_line_numbers_share_a_split(tmp_path: Path) -> None:
    data = Path(__file__).resolve().parents[3] / "data"
    cfg = config_from_dict({"name": "mixed", "seed": 3,
                            "hotel_db": str(data / "hotel_db_sample.json"),
                            "inputs": [{"reader": "crosswoz", "path": str(data / "crosswoz_sample.json")},
                                       {"reader": "lab_chatglm3",
                                        "path": str(data / "lab_chatglm3_sample.jsonl")}],
                            "stages": [{"name": "split", "ratios": [1.0, 0.0, 0.0]}, "write"]})
    manifest = Pipeline(cfg).run(tmp_path / "out", progress=False)
    counts = manifest["counts"]
    assert "inconsistent_shape" not in counts["rejected"]
    lines = [json.loads(t) for t in (tmp_path / "out" / "train.jsonl").read_text(
        encoding="utf-8").splitlines()]
    assert {ln["lineage"]["line"] is None for ln in lines} == {True, False}
    assert counts["train"] == len(lines) == counts["input"] - sum(counts["removed"].values()) \
        - sum(counts["rejected"].values())
