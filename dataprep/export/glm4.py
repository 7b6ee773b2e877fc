"""``glm4``: GLM-4's fine-tuning format (THUDM/GLM-4 ``finetune_demo``), ``DIR/{split}.jsonl``.

Facts (read from the demo's README and ``finetune.py``): one ``{"messages": [...]}`` per line;
tools go in the first message, a ``system`` message (content empty when it only carries tools)
as ``"tools": [{"type": "function", "function": {...}}]``; a call is an ``assistant`` message
whose content is ``{"name": ..., "arguments": {...}}`` as JSON text; a tool result is an
``observation`` message. The demo trains every assistant message and no system, user or
observation message.

How our record maps:

- a tool message -> an assistant call message, then an observation message; the calls of a
  parallel group are consecutive assistant call messages followed by their observations in the
  same order (the reader pairs them back by position). A missing observation is left out; inside a
  parallel group, or before another call, it is written as ``null`` so pairs stay aligned
  (counted ``call_without_observation_written_as_null``);
- an assistant "thought" before a call stays its own assistant message;
- ``loss: false`` cannot be expressed (the demo trains every assistant message): kept for our
  reader in the ``dataprep_extra`` column (JSON text, message index -> keys; messages keep only
  role/content/tools so every line loads with one schema), counted ``loss_mask_not_expressible``;
- an assistant text that itself parses as a call object would be read back as a call: counted
  ``assistant_text_looks_like_call``; a system prompt together with tools is written (GLM-4's
  template renders both) but counted ``system_prompt_with_tools``, since the demo's README wants
  that system message empty.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from dataprep.export.common import (
    EXTRA_COLUMN,
    ExportReport,
    call_groups,
    check_observation,
    check_sample_weight,
    missing,
    observation_text,
    openai_tool,
    pack_extra,
    take_options,
    write_jsonl_splits,
)
from dataprep.record import Conversation

OPTIONS: dict[str, tuple] = {}


def looks_like_call(text: str) -> bool:
    """True when ``text`` is a ``{"name", "arguments"}`` JSON object (how GLM-4 writes a call)."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return False
    return (isinstance(value, dict) and set(value) == {"name", "arguments"}
            and isinstance(value["name"], str))


def _loss(d: dict[str, Any], loss: bool | None, report: ExportReport, rec_id: str
          ) -> dict[str, Any]:
    if loss is not None:
        d["loss"] = loss
        if loss is False:
            report.change("loss_mask_not_expressible", rec_id,
                          "a 'loss: false' message; GLM-4's fine-tuning trains every assistant "
                          "message (kept in the dataprep_extra column for our reader)")
    return d


def to_glm4(conv: Conversation, report: ExportReport) -> dict[str, Any]:
    """One GLM-4 fine-tuning line (every conversation can be written; see module docstring)."""
    check_sample_weight(report, conv)
    out: list[dict[str, Any]] = []
    msgs = conv.messages
    start = 0
    if conv.tools is not None:
        first: dict[str, Any] = {"role": "system", "content": ""}
        if msgs and msgs[0].role == "system":
            first["content"] = msgs[0].content
            start = 1
            report.change("system_prompt_with_tools", conv.id,
                          "a system prompt and tools share GLM-4's first message (its README "
                          "wants that message's content empty)")
        first["tools"] = [openai_tool(t) for t in conv.tools]
        out.append(first)
    segments = list(call_groups(msgs[start:]))
    for n, (_, group) in enumerate(segments):
        m = group[0]
        if m.role != "tool":
            if m.role == "assistant" and looks_like_call(m.content or ""):
                report.change("assistant_text_looks_like_call", conv.id,
                              "an assistant text that is a {name, arguments} object; read back "
                              "as a call")
            out.append(_loss({"role": m.role, "content": m.content}, m.loss, report, conv.id))
            continue
        for call in group:
            body = json.dumps({"name": call.name, "arguments": call.parameters},
                              ensure_ascii=False)
            out.append(_loss({"role": "assistant", "content": body}, call.loss, report, conv.id))
        observations = [c.observation for c in group]
        nxt = segments[n + 1][1][0] if n + 1 < len(segments) else None
        keep_slots = len(group) > 1 or (nxt is not None and nxt.role == "tool")
        if all(missing(o) for o in observations) and not keep_slots:
            continue
        for obs in observations:
            if missing(obs):
                report.change("call_without_observation_written_as_null", conv.id,
                              "a call without observation inside a group of calls; written as "
                              "null so that calls and observations pair up")
                obs = None
            check_observation(report, conv.id, obs)
            out.append({"role": "observation", "content": observation_text(obs)})
    return {"messages": out, EXTRA_COLUMN: pack_extra(out, ("role", "content", "tools"))}


def export(splits: Mapping[str, Iterable[Conversation]], out_dir: Path, report: ExportReport,
           **options: Any) -> None:
    report.options = take_options("glm4", options, OPTIONS)
    write_jsonl_splits(out_dir, splits, lambda c: to_glm4(c, report), report)
    report.notes.append(
        "GLM-4 finetune_demo: python finetune.py DIR THUDM/glm-4-9b-chat configs/lora.yaml with "
        "train_file: train.jsonl, val_file: dev.jsonl, test_file: test.jsonl in data_config")
