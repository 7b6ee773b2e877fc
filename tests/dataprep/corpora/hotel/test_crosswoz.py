"""CrossWOZ -> hotel tool dialogs: the whole real val.json.zip, slot extraction, the samples,
broken input and the CLI."""

from __future__ import annotations

import json
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from dataprep import cli, schema
from dataprep.convert import convert
from dataprep.corpora.hotel.crosswoz import (
    CrossWOZReader,
    merge_params,
    parse_bounds,
    slot_params,
    state_params,
    turn_kind,
    turn_params,
)
from dataprep.corpora.hotel.hotel_db import SCENARIO_LABELS, HotelDB
from dataprep.corpora.hotel.tools import HOTEL_TOOLS
from dataprep.errors import InputError, StrictModeError
from dataprep.io import dumps
from dataprep.record import Conversation, Reject

REPO = Path(__file__).resolve().parents[4]
SAMPLE = REPO / "data" / "crosswoz_sample.json"
SAMPLE_DB = REPO / "data" / "hotel_db_sample.json"


@pytest.fixture(scope="module")
def val_path(corpora: Path) -> Path:
    return corpora / "crosswoz" / "val.json.zip"


@pytest.fixture(scope="module")
def val_dialogues(val_path: Path) -> dict:
    with zipfile.ZipFile(val_path) as zf:
        return json.loads(zf.read("val.json"))


@pytest.fixture(scope="module")
def items(val_path: Path, hotel_db_path: Path) -> list:
    return list(CrossWOZReader(val_path, hotel_db=str(hotel_db_path)).read())


@pytest.fixture(scope="module")
def convs(items: list) -> list[Conversation]:
    return [i for i in items if isinstance(i, Conversation)]


# -- the whole real file -----------------------------------------------------------------------

def test_every_dialogue_is_accounted_for(items: list, val_dialogues: dict) -> None:
    assert len(items) == len(val_dialogues) == 500
    # One item per dialogue, in file order.
    keys = [i.lineage.item if isinstance(i, Conversation) else i.item for i in items]
    assert keys == list(val_dialogues)
    rejects = Counter((i.kind, i.reason) for i in items if isinstance(i, Reject))
    assert rejects == {("removed", "no_hotel_domain"): 90,
                       ("removed", "ungrounded_hotel_reply"): 27,
                       ("removed", "no_hotel_search"): 6,
                       ("removed", "hotel_not_separable"): 1}
    assert sum(isinstance(i, Conversation) for i in items) == 376
    # A removed dialogue keeps why: its domain per exchange.
    for r in (i for i in items if isinstance(i, Reject)):
        assert len(r.record["turn_kinds"]) == len(val_dialogues[r.item]["messages"]) // 2


def test_removed_dialogues_really_lack_hotel_content(items: list, val_dialogues: dict) -> None:
    for rej in (i for i in items if isinstance(i, Reject) and i.reason == "no_hotel_domain"):
        acts = [a for m in val_dialogues[rej.item]["messages"] for a in m["dialog_act"]]
        assert not any(a[1] == "酒店" for a in acts if a[0] != "General"), rej.item
    hotel_ids = {k for k, d in val_dialogues.items()
                 if any(g[1] == "酒店" for g in d["goal"])}
    assert {i.lineage.item for i in items if isinstance(i, Conversation)} <= hotel_ids


def test_every_output_line_is_valid(convs: list[Conversation]) -> None:
    for c in convs:
        line = c.to_chatglm3()
        assert schema.output_problems(line) == [], c.id
        assert line["tools"] == HOTEL_TOOLS and c.corpus == "hotel"
        assert c.label in SCENARIO_LABELS
        assert c.meta["calls"] == [m.parameters for m in c.messages if m.role == "tool"]
        assert c.lineage.group_id.startswith("hotel:")
        # No thought turns are invented: the source has none.
        assert not any(m.content and "工具" in m.content for m in c.messages
                       if m.role == "assistant")


def test_every_observation_satisfies_its_call(convs: list[Conversation],
                                              hotel_db_path: Path) -> None:
    db = HotelDB.load(hotel_db_path)
    n_records = 0
    for c in convs:
        for m in c.messages:
            if m.role != "tool":
                continue
            assert len(m.observation) <= 3
            everything = {r["hotel_id"] for r in db.search(m.parameters, limit=None)}
            for rec in m.observation:
                n_records += 1
                assert db.violations(rec, m.parameters) == [], (c.id, rec["name"], m.parameters)
                assert rec == db.record(rec["hotel_id"])
                assert rec["hotel_id"] in everything
            # The observation is the top of the query unless the system named other matches.
            if len(everything) >= 3:
                assert len(m.observation) == 3
    assert n_records > 900


def test_replies_are_grounded_in_observations(convs: list[Conversation],
                                              val_dialogues: dict) -> None:
    """Each hotel the kept system turns name was returned by a call before the reply."""
    for c in convs:
        seen: set[str] = set()
        sys_turns = [m for m in val_dialogues[c.meta["dialogue_id"]]["messages"]
                     if m["role"] == "sys"]
        by_content = {m["content"]: m for m in sys_turns}
        for m in c.messages:
            if m.role == "tool":
                seen |= {r["name"] for r in m.observation}
            elif m.role == "assistant":
                acts = by_content[m.content]["dialog_act"]
                named = {a[3] for a in acts if a[1] == "酒店" and a[2] == "名称"
                         and a[0] in ("Inform", "Recommend")}
                assert named <= seen, (c.id, named - seen)
                assert not any(a[2] in ("周边景点", "周边餐馆", "周边酒店") for a in acts)


def test_cuts_and_repairs_are_recorded(convs: list[Conversation]) -> None:
    ops = Counter(op for c in convs for op in c.lineage.ops)
    assert ops == {"cut_hotel_segment": 367, "drop_ungrounded_exchange": 187,
                   "relaxed_search": 40}
    for c in convs:
        roles = [m.role for m in c.messages]
        assert roles[0] == "user" and roles[-1] == "assistant"
        pairs = list(zip(roles, roles[1:], strict=False))
        assert ("tool", "tool") not in pairs or "relaxed_search" in c.lineage.ops
        assert ("drop_ungrounded_exchange" in c.lineage.ops) == (c.meta["dropped_exchanges"] > 0)
    relaxed = next(c for c in convs if "relaxed_search" in c.lineage.ops)
    first, second = [m for m in relaxed.messages if m.role == "tool"][:2]
    assert first.parameters != second.parameters


def test_without_relaxed_search_no_two_calls_in_a_row(val_path: Path,
                                                      hotel_db_path: Path) -> None:
    items = list(CrossWOZReader(val_path, hotel_db=str(hotel_db_path),
                                relaxed_search=False).read())
    assert len(items) == 500
    convs = [i for i in items if isinstance(i, Conversation)]
    assert len(convs) == 339
    for c in convs:
        roles = [m.role for m in c.messages]
        assert ("tool", "tool") not in zip(roles, roles[1:], strict=False)


def test_dataprep_validate_cli_passes_on_the_converted_file(convs: list[Conversation],
                                                             tmp_path: Path, capsys) -> None:
    out = tmp_path / "crosswoz.jsonl"
    out.write_text("".join(dumps(c.to_chatglm3()) + "\n" for c in convs), encoding="utf-8")
    assert cli.main(["validate", str(out)]) == 0
    assert f"{len(convs)} lines, {len(convs)} valid, 0 invalid" in capsys.readouterr().err


# -- slot extraction ---------------------------------------------------------------------------

@pytest.mark.parametrize("slot, value, params", [
    ("价格", "300-400元", {"price_range_lower": 300, "price_range_upper": 400}),
    ("价格", "1000元以上", {"price_range_lower": 1000}),
    ("价格", "300元以下", {"price_range_upper": 300}),
    ("价格", "531元", {"price_range_lower": 531, "price_range_upper": 531}),
    ("评分", "4.5分以上", {"rating_range_lower": 4.5}),
    ("评分", "4分以上", {"rating_range_lower": 4.0}),
    ("评分", "5分", {"rating_range_lower": 5.0}),
    ("评分", "4.5分", {"rating_range_lower": 4.5, "rating_range_upper": 4.5}),
    ("酒店设施-无烟房", "是", {"facilities": ["无烟房"]}),
    ("酒店设施-无烟房", "否", {}),
    ("酒店类型", "高档型", {"type": "高档型"}),
    ("酒店类型", "经济", {"type": "经济型"}),
    ("名称", "北京饭店", {"name": "北京饭店"}),
    ("名称", "", {}),
    ("周边景点", "故宫", {}),
])
def test_slot_params(slot: str, value: str, params: dict) -> None:
    assert slot_params(slot, value) == params
    assert all(isinstance(v, int) for k, v in params.items() if k.startswith("price"))
    assert all(isinstance(v, float) for k, v in params.items() if k.startswith("rating"))


@pytest.mark.parametrize("slot, value", [("价格", "便宜点"), ("评分", "4.5元以上"),
                                         ("酒店类型", "快捷型")])
def test_unparsable_values_raise(slot: str, value: str) -> None:
    with pytest.raises(ValueError, match=repr(value)):
        slot_params(slot, value)


def test_bounds_swap_and_merge() -> None:
    assert parse_bounds("400-300元", "元") == (300, 400)
    acts = [["General", "greet", "none", "none"], ["Inform", "酒店", "价格", "300-400元"],
            ["Inform", "酒店", "酒店设施-吹风机", "是"], ["Inform", "酒店", "酒店设施-无烟房", "是"],
            ["Inform", "餐馆", "人均消费", "100-150元"], ["Request", "酒店", "名称", ""]]
    assert turn_params(acts) == {"price_range_lower": 300, "price_range_upper": 400,
                                 "facilities": ["吹风机", "无烟房"]}
    # A later range replaces the whole earlier one.
    assert merge_params({"price_range_lower": 1000}, {"price_range_upper": 500}) == \
        {"price_range_upper": 500}
    assert state_params({"酒店类型": "舒适", "酒店设施": "早餐服务 无烟房", "评分": "4.5分以上",
                         "名称": "某酒店", "周边景点": "故宫", "selectedResults": ["某酒店"]}) == \
        {"type": "舒适型", "facilities": ["早餐服务", "无烟房"], "rating_range_lower": 4.5}


@pytest.mark.parametrize("acts, kind", [
    ([["Inform", "酒店", "评分", "4.5分以上"], ["Request", "酒店", "名称", ""]], "hotel"),
    ([["General", "thank", "none", "none"]], "general"),
    ([["Inform", "餐馆", "推荐菜", "烤鸭"]], "other"),
    ([["Request", "酒店", "电话", ""], ["Request", "餐馆", "地址", ""]], "mixed"),
    # a hotel near an attraction: the tool cannot express "near"
    ([["Inform", "景点", "名称", "故宫"], ["Inform", "酒店", "酒店类型", "经济型"],
      ["Select", "酒店", "源领域", "景点"]], "near"),
    # an attraction near the hotel belongs to the attraction domain
    ([["Inform", "酒店", "名称", "北京饭店"], ["Inform", "景点", "评分", "4分以上"],
      ["Select", "景点", "源领域", "酒店"]], "other"),
])
def test_turn_kind(acts: list, kind: str) -> None:
    assert turn_kind(acts) == kind


# -- the invented samples ----------------------------------------------------------------------

def test_sample_dialogues() -> None:
    got = {}
    for item in CrossWOZReader(SAMPLE, hotel_db=str(SAMPLE_DB)).read():
        if isinstance(item, Reject):
            got[item.item] = (item.kind, item.reason)
        else:
            got[item.lineage.item] = (item.label, tuple(item.lineage.ops),
                                      [m.parameters for m in item.messages if m.role == "tool"])
    assert got["1001"] == ("followup", (), [{"price_range_lower": 200, "price_range_upper": 300,
                                             "type": "经济型", "facilities": ["无烟房"]}])
    assert got["1002"][0] == "followup" and len(got["1002"][2]) == 1  # choosing is not a search
    assert got["1003"][:2] == ("followup", ("cut_hotel_segment",))
    assert got["1004"][:2] == ("followup", ("cut_hotel_segment",))
    assert got["1005"] == ("closing", ("relaxed_search",),
                           [{"rating_range_lower": 5.0, "type": "舒适型"},
                            {"type": "舒适型", "rating_range_lower": 4.5}])
    assert got["1006"] == ("removed", "hotel_not_separable")
    assert got["1007"] == ("removed", "no_hotel_domain")
    assert got["1008"] == ("followup", ("cut_hotel_segment",), [{"name": "金台观景大饭店"}])
    assert got["1009"][:2] == ("followup", ("drop_ungrounded_exchange",))
    assert got["1010"][0] == "price" and got["1013"][0] == "facility"
    assert got["1011"] == ("rejected", "wrong_type")
    assert got["1012"] == ("closing", ("cut_hotel_segment",), [{"name": "如归快捷酒店(鼓楼店)"}])
    assert len(got) == 13


# -- broken input ------------------------------------------------------------------------------

def _write(tmp_path: Path, data: object) -> Path:
    p = tmp_path / "cw.json"
    p.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return p


def test_broken_dialogues_become_rejects_with_location(tmp_path: Path) -> None:
    good = json.loads(SAMPLE.read_text(encoding="utf-8"))["1010"]
    data = {
        "ok": good,
        "no_messages": {"type": "单领域"},
        "bad_role": {"messages": [{**good["messages"][0], "role": "user"}]},
        "bad_acts": {"messages": [{**good["messages"][0], "dialog_act": "Inform"}]},
        "null_content": {"messages": [{**good["messages"][0], "content": None}]},
        "unpaired": {"messages": [good["messages"][1], good["messages"][0]]},
        "bad_price": {"messages": [{**good["messages"][0],
                                    "dialog_act": [["Inform", "酒店", "价格", "很便宜"]]},
                                   good["messages"][1]]},
        "bad_facility": {"messages": [{**good["messages"][0],
                                       "dialog_act": [["Inform", "酒店", "酒店设施-电风扇", "是"]]},
                                      good["messages"][1]]},
        "not_a_dict": [1, 2],
    }
    items = list(CrossWOZReader(_write(tmp_path, data), hotel_db=str(SAMPLE_DB)).read())
    assert len(items) == len(data)
    assert isinstance(items[0], Conversation)
    got = {r.item: (r.reason, r.message) for r in items[1:]}
    assert got["no_messages"] == ("missing_field", "/: missing required field 'messages'")
    assert got["bad_role"][0] == "invalid_value" and got["bad_role"][1].startswith(
        "/messages/0/role")
    assert got["bad_acts"][0] == "wrong_type"
    assert got["null_content"][0] == "null_value"
    assert got["unpaired"][0] == "unpaired_turns"
    assert got["bad_price"] == ("unparsable_slot", "/messages/0/dialog_act: expected a 元 range "
                                "like '300-400元', '4.5元以上' or '5元', found '很便宜'")
    assert got["bad_facility"][0] == "invalid_tool_call"
    assert got["bad_facility"][1].startswith("/messages/0/dialog_act: the call does not fit "
                                             "search_hotels: /facilities/0: expected one of")
    assert got["bad_facility"][1].endswith('found "电风扇"')
    assert got["not_a_dict"][0] == "wrong_type"
    assert all(r.location().startswith(str(tmp_path / "cw.json") + "#") for r in items[1:])


def test_unreadable_documents_are_input_errors(tmp_path: Path) -> None:
    p = tmp_path / "cw.json"
    p.write_bytes(b'{"1": {"messages": []}')
    with pytest.raises(InputError, match="cw.json: cannot read as JSON"):
        list(CrossWOZReader(p, hotel_db=str(SAMPLE_DB)).read())
    p.write_bytes(json.dumps({"1": {"messages": [], "x": "酒店"}}, ensure_ascii=False)
                  .encode("gbk"))
    with pytest.raises(InputError, match="cw.json: cannot read as JSON"):
        list(CrossWOZReader(p, hotel_db=str(SAMPLE_DB)).read())
    p.write_text("[]", encoding="utf-8")
    with pytest.raises(InputError, match="expected a JSON object keyed by dialogue id"):
        list(CrossWOZReader(p, hotel_db=str(SAMPLE_DB)).read())


def test_strict_mode_stops_at_the_first_bad_dialogue(tmp_path: Path) -> None:
    with pytest.raises(StrictModeError, match=r"crosswoz_sample\.json#1011: .* \[wrong_type\]"):
        convert("crosswoz", SAMPLE, tmp_path / "o.jsonl", hotel_db=str(SAMPLE_DB), strict=True)
    # Removed dialogues (filtered by design) do not stop a strict run before the bad one.
    result = convert("crosswoz", SAMPLE, tmp_path / "o.jsonl", hotel_db=str(SAMPLE_DB))
    assert result.input == 13 and result.written == 10
    assert Counter(r.reason for r in result.rejects) == {
        "hotel_not_separable": 1, "no_hotel_domain": 1, "wrong_type": 1}


def test_cli_convert_then_validate(tmp_path: Path, capsys) -> None:
    out = tmp_path / "sample.jsonl"
    rc = cli.main(["convert", "--from", "crosswoz", str(SAMPLE), "--out", str(out),
                   "--hotel-db", str(SAMPLE_DB)])
    assert rc == 1  # the sample holds one broken dialogue on purpose
    err = capsys.readouterr().err
    assert "crosswoz_sample.json#1011: /messages/0/dialog_act/0/3: expected string" in err
    assert cli.main(["validate", str(out)]) == 0
    rc = cli.main(["convert", "--from", "crosswoz", str(SAMPLE), "--out", str(out)])
    assert rc == 2 and "needs the hotel database" in capsys.readouterr().err
