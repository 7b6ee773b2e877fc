"""The doc-QA balance labels: length buckets of the answer or of the positive documents."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from dataprep.errors import ConfigError
from dataprep.record import Conversation

DEFAULT_BUCKETS = {"answer_length": (10, 30, 100, 300), "doc_length": (500, 1000, 2000, 5000)}
NO_LABEL = "(none)"


def length_bucket(n: int, edges: Iterable[int]) -> str:
    """The bucket name of a length: ``"0-10"``, ``"11-30"``, ... ``">300"``.

    >>> length_bucket(7, (10, 30)), length_bucket(30, (10, 30)), length_bucket(31, (10, 30))
    ('0-10', '11-30', '>30')
    """
    lo = 0
    for edge in edges:
        if n <= edge:
            return f"{lo}-{edge}"
        lo = edge + 1
    return f">{lo - 1}"


def _edges(name: str, buckets: Iterable[int] | None) -> tuple[int, ...]:
    edges = tuple(buckets) if buckets is not None else DEFAULT_BUCKETS[name]
    if list(edges) != sorted(set(edges)):
        raise ConfigError(f"balance.buckets must be increasing numbers, got {list(edges)}")
    return edges


def answer_length(buckets: Iterable[int] | None = None) -> Callable[[Conversation], str]:
    """Bucket of the answer's length in characters (``meta.answer``)."""
    edges = _edges("answer_length", buckets)

    def label(rec: Conversation) -> str:
        answer = rec.meta.get("answer")
        return length_bucket(len(answer), edges) if isinstance(answer, str) else NO_LABEL

    return label


def doc_length(buckets: Iterable[int] | None = None) -> Callable[[Conversation], str]:
    """Bucket of the positive documents' total length in characters."""
    edges = _edges("doc_length", buckets)

    def label(rec: Conversation) -> str:
        docs = rec.meta.get("positive_docs")
        if not isinstance(docs, list):
            return NO_LABEL
        return length_bucket(sum(len(d) for d in docs if isinstance(d, str)), edges)

    return label
