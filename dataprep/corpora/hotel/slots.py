"""Slot extraction from a user utterance, and the slot-preservation check for rewrites.

A rewrite of a user turn is only usable if it still implies the same ``search_hotels`` call: the
same numbers (prices, ratings) with the same bound (lower / upper / range / exact), the same hotel
names, hotel types and facilities. Facilities are mapped back to canonical CrossWOZ names through
the phrase table (``能打国际长途`` -> ``国际长途电话``), types through their short forms
(``经济的`` -> ``经济型``), and Chinese numerals are read as numbers (``五百块`` -> 500).

>>> ex = SlotExtractor(names=["北京贵都大酒店"])
>>> s = ex.extract("帮我找一家有国际长途电话的经济型酒店，500元以内")
>>> sorted(s.facilities), sorted(s.types), s.numbers
(['国际长途电话'], ['经济型'], ((500.0, 'upper'),))
>>> ex.check("找一家有国际长途电话的酒店", "找一家能打国际长途的酒店")
[]
>>> ex.check("找一家有国际长途电话的酒店，500元以内", "找一家酒店，600块以内")
['slot_facility_dropped', 'slot_number_changed']
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dataprep.corpora.hotel.hotel_db import FACILITY_SYNONYMS as DB_FACILITY_RULES
from dataprep.corpora.hotel.phrases import FACILITY_SYNONYMS, GENERIC_WIFI, TYPE_SYNONYMS

# Reasons in the order they are reported; the first one is a failed rewrite's outcome.
REASONS = (
    "slot_name_dropped",
    "slot_name_added",
    "slot_type_changed",
    "slot_facility_dropped",
    "slot_facility_added",
    "slot_number_changed",
    "slot_bound_changed",
)

# The hotel database's own wording rules (regexes over a whole facility phrase). Reused, not
# copied: the five wifi-scope rules resolve "wifi" within its clause ("公共区域和一些房间都能用上
# wifi" is 公共区域和部分房间提供wifi), and all of them back up canonical_facility.
_DB_RULES = tuple((re.compile(p, re.IGNORECASE), c) for p, c in DB_FACILITY_RULES)
_WIFI_SCOPES = tuple((rx, c) for rx, c in _DB_RULES if "wifi" in c)
_CLAUSE_END = re.compile(r"[，,。；;！!？?、\n]")

_CN_DIGITS = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6,
              "七": 7, "八": 8, "九": 9}
_CN_UNITS = {"十": 10, "百": 100, "千": 1000}
_NUMBER = re.compile(
    r"(?P<ar>\d+(?:\.\d+)?)(?P<mult>[千万kK](?![米克]))?"
    r"|(?P<cn>[零〇一二两三四五六七八九十百千万]+(?:点[零〇一二三四五六七八九]+)?)"
)
# A unit right after a number ("500块钱", "4.5分") is skipped before looking for a bound word.
_UNIT = re.compile(r"\s*(?:元|块钱|块|分|星)?")
_RANGE_SEP = re.compile(r"\s*(?:元|块钱|块|分)?\s*(?:-|－|~|～|—|到|至)\s*$")
_LOWER_AFTER = ("以上", "往上", "及以上", "起", "开外", "多")
_UPPER_AFTER = ("以下", "以内", "之内", "往下", "内")
_LOWER_BEFORE = ("不低于", "不少于", "至少", "最少", "超过", "高于", "大于", "多于", "最低")
_UPPER_BEFORE = ("不超过", "别超过", "不要超过", "不能超过", "不到", "低于", "少于", "不高于",
                 "最多", "小于", "最高")


def parse_chinese_number(text: str) -> float | None:
    """Read a Chinese numeral, including the spoken elision ``一千一`` = 1100.

    >>> [parse_chinese_number(t) for t in ("五百", "一千一", "两千五百", "十五", "四点五", "三")]
    [500.0, 1100.0, 2500.0, 15.0, 4.5, 3.0]
    """
    whole, _, frac = text.partition("点")
    total = section = 0
    num: int | None = None
    last_unit = 0
    zero_seen = False
    for ch in whole:
        if ch in _CN_DIGITS:
            num = _CN_DIGITS[ch]
            if num == 0:
                zero_seen = True
        elif ch in _CN_UNITS:
            unit = _CN_UNITS[ch]
            section += (1 if num is None else num) * unit
            num, last_unit, zero_seen = None, unit, False
        elif ch == "万":
            total += (section + (num or 0)) * 10000
            section, num, last_unit = 0, None, 10000
        else:
            return None
    if num is not None:
        # "一千一" is 1100 and "三百五" 350: a trailing digit right after a unit of 100 or more,
        # with no 零 between, counts in the next lower unit (how prices are said aloud).
        section += num * (last_unit // 10) if last_unit >= 100 and not zero_seen else num
    value = float(total + section)
    if frac:
        digits = "".join(str(_CN_DIGITS.get(c, "")) for c in frac)
        if not digits:
            return None
        value += float("0." + digits)
    return value


@dataclass(frozen=True)
class Slots:
    """What an utterance implies for the tool call.

    ``numbers`` is a sorted tuple of ``(value, bound)`` with bound one of ``lower``, ``upper``,
    ``range``, ``exact``; the other fields hold canonical values.
    """

    numbers: tuple[tuple[float, str], ...] = ()
    names: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()
    facilities: frozenset[str] = frozenset()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for evidence files)."""
        return {"numbers": [list(n) for n in self.numbers], "names": sorted(self.names),
                "types": sorted(self.types), "facilities": sorted(self.facilities)}


def _normalise(text: str) -> str:
    # Lower-case so that WiFi/WIFI/wifi and SPA/spa match one table entry; full-width digits and
    # letters are folded by hand because NFKC would also rewrite Chinese punctuation.
    out = []
    for ch in text:
        code = ord(ch)
        if 0xFF10 <= code <= 0xFF19 or 0xFF21 <= code <= 0xFF5A:
            ch = chr(code - 0xFEE0)
        out.append(ch)
    return "".join(out).lower().replace("wi-fi", "wifi")


class SlotExtractor:
    """Finds hotel names, types, facilities and numbers in an utterance.

    ``names`` are the hotel names of the database; ``facility_synonyms`` maps a canonical facility
    to colloquial phrases (default: the phrase table), and every canonical name also maps to
    itself. Matching is leftmost-longest and consumes the text, so ``24小时热水`` is a facility and
    not the number 24, and a name like ``7天连锁酒店`` is not the number 7.

    >>> SlotExtractor().extract("评分4.5分以上，价格在三百到四百块之间").numbers
    ((4.5, 'lower'), (300.0, 'range'), (400.0, 'range'))
    """

    def __init__(self, names: Iterable[str] = (),
                 facility_synonyms: Mapping[str, Iterable[str]] | None = None,
                 type_synonyms: Mapping[str, Iterable[str]] | None = None,
                 extra_facilities: Iterable[str] = ()) -> None:
        self.names = sorted({n for n in names if n}, key=lambda n: (-len(n), n))
        table = FACILITY_SYNONYMS if facility_synonyms is None else facility_synonyms
        self.facility_map: dict[str, str] = {}
        for canon in [*table, *extra_facilities]:
            self.facility_map.setdefault(_normalise(canon), canon)
        for canon, phrases in table.items():
            for phrase in phrases:
                self.facility_map.setdefault(_normalise(phrase), canon)
        types = TYPE_SYNONYMS if type_synonyms is None else type_synonyms
        self.type_map = {_normalise(p): canon for canon, ps in types.items() for p in ps}
        self._name_re = self._alternation(self.names)
        self._facility_re = self._alternation(self.facility_map)
        self._type_re = self._alternation(self.type_map)

    @staticmethod
    def _alternation(phrases: Iterable[str]) -> re.Pattern[str] | None:
        # Longest first: Python's alternation takes the first alternative that matches at the
        # leftmost position, so length order gives leftmost-longest matching.
        ordered = sorted({_normalise(p) for p in phrases if p}, key=lambda p: (-len(p), p))
        if not ordered:
            return None
        return re.compile("|".join(re.escape(p) for p in ordered))

    @classmethod
    def from_db(cls, db: Any) -> SlotExtractor:
        """Use the hotel names and facility names of a :class:`~dataprep.corpora.hotel.hotel_db.HotelDB`."""
        return cls(names=hotel_names(db), extra_facilities=getattr(db, "facility_names", ()) or ())

    def canonical_facility(self, phrase: str) -> str | None:
        """The canonical facility a whole phrase stands for, or None if the table lacks it.

        >>> SlotExtractor().canonical_facility("叫我起床")
        '叫醒服务'
        """
        key = _normalise(phrase).strip()
        if key in self.facility_map:
            return self.facility_map[key]
        # A longer wording around one known phrase ("国际电话服务", "提供24小时热水") still names
        # exactly one facility; two or none is ambiguous, and then the database's rules decide.
        found = self.extract(phrase).facilities
        if len(found) == 1 and GENERIC_WIFI not in found:
            return next(iter(found))
        for rx, canon in _DB_RULES:
            if rx.search(key):
                return canon
        return next(iter(found)) if len(found) == 1 else None

    def extract(self, text: str, extra_names: Iterable[str] = ()) -> Slots:
        """The slots of one utterance; ``extra_names`` (e.g. the ``name`` of the tool call that
        follows) are matched as hotel names too."""
        work = _normalise(text)
        names: set[str] = set()
        extra = sorted({_normalise(n) for n in extra_names if n}, key=lambda n: -len(n))
        for pattern in [self._name_re, *(re.compile(re.escape(n)) for n in extra)]:
            if pattern is None:
                continue
            work = pattern.sub(lambda m: (names.add(m.group(0)), "\u3000" * len(m.group(0)))[1],
                               work)
        facilities: set[str] = set()
        full = work

        def facility(m: re.Match[str]) -> str:
            canon = self.facility_map[m.group(0)]
            if canon == GENERIC_WIFI:
                canon = _wifi_scope(full, m.start(), m.end())
            facilities.add(canon)
            return "\u3000" * len(m.group(0))

        if self._facility_re is not None:
            work = self._facility_re.sub(facility, work)
        types: set[str] = set()
        if self._type_re is not None:
            for m in self._type_re.finditer(work):
                types.add(self.type_map[m.group(0)])
        return Slots(numbers=tuple(sorted(_numbers(work))), names=frozenset(names),
                     types=frozenset(types), facilities=frozenset(facilities))

    def check(self, original: str, rewrite: str,
              params: Mapping[str, Any] | None = None) -> list[str]:
        """Reasons the rewrite does not imply the same slots as the original (empty = preserved).

        ``params`` is the tool call that answers the original turn, when there is one: a value of
        it that the original states (literally or through the phrase table) must still be stated
        by the rewrite, which also catches facility wordings the phrase table does not know.
        """
        extra_names = []
        if params and isinstance(params.get("name"), str):
            extra_names.append(params["name"])
        a = self.extract(original, extra_names)
        b = self.extract(rewrite, extra_names)
        reasons: set[str] = set()
        if a.names - b.names:
            reasons.add("slot_name_dropped")
        if b.names - a.names:
            reasons.add("slot_name_added")
        if a.types != b.types:
            reasons.add("slot_type_changed")
        if a.facilities - b.facilities:
            reasons.add("slot_facility_dropped")
        if b.facilities - a.facilities:
            reasons.add("slot_facility_added")
        if Counter(v for v, _ in a.numbers) != Counter(v for v, _ in b.numbers):
            reasons.add("slot_number_changed")
        elif a.numbers != b.numbers:
            reasons.add("slot_bound_changed")
        if params:
            reasons.update(self._param_reasons(original, rewrite, params, a, b))
        return [r for r in REASONS if r in reasons]

    def _param_reasons(self, original: str, rewrite: str, params: Mapping[str, Any],
                       a: Slots, b: Slots) -> set[str]:
        out: set[str] = set()
        orig_n, new_n = _normalise(original), _normalise(rewrite)
        facilities = params.get("facilities")
        if isinstance(facilities, list):
            for value in facilities:
                if not isinstance(value, str) or not value.strip():
                    continue
                literal = _normalise(value).strip()
                canon = self.canonical_facility(value)
                stated = literal in orig_n or (canon is not None and canon in a.facilities)
                kept = literal in new_n or (canon is not None and canon in b.facilities)
                if stated and not kept:
                    out.add("slot_facility_dropped")
        return out


def _numbers(work: str) -> list[tuple[float, str]]:
    found: list[tuple[float, str, int, int]] = []
    for m in _NUMBER.finditer(work):
        if m.group("ar") is not None:
            value = float(m.group("ar"))
            mult = m.group("mult")
            if mult:
                value *= 10000 if mult == "万" else 1000
        else:
            token = m.group("cn")
            after = work[m.end():m.end() + 1]
            has_digit = any(c in _CN_DIGITS for c in token)
            # Bare 一/两 are articles ("一家", "两个人"), 十分 is "very" and 千万 is "by all
            # means": only read a Chinese numeral that has a unit or a price/rating unit after it.
            if not has_digit and not token.startswith("十"):
                continue
            if token == "十" and after == "分":
                continue
            if not (any(c in "十百千万点" for c in token) or after in ("元", "块", "分")):
                continue
            parsed = parse_chinese_number(token)
            if parsed is None:
                continue
            value = parsed
        found.append((value, "exact", m.start(), m.end()))
    out: list[tuple[float, str]] = []
    bounds = ["exact"] * len(found)
    for i in range(1, len(found)):
        between = work[found[i - 1][3]:found[i][2]]
        if _RANGE_SEP.fullmatch(between) or between.strip() in ("-", "到", "至", "~"):
            bounds[i - 1] = bounds[i] = "range"
    for i, (value, _, start, end) in enumerate(found):
        bound = bounds[i]
        if bound == "exact":
            tail = work[end:]
            tail = tail[_UNIT.match(tail).end():]  # type: ignore[union-attr]
            head = work[max(0, start - 5):start]
            if tail.startswith(_LOWER_AFTER):
                bound = "lower"
            elif tail.startswith(_UPPER_AFTER):
                bound = "upper"
            elif (marked := _before_marker(head)) is not None:
                bound = marked
            elif "比" in head[-2:]:
                # "比900元便宜" is an upper bound, "比900元贵" a lower one.
                bound = "upper" if tail.startswith(("便宜", "低")) else (
                    "lower" if tail.startswith(("贵", "高")) else "exact")
        out.append((value, bound))
    return out


def _wifi_scope(text: str, start: int, end: int) -> str:
    """The wifi facility a generic mention means, judged by the clause around it."""
    left = max((m.end() for m in _CLAUSE_END.finditer(text, 0, start)), default=0)
    right_m = _CLAUSE_END.search(text, end)
    clause = text[left:right_m.start() if right_m else len(text)]
    for rx, canon in _WIFI_SCOPES:
        if rx.search(clause):
            return canon
    return GENERIC_WIFI


# Longest first, across both bounds: "不低于" (lower) must win over its tail "低于" (upper).
_BEFORE_MARKERS = sorted(
    [(m, "lower") for m in _LOWER_BEFORE] + [(m, "upper") for m in _UPPER_BEFORE],
    key=lambda mb: -len(mb[0]))


def _before_marker(head: str) -> str | None:
    # Allow a short filler between the marker and the number: "不超过每晚500", "最低是400".
    for marker, bound in _BEFORE_MARKERS:
        idx = head.rfind(marker)
        if idx >= 0 and len(head) - (idx + len(marker)) <= 2:
            filler = head[idx + len(marker):]
            if all(c in "是为在每晚一个价格评分的" for c in filler):
                return bound
    return None


def hotel_names(db: Any) -> list[str]:
    """Hotel names of a hotel database object (``db.hotels`` of dicts, objects or pairs)."""
    names = getattr(db, "names", None)
    if names is not None and not callable(names):
        return [str(n) for n in names]
    out = []
    hotels = getattr(db, "hotels", None) or []
    items = hotels.values() if isinstance(hotels, Mapping) else hotels
    for h in items:
        if isinstance(h, Mapping):
            name = h.get("name") or h.get("名称")
        elif isinstance(h, (list, tuple)) and h:
            name = h[0]
        else:
            name = getattr(h, "name", None)
        if name:
            out.append(str(name))
    return out
