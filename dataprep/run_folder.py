"""A run's output folder as something handed back to us: is it complete and untampered?

``dataprep report OUT`` (and anything else that reads a finished run) calls
:func:`check_run_folder` first, so that a folder someone edited by hand, truncated or half-copied
is one clear line (``OUT/train.jsonl: the manifest counts 4,904 records, the file has 4,956``)
rather than a traceback from deep inside the report.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from dataprep.errors import InputError
from dataprep.io import JSONValueError, strict_loads

SPLITS = ("train", "dev", "test")
HINT = "rerun 'dataprep run' to rebuild the folder"


def _load_lines(path: Path) -> list[Any]:
    """Every non-empty line of a JSONL file as strict JSON, or an InputError naming the line."""
    out = []
    try:
        with path.open("rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                try:
                    out.append(strict_loads(raw.decode("utf-8")))
                except (UnicodeDecodeError, json.JSONDecodeError, JSONValueError) as e:
                    raise InputError(f"{path}:{lineno}: not a strict JSON line "
                                     f"({' '.join(str(e).split())[:120]}); {HINT}") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None
    return out


def _count(counts: dict[str, Any], key: str, path: Path) -> int:
    value = counts.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"{path}: counts.{key} must be a whole number >= 0, found {value!r}; "
                         f"{HINT}")
    return value


def _by_reason(counts: dict[str, Any], key: str, path: Path) -> dict[str, int]:
    value = counts.get(key)
    if not isinstance(value, dict) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value.values()):
        raise InputError(f"{path}: counts.{key} must map reason codes to counts; {HINT}")
    return value


def check_run_folder(out_dir: str | Path) -> dict[str, Any]:
    """The folder's manifest, once the folder is shown to be one complete run; else an
    :class:`InputError` naming the first file and line that is not.

    Checks: ``manifest.json`` is a strict-JSON object whose ``counts`` satisfy the accounting
    identity; each split holds exactly the manifest's number of records, each a valid output
    line (schema and semantic rules); ``rejects.jsonl`` holds one object per rejected or removed
    record, by kind and reason as the manifest counts them.
    """
    from dataprep.schema import output_problems

    out = Path(out_dir)
    if not out.is_dir():
        raise InputError(f"{out}: {'is a file' if out.exists() else 'no such folder'}; expected "
                         "the output folder of a run ('dataprep run CONFIG --out OUT')")
    path = out / "manifest.json"
    if not path.is_file():
        raise InputError(f"{out}: no manifest.json; is this the output folder of a finished run "
                         "('dataprep run CONFIG --out OUT')?")
    (manifest,) = _load_lines_whole(path)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("counts"), dict):
        raise InputError(f"{path}: expected an object with 'counts'; {HINT}")
    counts = manifest["counts"]
    n = {k: _count(counts, k, path) for k in ("input", "added", *SPLITS)}
    rejected = _by_reason(counts, "rejected", path)
    removed = _by_reason(counts, "removed", path)
    left = n["input"] - sum(rejected.values()) - sum(removed.values()) + n["added"]
    if left != sum(n[s] for s in SPLITS):
        raise InputError(f"{path}: counts break the accounting identity (input − rejected − "
                         f"removed + added = {left}, train + dev + test = "
                         f"{sum(n[s] for s in SPLITS)}); {HINT}")
    for split in SPLITS:
        split_path = out / f"{split}.jsonl"
        if not split_path.is_file():
            raise InputError(f"{split_path}: missing; {HINT}")
        lines = _load_lines(split_path)
        if len(lines) != n[split]:
            raise InputError(f"{split_path}: the manifest counts {n[split]:,} records, the file "
                             f"has {len(lines):,}; {HINT}")
        for i, record in enumerate(lines, start=1):
            problems = output_problems(record) if isinstance(record, dict) else \
                [("wrong_type", "/", "expected an object")]
            if problems:
                reason, pointer, message = problems[0]
                raise InputError(f"{split_path}: record {i}: {pointer}: {message} [{reason}]; "
                                 f"{HINT}")
    rejects_path = out / "rejects.jsonl"
    found: Counter[tuple[str, str]] = Counter()
    if rejects_path.is_file():
        for i, rej in enumerate(_load_lines(rejects_path), start=1):
            if not isinstance(rej, dict) or rej.get("kind") not in ("rejected", "removed") \
                    or not isinstance(rej.get("reason"), str):
                raise InputError(f"{rejects_path}: record {i}: expected an object with kind "
                                 f"(rejected or removed) and reason; {HINT}")
            found[(rej["kind"], rej["reason"])] += 1
    expected = Counter({("rejected", r): c for r, c in rejected.items() if c})
    expected.update({("removed", r): c for r, c in removed.items() if c})
    if found != expected:
        diff = sorted(set(found.items()) ^ set(expected.items()))[:1]
        raise InputError(f"{rejects_path}: does not match the manifest's rejected/removed counts "
                         f"(first difference: {diff}); {HINT}")
    return manifest


def _load_lines_whole(path: Path) -> list[Any]:
    try:
        text = path.read_bytes().decode("utf-8")
        return [strict_loads(text)]
    except (UnicodeDecodeError, json.JSONDecodeError, JSONValueError) as e:
        raise InputError(f"{path}: not strict JSON ({' '.join(str(e).split())[:120]}); "
                         f"{HINT}") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None
