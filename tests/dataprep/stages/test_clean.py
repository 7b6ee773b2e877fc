"""``clean``: normalisation per message with counts and lineage, tool calls untouched, limits."""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path

import pytest

from dataprep.corpora.spo.reader import SpoReader
from dataprep.errors import ConfigError
from dataprep.record import Conversation, Lineage, Message
from dataprep.resources import Resources
from dataprep.stages.base import RunContext
from dataprep.stages.clean import Clean
from dataprep.text import normalize


def _conv(*messages: Message, rid: str = "r1") -> Conversation:
    return Conversation(id=rid, messages=list(messages),
                        lineage=Lineage(source="t.jsonl", line=1, group_id=rid), corpus="t")


def _run(stage: Clean, recs: list[Conversation], ctx: RunContext) -> list[Conversation]:
    return list(stage.run(recs, ctx))


def test_real_spo_counts_lineage_and_meta_in_sync(corpora: Path, tmp_path: Path) -> None:
    recs = [r for r in SpoReader(corpora / "spo-repair-records" / "spo_0.subset.json").read()
            if isinstance(r, Conversation)]
    originals = {r.id: [m.content for m in r.messages] for r in recs}
    ctx = RunContext(tmp_path)
    out = _run((clean_stage := Clean()), recs, ctx)
    assert len(out) == len(recs) == 1125 and not ctx.rejects
    st = clean_stage.stats
    # Recount independently: the stats are the sum of what normalize() reports per message.
    expected: Counter[str] = Counter()
    changed = 0
    for rec in out:
        per_rec: Counter[str] = Counter()
        for text in originals[rec.id]:
            per_rec.update(normalize(text)[1])
        expected.update(per_rec)
        changed += bool(per_rec)
        assert rec.lineage.ops == [f"clean:{k}" for k in
                                   ("fullwidth", "cjk_punct", "whitespace") if per_rec[k]]
    assert st["changes"] == dict(expected) and st["records_changed"] == changed
    assert st["records"] == 1125 and 200 < changed < 400
    for rec in out:
        # meta was cleaned with the same rules: the user turn still ends with the source text,
        # and every triple still occurs in it ("ＡＢＳ" -> "ABS" in both).
        assert rec.messages[0].content.endswith(rec.meta["text"])
        assert all(s in rec.meta["text"] and o in rec.meta["text"]
                   for s, _, o in rec.meta["triples"])
    joined = "\n".join(r.messages[0].content for r in out)
    assert "Ａ/Ｃ" not in joined and "A/C开关" in joined


def test_tool_calls_are_never_rewritten(tmp_path: Path) -> None:
    params = {"name": "汉庭酒店(北京新国展店)", "facilities": ["早餐服务"]}
    obs = [{"name": "汉庭酒店(北京新国展店)", "address": "北京顺义区天柱西路24号 , Ａ座",
            "price": 209.0, "hotel_id": 536}]
    rec = _conv(Message("user", "有早餐的酒店吗?有的话推荐一下"),
                Message("tool", name="search_hotels", parameters=copy.deepcopy(params),
                        observation=copy.deepcopy(obs)),
                Message("assistant", "有早餐 , 为您推荐汉庭酒店(北京新国展店)。"))
    ctx = RunContext(tmp_path)
    (out,) = _run(Clean(), [rec], ctx)
    assert out.messages[1].parameters == params and out.messages[1].observation == obs
    assert out.messages[0].content == "有早餐的酒店吗？有的话推荐一下"
    # The hotel name (ASCII parentheses) survives in the reply, so it still matches the DB.
    assert out.messages[2].content == "有早餐，为您推荐汉庭酒店(北京新国展店)。"
    # Opting in cleans observation strings, never parameters.
    rec2 = _conv(Message("user", "找酒店"),
                 Message("tool", name="search_hotels", parameters=copy.deepcopy(params),
                         observation=copy.deepcopy(obs)),
                 Message("assistant", "好的"), rid="r2")
    (out2,) = _run(Clean(tool_observation=True), [rec2], RunContext(tmp_path))
    assert out2.messages[1].observation[0]["address"] == "北京顺义区天柱西路24号，A座"
    assert out2.messages[1].parameters == params


def test_empty_fields_are_rejected_with_the_original_as_evidence(tmp_path: Path) -> None:
    ctx = RunContext(tmp_path)
    recs = [_conv(Message("user", "你好"), Message("assistant", "\u200b<br>\u200b"), rid="a"),
            _conv(Message("user", "   "), Message("assistant", "好"), rid="b"),
            _conv(Message("user", "ＯＫ"), Message("assistant", "好"), rid="c")]
    out = _run(Clean(), recs, ctx)
    assert [r.id for r in out] == ["c"]
    assert ctx.counts.rejected == Counter({"empty_after_clean": 1, "empty_field": 1})
    first = ctx.rejects[0]
    assert first.stage == "clean" and first.message.startswith("/conversations/1/content:")
    assert first.record["conversations"][1]["content"] == "\u200b<br>\u200b"  # as it came


def test_char_limits_per_role(tmp_path: Path) -> None:
    ctx = RunContext(tmp_path)
    recs = [_conv(Message("user", "问" * 10), Message("assistant", "答" * 3), rid="ok"),
            _conv(Message("user", "问" * 11), Message("assistant", "答" * 3), rid="long"),
            _conv(Message("user", "问" * 10), Message("assistant", "答"), rid="short")]
    out = _run((clean_stage := Clean(max_chars={"user": 10}, min_chars={"assistant": 2})), recs, ctx)
    assert [r.id for r in out] == ["ok"]
    assert ctx.counts.removed == Counter({"too_long": 1, "too_short": 1})
    msgs = {r.record["id"]: r.message for r in ctx.rejects}
    assert msgs["long"] == "/conversations/0/content: user text is 11 chars, over max_chars 10"
    assert clean_stage.stats["length_unit"] == "chars"


def test_token_limits_use_the_chatglm3_tokenizer(tokenizer_dir: Path, tmp_path: Path) -> None:
    from dataprep.tokenizer import load_tokenizer

    tok = load_tokenizer(str(tokenizer_dir))
    text = "发动机水温高，风扇始终是低速转动，高速档不工作。"
    n = len(tok.encode(text))
    assert 5 < n < len(text)  # tokens, not characters
    ctx = RunContext(tmp_path)
    recs = [_conv(Message("user", text), Message("assistant", "好"), rid="fits"),
            _conv(Message("user", text + "开空调尤其如此。"), Message("assistant", "好"),
                  rid="over")]
    # The character limit would remove both; with a tokenizer the token limit decides.
    clean_stage = Clean(max_tokens={"user": n}, max_chars={"user": 5},
                        resources=Resources(tokenizer_path=str(tokenizer_dir)))
    out = _run(clean_stage, recs, ctx)
    assert [r.id for r in out] == ["fits"]
    assert ctx.counts.removed == Counter({"too_long": 1})
    assert f"tokens, over max_tokens {n}" in ctx.rejects[0].message
    assert clean_stage.stats["length_unit"] == "tokens"


def test_token_limits_without_tokenizer(tmp_path: Path) -> None:
    rec = _conv(Message("user", "问" * 20), Message("assistant", "答"))
    with pytest.raises(ConfigError, match="tokenizer: PATH"):
        _run(Clean(max_tokens=100), [copy.deepcopy(rec)], RunContext(tmp_path))
    # With character limits as well, those apply ("characters otherwise").
    ctx = RunContext(tmp_path)
    assert _run(Clean(max_tokens=100, max_chars=10), [rec], ctx) == []
    assert ctx.counts.removed == Counter({"too_long": 1})


@pytest.mark.parametrize("options, match", [
    ({"roles": ["tool"]}, "tool calls are never rewritten"),
    ({"max_chars": {"user": 1, "robot": 2}}, "roles \\['robot'\\]"),
    ({"min_chars": 10, "max_chars": 5}, "min_chars 10 > max_chars 5"),
    ({"max_chars": "10"}, "must be a number or a mapping"),
    ({"literal_newlines": "yes"}, "auto, always or never"),
])
def test_bad_options(options: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Clean(**options)


def test_t2s_option(tmp_path: Path) -> None:
    rec = _conv(Message("user", "這個發動機"), Message("assistant", "檢測"))
    (out,) = _run((clean_stage := Clean(t2s=True)), [rec], ctx := RunContext(tmp_path))
    assert [m.content for m in out.messages] == ["这个发动机", "检测"]
    assert out.lineage.ops == ["clean:t2s"] and clean_stage.stats["changes"] == {"t2s": 7}
