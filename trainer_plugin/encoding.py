"""One ChatGLM3 training sample -> ``input_ids`` and ``labels``, exactly as the official code does.

The algorithm (``../shared/docs/chatglm3-format.md`` §3, pinned by the golden files):

    ids = [gMASK] sop
    (tools key present)  + <|system|> enc("\\n") enc(TOOL_PROMPT + json.dumps(tools, indent=4))
    per message          + <|role|> enc(metadata + "\\n") enc(text)
        tool message     -> <|assistant|> enc(name + "\\n")
                                enc("```python\\ntool_call(k=repr(v), ...)\\n```")
                            <|observation|> enc("\\n") enc(observation)   (never learned)
    + eos
    labels[i] = ids[i] if the token before it belongs to a trained message, else -100

``compat="official"`` reproduces the official scripts id for id. ``compat="default"`` differs in
one deliberate place: a message written directly with role ``observation`` is never learned (the
official scripts learn it; training on tool results teaches a model to invent them). It also
reads ``"tools": null`` as "no tools" (the official code writes a tool prompt ending in ``null``).

>>> sample = {"conversations": [{"role": "user", "content": "hi"},
...                             {"role": "assistant", "content": "yo"}]}
>>> enc = encode_conversation(sample, tok)  # doctest: +SKIP
>>> enc.input_ids[-1] == enc.labels[-1] == tok.eos_id  # the model learns to stop  # doctest: +SKIP
True
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, NamedTuple

from dataprep.tokenizer import Tokenizer
from dataprep.tool_call import parse_tool_call, render_tool_call, render_tool_call_body

__all__ = [
    "COMPAT_MODES",
    "IGNORE_INDEX",
    "REASONS",
    "ROLES",
    "TOOL_PROMPT",
    "Encoded",
    "EncodingError",
    "LengthSummary",
    "Piece",
    "Span",
    "conversation_pieces",
    "decode_double_encoded_tools",
    "encode_conversation",
    "fit_length",
    "message_ids",
    "parse_tool_call",
    "prefix_ids",
    "render_tool_call",
    "render_tool_call_body",
    "summarize_lengths",
]

IGNORE_INDEX = -100
ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool", "observation")
COMPAT_MODES: tuple[str, ...] = ("default", "official")
TOOL_PROMPT = (
    "Answer the following questions as best as you can. You have access to the following tools:\n"
)
Compat = Literal["default", "official"]
Strategy = Literal["drop", "cut"]

#: Reason codes of :func:`fit_length` (and of ``trainer_plugin.data``), with what each means.
REASONS: dict[str, str] = {
    "cut_at_message_boundary": (
        "kept: longer than max_length, cut after the last whole message that fits"
    ),
    "no_trained_tokens": "dropped: no token of the sample is trained (every label is -100)",
    "too_long": "dropped: longer than max_length (truncation='drop')",
    "too_long_nothing_trained_fits": (
        "dropped: longer than max_length and no trained token fits when cut at a message boundary"
    ),
    "invalid_sample": "dropped: the sample breaks the format (see the error text)",
}


class EncodingError(ValueError):
    """A sample does not follow the tools/conversations format; the message says where."""


@dataclass(frozen=True)
class Span:
    """Where one rendered message lies in ``input_ids`` (``start`` inclusive, ``end`` exclusive).

    ``index`` is the message's position in ``conversations`` (``None`` for the tool system prompt);
    a ``tool`` message renders as two spans with the same index: the call (role ``assistant``)
    and its observation (role ``observation``).
    """

    index: int | None
    role: str
    start: int
    end: int
    trained: bool


@dataclass(frozen=True)
class Encoded:
    """Token ids, labels and loss mask of one sample, plus its message spans.

    ``loss_mask[i]`` says whether token ``i`` belongs to a trained message; ``labels`` derive from
    it with the one-token shift (see :func:`encode_conversation`).
    """

    input_ids: list[int]
    labels: list[int]
    loss_mask: list[int]
    spans: tuple[Span, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_trained(self) -> int:
        """How many labels are trained (not -100)."""
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


# ---------------------------------------------------------------------------------------------
# building blocks


def prefix_ids(tok: Tokenizer) -> list[int]:
    """``[gMASK] sop``, the two tokens every ChatGLM3 sequence starts with.

    >>> prefix_ids(tok)  # doctest: +SKIP
    [64790, 64792]
    """
    return [tok.token_id("[gMASK]"), tok.token_id("sop")]


def message_ids(tok: Tokenizer, role: str, metadata: str, text: str) -> list[int]:
    """``<|role|> enc(metadata + "\\n") enc(text)`` (the official ``build_single_message``).

    Metadata and text are encoded in two calls on purpose: each call adds its own dummy-prefix
    ``▁``, and the model was trained on exactly that (``enc("\\n") == [▁, <0x0A>]``).

    >>> message_ids(tok, "assistant", "", "你好")  # doctest: +SKIP
    [64796, 30910, 13, 36474, 54591]
    """
    return [tok.token_id(f"<|{role}|>"), *tok.encode(metadata + "\n"), *tok.encode(text)]


def decode_double_encoded_tools(tools: Any) -> Any:
    """Undo the double encoding some data uses: ``["[{...}, ...]"]`` -> ``[{...}, ...]``.

    Only a list holding ONE string whose JSON is a list is decoded; anything else (including a
    one-string list of prose tool documentation) is returned unchanged.

    >>> decode_double_encoded_tools(['[{"name": "f"}]'])
    [{'name': 'f'}]
    """
    if isinstance(tools, list) and len(tools) == 1 and isinstance(tools[0], str):
        try:
            decoded = json.loads(tools[0])
        except ValueError:
            return tools
        if isinstance(decoded, list):
            return decoded
    return tools


# ---------------------------------------------------------------------------------------------
# the encoder


def tool_system_prompt(tools: Any) -> str:
    """The system text the official code builds from ``tools``: the fixed preamble plus
    ``json.dumps(tools, indent=4, ensure_ascii=False)``.

    >>> tool_system_prompt([])[-2:]
    '[]'
    """
    # json.dumps with indent runs Python's pure-Python encoder and was the largest single cost of
    # encoding a hotel sample; every sample of a corpus carries the same tools, so the rendering is
    # memoised on the compact (C-encoded, order-preserving) JSON text.
    return _tool_system_prompt(_COMPACT_JSON.encode(tools))


# json.dumps(x, ensure_ascii=False), without building a new encoder on every call (json.dumps
# only reuses its default encoder when every option is left at its default).
_COMPACT_JSON = json.JSONEncoder(ensure_ascii=False)


@functools.lru_cache(maxsize=256)
def _tool_system_prompt(compact: str) -> str:
    return TOOL_PROMPT + json.dumps(json.loads(compact), indent=4, ensure_ascii=False)


@functools.lru_cache(maxsize=256)
def _double_encoded_tool_prompt(text: str) -> str:
    return tool_system_prompt(decode_double_encoded_tools([text]))


class Piece(NamedTuple):
    """One rendered message before tokenization: ``<|role|> enc(metadata + "\\n") enc(text)``.

    ``index`` is the message's position in ``conversations`` (``None`` for the tool system
    prompt); a ``tool`` message gives two pieces with the same index (call, then observation).
    """

    index: int | None
    role: str
    metadata: str
    text: str
    trained: bool


def conversation_pieces(
    sample: Mapping[str, Any], compat: Compat = "default", decode_tools: bool = True
) -> list[Piece]:
    """The messages of ``sample`` as :class:`Piece` s, checked and rendered, not yet tokenized.

    This is everything :func:`encode_conversation` decides (which messages, which text, which
    are trained); only the SentencePiece calls are left. The batch encoder
    (:mod:`trainer_plugin.batch_encoding`) shares it, so both agree by construction.

    >>> [p.role for p in conversation_pieces({"tools": [], "conversations": [
    ...     {"role": "user", "content": "hi"}]})]
    ['system', 'user']
    """
    if compat not in COMPAT_MODES:
        raise ValueError(f"unknown compat mode {compat!r}; use one of: {', '.join(COMPAT_MODES)}")
    if not isinstance(sample, Mapping):
        raise EncodingError(f"a sample must be a JSON object, got {type(sample).__name__}")
    conversations = sample.get("conversations")
    if not isinstance(conversations, list):
        keys = ", ".join(sorted(map(str, sample))) or "none"
        raise EncodingError(
            f'"conversations" must be a list of messages, got {type(conversations).__name__} '
            f"(keys present: {keys})"
        )

    pieces: list[Piece] = []
    if "tools" in sample and not (compat == "default" and sample["tools"] is None):
        tools = sample["tools"]
        if decode_tools and isinstance(tools, list) and len(tools) == 1 and isinstance(
            tools[0], str
        ):
            # The lab's double-encoded form: decoding and re-rendering the same string for every
            # sample cost more than the rest of the sample's rendering, so it is memoised.
            prompt = _double_encoded_tool_prompt(tools[0])
        else:
            prompt = tool_system_prompt(decode_double_encoded_tools(tools) if decode_tools else tools)
        pieces.append(Piece(None, "system", "", prompt, False))

    for i, m in enumerate(conversations):
        # (type(...) is dict first: the abstract Mapping check is slow, and this loop is hot.)
        if type(m) is not dict and not isinstance(m, Mapping):
            raise EncodingError(
                f"conversations[{i}]: a message must be an object, got {type(m).__name__}"
            )
        role = m.get("role")
        if role not in ROLES:
            raise EncodingError(
                f"conversations[{i}]: unknown role {role!r}; expected one of: {', '.join(ROLES)}"
            )
        trained = bool(m.get("loss", True)) and role not in ("system", "user")
        if role == "observation" and compat == "default":
            trained = False
        if role == "tool":
            name, params = m.get("name"), m.get("parameters")
            if not isinstance(name, str) or not name:
                raise EncodingError(f'conversations[{i}]: a tool message needs a "name" string')
            if type(params) is not dict and not isinstance(params, Mapping):
                raise EncodingError(
                    f'conversations[{i}]: "parameters" of tool {name!r} must be an object, '
                    f"got {type(params).__name__}"
                )
            pieces.append(Piece(i, "assistant", name, render_tool_call_body(params), trained))
            obs = m.get("observation")
            obs_text = obs if isinstance(obs, str) else _COMPACT_JSON.encode(obs)
            pieces.append(Piece(i, "observation", "", obs_text, False))
        else:
            content = m.get("content")
            if not isinstance(content, str):
                raise EncodingError(
                    f'conversations[{i}]: "content" of a {role} message must be a string, '
                    f"got {type(content).__name__}"
                )
            pieces.append(Piece(i, role, "", content, trained))
    return pieces


def encode_conversation(
    sample: Mapping[str, Any],
    tok: Tokenizer,
    compat: Compat = "default",
    decode_tools: bool = True,
) -> Encoded:
    """Encode one ``{tools?, conversations}`` sample into ids, labels and message spans.

    - ``compat="official"``: identical to ChatGLM3's legacy ``format_conversation``.
      ``compat="default"``: the same, except that directly written ``observation`` messages are
      masked, and ``"tools": null`` counts as no tools (official: a prompt ending in ``null``).
    - ``decode_tools``: decode double-encoded ``tools`` first (see
      :func:`decode_double_encoded_tools`); ``False`` keeps them as the lab code consumed them
      (the prompt then holds an escaped JSON string).
    - A message is trained when ``message.get("loss", True)`` and its role is not system/user
      (default mode: nor observation). A tool message's ``loss`` covers the call only; its
      observation is never trained.

    Raises :class:`EncodingError` (with the message index) for an unknown role or a malformed
    message; the official code crashed with an ``AssertionError`` on unknown roles.

    This is the plain per-sample reference; :class:`trainer_plugin.batch_encoding.BatchEncoder`
    gives the same output for many samples at once, several times faster.

    >>> s = {"conversations": [{"role": "user", "content": "你好"},
    ...                        {"role": "assistant", "content": "你好！"}]}
    >>> e = encode_conversation(s, tok)  # doctest: +SKIP
    >>> [e.labels[i] != -100 for i in range(len(e))][-5:]  # doctest: +SKIP
    [False, True, True, True, True]
    """
    pieces = conversation_pieces(sample, compat, decode_tools)
    ids: list[int] = prefix_ids(tok)
    mask: list[int] = [0, 0]
    spans: list[Span] = []
    for p in pieces:
        start = len(ids)
        ids.extend(message_ids(tok, p.role, p.metadata, p.text))
        mask.extend([int(p.trained)] * (len(ids) - start))
        spans.append(Span(p.index, p.role, start, len(ids), p.trained))
    ids.append(tok.eos_id)
    mask.append(0)
    return Encoded(ids, _shifted_labels(ids, mask), mask, tuple(spans))


def _shifted_labels(ids: Sequence[int], mask: Sequence[int]) -> list[int]:
    # The mask shift: token i is a target when the token BEFORE it is trained, i.e. when the
    # prediction made at a trained position is kept. So the role token opening an assistant
    # message is not learned, but the token right after a trained message is (the next role
    # token, or the final eos): that is how ChatGLM3 learns to stop. Labels stay aligned with
    # input_ids because Hugging Face causal-LM models shift them once more internally.
    return [IGNORE_INDEX] + [
        t if m else IGNORE_INDEX for t, m in zip(ids[1:], mask[:-1], strict=True)
    ]


# ---------------------------------------------------------------------------------------------
# length handling


def fit_length(
    encoded: Encoded, max_length: int | None, strategy: Strategy = "cut"
) -> tuple[Encoded | None, str | None]:
    """Apply ``max_length`` without ever losing the final eos; returns ``(encoded, reason)``.

    - ``(encoded, None)``: unchanged (fits, or ``max_length`` is None).
    - ``(shorter, "cut_at_message_boundary")``: strategy ``"cut"`` kept the longest run of whole
      leading messages (a tool call together with its observation) that fits with an eos.
    - ``(None, reason)``: dropped; reason is ``no_trained_tokens``, ``too_long`` (strategy
      ``"drop"``) or ``too_long_nothing_trained_fits``. See :data:`REASONS`.

    >>> fit_length(enc, 10_000)[1] is None, fit_length(enc, 8, "drop")  # doctest: +SKIP
    (True, (None, 'too_long'))
    """
    if strategy not in ("drop", "cut"):
        raise ValueError(f"unknown truncation strategy {strategy!r}; use 'drop' or 'cut'")
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length must be a positive number of tokens, got {max_length}")
    if encoded.num_trained == 0:
        return None, "no_trained_tokens"
    if max_length is None or len(encoded) <= max_length:
        return encoded, None
    if strategy == "drop":
        return None, "too_long"
    cut = _cut_at_boundary(encoded, max_length)
    if cut is None or cut.num_trained == 0:
        return None, "too_long_nothing_trained_fits"
    return cut, "cut_at_message_boundary"


def _cut_at_boundary(encoded: Encoded, max_length: int) -> Encoded | None:
    # A boundary is the end of a conversation entry. The two spans of a tool message share one
    # index and are never separated: a sample ending right after a tool call would teach the
    # model to emit eos where it must emit <|observation|>.
    spans = encoded.spans
    end = None
    for k, span in enumerate(spans):
        last_of_entry = (
            k + 1 == len(spans) or spans[k + 1].index != span.index or span.index is None
        )
        if last_of_entry and span.end + 1 <= max_length:
            end = span.end
    if end is None:
        return None
    eos = encoded.input_ids[-1]
    ids = [*encoded.input_ids[:end], eos]
    mask = [*encoded.loss_mask[:end], 0]
    kept = tuple(s for s in spans if s.end <= end)
    return replace(
        encoded, input_ids=ids, labels=_shifted_labels(ids, mask), loss_mask=mask, spans=kept
    )


@dataclass(frozen=True)
class LengthSummary:
    """Token lengths of a set of samples, and what ``max_length`` would do to them."""

    count: int
    min: int
    median: float
    p95: float
    max: int
    max_length: int | None = None
    over_max_length: int = 0  # samples longer than max_length
    cut_would_keep: int = 0  # of those, how many keep a trained token when cut at a boundary

    @property
    def cut_would_drop(self) -> int:
        """Over-long samples that truncation='cut' drops (truncation='drop' drops all of them)."""
        return self.over_max_length - self.cut_would_keep

    def as_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["cut_would_drop"] = self.cut_would_drop
        return d

    def lines(self) -> list[str]:
        """The summary for a human, as the train and tokenize commands print it: the lengths,
        then what each truncation mode would do on a line of its own.

        >>> print("\\n".join(LengthSummary(3, 10, 20.0, 29.0, 30, 25, 1, 1).lines()))
        tokens per sample (3 samples): min 10, median 20, p95 29, max 30; 1 over max_length 25
          --truncation cut:  1 kept (cut at a message boundary), 0 dropped
          --truncation drop: 1 dropped
        """
        if self.count == 0:
            return ["tokens per sample: no samples"]
        first = (
            f"tokens per sample ({self.count} samples): min {self.min}, "
            f"median {self.median:g}, p95 {self.p95:g}, max {self.max}"
        )
        if self.max_length is None:
            return [first]
        return [
            f"{first}; {self.over_max_length} over max_length {self.max_length}",
            f"  --truncation cut:  {self.cut_would_keep} kept (cut at a message boundary), "
            f"{self.cut_would_drop} dropped",
            f"  --truncation drop: {self.over_max_length} dropped",
        ]

    def format(self) -> str:
        """The same on one line (for logs and metadata).

        >>> print(LengthSummary(3, 10, 20.0, 29.0, 30, 25, 1, 1).format())
        tokens per sample (3 samples): min 10, median 20, p95 29, max 30; 1 over max_length 25 \
(cut: 1 kept, 0 dropped; drop: 1 dropped)
        """
        if self.count == 0:
            return "tokens per sample: no samples"
        line = (
            f"tokens per sample ({self.count} samples): min {self.min}, "
            f"median {self.median:g}, p95 {self.p95:g}, max {self.max}"
        )
        if self.max_length is not None:
            line += (
                f"; {self.over_max_length} over max_length {self.max_length} "
                f"(cut: {self.cut_would_keep} kept, {self.cut_would_drop} dropped; "
                f"drop: {self.over_max_length} dropped)"
            )
        return line


def summarize_lengths(
    lengths: Iterable[int] | Iterable[Encoded],
    max_length: int | None = None,
    cut_fits: Iterable[bool] | None = None,
) -> LengthSummary:
    """min/median/p95/max of token lengths, and how many ``max_length`` would cut or drop.

    Give :class:`Encoded` samples (cut feasibility is computed), or plain lengths together with
    ``cut_fits`` (per sample: would a cut at a message boundary keep a trained token).

    >>> summarize_lengths([10, 20, 30], max_length=25, cut_fits=[True, True, False]).over_max_length
    1
    """
    items = list(lengths)
    if items and isinstance(items[0], Encoded):
        encs: list[Encoded] = items  # type: ignore[assignment]
        lens = [len(e) for e in encs]
        fits = [
            max_length is not None and fit_length(e, max_length, "cut")[0] is not None for e in encs
        ]
    else:
        lens = [int(x) for x in items]  # type: ignore[arg-type]
        fits = list(cut_fits) if cut_fits is not None else [False] * len(lens)
        if len(fits) != len(lens):
            raise ValueError(f"cut_fits has {len(fits)} entries for {len(lens)} lengths")
    if not lens:
        return LengthSummary(0, 0, 0.0, 0.0, 0, max_length)
    ordered = sorted(lens)
    over = [f for n, f in zip(lens, fits, strict=True) if max_length is not None and n > max_length]
    return LengthSummary(
        count=len(ordered),
        min=ordered[0],
        median=_percentile(ordered, 50),
        p95=_percentile(ordered, 95),
        max=ordered[-1],
        max_length=max_length,
        over_max_length=len(over),
        cut_would_keep=sum(over),
    )


def _percentile(ordered: Sequence[int], q: float) -> float:
    # Linear interpolation between closest ranks, the same as numpy.percentile's default.
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo))
