"""The typed resources a stage or post-run step may declare: built once per run, injected when the
pipeline is built, loaded on first use (a spo run never opens the hotel database).

A stage names what it uses in ``uses`` (e.g. ``("hotel_db",)``); the pipeline checks the names and
hands every stage the same :class:`Resources`. Nothing in it is written by a stage.

>>> res = Resources(hotel_db_path="data/hotel_db_sample.json")
>>> res.hotel_db.hotel("北京新世界酒店") is not None  # doctest: +SKIP
True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from dataprep.errors import ConfigError
from dataprep.matching import Matching

RESOURCE_NAMES = ("hotel_db", "tokenizer", "llm", "matching")


def load_tokenizer(path: str) -> Any:
    """The one place dataprep loads the ChatGLM3 tokenizer (``tokenizer: PATH`` in a config)."""
    from dataprep.tokenizer import load_tokenizer as _load

    return _load(path)


@dataclass
class Resources:
    """Shared, read-only inputs of one run.

    ``hotel_db_path``: CrossWOZ's hotel_db.json (``hotel_db:``); ``tokenizer_path``: a folder with
    ChatGLM3's tokenizer.model (``tokenizer:``); ``llm``: the run's ``llm:`` client settings;
    ``matching``: the duplicate-matching setup shared by dedup, split and the leakage audit.
    """

    hotel_db_path: str | None = None
    tokenizer_path: str | None = None
    llm: dict[str, Any] = field(default_factory=dict)
    matching: Matching = field(default_factory=Matching)

    @cached_property
    def hotel_db(self) -> Any:
        """The hotel database (:class:`~dataprep.corpora.hotel.hotel_db.HotelDB`)."""
        if not self.hotel_db_path:
            raise ConfigError("this step needs the hotel database: set 'hotel_db: PATH' "
                              "in the config (or --hotel-db)")
        from dataprep.corpora.hotel.hotel_db import HotelDB

        return HotelDB.load(self.hotel_db_path)

    @cached_property
    def tokenizer(self) -> Any:
        """The ChatGLM3 tokenizer when the config names one, else None."""
        return load_tokenizer(self.tokenizer_path) if self.tokenizer_path else None

    def check(self, owner: str, names: tuple[str, ...]) -> None:
        """Refuse a declaration of a resource that does not exist (a typo in ``uses``)."""
        unknown = [n for n in names if n not in RESOURCE_NAMES]
        if unknown:
            raise ConfigError(f"{owner}: unknown resource {unknown[0]!r}; available: "
                              f"{', '.join(RESOURCE_NAMES)}")
