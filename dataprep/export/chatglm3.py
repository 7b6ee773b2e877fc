"""``chatglm3``: what ``write`` produces — ChatGLM3 tools/conversations JSONL, each line checked
against the output schema and the semantic rules (a line that fails is dropped and counted).

Parallel calls (``"parallel": true`` on the second and later tool messages of a group) stay
consecutive tool messages: ChatGLM3 has one call per assistant turn, so its tokenizer renders
them as back-to-back call/observation pairs; the flag is ignored by the official loaders.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from dataprep import schema
from dataprep.export.common import ExportReport, Skip, take_options, write_jsonl_splits
from dataprep.record import Conversation

OPTIONS: dict[str, tuple] = {"lineage": (True, (True, False))}


def to_chatglm3(conv: Conversation, lineage: bool = True) -> dict[str, Any]:
    line = conv.to_chatglm3(with_lineage=lineage)
    problems = schema.output_problems(line)
    if problems:
        reason, pointer, message = problems[0]
        raise Skip(reason, f"{pointer}: {message}")
    return line


def export(splits: Mapping[str, Iterable[Conversation]], out_dir: Path, report: ExportReport,
           **options: Any) -> None:
    opts = take_options("chatglm3", options, OPTIONS)
    report.options = opts
    write_jsonl_splits(out_dir, splits, lambda c: to_chatglm3(c, opts["lineage"]), report)
