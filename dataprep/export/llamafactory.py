"""``llamafactory``: LLaMA-Factory sharegpt JSONL with tools, plus ``dataset_info.json``.

``DIR/dataset_info.json`` has one entry per split (``NAME_train``, ``NAME_dev``, ``NAME_test``)
whose ``file_name`` is relative to ``DIR``, so ``dataset_dir: DIR`` and ``dataset: NAME_train``
work as they are. Facts about the target (read from LLaMA-Factory 0.9.5's data README and
``converter.py``): after an optional leading system turn, turns alternate human/observation
(even positions) and gpt/function_call (odd positions) and their number is even; any other
sample is skipped with only a log warning. ``function_call`` holds ``{"name", "arguments"}`` as
JSON (a list for parallel calls) and ``tools`` is a JSON string.

How our record maps, and what is counted in ``export_report.json``. What only our ``sharegpt``
reader needs rides in the ``dataprep_extra`` column (JSON text: turn index -> keys), which
LLaMA-Factory ignores; turns keep exactly ``from``/``value`` so every line has one schema.

- a tool message (call + observation) -> a ``function_call`` turn, then an ``observation`` turn
  (non-string observations as JSON text). A call without observation before the next turn gets
  the observation ``null`` (as ChatGLM3's tokenizer renders it) and ``no_observation`` (counted
  ``call_without_observation_written_as_null``);
- an assistant "thought" right before a call cannot be its own turn (two assistant-side turns in
  a row). ``thought: keep`` (default) keeps it as the call turn's ``thought``, which LLaMA-Factory
  does not see and our reader restores: counted ``thought_not_trained``. ``thought: drop`` drops
  it (``thought_dropped``);
- parallel calls: ``parallel: split`` (default) writes them as consecutive call/observation pairs,
  because the ``chatglm3``/``glm4`` templates refuse a list of calls (``parallel_calls_split``);
  the second and later carry ``parallel: true`` so that our reader regroups them.
  ``parallel: list`` writes one ``function_call`` turn holding the list and one observation turn
  holding the JSON list of their observations;
- ``loss: false`` has no per-turn equivalent (LLaMA-Factory trains every assistant-side turn):
  kept as the turn's ``loss``, counted ``loss_mask_not_expressible``;
- a sample must end on the call, so an observation that ends it is kept as the call turn's
  ``final_observation`` (``trailing_observation_moved``; observations are never trained, so the
  sample trains the same); two assistant texts in a row are joined with a newline
  (``consecutive_assistant_merged``, the one lossy change);
- a user turn right after a call that has no observation (a user correcting the request before
  the result came) breaks the alternation in every form: the sample ends on that call and the
  messages after it ride in the call turn's ``rest`` key for our reader
  (``rest_after_unanswered_call_not_trained``: LLaMA-Factory trains up to and including the call);
- dropped and counted: a system message that is not first (``system_not_first``) and any sample
  that still breaks the alternation (``breaks_alternation``, ``odd_turn_count``).

``call_style: official`` writes each call as a ``gpt`` turn in ChatGLM3's own form
(``name\\n```python\\ntool_call(...)\\n````) instead of a ``function_call`` turn (see NOTE).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from dataprep.export.common import (
    EXTRA_COLUMN,
    ExportReport,
    Skip,
    call_groups,
    check_observation,
    check_sample_weight,
    missing,
    observation_text,
    pack_extra,
    take_options,
    write_jsonl_splits,
)
from dataprep.io import AtomicWriter, write_json_atomic
from dataprep.record import Conversation, Message
from dataprep.tool_call import render_tool_call

TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
        "observation_tag": "observation", "function_tag": "function_call",
        "system_tag": "system"}
OPTIONS: dict[str, tuple] = {
    "name": ("dataprep", None),
    "call_style": ("function_call", ("function_call", "official")),
    "parallel": ("split", ("split", "list")),
    "thought": ("keep", ("keep", "drop")),
}
EVEN, ODD = ("human", "observation"), ("gpt", "function_call")

NOTE = """\
LLaMA-Factory dataset written by `dataprep export --to llamafactory`.

Use: in your LLaMA-Factory training YAML set
    dataset_dir: {dir}
    dataset: {name}_train
    eval_dataset: {name}_dev        # optional
    template: chatglm3              # or glm4 for GLM-4 models
Each entry of dataset_info.json is sharegpt with tags from/value, tools in the `tools` column.

What the model learns as a tool call (call_style: {call_style})
- LLaMA-Factory's `chatglm3` template formats `function_call` turns with its GLM-4 tool format:
  after <|assistant|> it writes `name` + newline + the arguments as JSON, e.g.
      search_hotels
      {{"type": "经济型"}}
  ChatGLM3's official format (and its demo's parser) writes the arguments as a Python call:
      search_hotels
      ```python
      tool_call(type='经济型')
      ```
  A ChatGLM3 model trained through LLaMA-Factory with function_call turns therefore learns the
  GLM-4 layout, which the official ChatGLM3 demo does not parse as a call.
- `--option call_style=official` writes each call as a plain `gpt` turn holding the official
  `name\\n```python\\ntool_call(...)\\n```` text. LLaMA-Factory's chatglm3 template puts a newline
  after <|assistant|> before every gpt turn, so the model learns "\\nname\\n```python...": strip
  that leading newline before the official demo splits the name from the call. For an exact
  official layout, train on the chatglm3 export with dataprep-train.
- The `chatglm3`/`glm4` templates accept one call per function_call turn; parallel calls are
  written as consecutive call/observation pairs unless `--option parallel=list`.
- The `id` and `dataprep_extra` columns (per turn: `thought`, `loss`, `parallel`,
  `final_observation`, `no_observation`, `rest`) are ignored by LLaMA-Factory and restore our records
  when read back with `dataprep convert --from sharegpt`. Thoughts before calls and `loss: false` are
  NOT trained by LLaMA-Factory, nor is what follows a call that a user turn interrupted before
  its result came (`rest`): see export_report.json for the counts.
"""


def _call_turn(batch: list[Message], style: str) -> dict[str, Any]:
    if style == "official":
        return {"from": "gpt", "value": render_tool_call(batch[0].name, batch[0].parameters)}
    calls = [{"name": c.name, "arguments": c.parameters} for c in batch]
    return {"from": "function_call",
            "value": json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False)}


def _with_loss(turn: dict[str, Any], loss: bool | None, report: ExportReport, rec_id: str
               ) -> dict[str, Any]:
    if loss is not None:
        turn["loss"] = loss
        if loss is False:
            report.change("loss_mask_not_expressible", rec_id,
                          "a 'loss: false' turn; LLaMA-Factory trains every assistant-side turn "
                          "(kept in the dataprep_extra column for our reader)")
    return turn


def to_sharegpt(conv: Conversation, report: ExportReport, opts: Mapping[str, Any]
                ) -> dict[str, Any]:
    """One sharegpt line; raises :class:`Skip` when LLaMA-Factory's rules cannot be met."""
    check_sample_weight(report, conv)
    msgs = conv.messages
    segments = list(call_groups(msgs))
    turns: list[dict[str, Any]] = []
    for n, (i, group) in enumerate(segments):
        m = group[0]
        if m.role == "system":
            if i != 0:
                raise Skip("system_not_first", f"message {i} is a system message after the "
                           "first turn; LLaMA-Factory takes a system prompt only at the start")
            turns.append({"from": "system", "value": m.content})
            continue
        if m.role in ("user", "observation"):
            tag = "human" if m.role == "user" else "observation"
            turns.append(_with_loss({"from": tag, "value": m.content}, m.loss, report, conv.id))
            continue
        if m.role == "assistant":
            if turns and turns[-1]["from"] == "gpt" and msgs[i - 1].role == "assistant":
                turns[-1]["value"] += "\n" + (m.content or "")
                report.change("consecutive_assistant_merged", conv.id,
                              "two assistant texts in a row, joined with a newline into one gpt "
                              "turn")
                continue
            turns.append(_with_loss({"from": "gpt", "value": m.content}, m.loss, report, conv.id))
            continue
        thought = None
        if turns and turns[-1]["from"] == "gpt" and msgs[i - 1].role == "assistant":
            thought = turns.pop()
            if opts["thought"] == "drop":
                report.change("thought_dropped", conv.id,
                              "an assistant text right before a call was dropped")
                thought = None
            else:
                report.change("thought_not_trained", conv.id,
                              "an assistant text right before a call is carried in the call "
                              "turn's 'thought' key, which LLaMA-Factory does not train")
        batches = [group]
        if len(group) > 1 and (opts["parallel"] == "split" or opts["call_style"] == "official"):
            batches = [[c] for c in group]
            report.change("parallel_calls_split", conv.id,
                          "parallel calls written as consecutive call/observation pairs")
        for b, batch in enumerate(batches):
            turn = _call_turn(batch, opts["call_style"])
            if b > 0:
                turn["parallel"] = True  # split from one group: our reader regroups it
            if thought is not None and b == 0:
                turn["thought"] = thought["value"]
                if "loss" in thought:
                    turn["thought_loss"] = thought["loss"]
            losses = {c.loss for c in batch}
            loss = next(iter(losses)) if len(losses) == 1 else False
            if len(losses) > 1:
                report.change("parallel_calls_trained_differently", conv.id,
                              "calls of one parallel list carry different loss flags; the turn "
                              "is written with loss false")
            turns.append(_with_loss(turn, loss, report, conv.id))
            observations = [c.observation for c in batch]
            absent = [k for k, o in enumerate(observations) if missing(o)]
            if len(absent) == len(batch) and n == len(segments) - 1:
                continue  # the sample ends on an unanswered call: nothing to write
            if (len(absent) == len(batch) and b == len(batches) - 1
                    and segments[n + 1][1][0].role == "user"):
                # A user turn right after an unanswered call (a user correcting the request
                # before the result came) cannot follow LLaMA-Factory's alternation in any form
                # that trains the same tokens, so the sample ends on the call and what follows
                # rides in the extra column for our reader.
                turn["rest"] = [m.to_dict() for m in msgs[segments[n + 1][0]:]]
                report.change("rest_after_unanswered_call_not_trained", conv.id,
                              "a user turn came right after a call with no observation; the "
                              "sample ends on that call and the messages after it are kept in "
                              "the call turn's extra 'rest' key, which LLaMA-Factory does not "
                              "train")
                break
            for k in absent:
                observations[k] = None
            for o in observations:
                check_observation(report, conv.id, o)
            value = (observation_text(observations[0]) if len(batch) == 1
                     else json.dumps(observations, ensure_ascii=False))
            if n == len(segments) - 1 and b == len(batches) - 1:
                # An even turn count is required, so the sample must end on the call. The
                # observation is never trained; it rides along for our reader.
                turn["final_observation"] = value
                if absent:
                    turn["no_observation"] = absent
                report.change("trailing_observation_moved", conv.id,
                              "the sample ended on an observation; it is kept in the call turn's "
                              "extra 'final_observation' key so that the sample ends on the call")
                continue
            obs_turn: dict[str, Any] = {"from": "observation", "value": value}
            if absent:
                obs_turn["no_observation"] = absent
                report.change("call_without_observation_written_as_null", conv.id,
                              "a call with no observation before the next turn: LLaMA-Factory sees "
                              "the observation 'null' (as ChatGLM3's tokenizer renders it)")
            turns.append(obs_turn)
        if "rest" in turns[-1]:
            break
    body = turns[1:] if turns and turns[0]["from"] == "system" else turns
    for k, turn in enumerate(body):
        expected = EVEN if k % 2 == 0 else ODD
        if turn["from"] not in expected:
            raise Skip("breaks_alternation",
                       f"turn {k} is {turn['from']!r}; LLaMA-Factory expects "
                       f"{' or '.join(expected)} there and would skip the sample")
    if not body or len(body) % 2:
        raise Skip("odd_turn_count", f"{len(body)} turns; LLaMA-Factory needs an even, non-zero "
                   "number (the sample must end on a gpt or function_call turn)")
    # One schema for every line (see pack_extra; a full hotel run whose first "thought" came after
    # datasets' first block failed to load before this).
    extra = pack_extra(turns, ("from", "value"))
    return {"id": conv.id, "conversations": turns,
            "tools": "" if conv.tools is None else json.dumps(conv.tools, ensure_ascii=False),
            EXTRA_COLUMN: extra}


def dataset_info(name: str, splits: Iterable[str]) -> dict[str, Any]:
    """The ``dataset_info.json`` entries, one per split, with paths relative to its folder."""
    return {f"{name}_{split}": {"file_name": f"{split}.jsonl", "formatting": "sharegpt",
                                "columns": {"messages": "conversations", "tools": "tools"},
                                "tags": dict(TAGS)}
            for split in splits}


def export(splits: Mapping[str, Iterable[Conversation]], out_dir: Path, report: ExportReport,
           **options: Any) -> None:
    opts = take_options("llamafactory", options, OPTIONS)
    report.options = opts
    write_jsonl_splits(out_dir, splits, lambda c: to_sharegpt(c, report, opts), report)
    write_json_atomic(out_dir / "dataset_info.json", dataset_info(opts["name"], splits))
    with AtomicWriter(out_dir / "NOTE.txt") as fh:
        fh.write(NOTE.format(dir=out_dir.resolve(), name=opts["name"],
                             call_style=opts["call_style"]))
    report.files += ["dataset_info.json", "NOTE.txt"]
    report.notes.append(f"LLaMA-Factory: dataset_dir: {out_dir.resolve()}, dataset: "
                        f"{opts['name']}_train; read NOTE.txt about the chatglm3 template's tool "
                        "call format")
