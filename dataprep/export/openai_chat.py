"""``openai``: OpenAI fine-tuning chat JSONL, ``DIR/{train,dev,test}.jsonl``.

One line per conversation: ``messages`` and, when the conversation has tools,
``tools: [{"type": "function", "function": {...}}]``. A run of our tool messages (one call, or
several marked ``parallel``) becomes one assistant message with ``tool_calls`` (ids ``call_1``,
``call_2``, ... numbered per conversation) followed by one ``tool`` message per observation, with
its ``tool_call_id``. An assistant text right before a call (a "thought") becomes that assistant
message's ``content`` when both are trained alike. ``"loss": false`` becomes ``"weight": 0`` and
``"loss": true`` ``"weight": 1`` (OpenAI trains every assistant message unless told otherwise).

Not expressible, so dropped and counted: a bare ``observation`` message (OpenAI has tool results
only as answers to a call). Written but counted: a call without an observation (no ``tool``
message follows; the API may refuse such a line), a loss flag on a system/user message (never
trained anyway), a parallel group whose calls are trained differently (one ``weight`` per
assistant message: the group gets 0 if any call has ``loss: false``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from dataprep.export.common import (
    ExportReport,
    Skip,
    call_groups,
    check_observation,
    check_sample_weight,
    missing,
    observation_text,
    openai_tool,
    take_options,
    write_jsonl_splits,
)
from dataprep.record import Conversation

OPTIONS: dict[str, tuple] = {"with_id": (False, (True, False))}


def _weight(loss: bool | None) -> dict[str, int]:
    return {} if loss is None else {"weight": int(loss)}


def to_openai(conv: Conversation, report: ExportReport, with_id: bool = False) -> dict[str, Any]:
    """One fine-tuning line for ``conv``; raises :class:`Skip` when it cannot be expressed.

    >>> from dataprep.record import Lineage, Message
    >>> c = Conversation("x", [Message("user", "hi"), Message("assistant", "yo", loss=False)],
    ...                  Lineage("s", 1, "x"))
    >>> to_openai(c, ExportReport("openai", "."))["messages"][1]
    {'role': 'assistant', 'content': 'yo', 'weight': 0}
    """
    check_sample_weight(report, conv)
    out: list[dict[str, Any]] = []
    n_calls = 0
    prev_text: dict[str, Any] | None = None  # the assistant text message just written
    prev_loss: bool | None = None
    for i, group in call_groups(conv.messages):
        m = group[0]
        if m.role in ("system", "user"):
            if m.loss is not None:
                report.change("loss_flag_on_untrained_role", conv.id,
                              "a loss flag on a system/user message (never trained) was left out")
            out.append({"role": m.role, "content": m.content})
            prev_text = None
            continue
        if m.role == "observation":
            raise Skip("observation_without_call",
                       f"message {i} is an observation that answers no call; OpenAI has tool "
                       "results only as answers to a tool call")
        if m.role == "assistant":
            prev_text = {"role": "assistant", "content": m.content, **_weight(m.loss)}
            prev_loss = m.loss
            out.append(prev_text)
            continue
        # A group of tool calls issued together.
        losses = {c.loss for c in group}
        loss = next(iter(losses)) if len(losses) == 1 else False
        if len(losses) > 1:
            report.change("parallel_calls_trained_differently", conv.id,
                          "calls of one parallel group carry different loss flags; the group "
                          "is written with weight 0")
        calls = []
        for call in group:
            n_calls += 1
            calls.append({"id": f"call_{n_calls}", "type": "function",
                          "function": {"name": call.name,
                                       "arguments": json.dumps(call.parameters,
                                                               ensure_ascii=False)}})
        if prev_text is not None and prev_text["content"] and prev_loss == loss \
                and "tool_calls" not in prev_text:
            prev_text["tool_calls"] = calls  # the thought and its call: one assistant turn
        else:
            out.append({"role": "assistant", "content": None, "tool_calls": calls,
                        **_weight(loss)})
        prev_text = None
        for call, spec in zip(group, calls, strict=True):
            if missing(call.observation):
                report.change("call_without_observation", conv.id,
                              "a tool call with no observation: no tool message follows it")
                continue
            check_observation(report, conv.id, call.observation)
            out.append({"role": "tool", "tool_call_id": spec["id"],
                        "content": observation_text(call.observation)})
    line: dict[str, Any] = {"id": conv.id} if with_id else {}
    line["messages"] = out
    if conv.tools is not None:
        line["tools"] = [openai_tool(t) for t in conv.tools]
    return line


def export(splits: Mapping[str, Iterable[Conversation]], out_dir: Path, report: ExportReport,
           **options: Any) -> None:
    opts = take_options("openai", options, OPTIONS)
    report.options = opts
    write_jsonl_splits(out_dir, splits, lambda c: to_openai(c, report, opts["with_id"]), report)
    report.notes.append(
        "Upload each SPLIT.jsonl as a fine-tuning file (purpose 'fine-tune'); train.jsonl is the "
        "training file and dev.jsonl the validation file. Tool call ids are call_1, call_2, ... "
        "per conversation.")
