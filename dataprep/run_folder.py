"""A run's output folder: written as one generation, and checked when handed back to us.

**One generation.** A run writes everything (splits, rejects, manifest, report, gx project) into
a fresh sibling folder ``OUT.tmp-<pid>`` and, once complete, swaps it in for ``OUT`` with one
atomic exchange of the two directory entries (Linux ``renameat2(RENAME_EXCHANGE)``); the old
generation, now at ``OUT.tmp-<pid>``, is then deleted. A reader of ``OUT`` therefore sees either
the previous complete run or the new complete run, never a mix (new train with old dev and
manifest), whenever the run is killed. Where the exchange is not available (another OS or file
system) the swap is two renames, ``OUT`` -> ``OUT.old-<pid>`` then the new folder -> ``OUT``; a
kill between them leaves no ``OUT``, and the next run (or :func:`clean_leftovers`) puts the old
generation back. Leftovers of a killed run (``OUT.tmp-*``, ``OUT.old-*`` of a process that is
gone) are removed by the next run into the same ``OUT``.

State that must outlive a generation (:data:`PERSISTENT`: the LLM answer cache, so that a killed
run resumes without re-asking) lives in ``OUT`` and is carried into the new generation at the
swap.

**Checked when handed back.** ``dataprep report OUT`` (and anything else that reads a finished
run) calls :func:`check_run_folder` first, so that a folder someone edited by hand, truncated or
half-copied is one clear line (``OUT/train.jsonl: the manifest counts 4,904 records, the file has
4,956``) rather than a traceback from deep inside the report.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from dataprep.errors import InputError
from dataprep.io import JSONValueError, strict_loads

SPLITS = ("train", "dev", "test")
HINT = "rerun 'dataprep run' to rebuild the folder"
PERSISTENT = ("llm_cache",)


# -- one generation ------------------------------------------------------------------------------
def _sibling(out: Path, kind: str, pid: int | None = None) -> Path:
    return out.with_name(f"{out.name}.{kind}-{os.getpid() if pid is None else pid}")


def _leftover_re(out: Path) -> re.Pattern[str]:
    return re.compile(re.escape(out.name) + r"\.(tmp|old)-(\d+)$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_leftovers(out: str | Path) -> list[Path]:
    """Remove what killed runs into ``out`` left behind; returns what was removed.

    An ``OUT.old-<pid>`` with no ``OUT`` is a generation caught between the two renames of the
    fallback swap: it is put back as ``OUT`` rather than removed. Folders of a process that is
    still running are left alone (a concurrent run into the same folder is not supported, but
    must not be destroyed either)."""
    out = Path(out)
    pattern = _leftover_re(out)
    found = []
    if out.parent.is_dir():
        for entry in out.parent.iterdir():
            m = pattern.match(entry.name)
            if m and not _alive(int(m.group(2))):
                found.append((m.group(1), entry))
    removed = []
    for kind, entry in sorted(found, key=lambda x: x[0] != "old"):
        if kind == "old" and not out.exists():
            os.rename(entry, out)
            continue
        for keep in PERSISTENT:  # a cache moved into a generation that never got swapped in
            src = entry / keep
            if src.exists() and out.is_dir() and not (out / keep).exists():
                os.rename(src, out / keep)
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def new_generation(out: str | Path) -> Path:
    """A fresh, empty sibling folder for this process's run into ``out`` (leftovers of killed
    runs cleaned first)."""
    out = Path(out)
    clean_leftovers(out)
    tmp = _sibling(out, "tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directory entries; False where the OS or file system cannot.

    By hand through ctypes because Python exposes no ``renameat2`` (it is Linux's only atomic
    swap of two existing directories)."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def commit_generation(tmp: str | Path, out: str | Path) -> Path:
    """Swap the complete generation ``tmp`` in as ``out``; the previous one is deleted."""
    tmp, out = Path(tmp), Path(out)
    if out.is_dir():
        for keep in PERSISTENT:
            if (out / keep).exists() and not (tmp / keep).exists():
                os.rename(out / keep, tmp / keep)
    if not out.exists():
        os.rename(tmp, out)
        return out
    if _exchange(tmp, out):
        shutil.rmtree(tmp, ignore_errors=True)  # it now holds the previous generation
        return out
    old = _sibling(out, "old")
    os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def discard_generation(tmp: str | Path, out: str | Path) -> None:
    """A run that failed: its folder goes, a cache it moved goes back."""
    tmp, out = Path(tmp), Path(out)
    with contextlib.suppress(OSError):
        for keep in PERSISTENT:
            if (tmp / keep).exists() and out.is_dir() and not (out / keep).exists():
                os.rename(tmp / keep, out / keep)
    shutil.rmtree(tmp, ignore_errors=True)


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
