"""``hf``: a Hugging Face ``datasets`` folder (``DIR/dataset``, via ``save_to_disk``) and one
parquet file per split (``DIR/parquet/SPLIT.parquet``), all with one explicit schema.

Arrow needs one type per column, and tool schemas, call arguments and observations differ from
record to record, so those are JSON text columns: ``tools`` (the list, null when the record has
none), ``messages[].arguments`` and ``messages[].observation`` (JSON of the value, so a string
observation stays a string; null when the call has none), ``lineage``. Everything else is typed.
Nothing is lost: :func:`conversation_from_row` rebuilds the record.

>>> import datasets  # doctest: +SKIP
>>> datasets.load_from_disk("out/hotel/export/hf/dataset")["train"].features  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from dataprep.export.common import ExportReport, missing, take_options
from dataprep.record import MISSING, Conversation, Lineage, Message

OPTIONS: dict[str, tuple] = {}


def features() -> Any:
    """The one schema every split shares."""
    from datasets import Features, List, Value

    message = {"role": Value("string"), "content": Value("string"), "name": Value("string"),
               "arguments": Value("string"), "observation": Value("string"),
               "loss": Value("bool"), "parallel": Value("bool")}
    return Features({"id": Value("string"), "corpus": Value("string"), "label": Value("string"),
                     "weight": Value("float64"), "tools": Value("string"),
                     "messages": List(message), "lineage": Value("string")})


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def to_row(conv: Conversation) -> dict[str, Any]:
    messages = []
    for m in conv.messages:
        tool = m.role == "tool"
        messages.append({
            "role": m.role, "content": m.content, "name": m.name if tool else None,
            "arguments": _dumps(m.parameters) if tool else None,
            "observation": None if not tool or missing(m.observation) else _dumps(m.observation),
            "loss": m.loss, "parallel": m.parallel})
    return {"id": conv.id, "corpus": conv.corpus, "label": conv.label, "weight": conv.weight,
            "tools": None if conv.tools is None else _dumps(conv.tools), "messages": messages,
            "lineage": _dumps(conv.lineage.to_dict())}


def conversation_from_row(row: Mapping[str, Any]) -> Conversation:
    """Inverse of :func:`to_row`."""
    messages = []
    for m in row["messages"]:
        if m["role"] == "tool":
            obs = MISSING if m["observation"] is None else json.loads(m["observation"])
            messages.append(Message("tool", name=m["name"], parameters=json.loads(m["arguments"]),
                                    observation=obs, loss=m["loss"], parallel=m["parallel"]))
        else:
            messages.append(Message(m["role"], m["content"], loss=m["loss"]))
    return Conversation(id=row["id"], messages=messages,
                        lineage=Lineage.from_dict(json.loads(row["lineage"])),
                        tools=None if row["tools"] is None else json.loads(row["tools"]),
                        corpus=row["corpus"] or "", label=row["label"], weight=row["weight"])


def export(splits: Mapping[str, Iterable[Conversation]], out_dir: Path, report: ExportReport,
           **options: Any) -> None:
    import datasets
    from datasets import Dataset, DatasetDict

    report.options = take_options("hf", options, OPTIONS)
    feats = features()
    parts = {}
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # the CLI prints its own summary; no bars in the middle
    try:
        for split, convs in splits.items():
            parts[split] = Dataset.from_list([to_row(c) for c in convs], features=feats)
            report.written[split] = len(parts[split])
        DatasetDict(parts).save_to_disk(str(out_dir / "dataset"))
        (out_dir / "parquet").mkdir(parents=True, exist_ok=True)
        for split, ds in parts.items():
            ds.to_parquet(str(out_dir / "parquet" / f"{split}.parquet"))
            report.files.append(f"parquet/{split}.parquet")
    finally:
        if bars:
            datasets.enable_progress_bars()
    report.files.insert(0, "dataset/")
    report.notes.append(
        f"datasets.load_from_disk('{out_dir / 'dataset'}') or load_dataset('parquet', "
        f"data_files={{'train': '{out_dir / 'parquet' / 'train.parquet'}'}}); tools, arguments, "
        "observation and lineage are JSON text")
