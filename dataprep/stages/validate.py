"""``validate``: the output JSON Schema plus the semantic rules, per record.

A failing record is rejected with the reason code of its first problem and a message that names
the JSON pointer, what was expected and what was found.
"""

from __future__ import annotations

from collections.abc import Iterator

from dataprep import schema
from dataprep.record import Conversation
from dataprep.stages.base import RunContext, Stage


class Validate(Stage):
    name = "validate"

    def __init__(self, **options: object) -> None:
        super().__init__(**options)

    def process(self, rec: Conversation, ctx: RunContext) -> Iterator[Conversation]:
        problems = schema.output_problems(rec.to_chatglm3())
        if problems:
            reason, pointer, message = problems[0]
            ctx.reject_record(rec, reason, f"{pointer}: {message}", stage=self.name)
            return
        ctx.stat(self.name, "valid")
        yield rec
