"""Library side of ``dataprep convert`` and ``dataprep validate``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dataprep import schema
from dataprep.errors import ConfigError, StrictModeError
from dataprep.io import (
    AtomicWriter,
    UnwritableValue,
    dumps,
    dumps_evidence,
    iter_jsonl,
    prepare_out_file,
    require_file,
)
from dataprep.record import Reject


@dataclass
class ConvertResult:
    input: int = 0
    written: int = 0
    rejects: list[Reject] = field(default_factory=list)
    rejects_path: str | None = None


def convert(fmt: str, input_path: str | Path, out_path: str | Path, *,
            hotel_db: str | None = None, strict: bool = False,
            options: dict[str, Any] | None = None) -> ConvertResult:
    """Read ``input_path`` with reader ``fmt`` and write ChatGLM3 JSONL to ``out_path``.

    Every output line is checked against the output schema and semantic rules; a record that fails
    is a reject (``invalid_output`` family of reasons), never a bad line in the output.

    >>> convert("spo", "data/spo_sample.jsonl", "out/spo.jsonl").written  # doctest: +SKIP
    12
    """
    from dataprep.pipeline import build_reader

    require_file(input_path)
    prepare_out_file(out_path)
    reader = build_reader(fmt, str(input_path), options, hotel_db)
    result = ConvertResult()
    out = Path(out_path)
    rejects_path = out.with_name(out.name.removesuffix(".jsonl") + ".rejects.jsonl")
    with AtomicWriter(out) as fh:
        for item in reader.read():
            result.input += 1
            if not isinstance(item, Reject):
                line = item.to_chatglm3()
                problems = schema.output_problems(line)
                if not problems:
                    try:
                        fh.write(dumps(line) + "\n")
                        result.written += 1
                        continue
                    except UnwritableValue as e:
                        problems = [(e.reason, "", str(e))]
                reason, pointer, message = problems[0]
                item = Reject(reason=reason, source=item.lineage.source, line=item.lineage.line,
                              item=item.lineage.item, message=f"{pointer}: {message}",
                              stage="convert", record=line)
            result.rejects.append(item)
            if strict and item.kind == "rejected":
                raise StrictModeError(f"{item.location()}: {item.message} [{item.reason}]")
    with AtomicWriter(rejects_path) as fh:
        for rej in result.rejects:
            fh.write(dumps_evidence(rej.to_dict()) + "\n")
    result.rejects_path = str(rejects_path)
    return result


def validate_file(path: str | Path, schema_name: str = "chatglm3"
                  ) -> tuple[int, list[tuple[int, str, str, str]]]:
    """(number of lines, problems as (line, pointer, message, reason))."""
    require_file(path)
    try:
        schema.validator(schema_name)
    except KeyError as e:
        raise ConfigError(str(e.args[0])) from e
    problems: list[tuple[int, str, str, str]] = []
    n = 0
    for raw in iter_jsonl(path, source=str(path)):
        n += 1
        if raw.reject is not None:
            problems.append((raw.line, "", raw.reject.message, raw.reject.reason))
            continue
        found = (schema.output_problems(raw.value) if schema_name == "chatglm3"
                 else schema.check(schema_name, raw.value))
        problems.extend((raw.line, ptr, msg, reason) for reason, ptr, msg in found)
    return n, problems
