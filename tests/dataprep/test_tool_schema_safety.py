"""Issue 9 item 1: a tool's ``parameters`` schema inside an input line is untrusted. It must not
make a run touch the network, hang, or crash; each bad schema is a reject with a reason code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dataprep.cli import main
from dataprep.convert import convert
from dataprep.safe_schema import parameters_problems
from tests.dataprep.guards import RecordingServer, hang_guard


def line(parameters_schema: Any, call: Any) -> dict[str, Any]:
    return {"tools": [{"name": "lookup", "description": "查询", "parameters": parameters_schema}],
            "conversations": [{"role": "user", "content": "帮我查一下"},
                              {"role": "assistant", "content": "好的"},
                              {"role": "tool", "name": "lookup", "parameters": call,
                               "observation": []},
                              {"role": "assistant", "content": "没有找到"}]}


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                    encoding="utf-8")
    return path


def test_http_refs_make_no_connection_and_are_rejects(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    with RecordingServer() as server:
        records = [
            line({"type": "object", "$ref": server.url("/schema.json")}, {"q": 1}),
            # Hidden behind $id: a relative reference resolves against the http base.
            line({"type": "object", "$id": server.url("/root.json"), "$ref": "other.json"}, {}),
            line({"type": "object", "properties": {"q": {"$ref": server.url("/q.json#/x")}}},
                 {"q": "a"}),
            line({"type": "object", "$dynamicRef": server.url("/d.json")}, {}),
        ]
        src = write_jsonl(tmp_path / "remote.jsonl", records)
        with hang_guard(60):
            assert main(["validate", str(src)]) == 1
            result = convert("chatglm3", src, tmp_path / "out.jsonl")
        assert server.connections == 0 and server.hits == []
    out = capsys.readouterr().out
    assert out.count("[tool_schema_remote_ref]") == len(records)
    assert result.written == 0
    assert [r.reason for r in result.rejects] == ["tool_schema_remote_ref"] * len(records)


@pytest.mark.parametrize("schema, call, reason", [
    # Catastrophic backtracking for Python's re (minutes on 40 characters); RE2 is linear.
    ({"type": "object", "properties": {"q": {"type": "string", "pattern": "^(a+)+$"}}},
     {"q": "a" * 40 + "!"}, "tool_parameters_invalid"),
    ({"type": "object", "patternProperties": {"^(a+)+$": {"type": "integer"}},
      "additionalProperties": False}, {"a" * 40 + "!": 1}, "tool_parameters_invalid"),
    ({"type": "object", "properties": {"q": {"type": "strin"}}}, {"q": 1},
     "tool_schema_invalid"),
    ({"type": "object", "properties": {"q": {"$ref": "#/$defs/missing"}}}, {"q": 1},
     "tool_schema_unresolvable_ref"),
    ({"type": "object", "$ref": "#"}, {}, "tool_schema_invalid"),
    # every pair of 50k objects compared by jsonschema's uniqueItems: hours
    ({"type": "object", "properties": {"a": {"type": "array", "uniqueItems": True}}},
     {"a": [{"k": i} for i in range(50_000)]}, "tool_schema_too_complex"),
    # 20k items each compared with a 100k-member enum
    ({"type": "object", "properties": {"a": {"type": "array", "items": {
        "enum": list(range(100_000))}}}}, {"a": [-1] * 20_000}, "tool_schema_too_complex"),
    # 40 levels that each check the next one twice: 2^40 steps
    ({"type": "object", "$ref": "#/$defs/d0", "$defs": {
        **{f"d{i}": {"allOf": [{"$ref": f"#/$defs/d{i + 1}"}, {"$ref": f"#/$defs/d{i + 1}"}]}
           for i in range(40)}, "d40": {"type": "object"}}}, {}, "tool_schema_too_complex"),
    ({"type": "object", "properties": {"q": {"type": "string", "pattern": "(a)\\1"}}},
     {"q": "aa"}, "tool_schema_invalid"),
])
def test_hostile_schemas_are_rejects_not_hangs_or_tracebacks(schema: Any, call: Any, reason: str,
                                                             tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [line(schema, call)])
    with hang_guard(60):
        result = convert("chatglm3", src, tmp_path / "out.jsonl")
    assert result.written == 0
    assert [r.reason for r in result.rejects] == [reason]


def test_unique_items_uses_json_equality() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "array", "uniqueItems": True}}}
    assert parameters_problems(schema, {"a": [{"k": 1, "j": [1.0]}, {"j": [1], "k": 1}]})
    assert parameters_problems(schema, {"a": [1, True, "1", None, [1], {"1": 1}]}) == []


def test_the_real_hotel_tool_fits_the_budget() -> None:
    from dataprep.corpora.hotel.tools import FACILITIES, hotel_tools

    call = {"name": "北京饭店", "type": "豪华型", "facilities": list(FACILITIES),
            "price_range_lower": 100, "price_range_upper": 900, "rating_range_lower": 4.5,
            "rating_range_upper": 5}
    assert parameters_problems(hotel_tools()[0]["parameters"], call) == []


def test_patterns_still_validate_and_local_refs_still_resolve() -> None:
    schema = {"type": "object", "$defs": {"city": {"type": "string", "pattern": "^[京沪]$"}},
              "properties": {"city": {"$ref": "#/$defs/city"}}, "required": ["city"]}
    assert parameters_problems(schema, {"city": "京"}) == []
    assert [p[0] for p in parameters_problems(schema, {"city": "广州"})] == \
        ["tool_parameters_invalid"]
    assert [p[0] for p in parameters_problems(schema, {})] == ["tool_parameters_invalid"]


def test_the_compiler_refuses_what_is_not_a_schema() -> None:
    assert parameters_problems([1, 2], {})[0][0] == "tool_schema_invalid"
    assert parameters_problems({"type": "object", "pattern": "(?<=a)b"}, {})[0][0] == \
        "tool_schema_invalid"
