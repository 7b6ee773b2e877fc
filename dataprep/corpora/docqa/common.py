"""Document-QA (RAG) samples: prompt template, document budget and order, one record shape.

The three doc-QA readers (``multidoc_qa``, ``cmrc2018``, ``dureader``) parse very different raw
layouts and all end here, in :func:`build_docqa_conversation`, so every doc-QA conversation has
the same shape::

    corpus = "docqa", tools = None (no "tools" key: the official preprocessor adds a tool
    system prompt whenever the key exists), messages = [user(prompt), assistant(answer)],
    meta = {"question", "answer", "positive_docs", "negative_docs", "positive_index",
            "source_id", ...}, label = length_bucket(answer)

``meta`` is enough to rebuild the exact prompt: ``positive_docs`` and ``negative_docs`` are listed
in prompt order, and ``positive_index`` gives the positives' positions (an ``int`` when there is
exactly one positive, else a list). :func:`rebuild_with_documents` uses that to derive a sample
with another document set (contrastive or unanswerable samples).

>>> conv = build_docqa_conversation(
...     conv_id="x:1", question="长江有多长？", answer="约6300公里",
...     positive_docs=["长江全长约6300公里。"], negative_docs=["黄河全长约5464公里。"],
...     source_id="1", lineage=Lineage(source="a.jsonl", line=1, group_id="x:1"))
>>> conv.label, conv.meta["positive_index"] in (0, 1)
('short', True)
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any, ClassVar

from dataprep.errors import ConfigError
from dataprep.readers.base import Reader
from dataprep.record import Conversation, Lineage, Message, Reject

CORPUS = "docqa"

# The text the model should give when the documents do not hold the answer. It is named in the
# default prompt so that unanswerable samples built later by augmentation have a fixed target.
UNANSWERABLE_ANSWER = "根据提供的文档无法回答该问题。"

RAG_PROMPT = (
    "请阅读下面的文档，并根据文档内容回答问题。如果文档中没有答案，请回答“"
    + UNANSWERABLE_ANSWER
    + "”\n\n{documents}\n\n问题：{question}"
)
DOC_HEADER = "【文档{index}】"
PROMPT_FIELDS = ("documents", "question")

DEFAULT_SEED = 42
DEFAULT_NEGATIVES = 3
# Character budgets, not tokens: readers have no tokenizer. ChatGLM3's tokenizer spends roughly
# 0.6-0.8 tokens per Chinese character, so 6000 characters of documents leave room for the
# question and answer within ChatGLM3-6B's 8k-token window.
DEFAULT_MAX_DOC_CHARS = 1500
DEFAULT_MAX_TOTAL_CHARS = 6000

# Answer-length buckets used as the stratification label (characters, after stripping).
SHORT_MAX_CHARS = 10
MEDIUM_MAX_CHARS = 50


def length_bucket(answer: str) -> str:
    """The answer-length label: ``short`` (<= 10 chars), ``medium`` (<= 50), ``long``.

    >>> length_bucket("1998年"), length_bucket("因为" * 20), length_bucket("长" * 51)
    ('short', 'medium', 'long')
    """
    n = len(answer.strip())
    if n <= SHORT_MAX_CHARS:
        return "short"
    if n <= MEDIUM_MAX_CHARS:
        return "medium"
    return "long"


@lru_cache(maxsize=64)
def validate_prompt(template: str) -> str:
    """Return ``template`` if it has ``{documents}`` and ``{question}`` exactly once each and no
    other placeholder; raise :class:`ConfigError` saying what was found otherwise.

    >>> validate_prompt("{documents}\\n问题：{question}")
    '{documents}\\n问题：{question}'
    """
    if not isinstance(template, str):
        raise ConfigError(f"reader option 'prompt': expected a string template, "
                          f"found {type(template).__name__}")
    hint = ("expected a template with {documents} and {question} exactly once each "
            "(write literal braces as {{ and }})")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ConfigError(f"reader option 'prompt': {hint}, but the template does not parse: "
                          f"{e}") from e
    # (name, the placeholder as written) for every replacement field in the template
    fields = [(name, f"{{{name}{'!' + conv if conv else ''}{':' + spec if spec else ''}}}")
              for _, name, spec, conv in parsed if name is not None]
    names = [name for name, _ in fields]
    extra = [written for name, written in fields if name not in PROMPT_FIELDS]
    if extra:
        raise ConfigError(f"reader option 'prompt': {hint}; found unknown placeholder(s) "
                          f"{', '.join(extra)}")
    odd = [written for name, written in fields if written != f"{{{name}}}"]
    if odd:
        raise ConfigError(f"reader option 'prompt': {hint}; found a conversion or format spec "
                          f"in {', '.join(odd)}")
    for name in PROMPT_FIELDS:
        if names.count(name) != 1:
            raise ConfigError(f"reader option 'prompt': {hint}; found {{{name}}} "
                              f"{names.count(name)} time(s)")
    return template


def doc_text(title: str | None, body: str) -> str:
    """One document as shown in the prompt: the title on its own line when there is one.

    >>> doc_text("长江", "长江是中国第一长河。")
    '长江\\n长江是中国第一长河。'
    """
    body = body.strip()
    title = (title or "").strip()
    return f"{title}\n{body}" if title else body


def truncate(text: str, limit: int) -> str:
    """Cut ``text`` to at most ``limit`` characters (a plain head cut; no marker is added so
    that a truncated document is still a verbatim prefix of its source)."""
    return text if len(text) <= limit else text[:limit].rstrip()


def fit_documents(positives: Sequence[str], negatives: Sequence[str], *,
                  max_doc_chars: int = DEFAULT_MAX_DOC_CHARS,
                  max_total_chars: int = DEFAULT_MAX_TOTAL_CHARS
                  ) -> tuple[list[str], list[str], dict[str, int]]:
    """Apply the character budget: every document is cut to ``max_doc_chars``; positives are
    always kept (cut to an equal share if they alone exceed ``max_total_chars``); negatives are
    taken in the given order while they fit and the rest are dropped.

    Returns (positives, negatives, {"truncated_docs": n, "dropped_negatives": m}).

    >>> fit_documents(["甲" * 5], ["乙" * 5, "丙" * 3], max_doc_chars=4, max_total_chars=8)
    (['甲甲甲甲'], ['乙乙乙乙'], {'truncated_docs': 2, 'dropped_negatives': 1})
    """
    pos = [truncate(d, max_doc_chars) for d in positives]
    if pos and sum(len(d) for d in pos) > max_total_chars:
        share = max(1, max_total_chars // len(pos))
        pos = [truncate(d, share) for d in pos]
    truncated = sum(cut != d for cut, d in zip(pos, positives, strict=True))
    total = sum(len(d) for d in pos)
    neg: list[str] = []
    dropped = 0
    for d in negatives:
        cut = truncate(d, max_doc_chars)
        if total + len(cut) > max_total_chars:
            dropped += 1
            continue
        truncated += cut != d
        neg.append(cut)
        total += len(cut)
    return pos, neg, {"truncated_docs": truncated, "dropped_negatives": dropped}


def order_documents(positives: Sequence[str], negatives: Sequence[str], *, key: str,
                    shuffle: bool = True) -> tuple[list[str], list[int]]:
    """All documents in prompt order and the positions of the positives.

    The order is a shuffle seeded by ``key`` (a string, so it does not depend on
    ``PYTHONHASHSEED``): without it the positive would always come first and a model would learn
    to read only the first document. ``shuffle=False`` keeps positives first.

    >>> order_documents(["P"], ["N1", "N2"], key="k", shuffle=False)
    (['P', 'N1', 'N2'], [0])
    """
    tagged = [(True, d) for d in positives] + [(False, d) for d in negatives]
    if shuffle:
        random.Random(f"order:{key}").shuffle(tagged)
    return [d for _, d in tagged], [i for i, (is_pos, _) in enumerate(tagged) if is_pos]


def format_documents(documents: Sequence[str]) -> str:
    """The ``{documents}`` block: numbered headers, one blank line between documents.

    >>> format_documents(["甲", "乙"])
    '【文档1】\\n甲\\n\\n【文档2】\\n乙'
    """
    return "\n\n".join(f"{DOC_HEADER.format(index=i)}\n{d}" for i, d in enumerate(documents, 1))


def render_prompt(template: str, documents: Sequence[str], question: str) -> str:
    """Fill a validated template.

    >>> render_prompt("{documents}|{question}", ["甲"], "问？")
    '【文档1】\\n甲|问？'
    """
    return validate_prompt(template).format(documents=format_documents(documents),
                                            question=question)


def build_docqa_conversation(*, conv_id: str, question: str, answer: str,
                             positive_docs: Sequence[str], negative_docs: Sequence[str],
                             source_id: str, lineage: Lineage, prompt: str = RAG_PROMPT,
                             seed: int | str = DEFAULT_SEED, shuffle: bool = True,
                             extra_meta: Mapping[str, Any] | None = None) -> Conversation:
    """The one doc-QA record shape (see the module docstring). Documents are used as given
    (apply :func:`fit_documents` first); their order is shuffled with ``seed`` and ``source_id``.

    >>> c = build_docqa_conversation(conv_id="d:1", question="问？", answer="答",
    ...     positive_docs=["P"], negative_docs=[], source_id="1", shuffle=False,
    ...     lineage=Lineage(source="f", line=1, group_id="d:1"))
    >>> c.meta["positive_index"], c.messages[1].content
    (0, '答')
    """
    documents, pos_index = order_documents(positive_docs, negative_docs,
                                           key=f"{seed}:{source_id}", shuffle=shuffle)
    pos_set = set(pos_index)
    meta: dict[str, Any] = {
        "question": question,
        "answer": answer,
        # Both lists in prompt order, so that meta alone rebuilds the prompt exactly.
        "positive_docs": [d for i, d in enumerate(documents) if i in pos_set],
        "negative_docs": [d for i, d in enumerate(documents) if i not in pos_set],
        "positive_index": pos_index[0] if len(pos_index) == 1 else pos_index,
        "source_id": source_id,
    }
    if extra_meta:
        meta.update({k: v for k, v in extra_meta.items() if k not in meta})
    return Conversation(
        id=conv_id,
        messages=[Message("user", render_prompt(prompt, documents, question)),
                  Message("assistant", answer)],
        lineage=lineage,
        tools=None,
        corpus=CORPUS,
        label=length_bucket(answer),
        meta=meta,
    )


def prompt_documents(meta: Mapping[str, Any]) -> list[str]:
    """The documents of a doc-QA record in prompt order, rebuilt from its ``meta``.

    >>> prompt_documents({"positive_docs": ["P"], "negative_docs": ["A", "B"], "positive_index": 1})
    ['A', 'P', 'B']
    """
    idx = meta["positive_index"]
    positions = [idx] if isinstance(idx, int) else list(idx)
    pos, neg = iter(meta["positive_docs"]), iter(meta["negative_docs"])
    n = len(meta["positive_docs"]) + len(meta["negative_docs"])
    return [next(pos) if i in positions else next(neg) for i in range(n)]


def rebuild_with_documents(conv: Conversation, *, new_id: str, op: str,
                           positive_docs: Sequence[str], negative_docs: Sequence[str],
                           answer: str | None = None, prompt: str = RAG_PROMPT,
                           seed: int | str = DEFAULT_SEED, shuffle: bool = True) -> Conversation:
    """A derived doc-QA sample with another document set (and optionally another answer).

    The child keeps the parent's group (so it lands in the same split) and records ``op``.

    >>> unanswerable = rebuild_with_documents(conv, new_id=conv.id + ":unans", op="unanswerable",
    ...     positive_docs=[], negative_docs=conv.meta["negative_docs"],
    ...     answer=UNANSWERABLE_ANSWER)  # doctest: +SKIP
    """
    child = conv.derive(new_id, op)
    fresh = build_docqa_conversation(
        conv_id=new_id, question=conv.meta["question"],
        answer=conv.meta["answer"] if answer is None else answer,
        positive_docs=positive_docs, negative_docs=negative_docs,
        source_id=conv.meta.get("source_id", conv.id), lineage=child.lineage, prompt=prompt,
        seed=f"{seed}:{new_id}", shuffle=shuffle,
        extra_meta={k: v for k, v in child.meta.items()
                    if k not in ("truncated_docs", "dropped_negatives")})
    child.messages, child.meta, child.label = fresh.messages, fresh.meta, fresh.label
    return child


def pick_negatives(candidates: Sequence[str], k: int | None, *, key: str,
                   exclude: Iterable[str] = ()) -> list[str]:
    """Up to ``k`` distinct candidates, chosen by a shuffle seeded with ``key`` (all when ``k`` is
    None); blank ones and those equal to an excluded text (the positives) are skipped.

    >>> pick_negatives(["A", "B", "A", " "], None, key="s", exclude=["B"])
    ['A']
    """
    skip = {e.strip() for e in exclude}
    seen: set[str] = set()
    pool = []
    for c in candidates:
        s = c.strip()
        if s and s not in skip and s not in seen:
            seen.add(s)
            pool.append(c)
    if k is None or k >= len(pool):
        return pool
    return random.Random(f"negatives:{key}").sample(pool, k)


# -- reader base ------------------------------------------------------------------------------

def _int_option(name: str, value: Any, minimum: int) -> int:
    # bool is an int subclass; "negatives: true" in YAML is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"reader option {name!r}: expected an integer >= {minimum}, "
                          f"found {value!r}")
    return value


def pointer_tokens(pointer: str) -> list[str]:
    """``"/QA/0/question"`` -> ``["QA", "0", "question"]``; ``"/"`` -> ``[]``."""
    return [t for t in pointer.split("/")[1:] if t != ""]


class DocQAReader(Reader):
    """Options shared by the doc-QA readers.

    ``prompt``: template with ``{documents}`` and ``{question}`` (default :data:`RAG_PROMPT`);
    ``seed``: seeds distractor choice and document order (default: the run's ``seed``, or 42
    outside a pipeline); ``negatives``: most distractor documents per sample (None = all there
    are); ``max_doc_chars`` / ``max_total_chars``: the document budget (see
    :func:`fit_documents`); ``shuffle``: shuffle the document order (default true).
    """

    corpus = CORPUS
    uses_seed = True
    default_negatives: ClassVar[int | None] = DEFAULT_NEGATIVES

    def configure(self, prompt: str = RAG_PROMPT, seed: int = DEFAULT_SEED,
                  negatives: int | None | str = "default",
                  max_doc_chars: int = DEFAULT_MAX_DOC_CHARS,
                  max_total_chars: int = DEFAULT_MAX_TOTAL_CHARS, shuffle: bool = True) -> None:
        self.prompt = validate_prompt(prompt)
        if isinstance(seed, bool) or not isinstance(seed, (int, str)):
            raise ConfigError(f"reader option 'seed': expected an integer, found {seed!r}")
        self.seed = seed
        self.negatives: int | None = (
            self.default_negatives if negatives == "default"
            else None if negatives is None else _int_option("negatives", negatives, 0))
        self.max_doc_chars = _int_option("max_doc_chars", max_doc_chars, 1)
        self.max_total_chars = _int_option("max_total_chars", max_total_chars, 1)
        if not isinstance(shuffle, bool):
            raise ConfigError(f"reader option 'shuffle': expected true or false, found {shuffle!r}")
        self.shuffle = shuffle

    def fit(self, positives: Sequence[str], negatives: Sequence[str]
            ) -> tuple[list[str], list[str], dict[str, int]]:
        return fit_documents(positives, negatives, max_doc_chars=self.max_doc_chars,
                             max_total_chars=self.max_total_chars)

    def build(self, *, key: str | int, question: str, answer: str, positives: Sequence[str],
              negatives: Sequence[str], source_id: str, lineage: Lineage,
              extra_meta: Mapping[str, Any] | None = None, pre_truncated: int = 0
              ) -> Conversation:
        """Budget the documents and build the record; ``key`` makes the id. ``pre_truncated``
        counts documents the reader already cut (its own smarter cut) before the budget."""
        pos, neg, budget = self.fit(positives, negatives)
        budget["truncated_docs"] += pre_truncated
        return build_docqa_conversation(
            conv_id=self.make_id(key), question=question, answer=answer, positive_docs=pos,
            negative_docs=neg, source_id=source_id, lineage=lineage, prompt=self.prompt,
            seed=self.seed, shuffle=self.shuffle, extra_meta={**budget, **(extra_meta or {})})

    def problems_reject(self, problems: Sequence[tuple[str, str, str]], line: int | None, *,
                        text: str | None = None, value: Any = None,
                        item: str | None = None) -> Reject:
        """A reject for schema problems (the first names the reason; the rest are counted)."""
        reason, pointer, message = problems[0]
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        return self.make_reject(reason, f"{pointer}: {message}{more}", line, text=text,
                                value=value, item=item)

    def text_problem(self, field: str, value: str, reason: str, what: str, line: int | None, *,
                     text: str | None = None, record: Any = None,
                     item: str | None = None) -> Reject | None:
        """A reject when ``value`` is blank (``reason`` e.g. ``empty_question``), else None."""
        if value.strip():
            return None
        return self.make_reject(reason, f"{field}: expected a non-empty {what}, found "
                                f"{value!r}", line, text=text, value=record, item=item)
