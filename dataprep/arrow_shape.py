"""One Arrow shape per split, kept while the split is written, so ``datasets.load_dataset("json")``
loads every split the writer produces.

How ``datasets`` reads a JSON Lines file (3.x and 5.x alike): chunks of 10 MB (to the end of the
line), each parsed by ``pyarrow.json``, every later chunk cast to the first chunk's schema. Two
things break that, and both are handled here line by line, as the split streams out:

- a field whose JSON kind differs between lines (an observation that is a list on one line and
  ``true`` on another; ``pyarrow`` cannot unify them). The first line to give a field a kind
  fixes it; a later line with another kind is refused (:meth:`SplitShape.conflict`) and the
  writer rejects that record with ``inconsistent_shape``. ``null`` fits every kind, integers and
  decimals are one kind (``pyarrow`` widens them), an empty list says nothing about its items;
- a field that first appears after the first chunk (a tool parameter seen once, late in the
  file): the cast to the first chunk's schema fails. Such lines are only remembered
  (:attr:`SplitShape.late`); the writer moves them in front of the split once it is complete, so
  that the first chunk has every field. Nothing is lost and the order stays deterministic.

Written by hand because no library checks JSON values against the schema ``pyarrow`` *would*
infer, incrementally: ``pyarrow`` only reports the first conflict of a whole file, with no record.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

#: ``datasets``' JSON chunk size in bytes (``JsonConfig.chunksize``).
DATASETS_JSON_CHUNK = 10 << 20


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _fields(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(JSON pointer with ``-`` for every list item, kind) of ``value`` and everything in it.

    >>> sorted(_fields({"a": [{"b": 1}, {"b": None}], "c": "x"}))
    [('', 'object'), ('/a', 'array'), ('/a/-', 'object'), ('/a/-', 'object'), ('/a/-/b', 'null'), ('/a/-/b', 'number'), ('/c', 'string')]
    """
    kind = _kind(value)
    yield path, kind
    if kind == "object":
        for key, item in value.items():
            yield from _fields(item, f"{path}/{str(key).replace('~', '~0').replace('/', '~1')}")
    elif kind == "array":
        for item in value:
            yield from _fields(item, f"{path}/-")


class SplitShape:
    """The fields of one split as written so far, and the lines that bring a field late.

    >>> s = SplitShape()
    >>> s.conflict({"obs": [1]}), s.admit({"obs": [1]}, 0, 0)
    (None, None)
    >>> s.conflict({"obs": True})
    ('/obs', 'array', 'boolean')
    >>> s.admit({"line": None}, 1, 0); s.conflict({"line": 3})  # null fits every kind
    """

    def __init__(self, chunk: int = DATASETS_JSON_CHUNK) -> None:
        self.chunk = chunk
        self.kinds: dict[str, str] = {}
        self.late: list[int] = []
        """Indices of lines starting after the first chunk that bring a new field."""

    def conflict(self, line: dict[str, Any]) -> tuple[str, str, str] | None:
        """(pointer, kind so far, kind here) of the first field of ``line`` whose kind differs
        from the split's, else None. Nothing is recorded."""
        return self._conflict(list(_fields(line)))

    def admit(self, line: dict[str, Any], index: int, offset: int) -> None:
        """Record the fields of the line ``index`` written at byte ``offset``."""
        self._admit(list(_fields(line)), index, offset)

    def add(self, line: dict[str, Any], index: int, offset: int) -> tuple[str, str, str] | None:
        """:meth:`conflict`, then :meth:`admit` when there is none, walking the line once."""
        fields = list(_fields(line))
        found = self._conflict(fields)
        if found is None:
            self._admit(fields, index, offset)
        return found

    def _conflict(self, fields: list[tuple[str, str]]) -> tuple[str, str, str] | None:
        mine: dict[str, str] = {}
        for path, kind in fields:
            if kind == "null":
                continue
            known = self.kinds.get(path)
            if known in (None, "null"):
                known = mine.get(path)
            if known is not None and known != kind:
                return path, known, kind
            mine[path] = kind
        return None

    def _admit(self, fields: list[tuple[str, str]], index: int, offset: int) -> None:
        new = False
        for path, kind in fields:
            known = self.kinds.get(path)
            # A field only ever null so far is typed ``null`` in the first chunk's schema, and
            # ``null`` cannot be cast to a real kind: its first real value is as late as a new field.
            if known is None or (known == "null" and kind != "null"):
                new = True
                self.kinds[path] = kind
        if new and offset >= self.chunk and index:
            self.late.append(index)
