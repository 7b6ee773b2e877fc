"""Many ChatGLM3 samples -> ids and labels at once, id for id what :func:`encode_conversation` gives.

Why a second encoder: per sample, the plain one calls SentencePiece once per string and builds
ids, mask and labels in Python lists. In the hotel data ~90% of every sample's tokens are the
tool system prompt, the same for every sample, and the metadata lines ("\\n", "search_hotels\\n")
repeat in every message. Here:

- the messages are checked and rendered by the same :func:`conversation_pieces` as the plain path,
  so which text is encoded, and which message is trained, cannot drift between the two;
- each distinct string of a batch is encoded once, in one SentencePiece batch call; strings that
  recur across samples (tool prompts, metadata lines) stay cached between batches;
- ids, the loss mask and the shifted labels of the whole batch are built with numpy on one flat
  array, and handed to Arrow as one list column (offsets + values), never as Python int lists.

Only samples longer than ``max_length`` (rare) go through :func:`fit_length` one by one.

>>> enc = BatchEncoder(tok)                                    # doctest: +SKIP
>>> batch = enc.encode(samples)                                # doctest: +SKIP
>>> batch.encoded(0) == encode_conversation(samples[0], tok)   # doctest: +SKIP
True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import pyarrow as pa

from dataprep.tokenizer import Tokenizer
from trainer_plugin.encoding import (
    COMPAT_MODES,
    IGNORE_INDEX,
    Compat,
    Encoded,
    EncodingError,
    Span,
    conversation_pieces,
    fit_length,
    prefix_ids,
)

__all__ = ["BatchEncoder", "EncodedBatch"]

# Strings kept between batches: enough for the tool prompts and metadata lines of any corpus we
# know; when full the cache starts over (a corpus whose every sample has its own tools just gets
# no reuse, never unbounded memory).
_CACHE_LIMIT = 4096


@dataclass(frozen=True)
class EncodedBatch:
    """The encoded samples of one batch, as flat arrays.

    ``ids``/``labels``/``mask`` hold every valid sample back to back; sample ``k`` is
    ``ids[offsets[k]:offsets[k + 1]]`` (an invalid sample has length 0 and an ``errors[k]``).
    ``piece_ends(k)`` gives the end positions of sample ``k``'s pieces, for its spans.
    """

    ids: np.ndarray
    labels: np.ndarray
    mask: np.ndarray
    offsets: np.ndarray
    n_trained: np.ndarray
    pieces: list[list[Any]]
    errors: list[EncodingError | None]
    array_ends: np.ndarray  # where each assembled array ends in ids (for spans, on demand)
    sample_arrays: np.ndarray  # index of each sample's first array

    def piece_ends(self, k: int) -> np.ndarray:
        """End positions (relative to sample ``k``) of its pieces."""
        # The sample's arrays are the prefix, then two per piece (header, text): piece j ends
        # where array 2 + 2j (counted from the sample's first) ends. Only samples that need
        # spans (over max_length, or asked for) pay for this.
        idx = self.sample_arrays[k] + 2 + 2 * np.arange(len(self.pieces[k]))
        return self.array_ends[idx] - self.offsets[k]

    def __len__(self) -> int:
        return len(self.errors)

    def encoded(self, k: int) -> Encoded:
        """Sample ``k`` as an :class:`Encoded` (lists and spans), equal to the plain encoder's."""
        if self.errors[k] is not None:
            raise self.errors[k]  # type: ignore[misc]
        a, b = int(self.offsets[k]), int(self.offsets[k + 1])
        ends = self.piece_ends(k)
        starts = np.concatenate(([2], ends[:-1])) if len(ends) else []
        spans = tuple(
            Span(p.index, p.role, int(s), int(e), p.trained)
            for p, s, e in zip(self.pieces[k], starts, ends, strict=True)
        )
        return Encoded(
            self.ids[a:b].tolist(), self.labels[a:b].tolist(), self.mask[a:b].tolist(), spans
        )


class BatchEncoder:
    """Encodes lists of samples; same options and output as :func:`encode_conversation`.

    Keep one instance for a whole file: strings that recur across batches (the tool prompt)
    are then encoded once per file.
    """

    def __init__(self, tok: Tokenizer, compat: Compat = "default", decode_tools: bool = True):
        if compat not in COMPAT_MODES:
            raise ValueError(
                f"unknown compat mode {compat!r}; use one of: {', '.join(COMPAT_MODES)}"
            )
        self.tok = tok
        self.compat = compat
        self.decode_tools = decode_tools
        self._prefix = np.asarray(prefix_ids(tok), dtype=np.int64)
        self._eos = np.asarray([tok.eos_id], dtype=np.int64)
        self._role = {
            r: np.asarray([tok.token_id(f"<|{r}|>")], dtype=np.int64)
            for r in ("system", "user", "assistant", "observation")
        }
        self._known: dict[str, np.ndarray] = {}
        self._headers: dict[tuple[str, str], np.ndarray] = {}

    def _encode_strings(self, texts: Sequence[str]) -> list[np.ndarray]:
        batch = getattr(self.tok, "encode_batch", None)
        lists = batch(list(texts)) if batch is not None else [self.tok.encode(t) for t in texts]
        lengths = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
        flat = np.fromiter(chain.from_iterable(lists), dtype=np.int64, count=int(lengths.sum()))
        ends = np.cumsum(lengths)
        return [flat[e - n : e] for e, n in zip(ends.tolist(), lengths.tolist(), strict=True)]

    def _lookup(self, all_pieces: list[list[Any]]) -> tuple[dict, dict]:
        """Ids of every message header and text of the batch, encoding only what is not cached.

        A header is ``<|role|> enc(metadata + "\\n")``: a handful per corpus, kept for good.
        Texts are looked up per batch; those used twice in it (the tool prompt) are kept.
        """
        known_headers, known = self._headers, self._known
        headers: dict[tuple[str, str], np.ndarray] = {}
        texts: dict[str, np.ndarray] = {}
        todo: dict[str, int] = {}  # distinct strings to encode -> how often the batch uses them
        new_headers: set[tuple[str, str]] = set()
        for pieces in all_pieces:
            for p in pieces:
                key = (p.role, p.metadata)
                if key not in headers and key not in new_headers:
                    ids = known_headers.get(key)
                    if ids is not None:
                        headers[key] = ids
                    else:
                        new_headers.add(key)
                        todo[p.metadata + "\n"] = 2
                s = p.text
                if s in texts:
                    continue
                ids = known.get(s)
                if ids is not None:
                    texts[s] = ids
                else:
                    todo[s] = todo.get(s, 0) + 1
        if todo:
            strings = list(todo)
            encoded = dict(zip(strings, self._encode_strings(strings), strict=True))
            for role, metadata in new_headers:
                ids = np.concatenate((self._role[role], encoded[metadata + "\n"]))
                headers[role, metadata] = ids
                if len(known_headers) >= _CACHE_LIMIT:
                    known_headers.clear()
                known_headers[role, metadata] = ids
            for s, n in todo.items():
                texts[s] = encoded[s]
                if n > 1:  # used twice in one batch: likely to recur (the tool prompt)
                    if len(known) >= _CACHE_LIMIT:
                        known.clear()
                    known[s] = encoded[s]
        return headers, texts

    def encode(self, samples: Sequence[Mapping[str, Any] | EncodingError | None]) -> EncodedBatch:
        """Encode ``samples``; an invalid one (or one given as an error) is recorded, not raised.

        ``None`` stands for a sample that could not even be parsed (error "not a sample").
        """
        errors: list[EncodingError | None] = []
        all_pieces: list[list[Any]] = []
        for s in samples:
            try:
                if isinstance(s, EncodingError):
                    raise s
                if s is None:
                    raise EncodingError("not a sample")
                all_pieces.append(conversation_pieces(s, self.compat, self.decode_tools))
                errors.append(None)
            except EncodingError as e:
                all_pieces.append([])
                errors.append(e)
        headers, texts = self._lookup(all_pieces)

        # One flat list of arrays for the whole batch (the prefix, two per message, the eos),
        # with a trained flag per array.
        arrays: list[np.ndarray] = []
        flags: list[bool] = []
        per_sample: list[int] = []  # how many arrays each sample contributes
        prefix, eos = self._prefix, self._eos
        for pieces, err in zip(all_pieces, errors, strict=True):
            if err is not None:
                per_sample.append(0)
                continue
            arrays.append(prefix)
            flags.append(False)
            for p in pieces:
                arrays += (headers[p.role, p.metadata], texts[p.text])
                flags += (p.trained, p.trained)
            arrays.append(eos)
            flags.append(False)
            per_sample.append(2 + 2 * len(pieces))

        lengths = np.fromiter(map(len, arrays), dtype=np.int64, count=len(arrays))
        ids = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
        mask = np.repeat(np.asarray(flags, dtype=np.int8), lengths)
        # The ChatGLM3 mask shift (see encoding._shifted_labels): token i is a target when token
        # i-1 is trained. Every sample ends with an untrained eos, so the shift never carries a
        # flag from one sample into the next.
        labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int64)
        targets = np.flatnonzero(mask[:-1]) + 1
        labels[targets] = ids[targets]

        array_ends = np.cumsum(lengths)
        sample_arrays = np.cumsum([0, *per_sample])
        offsets = np.concatenate(([0], array_ends))[sample_arrays]
        trained_before = np.concatenate(([0], np.cumsum(mask, dtype=np.int64)))
        # Trained labels of a sample = trained tokens of it (each shifts onto the next token,
        # and the last token, eos, is never trained).
        n_trained = trained_before[offsets[1:]] - trained_before[offsets[:-1]]
        return EncodedBatch(ids, labels, mask, offsets, n_trained, all_pieces, errors,
                            array_ends, sample_arrays)


# Arrow columns of an encoded file, in the order data.ENCODED_FEATURES declares them.
ROW_COLUMNS = ("input_ids", "labels", "n_tokens", "n_trained", "cut_fits", "reason", "error")


def fitted_columns(
    batch: EncodedBatch, max_length: int | None, truncation: str
) -> dict[str, pa.Array]:
    """Apply ``max_length``/``truncation`` to every sample and return the Arrow row columns.

    Same decisions as calling :func:`fit_length` per sample (it is called for every sample that
    does not simply fit); ``cut_fits`` says whether a cut at a message boundary would keep a
    trained token, for the length summary.
    """
    n = len(batch)
    lengths = np.diff(batch.offsets)
    reasons = [""] * n
    errors = [""] * n
    cut_fits = [False] * n
    n_trained = batch.n_trained.copy()
    replaced: dict[int, Encoded | None] = {}
    for k in range(n):
        if batch.errors[k] is not None:
            reasons[k], errors[k] = "invalid_sample", str(batch.errors[k])
            replaced[k] = None
            n_trained[k] = 0
            continue
        if n_trained[k] and (max_length is None or lengths[k] <= max_length):
            continue  # the common case: kept as it is
        enc = batch.encoded(k)
        fitted, reason = fit_length(enc, max_length, truncation)  # type: ignore[arg-type]
        cut_fits[k] = reason == "cut_at_message_boundary" or (
            truncation == "drop"
            and reason == "too_long"
            and fit_length(enc, max_length, "cut")[0] is not None
        )
        reasons[k] = reason or ""
        replaced[k] = fitted
        n_trained[k] = fitted.num_trained if fitted else 0
    if not replaced:
        ids, labels, offsets = batch.ids, batch.labels, batch.offsets
    else:
        parts_ids, parts_labels = [], []
        for k in range(n):
            if k in replaced:
                f = replaced[k]
                parts_ids.append(np.asarray(f.input_ids if f else [], dtype=np.int64))
                parts_labels.append(np.asarray(f.labels if f else [], dtype=np.int64))
            else:
                a, b = batch.offsets[k], batch.offsets[k + 1]
                parts_ids.append(batch.ids[a:b])
                parts_labels.append(batch.labels[a:b])
        offsets = np.cumsum([0, *map(len, parts_ids)])
        ids = np.concatenate(parts_ids) if parts_ids else np.zeros(0, dtype=np.int64)
        labels = np.concatenate(parts_labels) if parts_labels else np.zeros(0, dtype=np.int64)
    arrow_offsets = pa.array(offsets, type=pa.int32())
    return {
        "input_ids": pa.ListArray.from_arrays(arrow_offsets, pa.array(ids, type=pa.int64())),
        "labels": pa.ListArray.from_arrays(arrow_offsets, pa.array(labels, type=pa.int64())),
        "n_tokens": pa.array(lengths, type=pa.int64()),
        "n_trained": pa.array(n_trained, type=pa.int64()),
        "cut_fits": pa.array(cut_fits, type=pa.bool_()),
        "reason": pa.array(reasons, type=pa.string()),
        "error": pa.array(errors, type=pa.string()),
    }
