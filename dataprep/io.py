"""File plumbing: tolerant JSONL reading, atomic writes, checksums.

Reading is byte-oriented on purpose: a text-mode reader dies on the first GBK byte and loses the
line number, while we want every bad line turned into a reject with its exact location.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from dataprep.errors import InputError
from dataprep.record import Reject

BOM = b"\xef\xbb\xbf"
DEFAULT_MAX_LINE_BYTES = 4 * 1024 * 1024


@dataclass
class RawLine:
    """One parsed line, or the reject it turned into."""

    line: int
    value: Any = None
    text: str | None = None
    reject: Reject | None = None


def require_file(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{path}: no such file")
    return p


def _guess_encoding(data: bytes) -> str:
    with contextlib.suppress(UnicodeDecodeError):
        data.decode("gbk")
        return " (the bytes decode as GBK: re-save the file as UTF-8)"
    return ""


def iter_jsonl(path: str | Path, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
               source: str | None = None) -> Iterator[RawLine]:
    """Yield each line of a JSON Lines file as parsed JSON or as a reject with a reason code.

    Reason codes: ``empty_line``, ``line_too_long``, ``undecodable_bytes``, ``bom_inside_file``,
    ``malformed_json``. A UTF-8 BOM at the very start of the file is accepted (editors on Windows
    write one); anywhere else it is a sign of concatenated files and is rejected.

    >>> [r.value for r in iter_jsonl(path)]  # doctest: +SKIP
    [{'text': '...'}]
    """
    p = require_file(path)
    src = source or str(path)
    with p.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            body = raw.rstrip(b"\r\n")
            if lineno == 1 and body.startswith(BOM):
                body = body[len(BOM):]
            yield parse_json_line(body, lineno, src, max_line_bytes)


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
        value = json.loads(text)
    except json.JSONDecodeError as e:
        return reject("malformed_json", f"malformed JSON: {e.msg} at column {e.colno}")
    return RawLine(lineno, value=value, text=text)


def read_json_document(path: str | Path, member: str | None = None) -> tuple[Any, str]:
    """Load a whole JSON document, from a plain file or from inside a ``.zip``.

    Returns the value and a display name (``val.json.zip:val.json``)."""
    p = require_file(path)
    try:
        if p.suffix == ".zip":
            with zipfile.ZipFile(p) as zf:
                names = [n for n in zf.namelist() if n.endswith(".json")]
                if member is None:
                    if len(names) != 1:
                        raise InputError(f"{path}: expected one .json member, found {names}")
                    member = names[0]
                data = zf.read(member)
            display = f"{path}:{member}"
        else:
            data = p.read_bytes()
            display = str(path)
        if data.startswith(BOM):
            data = data[len(BOM):]
        return json.loads(data.decode("utf-8")), display
    except (UnicodeDecodeError, json.JSONDecodeError, zipfile.BadZipFile, KeyError) as e:
        raise InputError(f"{path}: cannot read as JSON: {e}") from e


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def dumps(obj: Any) -> str:
    """One JSONL line: UTF-8 text, Chinese kept readable.

    U+2028/U+2029 (they occur in DuReader) are escaped: JSON allows them raw, but
    ``str.splitlines()`` and JavaScript tools treat them as line breaks and would cut a record in
    two. The escaped form loads back to the same string.
    """
    text = json.dumps(obj, ensure_ascii=False)
    if "\u2028" in text or "\u2029" in text:
        text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return text


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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path: str | Path, obj: Any) -> None:
    with AtomicWriter(path) as fh:
        json.dump(obj, fh, ensure_ascii=False, indent=2)
        fh.write("\n")
