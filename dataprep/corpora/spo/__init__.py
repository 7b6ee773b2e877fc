"""SPO triple extraction from car-repair records (``spo-repair-records``).

- :mod:`~dataprep.corpora.spo.reader`: the ``spo`` reader (both key layouts of the corpus);
- :mod:`~dataprep.corpora.spo.rules`: ``unknown_relation`` and ``triple_not_in_text``.

Balanced on the record's own label (its rarest relation); no augment ops; no tool calls.
"""

from dataprep.corpora.base import Corpus

CORPUS = Corpus(
    name="spo",
    readers={"spo": "dataprep.corpora.spo.reader:SpoReader"},
    rules=("dataprep.corpora.spo.rules:UnknownRelation",
           "dataprep.corpora.spo.rules:TripleNotInText"),
    tool_call_rate=(0.0, 0.0),
    meta_fields=("text", "triples"),
)
