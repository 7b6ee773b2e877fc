"""Pure scoring functions: hand-computed values, the section-5 cross penalties, micro averaging."""

from __future__ import annotations

import math

import pytest

from trainer_plugin.metrics import (
    Counts,
    Reply,
    aggregate,
    char_bleu4,
    char_rouge_l,
    parse_triples,
    score_turn,
    slot_counts,
    triple_counts,
)


def tool(params: dict, name: str = "search_hotels") -> Reply:
    return Reply("tool", "", name, params)


def test_bleu4_is_one_for_identical_text_and_zero_for_empty() -> None:
    assert char_bleu4("推荐您去北京饭店。", "推荐您去北京饭店。") == pytest.approx(1.0)
    assert char_bleu4("", "推荐您去北京饭店。") == 0.0
    assert char_bleu4("推荐", "   ") == 0.0


def test_bleu4_matches_hand_computed_brevity_penalty() -> None:
    # Every n-gram of "abcd" is in "abcde" (precisions 1), so BLEU = BP = exp(1 - 5/4).
    assert char_bleu4("abcd", "abcde") == pytest.approx(math.exp(1 - 5 / 4))
    # Surrounding whitespace is stripped, as the reference evaluator did.
    assert char_bleu4("  abcd\n", "abcde") == pytest.approx(math.exp(1 - 5 / 4))


def test_bleu4_is_character_level_for_chinese() -> None:
    # No word segmentation: one wrong character lowers the score but keeps it well above zero.
    score = char_bleu4("这家酒店的价格是135元", "这家酒店的价格是136元")
    assert 0.5 < score < 1.0


def test_rouge_l_uses_the_longest_common_character_subsequence() -> None:
    # LCS("abxd", "abcd") = "abd": P = R = 3/4.
    assert char_rouge_l("abxd", "abcd") == pytest.approx(0.75)
    # 5 of 7 reference characters in order, 5 of 5 predicted: F = 2*1*(5/7)/(1+5/7).
    assert char_rouge_l("我爱天安门", "我爱北京天安门") == pytest.approx(2 * (5 / 7) / (1 + 5 / 7))
    assert char_rouge_l("", "abc") == 0.0


def test_slot_counts_expand_lists_and_skip_unset_values() -> None:
    pred = {"type": "经济型", "facilities": ["wifi", "停车场"], "name": None}
    ref = {"type": "经济型", "facilities": ["wifi", "叫醒服务"], "price_range_upper": 300}
    assert slot_counts(pred, ref) == Counts(correct=2, predicted=3, reference=4)


def test_slot_counts_compare_values_not_spelling() -> None:
    assert slot_counts({"price_range_upper": 300.0}, {"price_range_upper": 300}) == Counts(1, 1, 1)
    assert slot_counts({"p": 300}, {"p": "300"}) == Counts(0, 1, 1)
    assert slot_counts({"d": {"a": 1, "b": 2}}, {"d": {"b": 2, "a": 1}}) == Counts(1, 1, 1)
    # A repeated list element is matched at most as often as the reference has it.
    assert slot_counts({"f": ["wifi", "wifi"]}, {"f": ["wifi"]}) == Counts(1, 2, 1)


def test_text_answer_to_a_tool_turn_scores_no_slots() -> None:
    s = score_turn(Reply("text", "好的"), tool({"type": "经济型", "rating_range_lower": 4.5}))
    assert s.slots == Counts(0, 0, 2)
    assert s.tool_name_correct is False
    assert s.bleu4 is None


def test_tool_call_to_a_text_turn_scores_bleu_zero() -> None:
    s = score_turn(tool({"type": "经济型"}), Reply("text", "推荐您去北京饭店。"))
    assert s.bleu4 == 0.0 and s.rouge_l == 0.0
    assert s.slots is None


def test_wrong_tool_name_fills_no_slot_but_counts_its_predictions() -> None:
    s = score_turn(tool({"type": "经济型"}, name="book_hotel"), tool({"type": "经济型"}))
    assert s.slots == Counts(0, 1, 1)
    assert s.tool_name_correct is False


def test_unparsable_tool_call_counts_as_a_call_without_slots() -> None:
    s = score_turn(Reply("tool", "search_hotels\n```python\ntool_call(", "search_hotels", None),
                   tool({"type": "经济型"}))
    assert s.slots == Counts(0, 0, 1)
    assert s.tool_name_correct is True


def test_aggregate_micro_averages_slots_and_means_bleu() -> None:
    scores = [
        score_turn(tool({"a": 1, "b": 2}), tool({"a": 1, "b": 3, "c": 4})),  # 1 of 2, ref 3
        score_turn(tool({"a": 1, "b": 2}), tool({"a": 1, "b": 2})),  # 2 of 2, ref 2
        score_turn(Reply("text", "abcd"), Reply("text", "abcde")),
        score_turn(tool({"a": 1}), Reply("text", "abcde")),  # BLEU 0
    ]
    m = aggregate(scores)
    p, r = 3 / 4, 3 / 5
    assert m["slot_precision"] == pytest.approx(100 * p)
    assert m["slot_recall"] == pytest.approx(100 * r)
    assert m["slot_f1"] == pytest.approx(100 * 2 * p * r / (p + r), abs=1e-3)
    assert m["bleu4"] == pytest.approx(100 * math.exp(1 - 5 / 4) / 2, abs=1e-3)
    assert (m["turns"], m["tool_turns"], m["text_turns"]) == (4, 2, 2)
    assert m["text_answered_as_tool"] == 1 and m["tool_answered_as_text"] == 0
    assert m["task"] == "dialog" and "by_task" not in m


def test_triples_are_parsed_per_line_and_set_matched() -> None:
    text = "发动机_部件故障_水温高\n风扇_部件故障_低速转动\n风扇_部件故障_低速转动\n这行不是三元组"
    assert parse_triples(text) == {("发动机", "部件故障", "水温高"), ("风扇", "部件故障", "低速转动")}
    assert triple_counts("发动机_部件故障_水温高\n开关_部件故障_不起作用",
                         "发动机_部件故障_水温高\n风扇_部件故障_低速转动") == Counts(1, 2, 2)


def test_aggregate_reports_triples_and_splits_by_task() -> None:
    ref = Reply("text", "发动机_部件故障_水温高\n风扇_部件故障_低速转动")
    scores = [
        score_turn(Reply("text", "发动机_部件故障_水温高"), ref, task="triple"),
        score_turn(Reply("text", "北京"), Reply("text", "北京"), task="docqa"),
    ]
    m = aggregate(scores)
    assert m["triple_precision"] == 100.0 and m["triple_recall"] == 50.0
    assert set(m["by_task"]) == {"triple", "docqa"}
    assert m["by_task"]["docqa"]["rouge_l"] == 100.0
    assert "triple_f1" not in m["by_task"]["docqa"]


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="kind"):
        Reply("json")
    with pytest.raises(ValueError, match="unknown task"):
        score_turn(Reply("text", "a"), Reply("text", "a"), task="qa")
