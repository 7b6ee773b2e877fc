"""File plumbing: tolerant JSONL reading, atomic writes, checksums.

Reading is byte-oriented on purpose: a text-mode reader dies on the first GBK byte and loses the
line number, while we want every bad line turned into a reject with its exact location.

Parsing is strict where Python's ``json`` is lenient, because each leniency let one bad line
crash or poison a run: ``NaN``/``Infinity``/``1e999`` (not JSON; they would reach train.jsonl),
integers longer than Python's int-conversion limit (a ``ValueError`` from inside the parser),
nesting deeper than :data:`MAX_DEPTH` (a ``RecursionError`` here or in any later recursive code:
the schema validator, ``deepcopy``), lone UTF-16 surrogates such as ``"\\ud800"`` (valid JSON
escapes that no UTF-8 file can hold, so every later write fails) and duplicate keys (the parser
keeps one value and drops the other without a word). Each is a reject with its own reason code.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
import os
import re
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from dataprep.errors import InputError
from dataprep.record import Reject

BOM = b"\xef\xbb\xbf"
DEFAULT_MAX_LINE_BYTES = 4 * 1024 * 1024
# A whole-document input (CrossWOZ train.json is ~400 MB unzipped) may be large, but a zip member
# that inflates past this is refused before it is inflated (a 2 MB zip bomb declares 2 GB).
DEFAULT_MAX_DOCUMENT_BYTES = 1024 * 1024 * 1024
# Real records nest at most ~8 levels; the schema validator recurses several frames per level, so
# a few hundred levels already exhaust Python's recursion limit far from the parser.
MAX_DEPTH = 64
# Python refuses to convert integers longer than 4,300 digits (sys.get_int_max_str_digits); stay
# below it so the parser never raises from inside.
MAX_INT_DIGITS = 4000

# A lone surrogate can only enter through a \uD800-\uDFFF escape (UTF-8 decoding refuses encoded
# surrogates), so strings are searched only when the raw text holds such an escape.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass
class RawLine:
    """One parsed line, or the reject it turned into."""

    line: int
    value: Any = None
    text: str | None = None
    reject: Reject | None = None


def require_file(path: str | Path) -> Path:
    """``path`` as a :class:`Path` when it is a readable regular file; else an :class:`InputError`
    that says what it is instead (a folder is not "no such file")."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{path}: is a folder, expected a file")
    if not p.exists():
        raise InputError(f"{path}: no such file")
    if not p.is_file():
        raise InputError(f"{path}: not a regular file")
    return p


def _guess_encoding(data: bytes) -> str:
    with contextlib.suppress(UnicodeDecodeError):
        data.decode("gbk")
        return " (the bytes decode as GBK: re-save the file as UTF-8)"
    return ""


class JSONValueError(ValueError):
    """A value the strict parser refuses; ``reason`` is the reject's reason code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class DuplicateKeyDict(dict):
    """An object that held a key twice: the first value is kept (as readers of the same file by
    hand would), the later pairs are in ``duplicates`` so that nothing is dropped unseen."""

    duplicates: list[tuple[str, Any]]


def _object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) == len(pairs):
        return out
    first = DuplicateKeyDict()
    first.duplicates = []
    for key, value in pairs:
        if key in first:
            first.duplicates.append((key, value))
        else:
            first[key] = value
    return first


def _strict_constant(name: str) -> Any:
    raise JSONValueError("non_finite_number", f"{name} is not a JSON number (strict JSON has no "
                         "NaN or Infinity)")


def _strict_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JSONValueError("non_finite_number", f"the number {_clip(text)} is out of range "
                             "(it would become Infinity)")
    return value


def _strict_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise JSONValueError("number_too_long", f"an integer of {len(text.lstrip('-')):,} digits "
                             f"(the limit is {MAX_INT_DIGITS:,})")
    return int(text)


def _lenient_int(text: str) -> int | float:
    # Whole documents are parsed leniently (one bad dialogue must not fail the file); an integer
    # too long to convert becomes infinity, which value_problem() then reports for that item.
    return float("inf") if len(text.lstrip("-")) > MAX_INT_DIGITS else int(text)


def _clip(text: str, limit: int = 24) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def strict_loads(text: str) -> Any:
    """``json.loads`` that refuses what strict JSON and our later stages cannot hold.

    Raises :class:`JSONValueError` (with a reason code) or ``json.JSONDecodeError``.

    >>> strict_loads('{"price": NaN}')
    Traceback (most recent call last):
    ...
    dataprep.io.JSONValueError: NaN is not a JSON number (strict JSON has no NaN or Infinity)
    """
    try:
        value = json.loads(text, parse_constant=_strict_constant, parse_float=_strict_float,
                           parse_int=_strict_int, object_pairs_hook=_object_pairs)
    except RecursionError as e:
        raise JSONValueError("too_deeply_nested", "nested deeper than the parser can follow "
                             f"(the limit is {MAX_DEPTH} levels)") from e
    problem = value_problem(value, strings=bool(_SURROGATE_ESCAPE.search(text)))
    if problem is not None:
        reason, pointer, message = problem
        raise JSONValueError(reason, f"{pointer}: {message}")
    return value


def value_problem(value: Any, *, strings: bool = True,
                  max_depth: int = MAX_DEPTH) -> tuple[str, str, str] | None:
    """The first thing in a parsed value that must not reach an output, as
    (reason, JSON pointer, message), or None.

    Reasons: ``too_deeply_nested``, ``duplicate_key``, ``non_finite_number``, ``lone_surrogate``
    (strings and keys are searched only when ``strings``). Iterative, so depth cannot crash it.

    >>> value_problem({"a": [1.5, float("nan")]})
    ('non_finite_number', '/a/1', 'expected a finite number, found NaN')
    """
    if not _has_problem(value, strings, max_depth):
        return None
    return _locate_problem(value, strings, max_depth)


_CONTAINERS = (dict, list, DuplicateKeyDict)


def _has_problem(value: Any, strings: bool, max_depth: int) -> bool:
    # The fast pass every input line takes: no pointers built, scalars checked in place.
    if type(value) not in _CONTAINERS:
        return _bad_scalar(value, strings)
    search, isfinite = _SURROGATE.search, math.isfinite
    stack = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        kind = type(node)
        if depth >= max_depth or kind is DuplicateKeyDict:
            return True
        if kind is dict:
            if strings and any(type(k) is str and search(k) for k in node):
                return True
            children = node.values()
        else:
            children = node
        for child in children:
            ck = type(child)
            if ck is str:
                if strings and search(child):
                    return True
            elif ck is float:
                if not isfinite(child):
                    return True
            elif ck in _CONTAINERS:
                stack.append((child, depth + 1))
    return False


def _bad_scalar(value: Any, strings: bool) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    return bool(strings and isinstance(value, str) and _SURROGATE.search(value))


def _locate_problem(value: Any, strings: bool, max_depth: int) -> tuple[str, str, str] | None:
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        node, pointer, depth = stack.pop()
        if isinstance(node, dict):
            if depth >= max_depth:
                return ("too_deeply_nested", pointer or "/",
                        f"nested deeper than {max_depth} levels")
            dups = getattr(node, "duplicates", None)
            if dups:
                key = dups[0][0]
                return ("duplicate_key", f"{pointer}/{_escape(key)}",
                        f"the key {_clip(repr(key), 60)} appears more than once in one object "
                        "(a JSON parser keeps only one of the values)")
            for key, child in node.items():
                if strings and isinstance(key, str) and _SURROGATE.search(key):
                    return ("lone_surrogate", pointer or "/", _surrogate_message(key))
                stack.append((child, f"{pointer}/{_escape(str(key))}", depth + 1))
        elif isinstance(node, list):
            if depth >= max_depth:
                return ("too_deeply_nested", pointer or "/",
                        f"nested deeper than {max_depth} levels")
            stack.extend((child, f"{pointer}/{i}", depth + 1) for i, child in enumerate(node))
        elif isinstance(node, float):
            if not math.isfinite(node):
                return ("non_finite_number", pointer or "/",
                        f"expected a finite number, found {_float_name(node)}")
        elif strings and isinstance(node, str) and _SURROGATE.search(node):
            return ("lone_surrogate", pointer or "/", _surrogate_message(node))
    return None


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _float_name(x: float) -> str:
    return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")


def _surrogate_message(text: str) -> str:
    m = _SURROGATE.search(text)
    assert m is not None
    return (f"a lone UTF-16 surrogate \\u{ord(m.group()):04x} at character {m.start()} (half of "
            "an emoji or a cut string; UTF-8 cannot encode it)")


def iter_jsonl(path: str | Path, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
               source: str | None = None) -> Iterator[RawLine]:
    """Yield each line of a JSON Lines file as parsed JSON or as a reject with a reason code.

    Reason codes: ``empty_line``, ``line_too_long``, ``undecodable_bytes``, ``bom_inside_file``,
    ``malformed_json`` and those of :func:`strict_loads` (``non_finite_number``,
    ``number_too_long``, ``too_deeply_nested``, ``lone_surrogate``, ``duplicate_key``). A UTF-8
    BOM at the very start of the file is accepted (editors on Windows write one); anywhere else it
    is a sign of concatenated files and is rejected. A file that cannot be read is an
    :class:`InputError`.

    >>> [r.value for r in iter_jsonl(path)]  # doctest: +SKIP
    [{'text': '...'}]
    """
    p = require_file(path)
    src = source or str(path)
    try:
        with p.open("rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                body = raw.rstrip(b"\r\n")
                if lineno == 1 and body.startswith(BOM):
                    body = body[len(BOM):]
                yield parse_json_line(body, lineno, src, max_line_bytes)
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from e


def parse_json_line(body: bytes, lineno: int, source: str,
                    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> RawLine:
    def reject(reason: str, message: str, keep_text: bool = True) -> RawLine:
        text = None
        b64 = None
        if keep_text:
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                b64 = base64.b64encode(body).decode("ascii")
        else:
            b64 = base64.b64encode(body).decode("ascii")
        return RawLine(lineno, reject=Reject(reason=reason, source=source, line=lineno,
                                             message=message, raw=text, raw_base64=b64))

    if not body.strip():
        return reject("empty_line", "empty line: expected one JSON object per line")
    if len(body) > max_line_bytes:
        return reject("line_too_long",
                      f"line is {len(body):,} bytes, over the limit of {max_line_bytes:,} "
                      "(raise max_line_bytes in the reader options if this is intended)")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        return reject("undecodable_bytes",
                      f"not valid UTF-8 at byte {e.start}{_guess_encoding(body)}", keep_text=False)
    if text.startswith("\ufeff"):
        return reject("bom_inside_file", "a byte-order mark in the middle of the file "
                      "(were two files concatenated?)")
    try:
        value = strict_loads(text)
    except json.JSONDecodeError as e:
        return reject("malformed_json", f"malformed JSON: {e.msg} at column {e.colno}")
    except JSONValueError as e:
        return reject(e.reason, e.message)
    return RawLine(lineno, value=value, text=text)


# Compression methods zipfile can inflate; anything else (e.g. Deflate64, PPMd) is refused by name.
_ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate",
                zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma"}


def _read_capped(fh: IO[bytes], limit: int, what: str) -> bytes:
    buf = bytearray()
    while chunk := fh.read(1 << 20):
        buf += chunk
        if len(buf) > limit:
            raise InputError(f"{what}: more than {limit:,} bytes; refused (raise "
                             "max_document_bytes in the reader options if this is intended)")
    return bytes(buf)


def _read_zip_member(p: Path, member: str | None, limit: int) -> tuple[bytes, str]:
    with zipfile.ZipFile(p) as zf:
        names = [n for n in zf.namelist() if n.endswith(".json")]
        if member is None:
            if len(names) != 1:
                raise InputError(f"{p}: expected one .json member, found {names}")
            member = names[0]
        info = zf.getinfo(member)
        where = f"{p}:{member}"
        if info.flag_bits & 0x1:
            raise InputError(f"{where}: the member is encrypted; unzip it with its password first")
        if info.compress_type not in _ZIP_METHODS:
            raise InputError(f"{where}: compression method {info.compress_type} is not supported "
                             f"(use one of {', '.join(_ZIP_METHODS.values())})")
        # zipfile never inflates past the declared size (it stops and fails the CRC), so checking
        # the header bounds the memory a bomb can take; _read_capped is the second fence.
        if info.file_size > limit:
            raise InputError(f"{where}: inflates to {info.file_size:,} bytes from "
                             f"{info.compress_size:,}, over the limit of {limit:,}; refused "
                             "(raise max_document_bytes in the reader options if this is intended)")
        with zf.open(info) as fh:
            return _read_capped(fh, limit, where), where


def read_json_document(path: str | Path, member: str | None = None, *,
                       max_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES) -> tuple[Any, str]:
    """Load a whole JSON document, from a plain file or from inside a ``.zip``.

    Returns the value and a display name (``val.json.zip:val.json``). Whole-file problems
    (unreadable, corrupt or encrypted zip, over ``max_bytes``, malformed, too deep) are an
    :class:`InputError`. Problems inside one item are left for the reader to reject item by item
    with :func:`value_problem`: non-finite numbers stay floats (``NaN``, ``inf``) and objects with
    a repeated key are :class:`DuplicateKeyDict` (the first value kept)."""
    p = require_file(path)
    try:
        if p.suffix == ".zip":
            data, display = _read_zip_member(p, member, max_bytes)
        else:
            if p.stat().st_size > max_bytes:
                raise InputError(f"{path}: {p.stat().st_size:,} bytes, over the limit of "
                                 f"{max_bytes:,} (raise max_document_bytes in the reader options)")
            with p.open("rb") as fh:
                data = _read_capped(fh, max_bytes, str(path))
            display = str(path)
        if data.startswith(BOM):
            data = data[len(BOM):]
        return json.loads(data.decode("utf-8"), parse_int=_lenient_int,
                          object_pairs_hook=_object_pairs), display
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: cannot read as JSON: {_one_line(e)}") from e
    except RecursionError as e:
        raise InputError(f"{path}: nested deeper than the JSON parser can follow") from e
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, KeyError,
            RuntimeError, NotImplementedError, ValueError) as e:
        # Corrupt data (bad CRC, truncated deflate stream), or zipfile's own refusals.
        raise InputError(f"{path}: cannot read the zip archive: {_one_line(e)}") from e
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or _one_line(e)}") from e


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


class UnwritableValue(ValueError):
    """A record that strict JSON in UTF-8 cannot hold; ``reason`` is a reject reason code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def dumps(obj: Any) -> str:
    """One JSONL line: strict JSON, UTF-8 text, Chinese kept readable.

    Raises :class:`UnwritableValue` (reason ``non_finite_number`` or ``lone_surrogate``) instead
    of writing ``NaN`` (not JSON) or a string no UTF-8 file can hold: the writer turns that into a
    reject, the last line of defence behind the readers' checks.

    U+2028/U+2029 (they occur in DuReader) and U+0085 are escaped: JSON allows them raw, but
    ``str.splitlines()`` and JavaScript tools treat them as line breaks and would cut a record in
    two. The escaped form loads back to the same string.
    """
    try:
        text = json.dumps(obj, ensure_ascii=False, allow_nan=False)
    except ValueError as e:
        problem = value_problem(obj, strings=False)
        where = f"{problem[1]}: " if problem else ""
        raise UnwritableValue("non_finite_number", f"{where}{e}") from e
    if _SURROGATE.search(text):
        problem = value_problem(obj)
        where = f"{problem[1]}: " if problem else ""
        raise UnwritableValue("lone_surrogate", f"{where}a lone UTF-16 surrogate")
    if "\u2028" in text or "\u2029" in text or "\x85" in text:
        text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029") \
            .replace("\x85", "\\u0085")
    return text


def dumps_evidence(obj: Any) -> str:
    """Like :func:`dumps`, for rejects: never raises, so the evidence of a bad record is kept.

    Non-finite numbers become the strings ``"NaN"``/``"Infinity"``/``"-Infinity"``, and a line
    with a lone surrogate is written with ASCII escapes (``"\\ud800"``: strict JSON that loads back
    to the same string).
    """
    try:
        return dumps(obj)
    except UnwritableValue:
        pass
    except RecursionError:
        return json.dumps({"unwritable": repr(obj)[:2000]})
    try:
        return json.dumps(_finite(obj), ensure_ascii=True, allow_nan=False, default=repr)
    except (ValueError, RecursionError):
        return json.dumps({"unwritable": repr(obj)[:2000]})


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return _float_name(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


class AtomicWriter:
    """Write to a temp file in the target folder and rename on success.

    A crash or Ctrl-C leaves the previous file (or nothing), never a half-written split.

    >>> with AtomicWriter(out / "train.jsonl") as fh:  # doctest: +SKIP
    ...     fh.write("{}\\n")
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fh: IO[str] | None = None
        self._tmp: str | None = None

    def __enter__(self) -> IO[str]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp",
                                         dir=self.path.parent)
        self._fh = os.fdopen(fd, "w", encoding="utf-8", newline="\n")
        return self._fh

    @property
    def temp_path(self) -> str:
        """Where the content goes until it is committed (inside the ``with`` block)."""
        assert self._tmp is not None
        return self._tmp

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        assert self._fh is not None and self._tmp is not None
        try:
            if exc_type is None:
                self._fh.flush()
                os.fsync(self._fh.fileno())
                # mkstemp creates 0600 files; a split should be as readable as any file the
                # user creates, so apply the process umask to 0666.
                os.fchmod(self._fh.fileno(), 0o666 & ~_umask())
            self._fh.close()
            if exc_type is None:
                os.replace(self._tmp, self.path)
        finally:
            if os.path.exists(self._tmp):
                os.unlink(self._tmp)


def prepare_out_dir(path: str | Path, shown: str | Path | None = None, *,
                    create: bool = True) -> Path:
    """Create the output folder (and its parents) or say in one line why it cannot be used:
    it is a file, it lies under a file, or it is not writable. ``shown`` is the ``--out`` value
    to name in the message (when ``path`` is the folder of an output file). With
    ``create=False`` only the parent is created and checked: a run builds its folder as a
    sibling and renames it into place (:mod:`dataprep.run_folder`)."""
    p = Path(path)
    shown = path if shown is None else shown
    if not create:
        if not p.name or p.resolve() in (Path.cwd(), *Path.cwd().parents):
            raise InputError(f"--out {shown}: the current folder or one above it cannot be "
                             "replaced by a run's outputs; give a subfolder")
        if p.exists() and not p.is_dir():
            raise InputError(f"--out {shown}: is a file")
        prepare_out_dir(p.parent, shown=shown)
        return p
    for parent in [p, *p.parents]:
        if parent.exists() and not parent.is_dir():
            where = "is a file" if str(parent) == str(shown) else \
                f"lies under {parent}, which is a file"
            raise InputError(f"--out {shown}: {where}")
    try:
        p.mkdir(parents=True, exist_ok=True)
        # The one sure test of writability (permissions, ACLs, read-only mounts): create a file.
        with tempfile.TemporaryFile(dir=p):
            pass
    except OSError as e:
        raise InputError(f"--out {shown}: cannot write there: {e.strerror or e}") from None
    return p


def prepare_out_file(path: str | Path) -> Path:
    """Check an output file's path the same way: not a folder, its folder usable."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"--out {path}: is a folder; give a file name (e.g. {p / 'out.jsonl'})")
    prepare_out_dir(p.parent, shown=path)
    return p


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Strict JSON (a NaN in a stat becomes the string "NaN"; a manifest must load anywhere)."""
    try:
        text = json.dumps(obj, ensure_ascii=False, indent=2, allow_nan=False)
    except ValueError:
        text = json.dumps(_finite(obj), ensure_ascii=False, indent=2, allow_nan=False)
    if _SURROGATE.search(text):
        text = json.dumps(_finite(obj), ensure_ascii=True, indent=2, allow_nan=False)
    with AtomicWriter(path) as fh:
        fh.write(text + "\n")
