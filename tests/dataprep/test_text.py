"""CJK-aware normalisation: each step on its own, the canonical punctuation form, real corpora."""

from __future__ import annotations

import json
import unicodedata
from collections import Counter
from pathlib import Path

import pytest

from dataprep.text import (
    NormalizeOptions,
    fix_cjk_punct,
    normalize,
    normalize_value,
    normalize_whitespace,
    strip_html,
    to_halfwidth,
    to_simplified,
    unescape_entities,
    unescape_literal_newlines,
)


@pytest.mark.parametrize("text, expected", [
    ("ＡＢＳ泵２０％", "ABS泵20%"),                      # letters, digits, symbols -> half-width
    ("温度８０℃，压力３．５ＭＰａ", "温度80℃，压力3.5MPa"),  # the Chinese comma stays
    ("你好！请问？是：好；（对）～", "你好！请问？是：好；（对）～"),  # Chinese punctuation kept
    ("北京\u3000上海", "北京 上海"),                       # ideographic space
    ("“引号”、《书名》。", "“引号”、《书名》。"),          # no full-width form: untouched
])
def test_halfwidth_keeps_chinese_punctuation(text: str, expected: str) -> None:
    assert to_halfwidth(text)[0] == expected


def test_why_not_nfkc() -> None:
    # NFKC mixes styles: it turns "，！？" into ASCII and leaves "。、“”" alone.
    text = "你好，世界！真的吗？“是的”。"
    assert unicodedata.normalize("NFKC", text) == "你好,世界!真的吗?“是的”。"
    assert normalize(text)[0] == text


@pytest.mark.parametrize("text, expected, n", [
    ("发动机,水温高", "发动机，水温高", 1),
    ("水温高; 风扇不转!", "水温高；风扇不转！", 2),      # spaces around the mark go too
    ("故障现象:车辆行驶中", "故障现象：车辆行驶中", 1),
    ("价格:300元", "价格：300元", 1),                    # Chinese before, digit after
    ("好的,谢谢!", "好的，谢谢！", 2),                    # "!" at the end of a Chinese sentence
    ("共1,000元", "共1,000元", 0),                       # thousands separator
    ("时间 3:00", "时间 3:00", 0),
    ("ABS, ESP正常", "ABS, ESP正常", 0),                 # Latin before the comma
    ("汉庭酒店(北京新国展店)", "汉庭酒店(北京新国展店)", 0),  # hotel names keep ASCII parentheses
    ("见图.下一步", "见图.下一步", 0),                    # "." is never guessed
])
def test_cjk_punct(text: str, expected: str, n: int) -> None:
    assert fix_cjk_punct(text) == (expected, n)


def test_html_tags_entities_and_code_kept() -> None:
    assert strip_html("第一段<br>第二段<br/>第三段</p>") == ("第一段\n第二段\n第三段\n", 3)
    assert strip_html("北京<ref name=x>[1]</ref>大学") == ("北京[1]大学", 2)
    # Documents about HTML quote tags as content (DuReader); those stay.
    code = '<form name="myform"><input type="text" id="nn" /></form>'
    assert strip_html(code) == (code, 0)
    assert strip_html("x<5 且 y>3") == ("x<5 且 y>3", 0)
    assert unescape_entities("A&amp;B&lt;C&gt;&#20013;") == ("A&B<C>中", 4)
    # An escaped tag is text: entities are decoded after tags are stripped.
    assert normalize("&lt;b&gt;粗体&lt;/b&gt;")[0] == "<b>粗体</b>"


def test_invisible_characters() -> None:
    text, changes = normalize("酒\u200b店\ufeff名\x00称\x1b")
    assert text == "酒店名称"
    assert changes == Counter({"zero_width": 2, "control": 2})


def test_literal_newlines_auto_mode() -> None:
    assert unescape_literal_newlines("一\\n二\\n三") == ("一\n二\n三", 2)
    # One literal \n is usually a mention (the SPO instruction), not an escaping accident.
    assert unescape_literal_newlines("三元组之间用\\n分割") == ("三元组之间用\\n分割", 0)
    assert unescape_literal_newlines("三元组之间用\\n分割", "always") == ("三元组之间用\n分割", 1)
    # A backslash-separated word list ("eight\\nine" in DuReader) is not a line break.
    assert unescape_literal_newlines("one\\two\\nine\\ten\\n十\\n十一", "always") == (
        "one\\two\\nine\\ten\n十\n十一", 2)
    assert unescape_literal_newlines("a\\\\nb\\\\nc") == ("a\\\\nb\\\\nc", 0)  # escaped backslash


def test_whitespace() -> None:
    assert normalize_whitespace("  a \t b\u00a0c \r\n d\n\n\n\ne  ") == ("a b c\nd\n\ne", 8)
    assert normalize_whitespace("北京 上海\n广州") == ("北京 上海\n广州", 0)


def test_t2s_is_opt_in() -> None:
    assert to_simplified("漢語檢測") == ("汉语检测", 4)
    assert normalize("漢語")[0] == "漢語"
    assert normalize("漢語", NormalizeOptions(t2s=True)) == ("汉语", Counter({"t2s": 2}))


def test_every_step_can_be_switched_off() -> None:
    text = "<b>ＡＢ</b>,你好,世界\u200b  "
    off = NormalizeOptions(html=False, control=False, zero_width=False, literal_newlines="never",
                           nfc=False, fullwidth=False, cjk_punct=False, whitespace=False)
    assert normalize(text, off) == (text, Counter())


def test_idempotent_on_real_spo(corpora: Path) -> None:
    """Cleaning cleaned text changes nothing, and the counts match what changed."""
    path = corpora / "spo-repair-records" / "spo_0.subset.json"
    total: Counter[str] = Counter()
    for line in path.read_text(encoding="utf-8").splitlines():
        text = json.loads(line)["text"]
        once, changes = normalize(text)
        total.update(changes)
        assert normalize(once) == (once, Counter())
        if not changes:
            assert once == text
    # The real file mixes styles: full-width Latin ("Ａ/Ｃ开关"), ASCII ";" between Chinese.
    assert total["fullwidth"] > 50 and total["cjk_punct"] > 500
    assert set(total) <= {"fullwidth", "cjk_punct", "whitespace"}


def test_normalize_value_keeps_structure() -> None:
    value = {"text": "ＡＢＳ泵,失灵", "triples": [["ＡＢＳ泵", "部件故障", "失灵"]], "n": 3}
    out, changes = normalize_value(value)
    assert out == {"text": "ABS泵，失灵", "triples": [["ABS泵", "部件故障", "失灵"]], "n": 3}
    assert changes == Counter({"fullwidth": 6, "cjk_punct": 1})
