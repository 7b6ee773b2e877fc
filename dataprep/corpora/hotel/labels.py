"""The hotel corpus's balance label: the dialog's scenario."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from dataprep.record import Conversation


def scenario(buckets: Iterable[int] | None = None) -> Callable[[Conversation], str]:
    """facility / rating / price / name / type / followup / closing, from the dialog's calls
    (:func:`~dataprep.corpora.hotel.hotel_db.scenario_label`); ``buckets`` does not apply."""
    from dataprep.corpora.hotel.hotel_db import scenario_label

    return scenario_label
