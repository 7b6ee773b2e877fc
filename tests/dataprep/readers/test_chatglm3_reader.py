"""The generic ChatGLM3 reader: double-encoded tools, unanswered tool calls, round trips of our
own output, bad lines."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from dataprep.convert import convert
from dataprep.errors import ConfigError
from dataprep.readers.chatglm3 import ChatGLM3Reader, cut_unanswered_tool_call, decode_tools
from dataprep.record import MISSING, Conversation, Message, Reject

REPO = Path(__file__).resolve().parents[3]
SAMPLE_DB = REPO / "data" / "hotel_db_sample.json"
TOOL = {"name": "search_hotels", "parameters": {"type": "object", "properties": {}}}


def test_decode_tools_forms() -> None:
    assert decode_tools(None) == (None, False)
    assert decode_tools([TOOL]) == ([TOOL], False)
    assert decode_tools([json.dumps([TOOL])]) == ([TOOL], True)
    assert decode_tools(json.dumps([TOOL])) == ([TOOL], True)
    assert decode_tools([json.dumps(TOOL), TOOL]) == ([TOOL, TOOL], True)
    with pytest.raises(ValueError, match=r"/tools/0: a string that is not JSON"):
        decode_tools(["[{"])
    with pytest.raises(ValueError, match=r"/tools/0: decoded item 0 is a int"):
        decode_tools(["[1]"])
    with pytest.raises(ValueError, match="expected a list of tool objects, found dict"):
        decode_tools({"name": "x"})


def _msgs(*roles: str) -> list[Message]:
    out = []
    for i, role in enumerate(roles):
        if role == "tool":
            out.append(Message("tool", name="t", parameters={}))
        else:
            out.append(Message(role, f"{role}{i}"))
    return out


@pytest.mark.parametrize("roles, kept", [
    (["user", "assistant"], ["user", "assistant"]),
    (["user", "assistant", "tool"], None),
    (["user", "tool"], None),
    (["user", "assistant", "tool", "assistant", "user", "assistant", "tool"],
     ["user", "assistant", "tool", "assistant"]),
    (["system", "user", "tool", "assistant", "user", "tool"],
     ["system", "user", "tool", "assistant"]),
    (["tool"], None),
])
def test_cut_unanswered_tool_call(roles: list[str], kept: list[str] | None) -> None:
    out = cut_unanswered_tool_call(_msgs(*roles))
    assert (None if out is None else [m.role for m in out]) == kept


def test_real_lab_file_with_the_generic_reader(corpora: Path) -> None:
    path = corpora / "crosswoz-hotel-finetune-lab" / "train.chatglm3.jsonl"
    items = list(ChatGLM3Reader(path).read())
    assert len(items) == 1602 and all(isinstance(i, Conversation) for i in items)
    for c in items:
        assert c.lineage.ops == ["decode_tools"]
        assert [t["name"] for t in c.tools] == ["search_hotels"]
        assert c.lineage.group_id == c.id == f"chatglm3:train.chatglm3.jsonl:{c.lineage.line}"
    # "keep" leaves the verdict to validate: 330 samples end on a call without a result.
    assert sum(c.messages[-1].role == "tool" for c in items) == 330
    assert sum(m.role == "tool" and m.observation is MISSING
               for c in items for m in c.messages) == 354
    cut = Counter(type(i).__name__ if isinstance(i, Conversation) else i.reason
                  for i in ChatGLM3Reader(path, unanswered_tool_call="cut").read())
    assert cut == {"Conversation": 1602 - 316, "unanswered_tool_call": 316}
    removed = Counter(type(i).__name__ for i in ChatGLM3Reader(
        path, unanswered_tool_call="remove").read())
    assert removed == {"Conversation": 1272, "Reject": 330}


def test_round_trip_of_our_own_output(tmp_path: Path) -> None:
    out = tmp_path / "hotel.jsonl"
    result = convert("lab_chatglm3", REPO / "data" / "lab_chatglm3_sample.jsonl", out,
                     hotel_db=str(SAMPLE_DB))
    written = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert len(written) == result.written == 8
    back = list(ChatGLM3Reader(out).read())
    assert all(isinstance(c, Conversation) for c in back)
    for line, conv in zip(written, back, strict=True):
        # Our lines carry id, lineage, corpus and label: all survive, nothing is decoded.
        assert conv.to_chatglm3() == line
        assert "decode_tools" not in conv.lineage.ops[len(line["lineage"]["ops"]):]


CASES: list[tuple[bytes, str | None]] = [
    (json.dumps({"tools": [TOOL], "conversations": [{"role": "user", "content": "a"},
                                                    {"role": "assistant", "content": "b"}]}
                ).encode(), None),
    (b'{"conversations": [', "malformed_json"),
    (json.dumps({"conversations": "hi"}).encode(), "wrong_type"),
    (json.dumps({"tools": ["{oops"], "conversations": []}).encode(), "malformed_tools"),
    (json.dumps({"tools": [{"parameters": {"type": "object"}}],
                 "conversations": [{"role": "user", "content": "a"},
                                   {"role": "assistant", "content": "b"}]}).encode(),
     "missing_field"),
    (json.dumps({"conversations": [{"role": "user", "content": "a"},
                                   {"role": "robot", "content": "b"}]}).encode(), "invalid_value"),
    (json.dumps({"conversations": [{"role": "user", "content": "a"}]}).encode(), "empty_value"),
    ('{"conversations": [{"role": "user", "content": "你好"}]}'.encode("gbk"), "undecodable_bytes"),
    (b"[]", "wrong_type"),
    (json.dumps({"conversations": [{"role": "user", "content": "a"},
                                   {"role": "assistant", "content": "b", "loss": "no"}]}).encode(),
     "wrong_type"),
]


def test_bad_lines_have_reasons(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(line for line, _ in CASES) + b"\n")
    items = list(ChatGLM3Reader(path, corpus="other").read())
    assert len(items) == len(CASES)
    got = [None if isinstance(i, Conversation) else i.reason for i in items]
    assert got == [reason for _, reason in CASES]
    assert items[0].corpus == "other"
    assert all(i.line == n for n, i in enumerate(items, start=1) if isinstance(i, Reject))


def test_bad_options() -> None:
    with pytest.raises(ConfigError, match="unanswered_tool_call must be one of keep, cut, remove"):
        ChatGLM3Reader(REPO / "data" / "lab_chatglm3_sample.jsonl", unanswered_tool_call="drop")
    with pytest.raises(ConfigError, match="unknown options"):
        ChatGLM3Reader(REPO / "data" / "lab_chatglm3_sample.jsonl", hotel_db="x")
