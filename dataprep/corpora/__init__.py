"""The corpus registry: every corpus is one package here, and this is the one list of them.

>>> corpus("spo").readers
{'spo': 'dataprep.corpora.spo.reader:SpoReader'}
>>> sorted(op_names())[:2]
['closing', 'docqa_contrastive']

Adding a corpus: a package ``dataprep/corpora/NAME/`` whose ``__init__`` defines
``CORPUS = Corpus(...)``, and its entry in :data:`CORPORA` (see docs/architecture.md).
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import Any

from dataprep.corpora.base import AugmentOp, Corpus, Rule
from dataprep.errors import ConfigError

CORPORA: dict[str, str] = {
    "spo": "dataprep.corpora.spo",
    "docqa": "dataprep.corpora.docqa",
    "hotel": "dataprep.corpora.hotel",
}


def load(spec: str) -> Any:
    """``"module:attr"`` -> the object."""
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


@cache
def corpus(name: str) -> Corpus:
    if name not in CORPORA:
        raise ConfigError(f"unknown corpus {name!r}; available: {', '.join(CORPORA)}")
    return importlib.import_module(CORPORA[name]).CORPUS


def all_corpora() -> list[Corpus]:
    return [corpus(name) for name in CORPORA]


def reader_specs() -> dict[str, str]:
    """Reader name -> import string, over every corpus."""
    return {name: spec for c in all_corpora() for name, spec in c.readers.items()}


@cache
def rule_classes() -> tuple[type[Rule], ...]:
    """Every corpus's rules, corpus by corpus, in their declared order."""
    return tuple(load(spec) for c in all_corpora() for spec in c.rules)


def op_names() -> list[str]:
    return [name for c in all_corpora() for name in c.ops]


def op_class(name: str) -> type[AugmentOp]:
    for c in all_corpora():
        if name in c.ops:
            return load(c.ops[name])
    raise ConfigError(f"unknown op {name!r}; available: {', '.join(op_names())}")


def label_names() -> list[str]:
    return [name for c in all_corpora() for name in c.labels]


def label_spec(name: str) -> str | None:
    for c in all_corpora():
        if name in c.labels:
            return c.labels[name]
    return None


def meta_fields() -> tuple[str, ...]:
    """The ``meta`` keys every corpus declares as text (clean normalises them)."""
    out: list[str] = []
    for c in all_corpora():
        out += [f for f in c.meta_fields if f not in out]
    return tuple(out)


def tool_call_rates() -> dict[str, tuple[float, float]]:
    return {c.name: c.tool_call_rate for c in all_corpora()}
