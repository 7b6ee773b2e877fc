"""Find a font that has Chinese glyphs, for chart labels.

matplotlib keeps its own list of fonts in a cache (``~/.cache/matplotlib/fontlist-*.json``) that
is built once, the first time it runs. A CJK font installed after that (``apt-get install
fonts-noto-cjk``) stays unknown to it until the cache is deleted, and labels would be drawn as
empty boxes. So when no known font has CJK glyphs, the system font folders are scanned for CJK
font files, each is added with ``fontManager.addfont``, and the cache is rewritten so that the
next process finds them at once.

>>> find_cjk_font()  # doctest: +SKIP
'Noto Sans CJK JP'
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

# Families with the CJK Unified Ideographs, best first. Noto's .ttc files expose their first face
# (JP) to matplotlib; every Chinese character has a glyph in it.
CJK_FAMILIES = ("Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "Noto Sans CJK JP",
                "Noto Sans CJK TC", "Noto Sans CJK KR", "Source Han Sans CN", "WenQuanYi Zen Hei",
                "WenQuanYi Micro Hei", "SimHei", "Microsoft YaHei", "PingFang SC",
                "Droid Sans Fallback", "AR PL UMing CN", "Noto Serif CJK SC", "Noto Serif CJK JP",
                "Arial Unicode MS")
_CJK_FILE = re.compile(r"(?i)(cjk|sourcehan|notosanssc|wqy|wenquanyi|droidsansfallback|simhei|"
                       r"msyh|pingfang|uming|ukai)")
INSTALL_HINT = ("install a CJK font (Debian/Ubuntu: apt-get install fonts-noto-cjk; it is found "
                "on the next run)")


def _known() -> str | None:
    from matplotlib import font_manager

    names = {f.name for f in font_manager.fontManager.ttflist}
    return next((n for n in CJK_FAMILIES if n in names), None)


@lru_cache(maxsize=1)
def find_cjk_font() -> str | None:
    """The family name of an installed font with Chinese glyphs, or None when there is none."""
    name = _known()
    if name:
        return name
    from matplotlib import font_manager

    added = False
    for path in font_manager.findSystemFonts():
        if _CJK_FILE.search(Path(path).name):
            try:
                font_manager.fontManager.addfont(path)
                added = True
            except (OSError, RuntimeError, ValueError):  # unreadable or not a font after all
                continue
    name = _known()
    if added and name:
        _save_cache(font_manager)
    return name


def _save_cache(font_manager: object) -> None:
    """Rewrite matplotlib's font cache with the fonts just added (best effort: the cache folder
    may be read-only; the fonts are known to this process either way)."""
    import matplotlib

    fm = font_manager
    try:
        path = Path(matplotlib.get_cachedir()) / f"fontlist-v{fm.FontManager.__version__}.json"  # type: ignore[attr-defined]
        fm.json_dump(fm.fontManager, path)  # type: ignore[attr-defined]
    except (OSError, AttributeError):
        pass
