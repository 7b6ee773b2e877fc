"""The hotel database, the search_hotels tool schema and the scenario labels."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from dataprep.corpora.hotel.hotel_db import (
    NULL_PRICE,
    SCENARIO_LABELS,
    HotelDB,
    hotel_group_id,
    is_closing,
    normalise_observation,
    param_label,
    scenario_label,
)
from dataprep.corpora.hotel.tools import (
    FACILITIES,
    HOTEL_TOOLS,
    HOTEL_TYPES,
    SEARCH_HOTELS_TOOL,
    check_parameters,
)
from dataprep.errors import InputError
from dataprep.record import Conversation, Lineage, Message

REPO = Path(__file__).resolve().parents[4]
SAMPLE_DB = REPO / "data" / "hotel_db_sample.json"


@pytest.fixture(scope="module")
def db(hotel_db_path: Path) -> HotelDB:
    return HotelDB.load(hotel_db_path)


@pytest.fixture(scope="module")
def sample() -> HotelDB:
    return HotelDB.load(SAMPLE_DB)


# -- the real database ----------------------------------------------------------------------

def test_real_database_layout(db: HotelDB, hotel_db_path: Path) -> None:
    raw = json.loads(hotel_db_path.read_text(encoding="utf-8"))
    assert len(db) == len(raw) == 1133
    assert sum(h.price is None for h in db.hotels) == 121
    # hotel_id is the 0-based index, as in the lab's records.
    assert [h.hotel_id for h in db.hotels] == list(range(1133))
    assert all(h.name == raw[h.hotel_id][0] for h in db.hotels)
    assert db.types == set(HOTEL_TYPES)
    # The tool's enum is exactly the database's vocabulary (blank artefacts dropped).
    assert db.facility_names == set(FACILITIES)
    assert len([f for f in raw[231][1]["酒店设施"] if not f.strip()]) == 2
    assert all(f.strip() for f in db.hotels[231].facilities)
    assert db.by_name("北京贵都大酒店") is db.hotels[0]
    assert db.by_name("不存在的酒店") is None


def test_load_is_cached_and_bad_files_say_where(hotel_db_path: Path, tmp_path: Path) -> None:
    assert HotelDB.load(hotel_db_path) is HotelDB.load(str(hotel_db_path))
    bad = tmp_path / "db.json"
    bad.write_text(json.dumps([["甲", {"名称": "甲", "酒店设施": [], "价格": 1, "评分": 4}]],
                              ensure_ascii=False), encoding="utf-8")
    with pytest.raises(InputError, match=r"db\.json: /0/1: missing required field '酒店类型'"):
        HotelDB.load(bad)
    with pytest.raises(InputError, match="no such hotel database"):
        HotelDB.load(tmp_path / "missing.json")


def test_records_have_the_lab_shape(db: HotelDB) -> None:
    rec = db.record(0)
    assert list(rec) == ["name", "type", "address", "subway", "phone", "facilities", "price",
                         "rating", "hotel_id"]
    assert rec["price"] == 1354.0 and isinstance(rec["price"], float)
    null = next(h for h in db.hotels if h.price is None)
    # One shape for "no price" in every output: null (the lab's -1.0 is read as null too).
    assert db.record(null.hotel_id)["price"] is None and NULL_PRICE == -1.0
    assert normalise_observation({"price": NULL_PRICE})[0] == {"price": None}


def test_search_agrees_with_violations_on_random_calls(db: HotelDB) -> None:
    """search(limit=None) returns exactly the hotels without violations, best first."""
    rng = random.Random(7)
    facilities = sorted(db.facility_names)
    for _ in range(60):
        params: dict = {}
        if rng.random() < 0.5:
            params["type"] = rng.choice(HOTEL_TYPES)
        if rng.random() < 0.6:
            params["facilities"] = rng.sample(facilities, rng.randint(1, 2))
        if rng.random() < 0.5:
            lo = rng.choice([100, 200, 300, 500])
            params["price_range_lower"] = lo
            if rng.random() < 0.5:
                params["price_range_upper"] = lo + 200
        if rng.random() < 0.4:
            params["rating_range_lower"] = rng.choice([4.0, 4.5, 4.8])
        assert check_parameters(params) == []
        got = db.search(params, limit=None)
        expected = {h.hotel_id for h in db.hotels if not db.violations(h.hotel_id, params)}
        assert {r["hotel_id"] for r in got} == expected
        keys = [(-r["rating"], r["hotel_id"]) for r in got]
        assert keys == sorted(keys)
        assert db.search(params) == got[:3]


def test_bounds_are_inclusive_and_null_prices_never_match(sample: HotelDB) -> None:
    # 如归快捷酒店(鼓楼店) costs exactly 238 and has rating 4.6.
    hit = sample.by_name("如归快捷酒店(鼓楼店)")
    assert hit is not None
    exact = {"price_range_lower": 238, "price_range_upper": 238, "rating_range_lower": 4.6,
             "rating_range_upper": 4.6}
    assert [r["name"] for r in sample.search(exact)] == [hit.name]
    nulls = {h.hotel_id for h in sample.hotels if h.price is None}
    assert nulls
    priced = sample.search({"price_range_lower": 0}, limit=None)
    assert not nulls & {r["hotel_id"] for r in priced}
    assert nulls <= {r["hotel_id"] for r in sample.search({}, limit=None)}
    why = sample.violations(min(nulls), {"price_range_upper": 5000})
    assert why and "unknown (null in hotel_db)" in why[0]


def test_name_matching_tiers(db: HotelDB) -> None:
    # The lab's query wording: characters of the name, in order.
    assert db.search({"name": "和颐酒店天坛店"})[0]["name"] == "和颐酒店北京天坛店"
    assert db.search({"name": "盛厦宾馆"})[0]["name"] == "北京盛厦宾馆"
    # An exact name beats the many names that contain it.
    results = db.search({"name": "北京饭店"}, limit=5)
    assert results[0]["name"] == "北京饭店" and len(results) == 5
    assert db.search({"name": "不存在的酒店名"}) == []


def test_prefer_puts_matching_hotels_first(sample: HotelDB) -> None:
    params = {"type": "经济型"}
    plain = sample.search(params, limit=None)
    last = plain[-1]["hotel_id"]
    outsider = sample.by_name("紫禁华庭大酒店").hotel_id  # 豪华型: cannot be preferred in
    got = sample.search(params, limit=3, prefer=[outsider, last])
    assert got[0]["hotel_id"] == last and outsider not in [r["hotel_id"] for r in got]
    assert [r["hotel_id"] for r in got[1:]] == [r["hotel_id"] for r in plain[:2]]


@pytest.mark.parametrize("params, fragment", [
    ({"type": "经济型"}, "type is '高档型', the call asks 'type' = '经济型'"),
    ({"facilities": ["温泉", "无烟房"]}, "lacks facilities ['温泉']"),
    ({"price_range_upper": 1000}, "price 1354 is above price_range_upper 1000"),
    ({"price_range_lower": 2000}, "price 1354 is below price_range_lower 2000"),
    ({"rating_range_lower": 4.8}, "rating 4.7 is below rating_range_lower 4.8"),
    ({"name": "王府井"}, "name does not contain the characters of '王府井' in order"),
    ({"stars": 5}, "unknown argument 'stars'"),
])
def test_violations_say_what_is_wrong(db: HotelDB, params: dict, fragment: str) -> None:
    problems = db.violations(db.record(0), params)
    assert len(problems) == 1 and fragment in problems[0]


def test_violations_check_the_record_against_the_database(db: HotelDB) -> None:
    good = db.record(0)
    assert db.violations(good, {"type": "高档型", "facilities": ["无烟房"]}) == []
    assert "is '北京贵都大酒店' in hotel_db" in db.violations({**good, "name": "别家"}, {})[0]
    assert "not in" in db.violations({"name": "x", "hotel_id": 5000}, {})[0]
    assert "not in" in db.violations({"name": "x"}, {})[0]
    with pytest.raises(ValueError, match="unknown search_hotels argument"):
        db.search({"stars": 5})


@pytest.mark.parametrize("wording, canon", [
    ("全天供应热水", "24小时热水"), ("国际电话服务", "国际长途电话"), ("无障碍设施", "残疾人设施"),
    ("公共区域和一些房间提供无线网络", "公共区域和部分房间提供wifi"),
    ("酒店各个角落都有wifi", "酒店各处提供wifi"), ("所有客房都有wifi", "所有房间提供wifi"),
    ("免费提供早餐", "早餐服务免费"), ("供应早餐", "早餐服务"), ("机场接送服务", "接机服务"),
    (" 叫我起床", "叫醒服务"), ("无烟房", "无烟房"), ("禁烟房间", "无烟房"),
    # ambiguous or absent from the database
    ("wifi", None), ("泳池", None), ("停车场", None), ("电风扇", None), ("洗衣机", None),
    ("吸烟房", None),
])
def test_canonical_facility(db: HotelDB, wording: str, canon: str | None) -> None:
    assert db.canonical_facility(wording) == canon


# -- the tool ------------------------------------------------------------------------------

def test_tool_schema_is_a_real_json_schema() -> None:
    Draft202012Validator.check_schema(SEARCH_HOTELS_TOOL["parameters"])
    assert HOTEL_TOOLS == [SEARCH_HOTELS_TOOL] and SEARCH_HOTELS_TOOL["name"] == "search_hotels"
    props = SEARCH_HOTELS_TOOL["parameters"]["properties"]
    assert list(props) == ["name", "type", "facilities", "price_range_lower", "price_range_upper",
                           "rating_range_lower", "rating_range_upper"]
    assert props["type"]["enum"] == ["豪华型", "经济型", "舒适型", "高档型"]
    assert SEARCH_HOTELS_TOOL["parameters"]["additionalProperties"] is False


@pytest.mark.parametrize("params, problem", [
    ({"price_range_lower": 300, "facilities": ["无烟房"], "type": "经济型"}, None),
    ({"type": "快捷型"}, "/type: expected one of"),
    ({"facilities": ["全天供应热水"]}, "/facilities/0: expected one of"),
    ({"rating_range_lower": 6}, "/rating_range_lower: 6 is greater than the maximum of 5"),
    ({"price_range_upper": "300"}, "/price_range_upper: expected number, found string"),
    ({"stars": 5}, "unknown argument 'stars'"),
    ({"facilities": ["无烟房", "无烟房"]}, "/facilities: "),
])
def test_check_parameters(params: dict, problem: str | None) -> None:
    problems = check_parameters(params)
    if problem is None:
        assert problems == []
    else:
        assert problems and problem in problems[0]


# -- scenario labels -------------------------------------------------------------------------

def _conv(*turns: tuple) -> Conversation:
    msgs = []
    for role, value in turns:
        if role == "tool":
            msgs.append(Message("tool", name="search_hotels", parameters=value, observation=[]))
        else:
            msgs.append(Message(role, value))
    return Conversation("t", msgs, Lineage("s", 1, "g"))


FIND = ("user", "帮我找一家酒店")
REPLY = ("assistant", "推荐北京饭店。")


@pytest.mark.parametrize("params, label", [
    ({"facilities": ["无烟房"], "rating_range_lower": 4.5, "price_range_upper": 300}, "facility"),
    ({"rating_range_lower": 4.5, "price_range_upper": 300, "type": "经济型"}, "rating"),
    ({"price_range_upper": 300, "type": "经济型"}, "price"),
    ({"price_range_lower": 300}, "price"),
    ({"name": "北京饭店"}, "name"),
    ({"type": "经济型"}, "type"),
    ({}, "type"),
])
def test_single_query_labels_follow_the_precedence(params: dict, label: str) -> None:
    assert param_label(params) == label
    assert scenario_label(_conv(FIND, ("tool", params), REPLY)) == label


def test_closing_and_followup_labels() -> None:
    closing = _conv(FIND, ("tool", {"type": "经济型"}), REPLY, ("user", "好的，我决定入住北京饭店了，谢谢！"),
                    ("assistant", "不客气。"))
    assert scenario_label(closing) == "closing"
    question = _conv(FIND, ("tool", {"type": "经济型"}), REPLY, ("user", "这家酒店的电话是多少？"),
                     ("assistant", "010-1234。"), ("user", "谢谢。"), ("assistant", "不客气。"))
    assert scenario_label(question) == "followup"
    # A statement that leads to a new call is a refinement, not a closing.
    refine = _conv(FIND, ("tool", {"type": "经济型"}), REPLY, ("user", "不好意思，是4.5分以上的。"),
                   ("tool", {"type": "经济型", "rating_range_lower": 4.5}), REPLY)
    assert scenario_label(refine) == "followup"
    assert scenario_label(_conv(FIND, REPLY)) == "type"  # no call at all
    assert {scenario_label(c) for c in (closing, question, refine)} <= set(SCENARIO_LABELS)


@pytest.mark.parametrize("text, closing", [
    ("好的，谢谢你了啊。", True), ("好的，那我就入住北京饭店吧，听起来很不错呢！", True),
    ("谢谢你的推荐，我决定入住北京一六九商务酒店。", True), ("这家酒店的电话是多少？", False),
    ("这两家哪家更便宜", False), ("那就帮我推荐一个经济型的", False), ("有没有带早餐的", False),
])
def test_is_closing(text: str, closing: bool) -> None:
    assert is_closing(text) is closing


def test_group_id_depends_on_the_opening_only() -> None:
    a = hotel_group_id("找一家经济型酒店", {"type": "经济型", "rating_range_lower": 4.5})
    assert a == hotel_group_id(" 找一家经济型酒店", {"rating_range_lower": 4.5, "type": "经济型"})
    assert a != hotel_group_id("找一家经济型酒店", {"type": "经济型"})
    assert a.startswith("hotel:") and len(a) == len("hotel:") + 16
    assert len({hotel_group_id(u, None) for u, _ in itertools.product("abc", "x")}) == 3
