"""Reader base class and helpers shared by the layout modules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from dataprep import schema
from dataprep.errors import ConfigError
from dataprep.io import DEFAULT_MAX_LINE_BYTES, iter_jsonl, require_file
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
                 id_prefix: str | None = None, **options: Any) -> None:
        self.path = require_file(path)
        self.source = str(path)
        self.max_line_bytes = max_line_bytes
        self.id_prefix = id_prefix or self.name
        self.options = options
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
