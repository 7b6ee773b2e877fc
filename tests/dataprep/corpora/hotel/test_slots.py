"""Slot extraction and the slot-preservation check: rewrites that drop or change a number, a
hotel name, a facility or a type must fail with the matching reason; faithful colloquial rewrites
must pass."""

from __future__ import annotations

import pytest

from dataprep.corpora.hotel.hotel_db import HotelDB
from dataprep.corpora.hotel.phrases import (
    FACILITY_NOUN_REWRITES,
    FACILITY_SYNONYMS,
    FACILITY_VERB_REWRITES,
    TYPE_SYNONYMS,
)
from dataprep.corpora.hotel.slots import SlotExtractor, parse_chinese_number
from dataprep.corpora.hotel.tools import FACILITIES
from dataprep.record import Conversation


@pytest.mark.parametrize("text, value", [
    ("五百", 500), ("一千一", 1100), ("一千一百", 1100), ("两千五", 2500), ("三百五", 350),
    ("一千零五", 1005), ("十五", 15), ("二十", 20), ("四点五", 4.5), ("一万", 10000),
])
def test_chinese_numerals(text: str, value: float) -> None:
    assert parse_chinese_number(text) == value


def test_numbers_carry_their_bound(extractor: SlotExtractor) -> None:
    cases = {
        "价格在500元以内": [(500.0, "upper")],
        "价格不超过每晚500": [(500.0, "upper")],
        "比900元便宜的": [(900.0, "upper")],
        "评分不低于4.5分": [(4.5, "lower")],   # "不低于" is lower although it ends in "低于"
        "评分4.5分以上": [(4.5, "lower")],
        "两百块钱往上": [(200.0, "lower")],
        "价格在300-400元之间": [(300.0, "range"), (400.0, "range")],
        "三百到四百块": [(300.0, "range"), (400.0, "range")],
        "评分是5分": [(5.0, "exact")],
    }
    for text, numbers in cases.items():
        assert list(extractor.extract(text).numbers) == sorted(numbers), text


def test_articles_and_idioms_are_not_numbers(extractor: SlotExtractor) -> None:
    assert extractor.extract("千万别太贵，十分感谢，推荐一家就好，两个人住").numbers == ()


def test_facility_phrases_are_not_numbers(extractor: SlotExtractor) -> None:
    # 24小时热水 is a facility, not the number 24.
    slots = extractor.extract("要有24小时热水和wifi")
    assert slots.numbers == ()
    assert slots.facilities == {"24小时热水", "wifi"}


def test_real_hotel_names_are_found_and_consumed(extractor: SlotExtractor,
                                                 hotel_db: HotelDB) -> None:
    name = next(h.name for h in hotel_db.hotels if any(c.isdigit() for c in h.name))
    slots = extractor.extract(f"我想订{name}，帮我查查")
    assert slots.names == {name.lower()}
    # the digits inside the name are part of the name, not a price
    assert slots.numbers == ()


def test_issue_example_passes(extractor: SlotExtractor) -> None:
    assert extractor.check("找一家有国际长途电话的酒店", "找一家能打国际长途的酒店") == []


@pytest.mark.parametrize("original, rewrite, reason", [
    # a number dropped or changed
    ("帮我找个价格在500元之内的酒店。", "帮我找个便宜点的酒店。", "slot_number_changed"),
    ("帮我找个价格在500元之内的酒店。", "帮我找个600块以内的酒店。", "slot_number_changed"),
    ("评分4.5分以上的经济型酒店", "评分4分以上的经济型酒店", "slot_number_changed"),
    # same number, other meaning
    ("帮我找个价格在500元之内的酒店。", "帮我找个500块以上的酒店。", "slot_bound_changed"),
    # a facility dropped, or swapped for another
    ("找一家有国际长途电话和无烟房的酒店", "找一家能打国际长途的酒店", "slot_facility_dropped"),
    ("找一家提供叫醒服务的酒店", "找一家有早饭的酒店", "slot_facility_dropped"),
    ("找一家有吹风机的酒店", "找一家有吹风机和健身房的酒店", "slot_facility_added"),
    # a type changed or dropped
    ("帮我找一家经济型酒店", "帮我找一家豪华点的酒店", "slot_type_changed"),
    ("帮我找一家经济的酒店", "帮我找一家酒店", "slot_type_changed"),
])
def test_broken_rewrites_fail_with_their_reason(extractor: SlotExtractor, original: str,
                                                rewrite: str, reason: str) -> None:
    reasons = extractor.check(original, rewrite)
    assert reasons and reasons[0] == reason, reasons


def test_names_dropped_or_changed(extractor: SlotExtractor, hotel_db: HotelDB) -> None:
    a, b = hotel_db.hotels[0].name, hotel_db.hotels[1].name
    assert extractor.check(f"帮我查一下{a}的电话", "帮我查一下这家的电话") == ["slot_name_dropped"]
    assert extractor.check(f"帮我查一下{a}的电话", f"帮我查一下{b}的电话") == [
        "slot_name_dropped", "slot_name_added"]
    # shortening a name is a change too: the call would search for another string
    short = a.removeprefix("北京")
    assert short != a
    assert extractor.check(f"我想订{a}", f"我想订{short}") == ["slot_name_dropped"]


def test_call_parameters_catch_what_the_phrase_table_does_not_know(
        extractor: SlotExtractor) -> None:
    # "接待来访的外国客人" is not in the phrase table, but the call that follows says 接待外宾 and
    # the original states it literally: dropping it is caught through the parameters.
    params = {"facilities": ["接待外宾"]}
    assert extractor.canonical_facility("接待来访的外宾") == "接待外宾"
    original = "找一家能接待来访的外宾的酒店"
    assert extractor.check(original, "找一家酒店", params) == ["slot_facility_dropped"]
    assert extractor.check(original, "找一家能接待外国客人的酒店", params) == []
    # a name from the call that is not a database name (a partial name) must survive too
    call = {"name": "京广中心民宿"}
    assert extractor.check("我想订京广中心民宿，帮我查查", "帮我查查那家民宿", call) == [
        "slot_name_dropped"]
    assert extractor.check("我想订京广中心民宿，帮我查查", "帮我查查京广中心民宿呗", call) == []


def test_every_database_facility_maps_to_itself(extractor: SlotExtractor,
                                                hotel_db: HotelDB) -> None:
    assert set(FACILITIES) == hotel_db.facility_names
    for f in FACILITIES:
        assert extractor.canonical_facility(f) == f
        assert extractor.extract(f"要有{f}的").facilities == {f}


def test_phrase_table_round_trips(extractor: SlotExtractor) -> None:
    """Every colloquial form the offline rewriter may write maps back to its canonical name:
    the property that makes rule rewrites slot-preserving by construction."""
    for canon, phrases in FACILITY_SYNONYMS.items():
        for p in phrases:
            assert extractor.extract(p).facilities == {canon}, (p, canon)
    for table in (FACILITY_VERB_REWRITES, FACILITY_NOUN_REWRITES):
        for canon, phrases in table.items():
            for p in phrases:
                assert extractor.extract(f"找一家{p}的酒店").facilities == {canon}, (p, canon)
    for canon, phrases in TYPE_SYNONYMS.items():
        for p in phrases:
            assert extractor.extract(f"找一家{p}的酒店").types == {canon}


def test_extractor_agrees_with_the_database_on_lab_call_wordings(
        extractor: SlotExtractor, hotel_db: HotelDB, lab_records: list[Conversation]) -> None:
    """The lab's facility wordings (kept by the reader in lineage.extra) map to the same database
    facility under our phrase table as under HotelDB.canonical_facility, for at least 95%."""
    pairs = {(orig, canon) for rec in lab_records
             for orig, canon in rec.lineage.extra.get("facilities_original", {}).items()}
    assert len(pairs) > 100
    agree = sum(extractor.canonical_facility(o) == c for o, c in pairs)
    wrong = [p for p in pairs if extractor.canonical_facility(p[0]) != p[1]]
    assert agree / len(pairs) >= 0.95, wrong
