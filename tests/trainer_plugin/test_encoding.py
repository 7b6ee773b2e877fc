"""trainer_plugin.encoding: masks, tool rendering/parsing, error behaviour and length handling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dataprep.tokenizer import load_tokenizer
from trainer_plugin.encoding import (
    IGNORE_INDEX,
    TOOL_PROMPT,
    Encoded,
    EncodingError,
    LengthSummary,
    decode_double_encoded_tools,
    encode_conversation,
    fit_length,
    message_ids,
    parse_tool_call,
    prefix_ids,
    render_tool_call,
    render_tool_call_body,
    summarize_lengths,
)

USER, ASSISTANT, OBSERVATION, SYSTEM = 64795, 64796, 64797, 64794
EOS = 2


@pytest.fixture(scope="module")
def tok(tokenizer_dir: Path):
    return load_tokenizer(tokenizer_dir)


def conv(*messages: dict, **extra) -> dict:
    return {**extra, "conversations": list(messages)}


def u(text: str, **kw) -> dict:
    return {"role": "user", "content": text, **kw}


def a(text: str, **kw) -> dict:
    return {"role": "assistant", "content": text, **kw}


def tool(name: str, params: dict, **kw) -> dict:
    return {"role": "tool", "name": name, "parameters": params, **kw}


def trained_positions(enc: Encoded) -> list[int]:
    return [i for i, lab in enumerate(enc.labels) if lab != IGNORE_INDEX]


# --- the label shift ---------------------------------------------------------------------------


def test_layout_and_one_token_shift(tok):
    enc = encode_conversation(conv(u("你好"), a("你好！"), u("再见")), tok)
    user1 = message_ids(tok, "user", "", "你好")
    asst = message_ids(tok, "assistant", "", "你好！")
    user2 = message_ids(tok, "user", "", "再见")
    assert enc.input_ids == [64790, 64792, *user1, *asst, *user2, EOS]
    start = 2 + len(user1)
    # <|assistant|> itself is not learned; its content is, and so is the <|user|> after it.
    assert trained_positions(enc) == list(range(start + 1, start + len(asst) + 1))
    assert enc.input_ids[start + len(asst)] == USER
    assert enc.labels[-1] == IGNORE_INDEX  # eos follows a user message: nothing to learn
    assert len(enc.labels) == len(enc.input_ids) == len(enc.loss_mask)


def test_final_eos_is_learned_after_a_trained_message(tok):
    enc = encode_conversation(conv(u("hi"), a("ok")), tok)
    assert enc.input_ids[-1] == enc.labels[-1] == EOS


def test_loss_key_masks_assistant_but_cannot_unmask_user_or_system(tok):
    enc = encode_conversation(
        conv(
            {"role": "system", "content": "sys", "loss": True},
            u("q", loss=True),
            a("not learned", loss=False),
            u("q2"),
            a("learned"),
        ),
        tok,
    )
    spans = {s.index: s for s in enc.spans}
    assert [spans[i].trained for i in range(5)] == [False, False, False, False, True]
    learned = [*tok.encode("\n"), *tok.encode("learned")]
    assert [lab for lab in enc.labels if lab != IGNORE_INDEX] == [*learned, EOS]


def test_spans_tile_the_sequence(tok):
    enc = encode_conversation(
        conv(u("q"), a("thought"), tool("f", {"x": 1}, observation=[1]), a("done"), tools=[]), tok
    )
    assert enc.spans[0].index is None and enc.spans[0].role == "system"
    assert [s.start for s in enc.spans[1:]] == [s.end for s in enc.spans[:-1]]
    assert enc.spans[0].start == 2 and enc.spans[-1].end == len(enc) - 1
    tool_spans = [s for s in enc.spans if s.index == 2]
    assert [(s.role, s.trained) for s in tool_spans] == [
        ("assistant", True),
        ("observation", False),
    ]


# --- tools ------------------------------------------------------------------------------------


def test_tool_message_renders_call_under_assistant_and_masks_observation(tok):
    enc = encode_conversation(
        conv(
            u("q"), tool("search_hotels", {"type": "经济型", "price": 300.0}, observation={"n": 1})
        ),
        tok,
    )
    call, obs = [s for s in enc.spans if s.index == 1]
    assert enc.input_ids[call.start : call.end] == [
        ASSISTANT,
        *tok.encode("search_hotels\n"),
        *tok.encode("```python\ntool_call(type='经济型', price=300.0)\n```"),
    ]
    assert enc.input_ids[obs.start : obs.end] == [
        OBSERVATION,
        *tok.encode("\n"),
        *tok.encode('{"n": 1}'),
    ]
    # learned: the call body and the <|observation|> after it; never the observation itself
    assert trained_positions(enc) == list(range(call.start + 1, call.end + 1))


@pytest.mark.parametrize(
    ("observation", "text"),
    [
        ("上海：多云", "上海：多云"),
        ([{"名称": "北京饭店", "价格": 303.0}], '[{"名称": "北京饭店", "价格": 303.0}]'),
        ([], "[]"),
        (None, "null"),
    ],
)
def test_observation_text(tok, observation, text):
    enc = encode_conversation(conv(u("q"), tool("f", {}, observation=observation)), tok)
    obs = enc.spans[-1]
    assert enc.input_ids[obs.start : obs.end] == [OBSERVATION, *tok.encode("\n"), *tok.encode(text)]


def test_missing_observation_renders_null(tok):
    with_key = encode_conversation(conv(u("q"), tool("f", {}, observation=None)), tok)
    without = encode_conversation(conv(u("q"), tool("f", {})), tok)
    assert with_key.input_ids == without.input_ids


def test_tool_prompt_and_double_encoded_tools(tok):
    tools = [{"name": "f", "description": "查询", "parameters": {"type": "object"}}]
    plain = encode_conversation(conv(u("q"), a("x"), tools=tools), tok)
    as_stored = [json.dumps(tools, ensure_ascii=False)]  # how the lab files hold them
    double = encode_conversation(conv(u("q"), a("x"), tools=as_stored), tok)
    kept = encode_conversation(conv(u("q"), a("x"), tools=as_stored), tok, decode_tools=False)
    prompt = plain.spans[0]
    assert plain.input_ids[prompt.start : prompt.end] == [
        SYSTEM,
        *tok.encode("\n"),
        *tok.encode(TOOL_PROMPT + json.dumps(tools, indent=4, ensure_ascii=False)),
    ]
    assert double.input_ids == plain.input_ids
    assert kept.input_ids != plain.input_ids
    assert tok.decode(kept.input_ids[kept.spans[0].start + 3 : kept.spans[0].end]).endswith(
        '\\"查询\\", \\"parameters\\": {\\"type\\": \\"object\\"}}]"\n]'
    )


def test_decode_double_encoded_tools_only_touches_a_json_list_in_a_one_string_list():
    assert decode_double_encoded_tools(['[{"name": "f"}]']) == [{"name": "f"}]
    prose = ["search_hotels: finds hotels"]
    assert decode_double_encoded_tools(prose) is prose
    assert decode_double_encoded_tools(['{"name": "f"}']) == ['{"name": "f"}']
    assert decode_double_encoded_tools(["[1]", "[2]"]) == ["[1]", "[2]"]


def test_tools_none_is_absent_by_default_and_null_in_official_mode(tok):
    bare = encode_conversation(conv(u("q"), a("x")), tok)
    none_default = encode_conversation(conv(u("q"), a("x"), tools=None), tok)
    none_official = encode_conversation(conv(u("q"), a("x"), tools=None), tok, compat="official")
    assert none_default.input_ids == bare.input_ids
    prompt = none_official.spans[0]
    assert none_official.input_ids[prompt.start : prompt.end] == [
        SYSTEM,
        *tok.encode("\n"),
        *tok.encode(TOOL_PROMPT + "null"),
    ]
    # an empty list is a value: both modes keep the official prompt
    empty = encode_conversation(conv(u("q"), a("x"), tools=[]), tok)
    assert (
        empty.input_ids[empty.spans[0].start : empty.spans[0].end][-1]
        == tok.encode(TOOL_PROMPT + "[]")[-1]
    )


def test_direct_observation_role_is_masked_by_default_and_learned_in_official_mode(tok):
    sample = conv(u("q"), a("ok"), {"role": "observation", "content": "晴"}, a("晴天"))
    default = encode_conversation(sample, tok)
    official = encode_conversation(sample, tok, compat="official")
    obs = default.spans[2]
    assert obs.role == "observation" and not obs.trained
    assert official.spans[2].trained
    assert default.input_ids == official.input_ids
    differ = [
        i for i, (x, y) in enumerate(zip(default.labels, official.labels, strict=True)) if x != y
    ]
    assert differ == list(range(obs.start + 1, obs.end + 1))


# --- rendering and parsing tool calls -----------------------------------------------------------


def test_render_tool_call_uses_python_repr_and_verbatim_keys():
    body = render_tool_call_body(
        {
            "s": "it's",
            "q": 'say "hi"',
            "t": True,
            "n": None,
            "f": 2.0,
            "big": 1e20,
            "zw": "a\u200bb",
            "my-key": [1, "二"],
        }
    )
    assert body == (
        '```python\ntool_call(s="it\'s", q=\'say "hi"\', t=True, n=None, f=2.0, '
        "big=1e+20, zw='a\\u200bb', my-key=[1, '二'])\n```"
    )
    assert render_tool_call_body({}) == "```python\ntool_call()\n```"
    assert render_tool_call("f", {"a": 1}) == "f\n```python\ntool_call(a=1)\n```"


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"type": "经济型", "facilities": ["国际长途电话", "早餐服务"]},
        {"price_range_upper": 400.0, "rating_range_lower": 4.5, "flag": False, "none": None},
        {"quote": 'it\'s "x"', "backslash": "C:\\path", "nl": "a\nb", "d": {"k": [1, {"v": -2}]}},
    ],
)
def test_parse_inverts_render(params):
    assert parse_tool_call(render_tool_call("search_hotels", params)) == ("search_hotels", params)


def test_parse_reads_decoded_model_output(tok):
    # What the model emits after <|assistant|>, decoded: dummy-prefix spaces included.
    params = {"type": "豪华型", "price_range_lower": 500.0}
    ids = [*tok.encode("search_hotels\n"), *tok.encode(render_tool_call_body(params))]
    text = tok.decode(ids)
    assert text != render_tool_call("search_hotels", params)  # the decoded form has extra spaces
    assert parse_tool_call(text) == ("search_hotels", params)


@pytest.mark.parametrize(
    "text",
    [
        "推荐您去北京新世界酒店。",
        "search_hotels\n```python\ntool_call(__import__('os').system('echo hi'))\n```",
        "search_hotels\n```python\ntool_call(x=__import__('os').getcwd())\n```",
        "search_hotels\n```python\ntool_call(x=open('/etc/passwd').read())\n```",
        "search_hotels\n```python\ntool_call(**{'x': 1})\n```",
        "search_hotels\n```python\ntool_call(x=1, x=2)\n```",
        "search_hotels\n```python\nprint(x=1)\n```",
        "search_hotels\n```python\ntool_call(x=1\n```",
        "```python\ntool_call(x=1)\n```",  # no name line
        "search_hotels\n```python\ntool_call(my-key=1)\n```",  # rendered verbatim, not parseable
    ],
)
def test_parse_rejects_anything_but_a_literal_tool_call(text):
    assert parse_tool_call(text) is None


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sample", "message"),
    [
        (
            conv(u("hi"), {"role": "function", "content": "{}"}),
            r"conversations\[1\]: unknown role 'function'; "
            r"expected one of: system, user, assistant",
        ),
        (conv({"content": "no role"}), r"conversations\[0\]: unknown role None"),
        (
            conv(u("hi"), a(None)),
            r'conversations\[1\]: "content" of a assistant message must be a str',
        ),
        (
            conv(u("hi"), {"role": "tool", "parameters": {}}),
            r"conversations\[1\]: a tool message needs",
        ),
        (
            conv(u("hi"), tool("f", ["x"])),
            r'"parameters" of tool \'f\' must be an object, got list',
        ),
        (conv(u("hi"), "just text"), r"conversations\[1\]: a message must be an object, got str"),
        (
            {"messages": []},
            r'"conversations" must be a list of messages, got NoneType \(keys present: '
            r"messages\)",
        ),
        ([1, 2], "a sample must be a JSON object, got list"),
    ],
)
def test_malformed_samples_raise_encoding_error_saying_where(tok, sample, message):
    for compat in ("default", "official"):
        with pytest.raises(EncodingError, match=message):
            encode_conversation(sample, tok, compat=compat)


def test_unknown_compat_mode(tok):
    with pytest.raises(ValueError, match="unknown compat mode 'legacy'"):
        encode_conversation(conv(u("q")), tok, compat="legacy")  # type: ignore[arg-type]


def test_prefix_ids(tok):
    assert prefix_ids(tok) == [64790, 64792]


# --- length handling ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_sample(tok) -> Encoded:
    return encode_conversation(
        conv(
            u("找酒店"),
            a("我需要使用search_hotels工具来查询酒店"),
            tool("search_hotels", {"type": "经济型"}, observation=[{"name": "北京饭店"}]),
            a("推荐北京饭店。"),
            u("谢谢"),
            a("不客气，祝您入住愉快。"),
        ),
        tok,
    )


def test_fit_length_keeps_samples_that_fit(long_sample):
    assert fit_length(long_sample, None) == (long_sample, None)
    assert fit_length(long_sample, len(long_sample), "drop") == (long_sample, None)
    assert fit_length(long_sample, len(long_sample) + 50, "cut") == (long_sample, None)


def test_fit_length_drop(long_sample):
    assert fit_length(long_sample, len(long_sample) - 1, "drop") == (None, "too_long")


def test_fit_length_cut_at_every_boundary(long_sample):
    s = long_sample.spans
    # conversation entries end at: user 0, thought 1, tool 2 (after its observation), answer 3,
    # user 4, answer 5; a cut after entry k is end(k) + eos tokens long.
    entry_ends = [s[0].end, s[1].end, s[3].end, s[4].end, s[5].end]
    for max_length in range(2, len(long_sample)):
        cut, reason = fit_length(long_sample, max_length, "cut")
        fitting = [e for e in entry_ends if e + 1 <= max_length]
        learned_before = [e for e in fitting if e > s[1].start]  # the thought is trained
        if not learned_before:
            assert (cut, reason) == (None, "too_long_nothing_trained_fits"), max_length
            continue
        end = fitting[-1]
        assert reason == "cut_at_message_boundary"
        assert len(cut) == end + 1 <= max_length
        assert cut.input_ids == [*long_sample.input_ids[:end], EOS]
        assert cut.labels[:end] == long_sample.labels[:end]
        # the eos is learned exactly when the message before it was trained
        assert (cut.labels[-1] == EOS) == bool(long_sample.loss_mask[end - 1])
        assert cut.spans == tuple(x for x in s if x.end <= end)


def test_cut_never_separates_a_tool_call_from_its_observation(long_sample):
    call, obs = long_sample.spans[2], long_sample.spans[3]
    cut, _ = fit_length(long_sample, obs.end, "cut")  # the call fits, call+obs+eos does not
    assert len(cut) == call.start + 1
    assert cut.input_ids[-2] != OBSERVATION


def test_samples_without_trained_tokens_are_dropped(tok):
    masked = encode_conversation(conv(u("q"), a("x", loss=False)), tok)
    assert masked.num_trained == 0
    assert fit_length(masked, None) == (None, "no_trained_tokens")
    obs_only = encode_conversation(conv(u("q"), {"role": "observation", "content": "x"}), tok)
    assert fit_length(obs_only, None) == (None, "no_trained_tokens")


def test_fit_length_rejects_bad_arguments(long_sample):
    with pytest.raises(ValueError, match="unknown truncation strategy 'left'"):
        fit_length(long_sample, 10, "left")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        fit_length(long_sample, 0, "cut")


def test_summarize_lengths_matches_numpy_and_counts_cut_and_drop(long_sample, tok):
    lengths = [5, 17, 3, 99, 42, 42, 8, 1000, 64, 7]
    s = summarize_lengths(lengths, max_length=50, cut_fits=[False] * 7 + [True, True, False])
    assert (s.count, s.min, s.max) == (10, 3, 1000)
    assert s.median == pytest.approx(np.percentile(lengths, 50))
    assert s.p95 == pytest.approx(np.percentile(lengths, 95))
    assert (s.over_max_length, s.cut_would_keep, s.cut_would_drop) == (3, 2, 1)
    short = encode_conversation(conv(u("q"), a("x")), tok)
    from_encoded = summarize_lengths([long_sample, short], max_length=len(short) + 1)
    assert (from_encoded.over_max_length, from_encoded.cut_would_keep) == (1, 0)
    assert summarize_lengths([long_sample], len(long_sample) - 1).cut_would_keep == 1
    assert summarize_lengths([]).count == 0


def test_length_summary_format():
    s = LengthSummary(3, 10, 20.0, 29.0, 30, 25, 2, 1)
    assert s.format() == (
        "tokens per sample (3 samples): min 10, median 20, p95 29, max 30; "
        "2 over max_length 25 (cut: 1 kept, 1 dropped; drop: 2 dropped)"
    )
    assert s.as_dict()["cut_would_drop"] == 1
