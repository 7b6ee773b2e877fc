"""Each format on hand-built conversations: parallel calls, loss masks, missing observations and
the shapes a target cannot hold (counted and named, never skipped silently)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dataprep import schema
from dataprep.cli import main
from dataprep.export import export_splits
from dataprep.record import MISSING, Conversation, Lineage, Message
from dataprep.registry import reader_class

TOOLS = [{"name": "search_hotels", "description": "查酒店",
          "parameters": {"type": "object", "properties": {"type": {"type": "string"},
                                                          "name": {"type": "string"}}}},
         {"name": "weather", "parameters": {"type": "object",
                                            "properties": {"city": {"type": "string"}}}}]
READER = {"llamafactory": "sharegpt", "openai": "openai_chat", "glm4": "glm4"}


def conv(cid: str, *messages: Message, tools: list | None = TOOLS) -> Conversation:
    return Conversation(cid, list(messages), Lineage("t", 1, cid), tools=tools)


def call(name: str = "search_hotels", obs: object = MISSING, **kw: object) -> Message:
    params = {"type": "经济型"} if name == "search_hotels" else {"city": "北京"}
    return Message("tool", name=name, parameters=params, observation=obs, **kw)  # type: ignore[arg-type]


PARALLEL = conv("parallel",
                Message("user", "北京天气和经济型酒店？"),
                Message("assistant", "我来同时查一下。"),
                call("weather", obs={"temp": 3}),
                call("search_hotels", obs=[{"name": "如家"}], parallel=True),
                Message("assistant", "北京3度，推荐如家。"))
SEQUENTIAL = conv("sequential",
                  Message("user", "找经济型酒店"),
                  call(obs=[]),
                  call(obs="没有结果"),
                  Message("assistant", "没有找到。"))
MASKED = conv("masked",
              Message("system", "你是酒店助手"),
              Message("user", "你好"),
              Message("assistant", "旧回答", loss=False),
              Message("user", "找酒店"),
              call(obs=None, loss=True),
              Message("assistant", "好的", loss=True))
PLAIN = conv("plain", Message("user", "问"), Message("assistant", "答"), tools=None)


def _roundtrip(fmt: str, convs: list[Conversation], tmp_path: Path, **options: object
               ) -> tuple[list[Conversation], object]:
    report = export_splits(fmt, {"train": convs}, tmp_path, **options)
    back = list(reader_class(READER[fmt])(tmp_path / "train.jsonl").read())
    return back, report


def _dicts(c: Conversation) -> list[dict]:
    return [m.to_dict() for m in c.messages]


@pytest.mark.parametrize("fmt", ["openai", "glm4"])
def test_parallel_calls_loss_and_null_observations_round_trip(fmt: str, tmp_path: Path) -> None:
    convs = [PARALLEL, SEQUENTIAL, MASKED, PLAIN]
    back, report = _roundtrip(fmt, convs, tmp_path)
    assert [_dicts(b) for b in back] == [_dicts(c) for c in convs]
    assert [b.tools for b in back] == [c.tools for c in convs]
    assert back[0].messages[3].parallel is True and back[1].messages[2].parallel is None
    if fmt == "glm4":  # GLM-4 trains every assistant message: the mask is named, not lost
        assert report.changed["loss_mask_not_expressible"] == 1
        lines = [json.loads(x) for x in (tmp_path / "train.jsonl").read_text().splitlines()]
        assert {tuple(x) for x in lines} == {("messages", "dataprep_extra")}
        assert {k for x in lines for m in x["messages"] for k in m} == {"role", "content", "tools"}


def test_openai_shapes_parallel_calls_as_one_assistant_turn(tmp_path: Path) -> None:
    export_splits("openai", {"train": [PARALLEL, MASKED]}, tmp_path)
    lines = [json.loads(x) for x in (tmp_path / "train.jsonl").read_text().splitlines()]
    turn = lines[0]["messages"][1]
    assert turn["content"] == "我来同时查一下。"  # the thought and both calls: one message
    assert [c["id"] for c in turn["tool_calls"]] == ["call_1", "call_2"]
    assert [m["tool_call_id"] for m in lines[0]["messages"][2:4]] == ["call_1", "call_2"]
    assert lines[0]["tools"][0] == {"type": "function", "function": TOOLS[0]}
    weights = [m.get("weight") for m in lines[1]["messages"]]
    assert weights == [None, None, 0, None, 1, None, 1]
    assert lines[1]["messages"][5] == {"role": "tool", "tool_call_id": "call_1",
                                       "content": "null"}


def test_llamafactory_keeps_alternation_and_round_trips_with_parallel_list(tmp_path: Path
                                                                            ) -> None:
    convs = [PARALLEL, SEQUENTIAL, MASKED, PLAIN]
    back, report = _roundtrip("llamafactory", convs, tmp_path, parallel="list")
    assert [_dicts(b) for b in back] == [_dicts(c) for c in convs]
    assert report.changed["thought_not_trained"] == 1
    assert report.changed["loss_mask_not_expressible"] == 1
    line = json.loads((tmp_path / "train.jsonl").read_text().splitlines()[0])
    tags = [t["from"] for t in line["conversations"]]
    assert tags == ["human", "function_call", "observation", "gpt"]
    assert json.loads(line["conversations"][2]["value"]) == [{"temp": 3}, [{"name": "如家"}]]
    # One schema for every line (datasets infers it from the first block of a file).
    lines = [json.loads(x) for x in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert {tuple(x) for x in lines} == {("id", "conversations", "tools", "dataprep_extra")}
    assert {tuple(t) for x in lines for t in x["conversations"]} == {("from", "value")}
    assert all(isinstance(x["tools"], str) and isinstance(x["dataprep_extra"], str)
               for x in lines)


def test_llamafactory_default_splits_parallel_calls_for_the_glm4_tool_format(tmp_path: Path
                                                                              ) -> None:
    back, report = _roundtrip("llamafactory", [PARALLEL], tmp_path)
    assert report.changed["parallel_calls_split"] == 1
    line = json.loads((tmp_path / "train.jsonl").read_text())
    assert [t["from"] for t in line["conversations"]] == [
        "human", "function_call", "observation", "function_call", "observation", "gpt"]
    # LLaMA-Factory trains them as sequential calls; the extra key regroups them for our reader.
    assert json.loads(line["dataprep_extra"]) == {"1": {"thought": "我来同时查一下。"},
                                                  "3": {"parallel": True}}
    assert _dicts(back[0]) == _dicts(PARALLEL)


def test_llamafactory_counts_what_it_cannot_express(tmp_path: Path) -> None:
    mid_system = conv("mid_system", Message("user", "a"), Message("system", "b"),
                      Message("assistant", "c"))
    ends_on_call = conv("ends_on_call", Message("user", "找"), call(obs=[1]))
    two_answers = conv("two_answers", Message("user", "a"), Message("assistant", "b"),
                       Message("assistant", "c"))
    starts_assistant = conv("starts_assistant", Message("assistant", "hi"),
                            Message("user", "a"), Message("assistant", "b"))
    report = export_splits("llamafactory", {"train": [mid_system, ends_on_call, two_answers,
                                                      starts_assistant, PLAIN]}, tmp_path)
    assert report.written == {"train": 3}
    assert report.dropped == {"system_not_first": 1, "breaks_alternation": 1}
    assert report.examples["breaks_alternation"] == ["starts_assistant"]
    assert report.changed["trailing_observation_moved"] == 1
    assert report.changed["consecutive_assistant_merged"] == 1
    saved = json.loads((tmp_path / "export_report.json").read_text())
    assert saved["dropped"]["system_not_first"]["examples"] == ["mid_system"]
    lines = [json.loads(x) for x in (tmp_path / "train.jsonl").read_text().splitlines()]
    # It must end on the call; the observation rides along in an extra key, so nothing is lost.
    assert [t["from"] for t in lines[0]["conversations"]] == ["human", "function_call"]
    assert json.loads(lines[0]["dataprep_extra"]) == {"1": {"final_observation": "[1]"}}
    back = list(reader_class("sharegpt")(tmp_path / "train.jsonl").read())
    assert _dicts(back[0]) == _dicts(ends_on_call)
    assert lines[1]["conversations"][1]["value"] == "b\nc"


def test_llamafactory_official_call_style_and_note(tmp_path: Path) -> None:
    back, report = _roundtrip("llamafactory", [SEQUENTIAL], tmp_path, call_style="official")
    line = json.loads((tmp_path / "train.jsonl").read_text())
    assert line["conversations"][1] == {
        "from": "gpt", "value": "search_hotels\n```python\ntool_call(type='经济型')\n```"}
    # Read as plain text unless the reader is told the calls are in the official form.
    assert back[0].messages[1].role == "assistant"
    official = list(reader_class("sharegpt")(tmp_path / "train.jsonl",
                                             call_style="official").read())
    assert _dicts(official[0]) == _dicts(SEQUENTIAL)
    note = (tmp_path / "NOTE.txt").read_text()
    assert "tool_call(type='经济型')" in note and "GLM-4" in note
    info = json.loads((tmp_path / "dataset_info.json").read_text())
    assert info["dataprep_train"]["file_name"] == "train.jsonl"


def test_a_string_observation_that_reads_as_json_is_counted(tmp_path: Path) -> None:
    ambiguous = conv("ambiguous", Message("user", "a"), call(obs="[1, 2]"),
                     Message("assistant", "b"))
    back, report = _roundtrip("openai", [ambiguous], tmp_path)
    assert report.changed["string_observation_looks_like_json"] == 1
    assert back[0].messages[1].observation == [1, 2]  # what the count warns about
    raw = list(reader_class("openai_chat")(tmp_path / "train.jsonl", observation_json=False).read())
    assert raw[0].messages[1].observation == "[1, 2]"


def test_openai_drops_an_observation_without_call_with_a_reason(tmp_path: Path) -> None:
    bare = conv("bare", Message("user", "a"), Message("assistant", "b"),
                Message("observation", "c"), Message("assistant", "d"))
    report = export_splits("openai", {"train": [bare, PLAIN]}, tmp_path)
    assert report.written == {"train": 1}
    assert report.dropped == {"observation_without_call": 1}


def test_chatglm3_writes_parallel_groups_as_consecutive_tool_messages(tmp_path: Path) -> None:
    report = export_splits("chatglm3", {"train": [PARALLEL]}, tmp_path)
    line = json.loads((tmp_path / "train.jsonl").read_text())
    assert [m["role"] for m in line["conversations"]] == ["user", "assistant", "tool", "tool",
                                                          "assistant"]
    assert "parallel" not in line["conversations"][2]
    assert line["conversations"][3]["parallel"] is True
    assert report.written == {"train": 1} and not schema.output_problems(line)
    alone = dict(line, conversations=[line["conversations"][0], line["conversations"][3],
                                      line["conversations"][4]])
    assert schema.output_problems(alone)[0][0] == "parallel_call_alone"
    back = Conversation.from_chatglm3(line)
    assert _dicts(back) == _dicts(PARALLEL)


def test_the_trainer_encodes_a_parallel_group_as_back_to_back_calls(tokenizer_dir: Path) -> None:
    from dataprep.tokenizer import load_tokenizer
    from trainer_plugin.encoding import encode_conversation

    tok = load_tokenizer(tokenizer_dir)
    sample = PARALLEL.to_chatglm3(with_lineage=False)
    flat = json.loads(json.dumps(sample))
    del flat["conversations"][3]["parallel"]
    enc, ref = encode_conversation(sample, tok), encode_conversation(flat, tok)
    assert enc.input_ids == ref.input_ids and enc.labels == ref.labels
    assert [s.role for s in enc.spans if s.index in (2, 3)] == [
        "assistant", "observation", "assistant", "observation"]


@pytest.mark.parametrize(("reader", "line", "reason"), [
    ("openai_chat", {"messages": [{"role": "user", "content": "a"},
                                  {"role": "tool", "tool_call_id": "x", "content": "1"}]},
     "unknown_tool_call_id"),
    ("openai_chat", {"messages": [{"role": "user", "content": "a"}, {
        "role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {
            "name": "f", "arguments": "[1"}}]}]}, "malformed_call"),
    ("openai_chat", {"messages": [{"role": "function", "content": "a"}]}, "unsupported_role"),
    ("openai_chat", {"messages": [{"role": "assistant", "content": "a", "weight": 2}]},
     "invalid_value"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "a"},
                                    {"from": "function_call", "value": "not json"}]},
     "malformed_call"),
    ("sharegpt", {"conversations": [{"from": "bot", "value": "a"}]}, "unsupported_role"),
    ("glm4", {"messages": [{"role": "tool", "content": "a"}]}, "unsupported_role"),
    ("glm4", {"messages": "x"}, "wrong_type"),
])
def test_readers_reject_bad_records_with_a_reason(tmp_path: Path, reader: str, line: dict,
                                                  reason: str) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(line) + "\n" + "{oops\n", encoding="utf-8")
    items = list(reader_class(reader)(path).read())
    assert [getattr(i, "reason", None) for i in items] == [reason, "malformed_json"]
    assert items[0].location() == f"{path}:1"


def test_sharegpt_reader_takes_custom_tags_and_json_arrays(tmp_path: Path) -> None:
    data = [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
             "system": "sys"}]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    [c] = reader_class("sharegpt")(path, messages="messages", role_tag="role",
                                   content_tag="content", user_tag="user",
                                   assistant_tag="assistant").read()
    assert _dicts(c) == [{"role": "system", "content": "sys"}, {"role": "user", "content": "a"},
                         {"role": "assistant", "content": "b"}]


def test_cli_export_prints_the_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    export_splits("chatglm3", {"train": [PARALLEL, MASKED], "dev": [PLAIN], "test": []}, run)
    assert main(["export", str(run), "--to", "glm4", "--out", str(tmp_path / "g")]) == 0
    out = capsys.readouterr().out
    assert "glm4: wrote train 2, dev 1, test 0" in out
    assert "changed 1 x loss_mask_not_expressible" in out
    assert main(["export", str(run), "--to", "openai", "--option", "nope=1"]) == 2
    assert "unknown option(s) ['nope']" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing"), "--to", "openai"]) == 2


@pytest.mark.parametrize("fmt", ["llamafactory", "openai", "glm4"])
def test_a_balance_weight_is_counted_where_the_target_has_none(fmt: str, tmp_path: Path) -> None:
    weighted = conv("weighted", Message("user", "问"), Message("assistant", "答"), tools=None)
    weighted.weight = 2.5
    report = export_splits(fmt, {"train": [weighted, PLAIN]}, tmp_path)
    assert report.changed == {"sample_weight_not_expressible": 1}
    assert report.examples["sample_weight_not_expressible"] == ["weighted"]


def test_write_formats_are_checked_when_the_config_is_read() -> None:
    from dataprep.errors import ConfigError
    from dataprep.stages.write import Write

    assert Write(formats=["openai", {"name": "llamafactory", "call_style": "official"}])
    with pytest.raises(ConfigError, match="unknown export format 'sharegpt'; available: chatglm3"):
        Write(formats=["sharegpt"])
    with pytest.raises(ConfigError, match=r"export 'llamafactory': option call_style must be one "
                                          r"of function_call, official, got 'python'"):
        Write(formats=[{"name": "llamafactory", "call_style": "python"}])
