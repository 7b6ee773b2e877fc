"""Reader base class and helpers shared by the layout modules."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pydantic

from dataprep import schema
from dataprep.errors import ConfigError
from dataprep.io import (
    DEFAULT_MAX_DOCUMENT_BYTES,
    DEFAULT_MAX_LINE_BYTES,
    iter_jsonl,
    require_file,
)
from dataprep.record import Conversation, Reject

Item = Conversation | Reject


class Reader:
    """Turns one input file into conversations and rejects, one item per input record.

    Subclasses set ``name`` (the registry key and ``--from`` value), ``corpus`` and
    ``input_schema`` (a file in ``schemas/``), and implement :meth:`read`. The one-to-one rule is
    what makes ``input`` countable: ``input == len(list(reader.read()))``.
    """

    name: ClassVar[str] = ""
    corpus: ClassVar[str] = ""
    input_schema: ClassVar[str | None] = None
    # Readers whose output depends on a seed (distractor choice, document order) take the run's
    # seed unless their own ``seed`` option is set, so one ``--set seed=N`` changes everything.
    uses_seed: ClassVar[bool] = False

    def __init__(self, path: str | Path, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
                 max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES,
                 id_prefix: str | None = None, **options: Any) -> None:
        self.path = require_file(path)
        self.source = str(path)
        self.max_line_bytes = _positive_int(self.name, "max_line_bytes", max_line_bytes)
        self.max_document_bytes = _positive_int(self.name, "max_document_bytes",
                                                max_document_bytes)
        if id_prefix is not None and not isinstance(id_prefix, str):
            raise ConfigError(f"reader {self.name!r}: option 'id_prefix' expects a string, "
                              f"got {id_prefix!r}")
        self.id_prefix = id_prefix or self.name
        self.options = options
        check_option_types(type(self), options)
        self.configure(**options)

    def configure(self, **options: Any) -> None:
        """Take layout-specific options; the default accepts none."""
        if options:
            raise ConfigError(f"reader {self.name!r} got unknown options {sorted(options)}")

    def read(self) -> Iterator[Item]:
        raise NotImplementedError

    # -- helpers ----------------------------------------------------------------------------
    def iter_json_lines(self) -> Iterator[tuple[int, Any, str | None, Reject | None]]:
        """(line, value, text, reject) for each line; value is schema-checked when the reader
        declares ``input_schema``."""
        for raw in iter_jsonl(self.path, max_line_bytes=self.max_line_bytes, source=self.source):
            if raw.reject is not None:
                yield raw.line, None, None, raw.reject
                continue
            rej = self.schema_reject(raw.value, raw.line, raw.text)
            yield raw.line, raw.value, raw.text, rej

    def schema_reject(self, value: Any, line: int | None, text: str | None,
                      item: str | None = None, schema_name: str | None = None) -> Reject | None:
        name = schema_name or self.input_schema
        if name is None:
            return None
        problems = schema.check(name, value)
        if not problems:
            return None
        reason, pointer, message = problems[0]
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        return Reject(reason=reason, source=self.source, line=line, item=item,
                      message=f"{pointer}: {message}{more}", raw=text,
                      record=None if text is not None else _jsonable(value))

    def make_reject(self, reason: str, message: str, line: int | None, *, text: str | None = None,
                    value: Any = None, item: str | None = None, kind: str = "rejected") -> Reject:
        return Reject(reason=reason, source=self.source, line=line, item=item, message=message,
                      raw=text, record=None if text is not None else _jsonable(value), kind=kind)

    def make_id(self, key: str | int) -> str:
        return f"{self.id_prefix}:{Path(self.source).name}:{key}"


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, dict):
        return value
    return {"value": value}


def _positive_int(reader: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"reader option {key!r} ({reader}): expected a positive whole number "
                          f"of bytes, found {value!r}")
    return value


def _option_hints(cls: type[Reader]) -> dict[str, Any]:
    """Annotated parameters of ``configure`` along the MRO (subclasses pass ``**common`` up)."""
    hints: dict[str, Any] = {}
    for klass in cls.__mro__:
        fn = klass.__dict__.get("configure")
        if fn is None:
            continue
        try:
            found = typing.get_type_hints(fn)
        except (NameError, TypeError):  # an annotation this module cannot resolve: skip it
            continue
        for name, param in inspect.signature(fn).parameters.items():
            if name in found and param.kind is not param.VAR_KEYWORD and name not in hints:
                hints[name] = found[name]
    return hints


def check_option_types(cls: type[Reader], options: dict[str, Any]) -> None:
    """Each option against the type its ``configure`` declares, before any of it runs: a value
    from ``--option k=v`` is YAML, so ``max_chars=abc`` arrives as a string and ``prompt=[1,2]`` as
    a list, and either would fail far from the flag that set it.

    Strict pydantic validation: no coercion ("3" is not an int, true is not an int)."""
    hints = _option_hints(cls)
    for key, value in options.items():
        hint = hints.get(key)
        if hint is None or hint is Any:
            continue
        try:
            _adapter(hint).validate_python(value, strict=True)
        except pydantic.ValidationError:
            raise ConfigError(f"reader option {key!r} ({cls.name}): expected "
                              f"{_type_text(hint)}, found {_json_type(value)} {value!r}"
                              ) from None


@functools.cache
def _adapter(hint: Any) -> pydantic.TypeAdapter:
    return pydantic.TypeAdapter(hint)


def _json_type(value: Any) -> str:
    return {dict: "mapping", list: "list", str: "string", bool: "boolean", int: "int",
            float: "float", type(None): "null"}.get(type(value), type(value).__name__)


def _type_text(hint: Any) -> str:
    text = getattr(hint, "__name__", None) if isinstance(hint, type) else None
    return text or str(hint).replace("typing.", "").replace("NoneType", "null")
