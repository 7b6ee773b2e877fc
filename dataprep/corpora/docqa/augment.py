"""The doc-QA augment ops as objects (their work is done by :mod:`dataprep.corpora.docqa.ops`).

==================  =========================================================  =====
op                  what it derives                                            share
==================  =========================================================  =====
docqa_contrastive   positive shuffled among k negatives within a budget        0.5
docqa_unanswerable  negatives only, refusal answer, label "unanswerable"       0.1
==================  =========================================================  =====

Negatives borrowed from other records come from a pool of the in-scope doc-QA records (the train
split by default), so no dev/test document reaches train.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from dataprep.corpora.base import AugmentOp, OpOptions, OpRun
from dataprep.corpora.docqa import ops
from dataprep.corpora.docqa.common import (
    DEFAULT_MAX_DOC_CHARS,
    DEFAULT_MAX_TOTAL_CHARS,
    RAG_PROMPT,
    UNANSWERABLE_ANSWER,
)
from dataprep.errors import ConfigError
from dataprep.record import Conversation


@dataclass
class DocOpOptions(OpOptions):
    """``k`` negatives, the character budgets ``max_doc_chars``/``max_total_chars``, an optional
    token budget ``max_tokens`` (needs ``tokenizer:``), and the ``prompt`` template."""

    share: float = 0.5
    k: int = 5
    max_doc_chars: int = DEFAULT_MAX_DOC_CHARS
    max_total_chars: int = DEFAULT_MAX_TOTAL_CHARS
    max_tokens: int | None = None
    prompt: str = RAG_PROMPT

    def __post_init__(self) -> None:
        super().__post_init__()
        self.positive_ints("k", "max_doc_chars", "max_total_chars")


@dataclass
class UnanswerableOptions(DocOpOptions):
    """As :class:`DocOpOptions`, plus the ``refusal`` answer."""

    share: float = 0.1
    k: int = 3
    refusal: str = UNANSWERABLE_ANSWER


class _DocOp(AugmentOp):
    corpus = "docqa"
    options: DocOpOptions

    def prepare(self, scope: list[Conversation], run: OpRun) -> None:
        self.pool = ops.DocPool()
        for rec in scope:
            if rec.corpus == "docqa":
                self.pool.add(rec.id, ops.docs_of(rec))
        self.budget = ops.DocBudget(self.options.max_doc_chars, self.options.max_total_chars,
                                    self.options.max_tokens)
        self.count_tokens: ops.TokenCounter | None = None
        if self.options.max_tokens is not None:
            tok = run.resources.tokenizer
            if tok is None:
                raise ConfigError(f"augment op {self.name!r}: max_tokens needs a tokenizer; set "
                                  "'tokenizer: PATH' in the config or drop max_tokens")
            self.count_tokens = ops.token_counter(tok)


class Contrastive(_DocOp):
    """``docqa_contrastive``: the positives among ``k`` negatives, shuffled."""

    name = "docqa_contrastive"
    Options = DocOpOptions

    def derive(self, rec: Conversation, rng: random.Random,
               run: OpRun) -> tuple[Conversation | None, str]:
        o = self.options
        return ops.contrastive(rec, pool=self.pool, k=o.k, budget=self.budget, seed=run.seed,
                               prompt=o.prompt, count_tokens=self.count_tokens)


class Unanswerable(_DocOp):
    """``docqa_unanswerable``: negatives only and the refusal answer."""

    name = "docqa_unanswerable"
    Options = UnanswerableOptions
    options: UnanswerableOptions

    def derive(self, rec: Conversation, rng: random.Random,
               run: OpRun) -> tuple[Conversation | None, str]:
        o = self.options
        return ops.unanswerable(rec, pool=self.pool, k=o.k, budget=self.budget, seed=run.seed,
                                refusal=o.refusal, prompt=o.prompt,
                                count_tokens=self.count_tokens)
