"""Matching normalisation: width, case, punctuation and spaces made invisible.

:func:`normalize_for_matching` is the definition. :func:`normalize_batch` computes the same thing
for many texts at once on their code points with numpy, because the per-text definition
(``unicodedata.normalize`` + ``lower`` + a regex) costs ~16 us on a 119-character Chinese record,
half of the whole dedup budget: nearly every Chinese text holds a full-width comma, so NFKC never
takes its quick path. The batch path maps one code point at a time through a table, which is only
right for characters whose NFKC, lower case and punctuation rules do not depend on their
neighbours; a text holding any other character (combining marks, Hangul, ligatures, capital
sigma, astral characters, ...) goes through the definition instead. A test checks both agree.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Sequence

import numpy as np
import xxhash

# \W is "not a word character": punctuation, symbols, whitespace and control characters of every
# script (CJK ideographs, letters and digits are word characters). "_" is a word character, so it is
# listed explicitly.
_NON_WORD = re.compile(r"[\W_]+")
_COMPLEX = np.uint32(0xFFFFFFFF)  # table value: the text needs the per-text definition
_BMP = 0x10000


def normalize_for_matching(text: str) -> str:
    """Fold the differences that must not hide a duplicate: width, case, punctuation, spaces.

    NFKC is right here and wrong for output text: it maps full-width ``ＡＢＣ１２３`` and ``，``
    to ``ABC123`` and ``,``, which is what matching wants, but it would also rewrite Chinese
    punctuation and compatibility characters in the training data, so it is never applied to what
    gets written. Punctuation is then dropped entirely, so "，" vs "," vs nothing are equal.

    >>> normalize_for_matching("Ｈｏｔｅｌ　北京，  早餐！")
    'hotel北京早餐'
    """
    return _NON_WORD.sub("", unicodedata.normalize("NFKC", text).lower())


def exact_hash(normalised: str) -> int:
    """64-bit hash of a normalised key (xxh3 of its UTF-32-LE code points: stable across
    processes, unlike ``hash()``, and computable from a code point array without decoding).

    >>> exact_hash("abc") == exact_hash("abc") != exact_hash("abd")
    True
    """
    return xxhash.xxh3_64_intdigest(normalised.encode("utf-32-le"))


@functools.cache
def _char_table() -> np.ndarray:
    """Code point -> normalised code point (0: dropped, ``_COMPLEX``: needs the definition), for
    the Basic Multilingual Plane; built once per process (~50 ms).

    A character maps on its own when nothing next to it can change its NFKC or lower case: it
    is not a combining mark, and neither it nor the first character of its decomposition can
    compose with a character before it; its decomposition's own marks stay with it because the
    next character starts with a starter too. Its normalised form must be one word character
    or nothing (``…`` -> ``...`` -> dropped; ``Ⅱ`` -> ``ii`` is left to the definition).
    """
    # Characters that can be the second half of a canonical composition (some Indic vowel signs
    # are starters); Hangul composes algorithmically, so all jamo and syllables are listed.
    second = set()
    for d in map(unicodedata.decomposition, map(chr, range(_BMP))):
        if d and not d.startswith("<") and len(d.split()) == 2:
            second.add(chr(int(d.split()[1], 16)))
    hangul = re.compile("[\\u1100-\\u11ff\\u3130-\\u318f\\ua960-\\ua97f\\uac00-\\ud7ff]")
    cps = [cp for cp in range(_BMP) if not 0xD800 <= cp < 0xE000 and cp != 0x1E]
    # One normalisation call for all characters: the separator is a starter that composes with
    # nothing, so each piece normalises as if alone.
    joined = "\x1e".join(map(chr, cps))
    nfkd = unicodedata.normalize("NFKD", joined).split("\x1e")
    folded = unicodedata.normalize("NFKC", joined).lower().split("\x1e")
    table = np.full(_BMP, _COMPLEX, dtype=np.uint32)
    table[0x1E] = 0  # the separator itself: a control character, dropped
    for cp, dec, fold in zip(cps, nfkd, folded, strict=True):
        c = chr(cp)
        if (unicodedata.combining(c) or c in second or unicodedata.combining(dec[0])
                or dec[0] in second or "Σ" in fold.upper() or hangul.search(dec)):
            continue
        word = _NON_WORD.sub("", fold)
        if len(word) <= 1:
            table[cp] = ord(word) if word else 0
    return table


def normalize_batch(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The normalised texts as one uint32 code point array and the length of each.

    >>> cps, lens = normalize_batch(["Ｈｏｔｅｌ　北京，早餐！", "가나", ""])
    >>> lens.tolist(), cps[:lens[0]].tobytes().decode("utf-32-le")
    ([9, 2, 0], 'hotel北京早餐')
    """
    n = len(texts)
    lens = np.fromiter(map(len, texts), dtype=np.int64, count=n)
    if n == 0 or not lens.any():
        return np.empty(0, dtype=np.uint32), np.zeros(n, dtype=np.int64)
    raw = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32)
    mapped = _char_table()[np.minimum(raw, _BMP - 1)]
    mapped[raw >= _BMP] = _COMPLEX
    complex_chars = np.concatenate(([0], np.cumsum(mapped == _COMPLEX)))
    ends = np.cumsum(lens)
    starts = ends - lens
    slow = np.flatnonzero(complex_chars[ends] - complex_chars[starts])
    keep = mapped != 0
    for i in slow:
        keep[starts[i]:ends[i]] = False
    kept = np.concatenate(([0], np.cumsum(keep)))
    out_lens = kept[ends] - kept[starts]
    fast = mapped[keep]
    if not slow.size:
        return fast, out_lens
    # Texts with a context-dependent character take the definition's output (rare: ~1% of real
    # records, e.g. with "Ⅱ" or a combining mark).
    offsets = np.cumsum(out_lens) - out_lens
    pieces, pos = [], 0
    for i in slow.tolist():
        pieces.append(fast[pos:offsets[i]])
        pos = int(offsets[i])
        pieces.append(np.frombuffer(normalize_for_matching(texts[i]).encode("utf-32-le"),
                                    dtype=np.uint32))
        out_lens[i] = len(pieces[-1])
    pieces.append(fast[pos:])
    return np.concatenate(pieces), out_lens


def key_hashes(cps: np.ndarray, lens: np.ndarray) -> list[int]:
    """:func:`exact_hash` of every normalised text of a :func:`normalize_batch` result."""
    buf = memoryview(np.ascontiguousarray(cps)).cast("B")
    ends = np.cumsum(lens) * 4
    digest = xxhash.xxh3_64_intdigest
    return [digest(buf[s:e]) for s, e in zip((ends - lens * 4).tolist(), ends.tolist(),
                                             strict=True)]
