from __future__ import annotations

import json

import pytest

from dataprep.record import MISSING, Conversation, Lineage, Message


def _conv() -> Conversation:
    return Conversation(
        id="h:1",
        tools=[{"name": "search_hotels", "parameters": {"type": "object", "properties": {}}}],
        messages=[
            Message("user", "找一家经济型酒店"),
            Message("tool", name="search_hotels", parameters={"type": "经济型"}),
            Message("assistant", "推荐您去如家。", loss=False),
        ],
        lineage=Lineage(source="x.jsonl", line=3, group_id="g1"),
        corpus="hotel", label="type")


def test_round_trip_keeps_missing_observation_distinct_from_null() -> None:
    conv = _conv()
    d = conv.to_chatglm3()
    assert "observation" not in d["conversations"][1]
    assert d["conversations"][2]["loss"] is False
    back = Conversation.from_chatglm3(json.loads(json.dumps(d)))
    assert back.messages[1].observation is MISSING
    conv.messages[1].observation = None
    back = Conversation.from_chatglm3(json.loads(json.dumps(conv.to_chatglm3())))
    assert back.messages[1].observation is None
    assert back.to_chatglm3() == conv.to_chatglm3()


def test_tools_key_is_omitted_not_null_when_absent() -> None:
    conv = Conversation(id="s:1", messages=[Message("user", "a"), Message("assistant", "b")],
                        lineage=Lineage(source="s", line=1, group_id="s:1"))
    assert "tools" not in conv.to_chatglm3()


def test_derive_records_parent_and_keeps_group() -> None:
    conv = _conv()
    child = conv.derive("h:1#r", "rewrite_rules", model="rules")
    assert child.lineage.parent_id == "h:1"
    assert child.lineage.group_id == conv.lineage.group_id
    assert child.lineage.ops == ["rewrite_rules"]
    child.messages[0].content = "改写"
    assert conv.messages[0].content == "找一家经济型酒店"


@pytest.mark.parametrize("bad, match", [
    ({"role": "robot", "content": "x"}, "unknown role 'robot'"),
    ({"role": "user", "content": None}, "needs 'content' as a string, got NoneType"),
    ({"role": "tool", "parameters": {}}, "non-empty 'name'"),
    ({"role": "tool", "name": "t", "parameters": "x=1"}, "'parameters' as an object, got str"),
    ({"role": "assistant", "content": "x", "loss": "no"}, "'loss' must be true or false"),
])
def test_message_validates_itself(bad: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Message.from_dict(bad)


def test_line_separators_are_escaped_so_a_record_stays_on_one_line() -> None:
    from dataprep.io import dumps

    text = dumps({"content": "第一段\u2028第二段\u2029完"})
    assert len(text.splitlines()) == 1
    assert json.loads(text)["content"] == "第一段\u2028第二段\u2029完"
    assert "中文" in dumps({"a": "中文"})  # Chinese stays readable (ensure_ascii=False)
