"""The tools that hotel conversations may call: ``search_hotels`` and its JSON Schema.

The schema follows the fine-tuning-lab tool (same parameter names, order and descriptions, so the
rendered system prompt stays close to the one the published reference results were trained on)
with three deliberate tightenings that make every call executable against ``hotel_db.json``:

- ``facilities`` items are an ``enum`` of the 37 facility names in the CrossWOZ hotel database.
  The lab accepted any wording because its demo matched facilities by embedding similarity; our
  :class:`~dataprep.corpora.hotel.hotel_db.HotelDB` matches names exactly, so a model must learn the vocabulary.
  Cost: 330 more prompt tokens per sample (735 instead of 405 for the rendered tool list).
- ``additionalProperties: false``: a call with an unknown argument cannot be executed.
- ``uniqueItems`` on ``facilities``.

>>> SEARCH_HOTELS_TOOL["name"], sorted(SEARCH_HOTELS_TOOL["parameters"]["properties"])[:2]
('search_hotels', ['facilities', 'name'])
>>> check_parameters({"type": "快捷型"})
['/type: expected one of ["豪华型", "经济型", "舒适型", "高档型"], found "快捷型"']
"""

from __future__ import annotations

import copy
from typing import Any

from jsonschema import Draft202012Validator

from dataprep.schema import describe_error

HOTEL_TYPES: tuple[str, ...] = ("豪华型", "经济型", "舒适型", "高档型")

# Every distinct facility in crosswoz/database/hotel_db.json (1133 hotels), blanks left out
# (hotel 231 carries two whitespace-only entries, a scraping artefact). Sorted for stable prompts.
# tests/dataprep/test_hotel_db.py checks this list against the real database.
FACILITIES: tuple[str, ...] = (
    "24小时热水", "SPA", "中式餐厅", "会议室", "健身房", "免费国内长途电话", "免费市内电话",
    "公共区域和部分房间提供wifi", "公共区域提供wifi", "叫醒服务", "吹风机", "商务中心",
    "国际长途电话", "室内游泳池", "室外游泳池", "宽带上网", "所有房间提供wifi", "接待外宾",
    "接机服务", "接站服务", "收费停车位", "无烟房", "早餐服务", "早餐服务免费", "暖气", "桑拿",
    "棋牌室", "残疾人设施", "洗衣服务", "温泉", "看护小孩服务", "租车", "行李寄存", "西式餐厅",
    "部分房间提供wifi", "酒吧", "酒店各处提供wifi",
)

SEARCH_HOTELS_TOOL: dict[str, Any] = {
    "name": "search_hotels",
    "description": "根据用户的需求生成查询条件来查酒店",
    "parameters": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "description": "酒店名称"},
            "type": {"type": "string", "enum": list(HOTEL_TYPES), "description": "酒店类型"},
            "facilities": {
                "type": "array",
                "items": {"type": "string", "enum": list(FACILITIES)},
                "uniqueItems": True,
                "description": "酒店能提供的设施列表",
            },
            "price_range_lower": {"type": "number", "minimum": 0, "description": "价格下限"},
            "price_range_upper": {"type": "number", "minimum": 0, "description": "价格上限"},
            "rating_range_lower": {"type": "number", "minimum": 0, "maximum": 5,
                                   "description": "评分下限"},
            "rating_range_upper": {"type": "number", "minimum": 0, "maximum": 5,
                                   "description": "评分上限"},
        },
        "required": [],
        "additionalProperties": False,
    },
}

HOTEL_TOOLS: list[dict[str, Any]] = [SEARCH_HOTELS_TOOL]


def _lab_tool() -> dict[str, Any]:
    # The fine-tuning-lab's own declaration of the tool (as its train/dev.chatglm3.jsonl write it):
    # ours without the three tightenings. Its search was approximate, its facilities free strings.
    tool = copy.deepcopy(SEARCH_HOTELS_TOOL)
    props = tool["parameters"]["properties"]
    props["name"].pop("minLength")
    props["facilities"].pop("uniqueItems")
    props["facilities"]["items"].pop("enum")
    tool["parameters"].pop("additionalProperties")
    return tool


#: The tool the lab's data brings (``tool_origin: dataset``); tests check it against the lab file.
LAB_SEARCH_HOTELS_TOOL: dict[str, Any] = _lab_tool()

#: ``lineage.extra["tool_origin"]``: ``ours`` — the observations come from our own exact
#: ``search_hotels`` over hotel_db (crosswoz reader, our augment ops), so they must agree with
#: hotel_db; ``dataset`` — the record brings its own tool and its observations are what *that*
#: tool returned (lab files, any ChatGLM3 JSONL): only its own schema is binding, disagreements
#: with hotel_db are flags. A record without the key is judged as ``ours`` (strict).
TOOL_ORIGINS: tuple[str, ...] = ("ours", "dataset")


def tool_origin(rec: Any) -> str:
    """``ours`` or ``dataset`` (see :data:`TOOL_ORIGINS`)."""
    origin = rec.lineage.extra.get("tool_origin")
    return origin if origin in TOOL_ORIGINS else "ours"


def allows_free_facility(tool: dict[str, Any]) -> bool:
    """Whether a tool's schema accepts any string as a facility (the lab's does, ours does not).

    >>> allows_free_facility(LAB_SEARCH_HOTELS_TOOL), allows_free_facility(SEARCH_HOTELS_TOOL)
    (True, False)
    """
    return not check_parameters({"facilities": ["按摩"]}, tool)


def hotel_tools(facility_enum: bool = True) -> list[dict[str, Any]]:
    """A fresh copy of the tool list written into each hotel sample.

    ``facility_enum=False`` drops the facility enum from the copy the model sees (405 instead of
    735 prompt tokens per sample). Calls are still checked against the full schema when they are
    read (:func:`check_parameters`), so the data stays executable either way; what changes is
    only whether the model is shown the vocabulary or has to learn it from the calls.

    >>> "enum" in hotel_tools(False)[0]["parameters"]["properties"]["facilities"]["items"]
    False
    """
    tools = copy.deepcopy(HOTEL_TOOLS)
    if not facility_enum:
        tools[0]["parameters"]["properties"]["facilities"]["items"].pop("enum")
    return tools

PARAMETER_KEYS: tuple[str, ...] = tuple(SEARCH_HOTELS_TOOL["parameters"]["properties"])

_VALIDATOR = Draft202012Validator(SEARCH_HOTELS_TOOL["parameters"])


def check_parameters(params: Any, tool: dict[str, Any] | None = None) -> list[str]:
    """Problems of one ``search_hotels`` call, as ``"<pointer>: expected …, found …"``; empty when
    the call satisfies the tool schema (the same check the writer applies to every tool message).
    ``tool``: the declared tool to check against (default: ours, :data:`SEARCH_HOTELS_TOOL`).

    >>> check_parameters({"price_range_upper": 300, "facilities": ["无烟房"]})
    []
    """
    validator = _VALIDATOR if tool is None else Draft202012Validator(tool.get("parameters") or {})
    out = []
    for err in sorted(validator.iter_errors(params), key=lambda e: list(e.absolute_path)):
        _, pointer, message = describe_error(err)
        if err.validator == "additionalProperties":
            extra = sorted(set(params) - set(PARAMETER_KEYS))
            message = (f"unknown argument {', '.join(map(repr, extra))}; "
                       f"allowed: {', '.join(PARAMETER_KEYS)}")
        out.append(f"{pointer}: {message}")
    return out
