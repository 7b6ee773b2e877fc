"""Property: any conversation a target can express comes back from it unchanged (Hypothesis).

The generator stays inside what each format can hold without a counted change: loss flags only
on trained roles, observations that are JSON values or strings that do not parse as JSON, a call
without observation only where nothing else needs its slot (a single call before a text).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataprep.export import export_splits
from dataprep.record import MISSING, Conversation, Lineage, Message
from dataprep.registry import reader_class

TOOLS = [{"name": "search_hotels", "parameters": {"type": "object"}},
         {"name": "weather", "parameters": {"type": "object"}}]

text = st.text(alphabet=st.sampled_from("酒店北京好的 abc,.:\n\"'{}[]"), min_size=1, max_size=12
               ).filter(lambda s: s.strip() and not s.lstrip().startswith(("{", "[", '"')))
json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | text.map(lambda s: "结果" + s),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("abc"), inner,
                                                                  max_size=3),
    max_leaves=6)
loss = st.sampled_from([None, None, True, False])


@st.composite
def conversations(draw: st.DrawFn) -> Conversation:
    msgs: list[Message] = []
    if draw(st.booleans()):
        msgs.append(Message("system", draw(text)))
    for _ in range(draw(st.integers(1, 3))):
        msgs.append(Message("user", draw(text)))
        n_calls = draw(st.integers(0, 3))
        if n_calls:
            same = draw(loss)  # one weight per OpenAI assistant turn
            if draw(st.booleans()):  # a "thought" before the calls
                msgs.append(Message("assistant", draw(text), loss=same))
            for k in range(n_calls):
                obs = MISSING if n_calls == 1 and draw(st.booleans()) else draw(json_value)
                msgs.append(Message("tool", name=draw(st.sampled_from(["search_hotels", "weather"])),
                                    parameters=draw(st.dictionaries(st.sampled_from("xyz"),
                                                                    json_value, max_size=2)),
                                    observation=obs, loss=same, parallel=True if k else None))
        msgs.append(Message("assistant", draw(text), loss=draw(loss)))
    return Conversation("c", msgs, Lineage("t", 1, "c"), tools=TOOLS)


def _same(fmt: str, reader: str, conv: Conversation, **options: object) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        report = export_splits(fmt, {"train": [conv]}, tmp, **options)
        [back] = reader_class(reader)(Path(tmp) / "train.jsonl").read()
    assert isinstance(back, Conversation), back
    assert [m.to_dict() for m in back.messages] == [m.to_dict() for m in conv.messages]
    assert back.tools == conv.tools
    assert not report.dropped


SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(conversations())
def test_openai_round_trip(conv: Conversation) -> None:
    _same("openai", "openai_chat", conv)


@SETTINGS
@given(conversations())
def test_glm4_round_trip(conv: Conversation) -> None:
    _same("glm4", "glm4", conv)


@SETTINGS
@given(conversations())
def test_llamafactory_round_trip_with_parallel_lists(conv: Conversation) -> None:
    _same("llamafactory", "sharegpt", conv, parallel="list")
