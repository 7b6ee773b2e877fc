"""``write``: the three ChatGLM3 JSONL splits, each validated line by line, written atomically;
optionally the same splits exported to other training formats (``dataprep.export``).

Every split keeps one Arrow shape, so that ``datasets.load_dataset("json")`` loads it (see
:mod:`dataprep.arrow_shape`): a line whose field has another JSON kind than the split's earlier
lines (the lab's 172 ``facilities`` strings among lists, had they not been normalised) is
rejected as ``inconsistent_shape``; lines that bring a field only after the first 10 MB are
moved in front (``stats["moved_to_front"]``). Before a split is committed the file is read back
as ``datasets`` reads it (one block, and the first 10 MB); a remaining difference (a stage bug)
raises :class:`~dataprep.errors.SplitSchemaError` naming the split and
the field, and no split is written (option ``check_schema: false`` skips the check).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from dataprep import schema
from dataprep.arrow_shape import DATASETS_JSON_CHUNK, SplitShape
from dataprep.errors import SplitSchemaError
from dataprep.io import AtomicWriter, UnwritableValue, dumps
from dataprep.record import Conversation
from dataprep.stages.base import RunContext, Stage, StageOptions
from dataprep.stages.split import SPLITS


@dataclass
class WriteOptions(StageOptions):
    """``lineage``: also write id/lineage/label keys (the official loaders ignore extra keys, and
    they let ``dataprep report`` trace every line back to its source).
    ``formats``: also export the splits to ``OUT/export/FORMAT``; a list of format names
    (llamafactory, openai, glm4, hf, chatglm3) or of ``{name: FORMAT, OPTION: VALUE}``."""

    lineage: bool = True
    #: Check that each split's lines share one Arrow schema (see the module docstring); false
    #: writes splits of mixed shapes, which ``datasets.load_dataset("json")`` will refuse.
    check_schema: bool = True
    formats: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        from dataprep.export import parse_formats

        parse_formats(self.formats)  # an unknown format fails the config, not the end of a run


class Write(Stage):
    """Writes train/dev/test.jsonl. Options: :class:`WriteOptions`."""

    name = "write"
    Options = WriteOptions
    options: WriteOptions

    def run(self, records: Iterable[Conversation], ctx: RunContext) -> Iterator[Conversation]:
        from dataprep.export import parse_formats

        formats = parse_formats(self.options.formats)
        writers = {s: AtomicWriter(ctx.out_dir / f"{s}.jsonl") for s in SPLITS}
        kept: dict[str, list[Conversation]] = {s: [] for s in SPLITS}
        handles = {s: w.__enter__() for s, w in writers.items()}
        shapes = {s: SplitShape() for s in SPLITS}
        written = {s: 0 for s in SPLITS}  # bytes, for the chunk datasets reads first
        ok = False
        try:
            for rec in records:
                if rec.split not in handles:
                    raise ValueError(f"record {rec.id} reached 'write' without a split; put the "
                                     "'split' stage before 'write'")
                line = rec.to_chatglm3(with_lineage=self.options.lineage)
                # The writer re-checks every line: a stage bug must never produce a bad file.
                problems = schema.output_problems(line)
                if problems:
                    reason, pointer, message = problems[0]
                    ctx.reject_record(rec, reason, f"{pointer}: {message}", stage=self.name)
                    continue
                try:
                    text = dumps(line)
                except UnwritableValue as e:  # last line of defence: strict JSON only
                    ctx.reject_record(rec, e.reason, str(e), stage=self.name)
                    continue
                shape = shapes[rec.split]
                if self.options.check_schema:
                    conflict = shape.add(line, ctx.counts.splits[rec.split], written[rec.split])
                    if conflict is not None:
                        pointer, known, kind = conflict
                        ctx.reject_record(
                            rec, "inconsistent_shape",
                            f"{pointer}: expected {known} (as in the {rec.split} split's earlier "
                            f"lines), found {kind}; datasets.load_dataset('json') cannot load a "
                            "split whose field changes kind", stage=self.name)
                        continue
                handles[rec.split].write(text + "\n")
                written[rec.split] += len(text.encode("utf-8")) + 1
                ctx.counts.splits[rec.split] += 1
                if formats:
                    kept[rec.split].append(rec)
                yield rec
            for split, fh in handles.items():
                fh.flush()
                if self.options.check_schema:
                    if shapes[split].late:
                        _move_to_front(fh, Path(writers[split].temp_path), shapes[split].late)
                        self.stats.setdefault("moved_to_front", {})[split] = len(
                            shapes[split].late)
                    check_arrow_schema(Path(writers[split].temp_path), split)
            ok = True
        finally:
            for w in writers.values():
                w.__exit__(None if ok else RuntimeError, None, None)
        if formats:
            from dataprep.export import export_splits

            exports = self.stats.artifacts.setdefault("exports", {})
            for fmt, options in formats:
                rep = export_splits(fmt, kept, ctx.out_dir / "export" / fmt, **options)
                exports[fmt] = {"out_dir": rep.out_dir, "written": dict(rep.written),
                                "dropped": dict(rep.dropped), "changed": dict(rep.changed)}


def _move_to_front(fh: IO[str], path: Path, late: list[int]) -> None:
    """Rewrite the split with the lines ``late`` first (see :mod:`dataprep.arrow_shape`)."""
    with path.open(encoding="utf-8", newline="\n") as src:
        lines = src.read().split("\n")[:-1]
    first = set(late)
    fh.seek(0)
    fh.truncate()
    for i in late:
        fh.write(lines[i] + "\n")
    for i, text in enumerate(lines):
        if i not in first:
            fh.write(text + "\n")
    fh.flush()


def check_arrow_schema(path: Path, split: str) -> None:
    """Raise :class:`SplitSchemaError` when the lines of ``path`` do not share one Arrow schema:
    the file read as one block must unify, and its schema must be the one of the file's first
    chunk as ``datasets`` reads it. A field that first appears after that chunk (in datasets 3.x
    a struct key the first chunk lacked) fails the load there even though each chunk parses."""
    import io

    import pyarrow as pa
    import pyarrow.json as pajson

    size = path.stat().st_size
    if size == 0:
        return

    def read(data: bytes | Path, n: int) -> pa.Schema:
        source = io.BytesIO(data) if isinstance(data, bytes) else data
        return pajson.read_json(source, read_options=pajson.ReadOptions(block_size=n + 1)).schema

    try:
        whole = read(path, size)
        if size > DATASETS_JSON_CHUNK:
            with path.open("rb") as fh:
                head = fh.read(DATASETS_JSON_CHUNK) + fh.readline()
            first = read(head, len(head))
        else:
            first = whole
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise SplitSchemaError(
            f"{split}.jsonl: its lines do not share one schema, so datasets.load_dataset('json') "
            f"cannot load it: {e}. A reader or stage must normalise that field.") from e
    if not whole.equals(first):
        late = [f"{f.name}: {f.type}" for f in whole
                if first.get_field_index(f.name) < 0 or first.field(f.name).type != f.type]
        raise SplitSchemaError(
            f"{split}.jsonl: fields take a new shape after the first {DATASETS_JSON_CHUNK >> 20} "
            f"MB, which datasets.load_dataset('json') casts every later chunk to: "
            f"{'; '.join(late)[:600]}. A reader or stage must give them one shape.")
