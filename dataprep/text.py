"""CJK-aware text normalisation: each step returns the new text and how many changes it made.

Why not ``unicodedata.normalize("NFKC", text)``: NFKC is right for full-width *letters and digits*
("ＡＢＳ" -> "ABS", "２０" -> "20") but wrong for Chinese punctuation. It rewrites the full-width
forms "，！？：；（）" to ASCII while it leaves "。、“”《》" alone (they have no compatibility
mapping), so a sentence ends up with a mix of ASCII and Chinese punctuation that no human writes.
The canonical form here instead is:

- full-width ASCII letters, digits, the ideographic space U+3000 and full-width ASCII *symbols*
  (＃％＋－．／＠…) become half-width;
- the full-width forms that *are* standard Chinese punctuation (GB/T 15834) stay full-width:
  ``！，：；？（）～``; "。、“”‘’《》【】…" are untouched anyway;
- ASCII ``, ! ? : ;`` written right after Chinese text become the Chinese form
  ("发动机,水温高" -> "发动机，水温高", "价格:300元" -> "价格：300元"), so one corpus does not mix
  both styles. After digits and Latin text they stay ASCII ("1,000", "3:00", "ABS, ESP"). ASCII parentheses and the period are never
  rewritten: CrossWOZ hotel names are spelt with ASCII parentheses ("汉庭酒店(北京新国展店)") and a
  rewritten name would no longer match the hotel database; "." is too often an abbreviation or a
  decimal point to guess.

>>> normalize("ＡＢＳ泵故障,２０分钟后才恢复!\\u200b")[0]
'ABS泵故障，20分钟后才恢复！'
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from functools import cache
from typing import Any, Literal

# Han ideographs (BMP blocks, compatibility ideographs, and the supplementary planes).
_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
#: Punctuation that belongs to Chinese text, in the canonical (full-width) form.
CHINESE_PUNCT = "，。！？：；、“”‘’（）《》〈〉【】「」『』…—～·"
# Full-width forms kept as they are: they are the Chinese punctuation marks themselves.
_KEEP_FULLWIDTH = frozenset("！，：；？（）～")
_HALFWIDTH = {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F) if chr(cp) not in _KEEP_FULLWIDTH}
_HALFWIDTH[0x3000] = 0x20  # ideographic space
_FULLWIDTH_RE = re.compile("[" + "".join(re.escape(chr(cp)) for cp in sorted(_HALFWIDTH)) + "]")

_ASCII_TO_CHINESE = {",": "，", "!": "！", "?": "？", ":": "：", ";": "；"}
_CJK_CONTEXT = f"[{_HAN}{re.escape(CHINESE_PUNCT)}]"
# An ASCII mark right after Chinese text and before Chinese, a digit or a Latin letter ("价格:300元",
# "发动机,ABS故障"; spaces around it are typographic noise and go too); "!"/"?" also at the end of
# a Chinese sentence ("谢谢!"). A mark after a digit or a letter is left alone ("1,000", "3:00").
_CJK_PUNCT_RE = re.compile(
    rf"(?<={_CJK_CONTEXT})[ \t]*([,!?:;])[ \t]*(?={_CJK_CONTEXT}|[0-9A-Za-z])"
    rf"|(?<=[{_HAN}])([!?])(?=[ \t]*$)",
    re.MULTILINE,
)

#: Zero-width and invisible format characters (and the soft hyphen). A BOM inside text, a ZWSP
#: from a web page: none of them carries meaning in a training sample, all of them cost tokens.
ZERO_WIDTH = "\u200b\u200c\u200d\u200e\u200f\u2060\u2061\u2062\u2063\u2064\ufeff\u00ad\u180e"
_ZERO_WIDTH_RE = re.compile(f"[{ZERO_WIDTH}]")
# C0/C1 controls except tab, newline and carriage return (those are whitespace, handled later).
_CONTROL_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")

# Tags are stripped only from a list of formatting and wiki-markup tags, the ones that leak into
# scraped and Wikipedia text (CMRC 2018 passages carry "<br>", "<ref>", "<nowiki>"). Code-like
# tags stay: DuReader answers questions about HTML and Android with documents that quote
# "<script>", "<form>", "<input …/>", "<a href=…>" and "<data android:scheme=…/>" as content.
FORMAT_TAGS = ("br", "p", "div", "span", "b", "i", "u", "s", "em", "strong", "font", "small",
               "big", "center", "sup", "sub", "hr", "ul", "ol", "li", "dl", "dt", "dd", "table",
               "thead", "tbody", "tr", "td", "th", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote",
               "ref", "references", "nowiki", "noinclude", "onlyinclude", "includeonly")
_TAG_NAMES = "|".join(sorted(FORMAT_TAGS, key=len, reverse=True))
_BLOCK_TAG_RE = re.compile(r"<\s*(?:br|/p|/div|/li|/tr|/h[1-6])(?:\s[^<>]*)?\s*/?>", re.IGNORECASE)
_TAG_RE = re.compile(rf"</?(?:{_TAG_NAMES})(?:\s[^<>]*)?/?>|<!--.*?-->", re.DOTALL | re.IGNORECASE)
_ENTITY_RE = re.compile(r"&(?:[A-Za-z][A-Za-z0-9]{1,31}|#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6});")

# A literal backslash-n (two characters), not itself escaped ("\\n") and not the start of a word
# ("eight\\nine" in DuReader is a list of number words separated by backslashes).
_LITERAL_NL_RE = re.compile(r"(?<!\\)\\r\\n|(?<!\\)\\n(?![A-Za-z])")

# Each pattern matches only what it changes, so that subn counts changes and plain text is fast.
_CR_RE = re.compile(r"\r\n?")
_SPACES_RE = re.compile("[ \t\u00a0\u2000-\u200a\u202f\u205f]{2,}|[\t\u00a0\u2000-\u200a\u202f\u205f]")
_LINE_END_RE = re.compile(r" \n ?|\n ")
_MANY_NEWLINES_RE = re.compile(r"\n{3,}")

LiteralNewlines = Literal["auto", "always", "never"]


@dataclass(frozen=True)
class NormalizeOptions:
    """Which normalisation steps run. Every step is on by default except ``t2s``.

    ``literal_newlines``: ``"auto"`` turns a literal ``\\n`` into a line break only when a field
    holds at least two of them (a double-escaped text repeats it at every line break, while a
    single one is usually a *mention*, as in the SPO instruction "三元组之间用\\n分割");
    ``"always"`` converts every one; ``"never"`` leaves them.
    """

    html: bool = True
    control: bool = True
    zero_width: bool = True
    literal_newlines: LiteralNewlines = "auto"
    nfc: bool = True
    t2s: bool = False
    fullwidth: bool = True
    cjk_punct: bool = True
    whitespace: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT_OPTIONS = NormalizeOptions()

#: The change kinds :func:`normalize` counts, in the order the steps run.
CHANGE_KINDS = ("html_tag", "html_entity", "control", "zero_width", "literal_newline", "nfc",
                "t2s", "fullwidth", "cjk_punct", "whitespace")


def is_han(ch: str) -> bool:
    """True for a Chinese (Han) character.

    >>> is_han("酒"), is_han("A"), is_han("，")
    (True, False, False)
    """
    return bool(re.fullmatch(f"[{_HAN}]", ch))


def strip_html(text: str) -> tuple[str, int]:
    """Remove formatting tags (block tags become a line break; see :data:`FORMAT_TAGS`);
    returns (text, tags removed). Other tags are content and stay.

    >>> strip_html("发动机<b>异响</b><br>请检查")
    ('发动机异响\\n请检查', 3)
    >>> strip_html('用<input type="text"/>输入')[1]
    0
    """
    text, n_block = _BLOCK_TAG_RE.subn("\n", text)
    text, n_tag = _TAG_RE.subn("", text)
    return text, n_block + n_tag


def unescape_entities(text: str) -> tuple[str, int]:
    """Decode HTML entities (``&amp;``, ``&nbsp;``, ``&#20013;``); returns (text, entities).

    >>> unescape_entities("A&amp;B&nbsp;酒店")
    ('A&B\\xa0酒店', 2)
    """
    n = 0

    def one(m: re.Match[str]) -> str:
        nonlocal n
        out = html.unescape(m.group(0))
        if out != m.group(0):
            n += 1
        return out

    return _ENTITY_RE.sub(one, text), n


def remove_control(text: str) -> tuple[str, int]:
    """Drop C0/C1 control characters other than tab, newline and carriage return.

    >>> remove_control("a\\x00b\\x1bc\\n")
    ('abc\\n', 2)
    """
    return _CONTROL_RE.subn("", text)


def remove_zero_width(text: str) -> tuple[str, int]:
    """Drop zero-width and invisible format characters.

    >>> remove_zero_width("酒\\u200b店\\ufeff")
    ('酒店', 2)
    """
    return _ZERO_WIDTH_RE.subn("", text)


def unescape_literal_newlines(text: str, mode: LiteralNewlines = "auto") -> tuple[str, int]:
    """Turn the two characters ``\\`` ``n`` into a line break (see :class:`NormalizeOptions`).

    >>> unescape_literal_newlines("第一行\\\\n第二行\\\\n第三行")
    ('第一行\\n第二行\\n第三行', 2)
    >>> unescape_literal_newlines("三元组之间用\\\\n分割")[1]
    0
    """
    if mode == "never":
        return text, 0
    found = _LITERAL_NL_RE.findall(text)
    if not found or (mode == "auto" and len(found) < 2):
        return text, 0
    return _LITERAL_NL_RE.subn("\n", text)


def nfc(text: str) -> tuple[str, int]:
    """Unicode NFC (canonical composition only: it maps CJK compatibility ideographs to the
    unified ones but, unlike NFKC, never touches full-width punctuation).

    >>> nfc("\\uf900")  # CJK COMPATIBILITY IDEOGRAPH-F900 -> 豈
    ('豈', 1)
    """
    if unicodedata.is_normalized("NFC", text):
        return text, 0
    out = unicodedata.normalize("NFC", text)
    return out, _diff_count(text, out)


@cache
def _opencc_t2s() -> Any:
    import opencc

    return opencc.OpenCC("t2s")


def to_simplified(text: str) -> tuple[str, int]:
    """Traditional -> simplified Chinese with OpenCC's ``t2s`` table; returns (text, chars).

    >>> to_simplified("漢語")
    ('汉语', 2)
    """
    out = _opencc_t2s().convert(text)
    return out, _diff_count(text, out)


def to_halfwidth(text: str) -> tuple[str, int]:
    """Full-width letters, digits, symbols and U+3000 to half-width; Chinese punctuation kept.

    >>> to_halfwidth("ＡＢＳ泵，２０％")
    ('ABS泵，20%', 6)
    """
    n = len(_FULLWIDTH_RE.findall(text))
    return (text.translate(_HALFWIDTH), n) if n else (text, 0)


def fix_cjk_punct(text: str) -> tuple[str, int]:
    """ASCII ``, ! ? : ;`` after Chinese text to the Chinese (full-width) form.

    >>> fix_cjk_punct("发动机,水温高; 风扇不转!")
    ('发动机，水温高；风扇不转！', 3)
    >>> fix_cjk_punct("共1,000元, ABS: 正常")
    ('共1,000元，ABS: 正常', 1)
    """

    def one(m: re.Match[str]) -> str:
        return _ASCII_TO_CHINESE[m.group(1) or m.group(2)]

    return _CJK_PUNCT_RE.subn(one, text)


def normalize_whitespace(text: str) -> tuple[str, int]:
    """Unify line breaks, collapse space runs, trim line ends and the field, cap blank lines.

    Single spaces between Chinese characters are kept: in lists and addresses they separate
    items ("北京 上海"), and removing them would merge words.

    >>> normalize_whitespace("  酒店\\u00a0 名称\\r\\n\\n\\n\\n地址  ")
    ('酒店 名称\\n\\n地址', 6)
    """
    n = 0
    for pattern, repl in ((_CR_RE, "\n"), (_SPACES_RE, " "), (_LINE_END_RE, "\n"),
                          (_MANY_NEWLINES_RE, "\n\n")):
        text, k = pattern.subn(repl, text)
        n += k
    stripped = text.strip()
    return stripped, n + (stripped != text)


def normalize(text: str, options: NormalizeOptions = DEFAULT_OPTIONS) -> tuple[str, Counter[str]]:
    """Run every enabled step in order; returns the text and the change counts by kind.

    The order matters: tags before entities (so an escaped "&lt;b&gt;" stays visible text),
    invisible characters before punctuation (a ZWSP between two characters would hide them from
    each other), simplification before width (its counts stay attributable), whitespace last.

    >>> text, changes = normalize("发动机<br>水温高,风扇\\u3000低速")
    >>> text, dict(changes)
    ('发动机\\n水温高，风扇 低速', {'html_tag': 1, 'fullwidth': 1, 'cjk_punct': 1})
    """
    changes: Counter[str] = Counter()

    def step(kind: str, result: tuple[str, int]) -> str:
        new, n = result
        if n:
            changes[kind] += n
        return new

    if options.html:
        text = step("html_tag", strip_html(text))
        text = step("html_entity", unescape_entities(text))
    if options.control:
        text = step("control", remove_control(text))
    if options.zero_width:
        text = step("zero_width", remove_zero_width(text))
    text = step("literal_newline", unescape_literal_newlines(text, options.literal_newlines))
    if options.nfc:
        text = step("nfc", nfc(text))
    if options.t2s:
        text = step("t2s", to_simplified(text))
    if options.fullwidth:
        text = step("fullwidth", to_halfwidth(text))
    if options.cjk_punct:
        text = step("cjk_punct", fix_cjk_punct(text))
    if options.whitespace:
        text = step("whitespace", normalize_whitespace(text))
    return text, changes


def normalize_value(value: Any, options: NormalizeOptions = DEFAULT_OPTIONS) -> tuple[Any, Counter[str]]:
    """:func:`normalize` every string inside a JSON-like value (lists, dicts); keys untouched.

    >>> normalize_value({"text": "ＡＢＳ", "triples": [["ＡＢＳ", "部件故障", "失灵"]]})[0]
    {'text': 'ABS', 'triples': [['ABS', '部件故障', '失灵']]}
    """
    total: Counter[str] = Counter()
    if isinstance(value, str):
        return normalize(value, options)
    if isinstance(value, list):
        out_list = []
        for item in value:
            new, ch = normalize_value(item, options)
            out_list.append(new)
            total.update(ch)
        return out_list, total
    if isinstance(value, dict):
        out_dict = {}
        for key, item in value.items():
            new, ch = normalize_value(item, options)
            out_dict[key] = new
            total.update(ch)
        return out_dict, total
    return value, total


def _diff_count(a: str, b: str) -> int:
    """Characters that differ (position by position; a length change counts as one more)."""
    return sum(1 for x, y in zip(a, b, strict=False) if x != y) + (len(a) != len(b))


# -- answer/document overlap ---------------------------------------------------------------
# Shared by the validate stage (is the answer grounded?) and the DuReader reader (which human
# answer is best supported?), so the reader picks by the very score the rule later applies.

# Whitespace, punctuation and symbols carry no content for the overlap score.
_NOT_CONTENT = re.compile(r"[\W_]+")

def char_ngrams(text: str, n: int = 2) -> list[str]:
    """Character n-grams of the content characters (no whitespace or punctuation); a text shorter
    than ``n`` is one gram.

    >>> char_ngrams("北京，天坛。")
    ['北京', '京天', '天坛']
    """
    s = _NOT_CONTENT.sub("", text)
    if len(s) < n:
        return [s] if s else []
    return [s[i:i + n] for i in range(len(s) - n + 1)]


def grounding_score(answer: str, documents: Iterable[str], n: int = 2) -> float:
    """Share of the answer's character n-grams that occur in the documents (0.0 .. 1.0).

    >>> grounding_score("故宫在北京", ["北京的故宫是明清两代的皇宫"])
    0.5
    """
    grams = char_ngrams(answer, n)
    if not grams:
        return 0.0
    k = min(n, len(grams[0]))
    pool: set[str] = set()
    for doc in documents:
        pool.update(char_ngrams(doc, k))
    return sum(1 for g in grams if g in pool) / len(grams)


def squash(text: str) -> str:
    """Text without whitespace, for containment checks: "布丁酒店(北京国贸永安里地铁站店 )" still
    matches a reply that spells the name without the stray space.

    >>> squash(" 北京 国贸\\n店 ")
    '北京国贸店'
    """
    return "".join(text.split())
