"""``write``: the three ChatGLM3 JSONL splits, each validated line by line, written atomically."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from dataprep import schema
from dataprep.io import AtomicWriter, dumps
from dataprep.record import Conversation
from dataprep.stages.base import RunContext, Stage, StageOptions
from dataprep.stages.split import SPLITS


@dataclass
class WriteOptions(StageOptions):
    """``lineage``: also write id/lineage/label keys (the official loaders ignore extra keys, and
    they let ``dataprep report`` trace every line back to its source)."""

    lineage: bool = True


class Write(Stage):
    """Writes train/dev/test.jsonl. Options: :class:`WriteOptions`."""

    name = "write"
    Options = WriteOptions
    options: WriteOptions

    def run(self, records: Iterable[Conversation], ctx: RunContext) -> Iterator[Conversation]:
        writers = {s: AtomicWriter(ctx.out_dir / f"{s}.jsonl") for s in SPLITS}
        handles = {s: w.__enter__() for s, w in writers.items()}
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
                handles[rec.split].write(dumps(line) + "\n")
                ctx.counts.splits[rec.split] += 1
                yield rec
            ok = True
        finally:
            for w in writers.values():
                w.__exit__(None if ok else RuntimeError, None, None)
