"""``validate``: schema + semantic checks, then the task rules, on the real corpora."""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path

import pytest

from dataprep.corpora.docqa.common import UNANSWERABLE_ANSWER
from dataprep.corpora.spo.reader import SpoReader
from dataprep.errors import ConfigError
from dataprep.record import Conversation, Lineage, Message
from dataprep.resources import Resources
from dataprep.stages.base import RunContext
from dataprep.stages.clean import Clean
from dataprep.stages.validate import Validate, role_order_problems
from dataprep.text import grounding_score


def _read(reader: object) -> list[Conversation]:
    return [r for r in reader.read() if isinstance(r, Conversation)]  # type: ignore[attr-defined]


def _validate(recs: list[Conversation], ctx: RunContext, resources: Resources | None = None,
              **options: object) -> tuple[list[Conversation], dict]:
    """The records validate passes on, and the stage's stats."""
    stage = Validate(resources=resources, **options)  # type: ignore[arg-type]
    return list(stage.run(Clean().run(recs, ctx), ctx)), stage.stats


# -- role order ---------------------------------------------------------------------------------
@pytest.mark.parametrize("roles, codes", [
    (["system", "user", "assistant", "tool", "assistant"], []),
    (["user", "tool", "assistant", "user", "assistant"], []),
    (["user", "assistant", "observation", "assistant"], []),
    (["assistant", "user", "assistant"], ["first_turn_not_user"]),
    (["system", "assistant", "user", "assistant"], ["first_turn_not_user"]),
    (["user", "user", "assistant"], ["consecutive_user"]),
    (["user", "tool", "user", "assistant"], ["tool_not_followed_by_assistant"]),
    (["user", "tool", "tool", "assistant"], []),  # back-to-back calls are valid ChatGLM3
    (["system", "tool", "assistant"], ["first_turn_not_user", "tool_out_of_order"]),
    (["user", "observation", "assistant"], ["observation_out_of_order"]),
])
def test_role_order(roles: list[str], codes: list[str]) -> None:
    assert [c for c, _ in role_order_problems(roles)] == codes


def test_schema_problems_still_come_first(tmp_path: Path) -> None:
    rec = Conversation(id="x", messages=[
        Message("user", "找酒店"), Message("tool", name="no_such_tool", parameters={}),
        Message("assistant", "好")], lineage=Lineage("s", 1, "x"), tools=[], corpus="hotel")
    ctx = RunContext(tmp_path)
    assert list(Validate().run([rec], ctx)) == []
    assert ctx.counts.rejected == Counter({"unknown_tool": 1})


# -- spo ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def spo_records(corpora: Path) -> list[Conversation]:
    return _read(SpoReader(corpora / "spo-repair-records" / "spo_0.subset.json"))


def test_spo_real_file_rates(spo_records: list[Conversation], tmp_path: Path) -> None:
    ctx = RunContext(tmp_path)
    out, st = _validate(copy.deepcopy(spo_records), ctx)
    assert len(out) == 1125 and st["valid"] == 1125 and not ctx.rejects
    assert st["triples"] == {"records": 1125, "total": 4932, "in_text": 4932,
                             "rate_in_text": 1.0, "skipped_no_meta": 0}
    assert st["relations"] == {"records": 1125, "total": 4932, "known_relation": 4932,
                               "skipped_no_meta": 0}
    assert st["rules"]["triple_not_in_text"] == {"mode": "reject", "checked": 1125, "failed": 0,
                                                 "rate": 0.0}


def test_spo_broken_triples_rejected_or_flagged(spo_records: list[Conversation],
                                               tmp_path: Path) -> None:
    recs = copy.deepcopy(spo_records[:3])
    recs[0].meta["triples"][0][2] = "变速箱爆炸"  # not in the text
    recs[1].meta["triples"][0][1] = "原因"        # not a configured relation
    ctx = RunContext(tmp_path)
    out, stats = _validate(copy.deepcopy(recs), ctx)
    assert [r.id for r in out] == [recs[2].id]
    assert ctx.counts.rejected == Counter({"triple_not_in_text": 1, "unknown_relation": 1})
    assert "'变速箱爆炸' does not occur in the text" in ctx.rejects[0].message
    st = stats["triples"]
    assert st["in_text"] == st["total"] - 1 and st["rate_in_text"] < 1.0
    # flag mode keeps the record and says why; a narrower relation set rejects more.
    ctx = RunContext(tmp_path)
    out, stats = _validate(copy.deepcopy(recs), ctx, rules={"triple_not_in_text": "flag",
                                                            "unknown_relation": "off"})
    assert len(out) == 3 and out[0].lineage.extra["flags"] == ["triple_not_in_text"]
    assert stats["flagged"] == 1
    # written as JSON text (its keys vary by record; see Lineage.to_dict)
    assert json.loads(out[0].to_chatglm3()["lineage"]["extra"])["flags"] == ["triple_not_in_text"]


# -- doc-QA -------------------------------------------------------------------------------------
def test_grounding_score() -> None:
    doc = "长江全长约6300公里，是亚洲第一长河。"
    assert grounding_score("约6300公里", [doc]) == 1.0
    assert grounding_score("长江约6300公里。", [doc]) == pytest.approx(7 / 8)  # "江约" is not
    assert grounding_score("黄河全长5464公里", [doc]) < 0.5
    assert grounding_score("长", [doc]) == 1.0 and grounding_score("黄", [doc]) == 0.0
    assert grounding_score("。", [doc]) == 0.0 and grounding_score("长江", []) == 0.0


@pytest.fixture(scope="module")
def docqa_records(corpora: Path) -> list[Conversation]:
    from dataprep.corpora.docqa.cmrc2018 import Cmrc2018Reader
    from dataprep.corpora.docqa.dureader import DuReaderReader

    return (_read(Cmrc2018Reader(corpora / "cmrc2018" / "cmrc2018_dev.json", negatives=0))
            + _read(DuReaderReader(corpora / "dureader-2.0-demo" / "search.train.json")))


def test_grounding_rates_on_real_docqa(docqa_records: list[Conversation], tmp_path: Path) -> None:
    ctx = RunContext(tmp_path)
    out, stats = _validate(copy.deepcopy(docqa_records), ctx)
    g = stats["grounding"]
    cmrc, dureader = g["by_source"]["cmrc2018_dev.json"], g["by_source"]["search.train.json"]
    # Measured (see the validate module docstring): CMRC extractive answers are all grounded;
    # DuReader's human-written answers mostly are, at the default threshold 0.5 (94 of 96).
    assert cmrc["checked"] == 3219 and cmrc["rate"] == 1.0
    assert dureader["checked"] == 96 and 0.85 <= dureader["rate"] < 1.0
    assert ctx.counts.rejected == Counter({"answer_not_grounded": 96 - dureader["grounded"]})
    assert len(out) == len(docqa_records) - ctx.counts.rejected["answer_not_grounded"]
    # A stricter threshold rejects more.
    strict = RunContext(tmp_path)
    _, strict_stats = _validate(copy.deepcopy(docqa_records[-96:]), strict,
                                grounding_threshold=0.9)
    assert strict_stats["grounding"]["grounded"] < dureader["grounded"]


def test_answers_paired_with_the_wrong_documents_fail(docqa_records: list[Conversation],
                                                      tmp_path: Path) -> None:
    recs = copy.deepcopy(docqa_records[:400:4])  # 100 CMRC questions from different articles
    docs = [r.meta["positive_docs"] for r in recs]
    for i, rec in enumerate(recs):
        rec.meta["positive_docs"] = docs[(i + 37) % len(recs)]
    ctx = RunContext(tmp_path)
    out, _ = _validate(recs, ctx)
    assert len(out) <= 10  # short answers can share a bigram by chance
    assert ctx.counts.rejected["answer_not_grounded"] >= 90


def test_unanswerable_samples_pass(tmp_path: Path) -> None:
    rec = Conversation(id="u", messages=[Message("user", "问题？"),
                                         Message("assistant", UNANSWERABLE_ANSWER)],
                       lineage=Lineage("s", 1, "u"), corpus="docqa",
                       meta={"answer": UNANSWERABLE_ANSWER, "positive_docs": [],
                             "negative_docs": ["无关"]})
    ctx = RunContext(tmp_path)
    assert len(list((validate_stage := Validate()).run([rec], ctx))) == 1
    assert validate_stage.stats["grounding"]["unanswerable"] == 1
    rec.meta["answer"] = "某个答案"
    assert list(Validate().run([rec], ctx)) == []
    assert "no positive document" in ctx.rejects[0].message


# -- hotel --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lab_dev(corpora: Path, hotel_db_path: Path) -> list[Conversation]:
    from dataprep.corpora.hotel.lab import LabChatGLM3Reader

    return _read(LabChatGLM3Reader(
        corpora / "crosswoz-hotel-finetune-lab" / "dev.chatglm3.jsonl", hotel_db=str(hotel_db_path)))


def _hotel_db(hotel_db_path: Path) -> Resources:
    return Resources(hotel_db_path=str(hotel_db_path))


def test_hotel_rates_on_real_lab_dev(lab_dev: list[Conversation], tmp_path: Path,
                                     hotel_db_path: Path) -> None:
    ctx = RunContext(tmp_path)
    out, stats = _validate(copy.deepcopy(lab_dev), ctx, _hotel_db(hotel_db_path))
    rules = stats["rules"]
    viol = rules["observation_violates_call"]
    # The lab's rewritten calls often no longer match their results (13-17% measured).
    assert viol["checked"] > 100 and 0.05 < viol["rate"] < 0.30
    # The lab brings its own (approximate) tool: disagreements with hotel_db are flags.
    assert ctx.counts.rejected == Counter() and len(out) == len(lab_dev) == 201
    assert stats["flags"] == {"observation_violates_call": 25, "unknown_facility": 10,
                              "tool_not_followed_by_assistant": 1, "reply_mentions_no_result": 1}
    for reason, n in stats["flags"].items():
        flagged = [r for r in out if reason in r.lineage.extra.get("flags", [])]
        assert len(flagged) == n and all(reason in r.lineage.extra["flag_messages"]
                                         for r in flagged)
    assert stats["flagged"] == sum(bool(r.lineage.extra.get("flags")) for r in out)
    rm = stats["reply_mentions"]
    assert rm["checked"] > 100 and rm["rate"] >= 0.99
    assert len(out) == stats["valid"] == len(lab_dev) - len(ctx.rejects)
    # ... unless the config asks for rejects.
    ctx = RunContext(tmp_path)
    out, stats = _validate(copy.deepcopy(lab_dev), ctx, _hotel_db(hotel_db_path),
                           dataset_tools="reject")
    assert ctx.counts.rejected["observation_violates_call"] > 0
    assert ctx.counts.rejected["unknown_facility"] > 0
    assert len(out) + len(ctx.rejects) == 201


def test_our_own_tool_stays_exact(lab_dev: list[Conversation], tmp_path: Path,
                                  hotel_db_path: Path) -> None:
    recs = copy.deepcopy(lab_dev)
    for r in recs:
        r.lineage.extra["tool_origin"] = "ours"
    ctx = RunContext(tmp_path)
    out, stats = _validate(recs, ctx, _hotel_db(hotel_db_path))
    # Judged as ours, every disagreement with hotel_db is a reject (a record's first problem
    # names it: a violating record may ask for an unknown facility first).
    assert ctx.counts.rejected["observation_violates_call"] == 24
    assert ctx.counts.rejected["unknown_facility"] == 8
    assert set(stats["flags"]) <= {"reply_mentions_no_result"}


def test_repair_reruns_the_call_on_hotel_db(lab_dev: list[Conversation], tmp_path: Path,
                                            hotel_db_path: Path) -> None:
    res = _hotel_db(hotel_db_path)
    db = res.hotel_db
    # On the lab's dev file every violating result is named by the reply that follows it: a
    # repaired observation would leave the reply ungrounded, so all 25 are rejected as such.
    ctx = RunContext(tmp_path)
    out, stats = _validate(copy.deepcopy(lab_dev), ctx, res,
                           rules={"observation_violates_call": "repair"})
    assert stats["repaired"] == 0 and ctx.counts.rejected == Counter({"repair_ungrounded": 25})
    assert all("which hotel_db does not return for the call" in r.message
               and "(after repairing: " in r.message for r in ctx.rejects)
    # A result with an extra hotel the reply does not name is repaired: the true result replaces it.
    good = _valid_hotel_record(lab_dev, tmp_path, hotel_db_path)
    i = next(k for k, m in enumerate(good.messages) if m.role == "tool" and m.observation)
    call = good.messages[i].parameters
    stray = next(h for h in db.hotels if db.violations(h.hotel_id, call)
                 and h.name not in good.messages[i + 1].content)
    bad = copy.deepcopy(good)
    bad.messages[i].observation = [*bad.messages[i].observation, stray.to_record()]
    ctx = RunContext(tmp_path)
    out = list(Validate(resources=res, rules={"observation_violates_call": "repair"}).run(
        [bad], ctx))
    assert len(out) == 1 and ctx.rejects == []
    fixed = out[0].messages[i].observation
    assert "repair_observation" in out[0].lineage.ops
    assert stray.hotel_id not in [h["hotel_id"] for h in fixed]
    assert all(not db.violations(h, call) for h in fixed)
    assert fixed[0] == good.messages[i].observation[0]  # the named hotel stays first


def _valid_hotel_record(lab_dev: list[Conversation], tmp_path: Path,
                        hotel_db_path: Path) -> Conversation:
    ctx = RunContext(tmp_path)
    for rec in _validate(copy.deepcopy(lab_dev), ctx, _hotel_db(hotel_db_path))[0]:
        tools = [m for m in rec.messages if m.role == "tool" and isinstance(m.observation, list)
                 and m.observation]
        if tools and not rec.lineage.extra.get("flags"):
            return rec
    raise AssertionError("no valid hotel record with a non-empty observation")


def test_tampered_hotel_records(lab_dev: list[Conversation], tmp_path: Path,
                                hotel_db_path: Path) -> None:
    good = _valid_hotel_record(lab_dev, tmp_path, hotel_db_path)
    i = next(k for k, m in enumerate(good.messages) if m.role == "tool" and m.observation)
    hotel = good.messages[i].observation[0]

    over_budget = copy.deepcopy(good)
    over_budget.messages[i].parameters = {"price_range_upper": 1.0}
    silent = copy.deepcopy(good)
    silent.messages[i + 1].content = "好的，已经为您查到了。"
    ctx = RunContext(tmp_path)
    out = list(Validate(resources=_hotel_db(hotel_db_path)).run(
        [copy.deepcopy(over_budget), copy.deepcopy(silent)], ctx))
    # The lab's own tool: the violation is a flag.
    assert ctx.counts.rejected == Counter() and len(out) == 2
    assert "observation_violates_call" in out[0].lineage.extra["flags"]
    ctx = RunContext(tmp_path)
    out = list(Validate(resources=_hotel_db(hotel_db_path), dataset_tools="reject").run(
        [over_budget, silent], ctx))
    assert ctx.counts.rejected == Counter({"observation_violates_call": 1})
    assert f"{hotel['name']!r} does not satisfy the call" in ctx.rejects[0].message
    assert "above price_range_upper" in ctx.rejects[0].message
    assert len(out) == 1 and out[0].lineage.extra["flags"] == ["reply_mentions_no_result"]
    # As a hard rule the silent reply is rejected too.
    ctx = RunContext(tmp_path)
    out = list(Validate(rules={"reply_mentions_no_result": "reject"},
                        resources=_hotel_db(hotel_db_path)).run(
        [copy.deepcopy(silent)], ctx))
    assert out == [] and ctx.counts.rejected == Counter({"reply_mentions_no_result": 1})


def test_hotel_rules_need_the_database(lab_dev: list[Conversation], tmp_path: Path,
                                       hotel_db_path: Path) -> None:
    rec = _valid_hotel_record(lab_dev, tmp_path, hotel_db_path)
    with pytest.raises(ConfigError, match="hotel_db: PATH"):
        list(Validate().run([copy.deepcopy(rec)], RunContext(tmp_path)))
    # Switched off, no database is needed.
    out = list(Validate(rules={"observation_violates_call": "off", "unknown_facility": "off"}).run(
        [copy.deepcopy(rec)], RunContext(tmp_path)))
    assert len(out) == 1


@pytest.mark.parametrize("options, match", [
    ({"rules": {"triple_in_text": "reject"}}, "unknown rules"),
    ({"rules": {"triple_not_in_text": "warn"}}, "reject, flag, off"),
    ({"grounding_threshold": 1.5}, "between 0 and 1"),
    ({"rules": {"unknown_facility": "repair"}}, "reject, flag, off, got"),
    ({"dataset_tools": "off"}, "dataset_tools must be one of flag, reject"),
])
def test_bad_options(options: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Validate(**options)


def test_back_to_back_tool_calls_are_valid_but_a_call_answered_by_the_user_is_not() -> None:
    from dataprep.stages.validate import role_order_problems

    assert role_order_problems(["user", "tool", "tool", "assistant"]) == []
    assert role_order_problems(["user", "assistant", "tool", "tool", "assistant"]) == []
    (problem,) = role_order_problems(["user", "tool", "user", "assistant"])
    assert problem[0] == "tool_not_followed_by_assistant"


# -- what a sample must end with ----------------------------------------------------------------
@pytest.mark.parametrize("messages, reasons", [
    # A trailing call is an assistant turn with loss: a complete sample.
    ([{"role": "user", "content": "找酒店"},
      {"role": "tool", "name": "search_hotels", "parameters": {}}], []),
    ([{"role": "user", "content": "找酒店"}, {"role": "assistant", "content": "好"},
      {"role": "user", "content": "谢谢"}], ["not_ending_with_assistant"]),
    # Nothing trained at all: the only removal for "nothing to learn".
    ([{"role": "user", "content": "找酒店"},
      {"role": "assistant", "content": "好", "loss": False}], ["nothing_to_learn"]),
    ([{"role": "user", "content": "找酒店"},
      {"role": "tool", "name": "search_hotels", "parameters": {}, "loss": False},
      {"role": "assistant", "content": "好"}], []),
])
def test_a_sample_needs_a_trained_turn_and_may_end_with_a_call(messages: list,
                                                               reasons: list) -> None:
    from dataprep.corpora.hotel.tools import LAB_SEARCH_HOTELS_TOOL
    from dataprep.schema import output_problems

    line = {"id": "x", "tools": [LAB_SEARCH_HOTELS_TOOL], "conversations": messages}
    assert [p[0] for p in output_problems(line)] == reasons
