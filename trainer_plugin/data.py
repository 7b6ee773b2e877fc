"""Dataprep JSONL -> a tokenized ``datasets.Dataset``, and the padding collator.

Why not ``datasets.load_dataset("json")``: it unifies one Arrow schema over all rows, and this data
has ``observation`` that is a list of dicts in one row and a string in the next, and tool
``parameters`` whose keys vary per call. Arrow either fails or rewrites them (missing keys become
``None``, which changes the rendered ``tool_call(...)``). So lines are read with ``json``, and the
dataset holds each line's raw JSON text; ``Dataset.map`` (worker processes, on-disk cache) does the
encoding.

>>> ds, stats = build_dataset("train.jsonl", tok, max_length=2048, num_proc=2)  # doctest: +SKIP
>>> ds.column_names, stats["kept"], stats["dropped"]                          # doctest: +SKIP
(['input_ids', 'labels'], 1598, {'too_long_nothing_trained_fits': 4})
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
from datasets.fingerprint import generate_random_fingerprint

from dataprep.tokenizer import Tokenizer
from trainer_plugin.batch_encoding import BatchEncoder, fitted_columns
from trainer_plugin.encoding import (
    COMPAT_MODES,
    IGNORE_INDEX,
    EncodingError,
    summarize_lengths,
)

__all__ = ["DataError", "PadCollator", "build_dataset", "encode_dataset", "load_samples"]


# Explicit types: a writer batch of dropped rows alone would otherwise infer list<null> for the ids.
# The key order is the column order written by _encode_batch.
ENCODED_FEATURES = datasets.Features(
    {
        "line": datasets.Value("int64"),
        "input_ids": datasets.List(datasets.Value("int64")),
        "labels": datasets.List(datasets.Value("int64")),
        "n_tokens": datasets.Value("int64"),
        "n_trained": datasets.Value("int64"),
        "cut_fits": datasets.Value("bool"),
        "reason": datasets.Value("string"),
        "error": datasets.Value("string"),
        "weight": datasets.Value("float64"),
    }
)


class DataError(ValueError):
    """The input file cannot be read as training samples; the message names file and line."""


def _read_lines(path: str | Path) -> list[tuple[int, str]]:
    """(1-based line number, text) of every non-blank line; the JSON is not parsed here."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    with path.open(encoding="utf-8") as f:
        # (isspace: the same test as strip() for a line read from a file, without copying it)
        return [(n, line.rstrip("\n")) for n, line in enumerate(f, 1) if not line.isspace()]


def _parse(text: str) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise EncodingError(f"not valid JSON ({e})") from e
    if not isinstance(obj, dict):
        raise EncodingError(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def load_samples(path: str | Path) -> list[dict[str, Any]]:
    """Read a dataprep JSONL file: one ``{tools?, conversations, id?, lineage?}`` object per line.

    Blank lines are skipped; a line that is not a JSON object raises :class:`DataError` naming
    the file and line. Values are returned exactly as written (no schema unification).

    >>> load_samples("../shared/corpora/crosswoz-hotel-finetune-lab/dev.chatglm3.jsonl")[0].keys()
    ...                                                                  # doctest: +SKIP
    dict_keys(['tools', 'conversations'])
    """
    samples = []
    for n, text in _read_lines(path):
        try:
            samples.append(_parse(text))
        except EncodingError as e:
            raise DataError(f"{path}:{n}: {e}") from e
    return samples


def _rows_from(path_or_samples: str | Path | Iterable[Mapping[str, Any]]) -> tuple[str, list, list]:
    if isinstance(path_or_samples, (str, Path)):
        rows = _read_lines(path_or_samples)
        return str(path_or_samples), [n for n, _ in rows], [t for _, t in rows]
    texts = [json.dumps(s, ensure_ascii=False) for s in path_or_samples]
    return "<samples>", list(range(1, len(texts) + 1)), texts


def _encode_batch(
    batch: dict[str, list], encoder: BatchEncoder, max_length: int | None, truncation: str
) -> pa.Table:
    # Runs in the datasets.map workers (or directly, see encode_dataset). JSON is parsed here, and
    # a bad sample is recorded (reason "invalid_sample" + its error) instead of raised, so that it
    # is reported with its line number rather than killing a worker.
    parsed: list[Any] = []
    with _gc_paused():
        for text in batch["text"]:
            try:
                parsed.append(_parse(text))
            except EncodingError as e:
                parsed.append(e)
        columns = fitted_columns(encoder.encode(parsed), max_length, truncation)
    return pa.Table.from_arrays(
        [pa.array(batch["line"], type=pa.int64()), *columns.values(),
         pa.array([sample_weight(p) for p in parsed], type=pa.float64())],
        schema=ENCODED_FEATURES.arrow_schema,
    )


def sample_weight(sample: Any) -> float:
    """A sample's training weight: dataprep's ``weight`` key (written by ``balance`` in its
    default mode), 1.0 when absent. A weight that is not a non-negative number counts as 1.0:
    the sample is still encoded, and validation of the data is dataprep's job."""
    w = sample.get("weight") if isinstance(sample, dict) else None
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0:
        return 1.0
    return float(w)


# Samples per encoder call: large enough that SentencePiece's batch call and the numpy assembly
# dominate, small enough that one batch of long samples stays a few tens of MB.
BATCH_SIZE = 1000


def encode_dataset(
    path_or_samples: str | Path | Iterable[Mapping[str, Any]],
    tok: Tokenizer,
    max_length: int | None = None,
    truncation: str = "cut",
    compat: str = "default",
    num_proc: int = 1,
    decode_tools: bool = True,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
) -> datasets.Dataset:
    """Encode every sample, one output row per input line, dropped rows included.

    Columns: ``line`` (1-based line in the file), ``input_ids``, ``labels`` (empty when dropped),
    ``n_tokens`` (length before ``max_length``), ``n_trained`` (trained labels kept),
    ``cut_fits``, ``reason`` ("" when kept unchanged, else a code from
    :data:`trainer_plugin.encoding.REASONS`) and ``error`` (for ``invalid_sample``).
    :func:`build_dataset` is the usual entry point; this one keeps the line correspondence that
    ``dataprep-train tokenize`` writes out.

    With ``use_cache`` the raw lines and the encoded rows are cached under ``cache_dir``
    (default: the datasets cache), keyed by the file content, the tokenizer and every option.
    """
    if truncation not in ("drop", "cut"):
        raise ValueError(f"unknown truncation {truncation!r}; use 'drop' or 'cut'")
    if compat not in COMPAT_MODES:
        raise ValueError(f"unknown compat {compat!r}; use one of: {', '.join(COMPAT_MODES)}")
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length must be a positive number of tokens, got {max_length}")
    if num_proc < 1:
        raise ValueError(f"num_proc must be at least 1, got {num_proc}")
    source, line_numbers, texts = _rows_from(path_or_samples)
    encoder = BatchEncoder(tok, compat, decode_tools)  # type: ignore[arg-type]
    if num_proc == 1 and not use_cache:
        # The fastest setting, and the CLI's default: no map machinery (a writer per batch), one
        # encoder whose cache of recurring strings spans the whole file.
        tables = [
            _encode_batch(
                {"line": line_numbers[i : i + BATCH_SIZE], "text": texts[i : i + BATCH_SIZE]},
                encoder,
                max_length,
                truncation,
            )
            for i in range(0, len(texts), BATCH_SIZE)
        ]
        table = pa.concat_tables(tables) if tables else ENCODED_FEATURES.arrow_schema.empty_table()
        # An explicit fingerprint: by default datasets hashes the whole table to make one, which
        # took longer than a third of the encoding. Nothing is cached on this path.
        return datasets.Dataset(
            table,
            info=datasets.DatasetInfo(features=ENCODED_FEATURES),
            fingerprint=generate_random_fingerprint(),
        )
    columns = {"line": line_numbers, "text": texts}
    raw_features = datasets.Features(
        {"line": datasets.Value("int64"), "text": datasets.Value("string")}
    )
    if use_cache:
        # Content hash as fingerprint: the cache is reused for the same lines and never for a file
        # that changed in place (hashing the path would serve stale tokens).
        digest = hashlib.sha256()
        for n, t in zip(line_numbers, texts, strict=True):
            digest.update(f"{n}\t{t}\n".encode())
        raw = datasets.Dataset.from_generator(
            _generate_rows,
            features=raw_features,
            gen_kwargs={"columns": columns},
            cache_dir=str(cache_dir) if cache_dir else None,
            fingerprint=digest.hexdigest()[:32],
        )
    else:
        raw = datasets.Dataset.from_dict(columns, raw_features)
    if len(raw) == 0:
        return datasets.Dataset.from_dict({k: [] for k in ENCODED_FEATURES}, ENCODED_FEATURES)
    return raw.map(
        _encode_batch,
        batched=True,
        batch_size=BATCH_SIZE,
        fn_kwargs={"encoder": encoder, "max_length": max_length, "truncation": truncation},
        remove_columns=["text"],
        features=ENCODED_FEATURES,
        num_proc=num_proc if num_proc > 1 and len(raw) >= num_proc else None,
        load_from_cache_file=use_cache,
        desc=f"tokenizing {Path(source).name}",
    )


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    # Parsing a batch creates hundreds of thousands of dicts and lists, which trigger Python's
    # cyclic collector again and again, each time rescanning every object still alive; that
    # doubled the cost of json.loads. Nothing built here holds a reference cycle.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _generate_rows(columns: dict[str, list]) -> Iterable[dict[str, Any]]:
    for n, t in zip(columns["line"], columns["text"], strict=True):
        yield {"line": n, "text": t}


def dataset_stats(
    encoded: datasets.Dataset, max_length: int | None, source: str = ""
) -> dict[str, Any]:
    """Counts and length summary of an :func:`encode_dataset` result (see :func:`build_dataset`)."""
    # Everything but the token columns: turning those into Python lists would cost more than
    # encoding them did.
    names = [k for k in ENCODED_FEATURES if k not in ("input_ids", "labels")]
    cols = encoded.select_columns(names).to_dict() if len(encoded) else {k: [] for k in names}
    reasons = Counter(cols["reason"])
    dropped = {r: c for r, c in sorted(reasons.items()) if r and r != "cut_at_message_boundary"}
    # Invalid samples have no length; the summary describes the samples that could be encoded.
    valid = [r != "invalid_sample" for r in cols["reason"]]
    lengths = [n for n, ok in zip(cols["n_tokens"], valid, strict=True) if ok]
    fits = [f for f, ok in zip(cols["cut_fits"], valid, strict=True) if ok]
    errors = [
        f"{source}:{line}: {err}"
        for line, err in zip(cols["line"], cols["error"], strict=True)
        if err
    ]
    return {
        "samples": len(encoded),
        "kept": len(encoded) - sum(dropped.values()),
        "cut": reasons.get("cut_at_message_boundary", 0),
        "dropped": dropped,
        "errors": errors,
        "trained_tokens": sum(cols["n_trained"]),
        "lengths": summarize_lengths(lengths, max_length, cut_fits=fits).as_dict(),
    }


def build_dataset(
    path_or_samples: str | Path | Iterable[Mapping[str, Any]],
    tok: Tokenizer,
    max_length: int | None = None,
    truncation: str = "cut",
    compat: str = "default",
    num_proc: int = 1,
    decode_tools: bool = True,
    on_error: str = "raise",
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
) -> tuple[datasets.Dataset, dict[str, Any]]:
    """Tokenized training set (``input_ids``, ``labels``) and stats of what was cut or dropped.

    ``stats``: ``samples``, ``kept``, ``cut`` (kept after a cut at a message boundary),
    ``dropped`` (reason code -> count), ``errors`` ("file:line: message" of invalid samples),
    ``trained_tokens`` and ``lengths`` (a :class:`~trainer_plugin.encoding.LengthSummary` dict of
    the lengths before ``max_length``). :func:`format_stats` prints all of it for a human; the
    train command shows it before training. ``on_error="raise"`` raises :class:`DataError` on the first invalid
    sample; ``"drop"`` drops them with reason ``invalid_sample``.

    >>> ds, stats = build_dataset(samples, tok, max_length=1024)  # doctest: +SKIP
    >>> print(format_stats(stats))                                 # doctest: +SKIP
    """
    if on_error not in ("raise", "drop"):
        raise ValueError(f"unknown on_error {on_error!r}; use 'raise' or 'drop'")
    source = str(path_or_samples) if isinstance(path_or_samples, (str, Path)) else "<samples>"
    encoded = encode_dataset(
        path_or_samples,
        tok,
        max_length,
        truncation,
        compat,
        num_proc,
        decode_tools,
        cache_dir,
        use_cache,
    )
    stats = dataset_stats(encoded, max_length, source)
    if stats["errors"] and on_error == "raise":
        more = len(stats["errors"]) - 1
        raise DataError(
            stats["errors"][0] + (f" (and {more} more invalid samples)" if more else "")
        )
    if len(encoded):
        keep = [r in ("", "cut_at_message_boundary") for r in encoded["reason"]]
        encoded = encoded.select([i for i, k in enumerate(keep) if k])
    # Sample weights travel to the trainer only when some sample has one other than 1.
    weighted = len(encoded) > 0 and any(w != 1.0 for w in encoded["weight"])
    keep_cols = ("input_ids", "labels", "weight") if weighted else ("input_ids", "labels")
    extra = [c for c in encoded.column_names if c not in keep_cols]
    return encoded.remove_columns(extra), stats


def format_stats(stats: Mapping[str, Any]) -> str:
    """Human summary of :func:`build_dataset` stats (printed before training)."""
    from trainer_plugin.encoding import LengthSummary

    ls = dict(stats["lengths"])
    ls.pop("cut_would_drop", None)
    lines = LengthSummary(**ls).lines()
    dropped = ", ".join(f"{r} {c}" for r, c in stats["dropped"].items()) or "none"
    lines.append(
        f"samples {stats['samples']}: kept {stats['kept']} (cut at a message boundary "
        f"{stats['cut']}), dropped: {dropped}; trained tokens {stats['trained_tokens']}"
    )
    return "\n".join(lines)


class PadCollator:
    """Right-pads a batch: ``input_ids`` with ``pad_id``, ``labels`` with -100; adds attention_mask.

    Only pads; masks were decided when the samples were encoded.

    >>> batch = PadCollator(0)([{"input_ids": [5, 6], "labels": [-100, 6]},
    ...                         {"input_ids": [7], "labels": [7]}])
    >>> batch["input_ids"].tolist(), batch["labels"].tolist(), batch["attention_mask"].tolist()
    ([[5, 6], [7, 0]], [[-100, 6], [7, -100]], [[1, 1], [1, 0]])
    """

    def __init__(
        self, pad_id: int, label_pad_id: int = IGNORE_INDEX, pad_to_multiple_of: int | None = None
    ) -> None:
        self.pad_id = pad_id
        self.label_pad_id = label_pad_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        import torch

        if not features:
            raise ValueError("cannot collate an empty batch")
        ids = [list(map(int, f["input_ids"])) for f in features]
        labels = [list(map(int, f["labels"])) for f in features]
        for k, (a, b) in enumerate(zip(ids, labels, strict=True)):
            if len(a) != len(b):
                raise ValueError(f"feature {k}: {len(a)} input_ids but {len(b)} labels")
        width = max(len(a) for a in ids)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            width = -(-width // m) * m
        batch = {
            "input_ids": torch.tensor([a + [self.pad_id] * (width - len(a)) for a in ids]),
            "labels": torch.tensor([b + [self.label_pad_id] * (width - len(b)) for b in labels]),
            "attention_mask": torch.tensor([[1] * len(a) + [0] * (width - len(a)) for a in ids]),
        }
        if "weight" in features[0]:  # sample weights (see trainer_plugin.train.WeightedTrainer)
            batch["weight"] = torch.tensor([float(f["weight"]) for f in features],
                                           dtype=torch.float32)
        return batch
