"""The CrossWOZ hotel database as a queryable table, and the hotel-dialog helpers built on it.

``hotel_db.json`` is a list of ``[name, {领域, 名称, 酒店类型, 地址, 地铁, 电话, 酒店设施, 价格, 评分,
周边景点, 周边餐馆, 周边酒店}]`` pairs. A hotel's id is its 0-based index in that list, as in the
fine-tuning-lab records (``hotel_id``).

Query semantics of :meth:`HotelDB.search` (one definition, used to build observations and by
:meth:`HotelDB.violations` to check them):

- ``name``: the query's characters occur in the hotel name in order ("和颐酒店天坛店" finds
  "和颐酒店北京天坛店"); this reproduces all 142 name searches of the lab's raw dialogs, where a
  plain substring test misses 7.
- ``type``: equal. ``facilities``: the hotel has every one (exact names, see
  :data:`dataprep.corpora.hotel.tools.FACILITIES`).
- ``price_range_lower/upper``, ``rating_range_lower/upper``: inclusive bounds, as CrossWOZ's
  database.md specifies ("区间(包含端点)"). A hotel whose price is null (121 of 1133) never satisfies
  a price bound: its price is unknown, not zero.

Result order: name tier first when ``name`` is given (exact name, then substring, then in-order
characters), then rating descending, then ``hotel_id`` ascending. Default ``limit`` is 3, the value
the lab's demo passes to its own search; the lab's ``return`` lists hold 1–5 records (1 in 72%).

Observation records have the lab's shape ``{name, type, address, subway, phone, facilities, price,
rating, hotel_id}``; a null DB price is written as ``null`` (the lab wrote ``-1.0``, which
:func:`normalise_observation` maps to ``null`` too, so one field has one shape in every output), and
prices are floats (the lab writes ``446.0`` for the DB's ``446``).

>>> db = HotelDB.load("data/hotel_db_sample.json")
>>> [r["name"] for r in db.search({"type": "经济型", "rating_range_lower": 4.5}, limit=2)]
['青檐客栈(南锣鼓巷店)', '百花深处客栈']
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dataprep import schema
from dataprep.errors import InputError
from dataprep.io import read_json_document, value_problem
from dataprep.record import Conversation

DEFAULT_LIMIT = 3
NULL_PRICE = -1.0  # the lab's "no price"; read as null
_FACILITY_PREFIX = re.compile(r"^\s*酒店提供的设施\s*[:：]\s*")


def _number(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return value
    return value


def normalise_observation(record: Any) -> tuple[Any, list[str]]:
    """One observation record in the one shape every output uses, and what was changed.

    ``facilities`` always a list of strings (172 raw-dialog records carry ``"酒店提供的设施:a;b"``),
    ``price``/``rating`` numbers or ``null`` (the lab's ``-1`` / ``-1.0`` "no price" is ``null``).
    Anything that is not a dict is returned unchanged (the schema check reports it).

    >>> normalise_observation({"facilities": "酒店提供的设施:无烟房;吹风机", "price": -1.0})
    ({'facilities': ['无烟房', '吹风机'], 'price': None}, ['facilities', 'price'])
    """
    if not isinstance(record, dict):
        return record, []
    out, changed = dict(record), []
    facs = out.get("facilities")
    if isinstance(facs, str):
        text = _FACILITY_PREFIX.sub("", facs)
        out["facilities"] = [f.strip() for f in re.split(r"[;；,，]", text) if f.strip()]
        changed.append("facilities")
    for key in ("price", "rating"):
        if key not in out or out[key] is None:
            continue
        value = _number(out[key])
        if isinstance(value, float) and value < 0:  # -1: "unknown" in the lab's data (price, rating)
            value = None
        if value != out[key] or type(value) is not type(out[key]):
            out[key] = value
            changed.append(key)
    return out, changed

PRICE_KEYS = ("price_range_lower", "price_range_upper")
RATING_KEYS = ("rating_range_lower", "rating_range_upper")


@dataclass(frozen=True)
class Hotel:
    """One row of the hotel database. ``price`` is ``None`` where the database has null."""

    hotel_id: int
    name: str
    type: str
    address: str
    subway: str
    phone: str
    facilities: tuple[str, ...]
    price: float | None
    rating: float | None
    nearby_attractions: tuple[str, ...] = ()
    nearby_restaurants: tuple[str, ...] = ()
    nearby_hotels: tuple[str, ...] = ()

    def to_record(self) -> dict[str, Any]:
        """The observation record, in the lab's key order.

        >>> Hotel(7, "某酒店", "经济型", "地址", "地铁", "电话", ("无烟房",), None, 4.5).to_record()["price"] is None
        True
        """
        return {
            "name": self.name,
            "type": self.type,
            "address": self.address,
            "subway": self.subway,
            "phone": self.phone,
            "facilities": list(self.facilities),
            "price": None if self.price is None else float(self.price),
            "rating": self.rating,
            "hotel_id": self.hotel_id,
        }


def _in_order(query: str, name: str) -> bool:
    it = iter(name)
    return all(ch in it for ch in query)


def _name_tier(query: str, name: str) -> int | None:
    """0 exact, 1 substring, 2 characters in order, None no match (case-insensitive)."""
    q, n = query.strip().lower(), name.lower()
    if not q:
        return None
    if q == n:
        return 0
    if q in n:
        return 1
    if _in_order(q, n):
        return 2
    return None


# The synonym table is data (facility_synonyms.json next to this module): the rules mapping the
# lab's paraphrases to database names, and the wordings left unmapped because they are ambiguous.
_SYNONYMS_FILE = Path(__file__).with_name("facility_synonyms.json")
_SYNONYMS = json.loads(_SYNONYMS_FILE.read_text(encoding="utf-8"))
FACILITY_SYNONYMS: tuple[tuple[str, str], ...] = tuple((p, c) for p, c in _SYNONYMS["rules"])
#: wording -> the database facilities it could mean; never mapped (see the JSON file).
AMBIGUOUS_FACILITIES: dict[str, list[str]] = dict(_SYNONYMS["ambiguous"])
_SYNONYM_RES = tuple((re.compile(p, re.IGNORECASE), c) for p, c in FACILITY_SYNONYMS)


class HotelDB:
    """The hotel table. Build with :meth:`load` (cached per file) or :meth:`from_entries`.

    >>> db = HotelDB.from_entries([["甲酒店", {"名称": "甲酒店", "酒店类型": "经济型", "地址": "",
    ...     "地铁": "", "电话": "", "酒店设施": ["无烟房"], "价格": 200, "评分": 4.6}]])
    >>> db.search({"facilities": ["无烟房"], "price_range_upper": 300})[0]["hotel_id"]
    0
    >>> db.violations(0, {"type": "豪华型"})
    ["hotel 0 '甲酒店': type is '经济型', the call asks 'type' = '豪华型'"]
    """

    _cache: dict[tuple[str, int, int], HotelDB] = {}

    def __init__(self, hotels: list[Hotel], source: str = "") -> None:
        self.hotels = hotels
        self.source = source
        self._by_name = {h.name: h for h in hotels}
        self.facility_names: set[str] = {f for h in hotels for f in h.facilities}
        self.types: set[str] = {h.type for h in hotels}
        self._fac_sets = [frozenset(h.facilities) for h in hotels]

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> HotelDB:
        """Read ``hotel_db.json`` (plain or ``.zip``); the same unchanged file is parsed once per
        process, so every reader and stage may call this freely. Raises :class:`InputError` naming
        the entry and field when the file does not have the CrossWOZ layout."""
        p = Path(path)
        try:
            st = p.stat()
        except OSError as e:
            raise InputError(f"{path}: no such hotel database file") from e
        key = (str(p.resolve()), st.st_mtime_ns, st.st_size)
        db = cls._cache.get(key)
        if db is None:
            data, display = read_json_document(p)
            db = cls.from_entries(data, source=display)
            cls._cache[key] = db
        return db

    @classmethod
    def from_entries(cls, data: Any, source: str = "hotel_db.json") -> HotelDB:
        # NaN/Infinity prices or ratings would be copied into every observation that lists the
        # hotel: the database is refused as a whole, naming the entry.
        bad = value_problem(data)
        if bad is not None:
            raise InputError(f"{source}: {bad[1]}: {bad[2]} [{bad[0]}]")
        problems = schema.check("hotel_db", data)
        if problems:
            _, pointer, message = problems[0]
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            raise InputError(f"{source}: {pointer}: {message}{more}; expected the CrossWOZ "
                             "layout [[name, {名称, 酒店类型, 酒店设施, 价格, 评分, …}], …]")
        hotels = []
        for i, (name, row) in enumerate(data):
            hotels.append(Hotel(
                hotel_id=i,
                name=row.get("名称") or name,
                type=row["酒店类型"],
                address=row.get("地址") or "",
                subway=row.get("地铁") or "",
                phone=row.get("电话") or "",
                # Blank entries are scraping artefacts (hotel 231 of the real file).
                facilities=tuple(f.strip() for f in row["酒店设施"] if f.strip()),
                price=None if row["价格"] is None else float(row["价格"]),
                rating=None if row["评分"] is None else float(row["评分"]),
                nearby_attractions=tuple(row.get("周边景点") or ()),
                nearby_restaurants=tuple(row.get("周边餐馆") or ()),
                nearby_hotels=tuple(row.get("周边酒店") or ()),
            ))
        return cls(hotels, source)

    # -- lookups -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.hotels)

    def by_name(self, name: str) -> Hotel | None:
        """The hotel with exactly this name, or None."""
        return self._by_name.get(name)

    def hotel(self, hotel_id: int) -> Hotel:
        if not isinstance(hotel_id, int) or isinstance(hotel_id, bool) \
                or not 0 <= hotel_id < len(self.hotels):
            raise KeyError(f"hotel_id {hotel_id!r} is not in {self.source or 'hotel_db'} "
                           f"(0..{len(self.hotels) - 1})")
        return self.hotels[hotel_id]

    def record(self, hotel_id: int) -> dict[str, Any]:
        return self.hotel(hotel_id).to_record()

    def canonical_facility(self, text: str) -> str | None:
        """The database facility a wording means, or None when unknown or ambiguous.

        >>> HotelDB.load("data/hotel_db_sample.json").canonical_facility("全天供应热水")
        '24小时热水'
        """
        t = text.strip()
        if t in self.facility_names:
            return t
        for rx, canon in _SYNONYM_RES:
            if rx.search(t):
                return canon if canon in self.facility_names else None
        return None

    # -- querying ----------------------------------------------------------------------------
    def matches(self, hotel: Hotel, params: dict[str, Any]) -> bool:
        """True when the hotel satisfies every constraint of the call."""
        return self._ok(hotel, params)

    def search(self, params: dict[str, Any], limit: int | None = DEFAULT_LIMIT,
               prefer: Iterable[int] = ()) -> list[dict[str, Any]]:
        """Observation records of the hotels that satisfy every constraint, best first.

        ``prefer`` lists hotel ids to put first when they match (a dialogue reader passes the
        hotels the human system recommended, so that the reply it keeps is grounded in the
        observation); ``limit=None`` returns every match. Raises ``ValueError`` for an argument
        that ``search_hotels`` does not have.
        """
        self._check_keys(params)
        name = params.get("name")
        hits: list[tuple[tuple[Any, ...], Hotel]] = []
        for h in self.hotels:
            if not self._ok(h, params):
                continue
            tier = _name_tier(name, h.name) if isinstance(name, str) else 0
            rating = h.rating if h.rating is not None else float("-inf")
            hits.append(((tier, -rating, h.hotel_id), h))
        hits.sort(key=lambda kh: kh[0])
        ordered = [h for _, h in hits]
        pref = list(dict.fromkeys(prefer))
        if pref:
            rank = {hid: k for k, hid in enumerate(pref)}
            ordered.sort(key=lambda h: rank.get(h.hotel_id, len(rank)))  # stable: keeps the rest
        if limit is not None:
            ordered = ordered[:limit]
        return [h.to_record() for h in ordered]

    def violations(self, record_or_hotel_id: dict[str, Any] | int,
                   params: dict[str, Any]) -> list[str]:
        """Why a returned hotel does not satisfy a call; empty when it satisfies every constraint.

        Takes an observation record (its ``hotel_id`` is looked up, and its ``name`` must agree
        with the database) or a bare hotel id. Unknown arguments are violations too.
        """
        out = [f"unknown argument {k!r}" for k in params if k not in _PARAM_KEYS]
        if isinstance(record_or_hotel_id, dict):
            hid = record_or_hotel_id.get("hotel_id")
        else:
            hid = record_or_hotel_id
        try:
            hotel = self.hotel(hid)  # type: ignore[arg-type]
        except KeyError as e:
            return [*out, str(e.args[0])]
        if isinstance(record_or_hotel_id, dict) and "name" in record_or_hotel_id \
                and record_or_hotel_id["name"] != hotel.name:
            out.append(f"hotel {hid} is {hotel.name!r} in hotel_db, the record says "
                       f"{record_or_hotel_id['name']!r}")
        return out + self._hotel_violations(hotel, params)

    # -- internals ---------------------------------------------------------------------------
    @staticmethod
    def _check_keys(params: dict[str, Any]) -> None:
        if not isinstance(params, dict):
            raise ValueError(f"search parameters must be an object, got {type(params).__name__}")
        unknown = [k for k in params if k not in _PARAM_KEYS]
        if unknown:
            raise ValueError(f"unknown search_hotels argument(s) {unknown}; "
                             f"allowed: {', '.join(_PARAM_KEYS)}")

    def _ok(self, h: Hotel, params: dict[str, Any]) -> bool:
        """Fast path of ``not _hotel_violations`` for the search loop (no message building)."""
        for key, want in params.items():
            if key == "type":
                if h.type != want:
                    return False
            elif key == "facilities":
                if want and not self._fac_sets[h.hotel_id].issuperset(want):
                    return False
            elif key in PRICE_KEYS or key in RATING_KEYS:
                value = h.price if key in PRICE_KEYS else h.rating
                if want is None:
                    continue
                if value is None or (value < want if key.endswith("lower") else value > want):
                    return False
            elif key == "name" and (not isinstance(want, str) or _name_tier(want, h.name) is None):
                return False
        return True

    @staticmethod
    def _hotel_violations(h: Hotel, params: dict[str, Any]) -> list[str]:
        who = f"hotel {h.hotel_id} {h.name!r}"
        out = []
        name = params.get("name")
        if name is not None and (not isinstance(name, str) or _name_tier(name, h.name) is None):
            out.append(f"{who}: name does not contain the characters of {name!r} in order")
        if "type" in params and h.type != params["type"]:
            out.append(f"{who}: type is {h.type!r}, the call asks 'type' = {params['type']!r}")
        wanted = params.get("facilities") or []
        missing = [f for f in wanted if f not in h.facilities]
        if missing:
            out.append(f"{who}: lacks facilities {missing}")
        bounds = ((PRICE_KEYS, h.price, "price"), (RATING_KEYS, h.rating, "rating"))
        for key, value, label in bounds:
            lower, upper = (params.get(k) for k in key)
            if lower is None and upper is None:
                continue
            if value is None:
                out.append(f"{who}: {label} is unknown (null in hotel_db), the call bounds it")
                continue
            if lower is not None and value < lower:
                out.append(f"{who}: {label} {value:g} is below {key[0]} {lower}")
            if upper is not None and value > upper:
                out.append(f"{who}: {label} {value:g} is above {key[1]} {upper}")
        return out


_PARAM_KEYS = ("name", "type", "facilities", *PRICE_KEYS, *RATING_KEYS)


def clear_cache() -> None:
    """Forget loaded databases (tests that rewrite a file in place)."""
    HotelDB._cache.clear()


# -- dialog-level helpers -----------------------------------------------------------------------

SCENARIO_LABELS = ("facility", "rating", "price", "name", "type", "followup", "closing")

# Precedence among the constraints of a single-query dialog (first calls combine one to three
# kinds about evenly, so some precedence is needed): facility first, the hardest slot to fill (the
# tool's vocabulary) and the one the lab data paraphrased; type last, the most generic. A name
# query never carries other constraints in the data. On the lab's raw dialogs this labels the
# single-query ones facility 615, rating 417, price 233, name 107, type 78.
PARAM_LABEL_ORDER: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("facility", ("facilities",)),
    ("rating", RATING_KEYS),
    ("price", PRICE_KEYS),
    ("name", ("name",)),
    ("type", ("type",)),
)

# A user turn that asks something. Without one, a later user turn is a closing ("好的，谢谢", "那我
# 就入住北京饭店了"). "呢" is not here: "听起来很不错呢！" closes.
_QUESTION = re.compile(r"[？?]|吗|哪|什么|多少|几[家个点]|是否|有没有|是不是|有无|怎么|如何|能否|可否|"
                       r"请问|推荐[一个下家些]|找|查|换|还有|其他|别的")


def is_closing(text: str) -> bool:
    """True for a user turn that asks nothing and requests nothing.

    >>> is_closing("好的，谢谢你了啊。"), is_closing("这家酒店的电话是多少？")
    (True, False)
    """
    return not _QUESTION.search(text)


def param_label(params: dict[str, Any] | None) -> str:
    """The constraint kind that labels a call: the first of :data:`PARAM_LABEL_ORDER` present.

    >>> param_label({"type": "经济型", "price_range_upper": 300})
    'price'
    """
    for label, keys in PARAM_LABEL_ORDER:
        if params and any(params.get(k) not in (None, [], "") for k in keys):
            return label
    return "type"


def scenario_label(conv: Conversation) -> str:
    """The balancing/stratification label of a hotel dialog, one of :data:`SCENARIO_LABELS`.

    Definition, on the messages only (so generated dialogs are labelled like read ones):

    1. Let *later user turns* be the user messages after the first ``tool`` message.
    2. None: a single-query dialog, labelled by its first call with :func:`param_label`
       ("facility" > "rating" > "price" > "name" > "type": the first present kind in that order;
       a call with no constraint, or a dialog with no call, is "type").
    3. Each of them a closing — :func:`is_closing` (no question, no request) and answered without
       a tool call: "closing".
    4. Otherwise (an attribute question, a comparison, a refined search): "followup".

    >>> from dataprep.record import Lineage, Message
    >>> conv = Conversation("x", [Message("user", "找一家经济型酒店"),
    ...     Message("tool", name="search_hotels", parameters={"type": "经济型"}, observation=[]),
    ...     Message("assistant", "推荐如家。"), Message("user", "好的，谢谢！"),
    ...     Message("assistant", "不客气。")], Lineage("s", 1, "g"))
    >>> scenario_label(conv)
    'closing'
    """
    msgs = conv.messages
    first_tool = next((i for i, m in enumerate(msgs) if m.role == "tool"), None)
    if first_tool is None:
        return param_label(None)
    later = [i for i in range(first_tool + 1, len(msgs)) if msgs[i].role == "user"]
    if not later:
        return param_label(msgs[first_tool].parameters)
    for i in later:
        nxt = next((j for j in range(i + 1, len(msgs)) if msgs[j].role == "user"), len(msgs))
        searched = any(m.role == "tool" for m in msgs[i + 1:nxt])
        if searched or not is_closing(msgs[i].content or ""):
            return "followup"
    return "closing"


def hotel_group_id(first_user: str, first_params: dict[str, Any] | None) -> str:
    """Split group of a hotel dialog: a hash of its opening (first user text and first call).

    The same dialogue reaches us in several layouts (the lab's raw dialogs, its train and dev
    ChatGLM3 files, which share records); keying the group on content rather than on a file
    position puts every copy in one split.

    >>> hotel_group_id("找一家经济型酒店", {"type": "经济型"})
    'hotel:8a8a99a2d9608eb6'
    """
    key = first_user.strip() + "\x1f" + json.dumps(first_params, ensure_ascii=False, sort_keys=True)
    return "hotel:" + hashlib.sha1(key.encode("utf-8")).hexdigest()[:16]
