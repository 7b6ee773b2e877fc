"""The CrossWOZ hotel fine-tuning lab's own evaluation protocol, so numbers sit next to its table.

The lab (agiclass/fine-tuning-lab, ``chatglm3/cli_evaluate.py``) publishes ChatGLM3 results as
slot P/R/F1 and BLEU-4 computed by a script with its own rules. This module reproduces those
rules exactly (``../shared/golden/lab-eval/README.md``; the golden ``dev_scores.json`` is
reproduced to all 4 decimals), with two safety changes: a generated tool call is parsed with
``ast`` instead of ``eval``, and inputs that would crash the lab's script give a clear error or a
documented fallback. ``docs/evaluation.md`` lists every difference from our default protocol.

Per dialog (one line of the lab's test file, ``tools`` double-encoded as stored):

- the history starts with a system message: the tool preamble + ``json.dumps(tools)`` (no indent);
- ``user`` turn: the model is called; a tool call becomes the pending slots, a text reply the
  pending reply;
- ``assistant`` turn containing ``search_hotels`` (the "thought" before a call): skipped;
- other ``assistant`` turn: if it and the pending reply are both non-empty (stripped), BLEU-4 is
  scored and both are cleared; otherwise nothing happens (the pending reply stays);
- ``tool`` turn: pending slots against its ``parameters``, counts added, pending slots cleared;
  then, if it has an ``observation``, the model is called with it (role observation) and a text
  reply becomes the pending reply, a tool call the pending slots;
- the model's own answers, not the reference turns, go into the history (free-running).

>>> metrics = score_responses("dev.chatglm3.jsonl", "dev_responses.jsonl")  # doctest: +SKIP
>>> metrics["slot_F1"], metrics["bleu-4"]                                   # doctest: +SKIP
(87.7676, 61.5943)
"""

from __future__ import annotations

import ast
import contextlib
import json
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer_plugin.encoding import TOOL_PROMPT, message_ids, prefix_ids, render_tool_call_body
from trainer_plugin.metrics import char_bleu4

__all__ = [
    "Call",
    "LabCounts",
    "THOUGHT_MARKER",
    "lab_metrics",
    "lab_slot_counts",
    "parse_lab_response",
    "read_lab_file",
    "run_dialogs",
    "score_responses",
    "walk_dialog",
]

#: An assistant turn whose content holds this is the lab's "thought" before a call: not scored.
THOUGHT_MARKER = "search_hotels"
#: What the lab's chat() stops on; it does not stop on <|assistant|> (see generate_lab_calls).
LAB_STOPS = ("<|user|>", "<|observation|>")
#: The lab generates up to this many tokens in all, prompt included (``max_length=4096``).
LAB_MAX_LENGTH = 4096
#: With a model: what it answered, one line per dialog (the responses-file format) + raw text.
LAB_RESPONSES = "lab_responses.jsonl"

#: A model answer as the lab's chat() returns it: reply text, or {"name", "parameters"}.
Response = str | dict[str, Any]
#: What a call gives back: the assistant messages for the history, and the response.
Answer = tuple[list[dict[str, Any]], Response]


class LabDataError(ValueError):
    """A test or responses file cannot be scored by the lab protocol; the message says where."""


@dataclass(frozen=True)
class Call:
    """One point where the lab's loop calls the model: the query, its role, the history so far."""

    query: str
    role: str
    history: tuple[Mapping[str, Any], ...]


@dataclass
class LabCounts:
    """What the lab accumulates over a split."""

    correct: int = 0
    predicted: int = 0
    true: int = 0
    bleu: list[float] = field(default_factory=list)
    calls: int = 0
    unscored_replies: int = 0  # model replies never compared (the next reference was empty/absent)

    def add(self, other: LabCounts) -> None:
        self.correct += other.correct
        self.predicted += other.predicted
        self.true += other.true
        self.bleu.extend(other.bleu)
        self.calls += other.calls
        self.unscored_replies += other.unscored_replies


def lab_slot_counts(pred: Mapping[str, Any] | None, label: Mapping[str, Any] | None
                    ) -> tuple[int, int, int]:
    """(correct, predicted, true) slots, counted as the lab counts them, quirks included.

    - a ``None`` predicted value scores nothing but counts as one predicted slot;
    - a list value scores one per item found in the reference value: a repeated item scores
      twice, and a string reference is matched by substring (``"wifi" in "免费wifi"``);
    - a list counts ``len(list)`` slots, anything else one; the tool name is not compared.
    Where the lab's ``t in label[k]`` would raise (a number as reference), the item scores 0.

    >>> lab_slot_counts({"facilities": ["wifi", "wifi"], "type": None}, {"facilities": "免费wifi"})
    (2, 3, 1)
    """
    correct = 0
    for k, v in (pred or {}).items():
        if v is None:
            continue
        if label and k in label:
            if not isinstance(v, list):
                correct += int(v == label[k])
                continue
            for t in v:
                # A number as reference makes the lab's script die here; we score the item 0.
                with contextlib.suppress(TypeError):
                    correct += int(t in label[k])
    predicted = sum(len(v) if isinstance(v, list) else 1 for v in pred.values()) if pred else 0
    true = sum(len(v) if isinstance(v, list) else 1 for v in label.values()) if label else 0
    return correct, predicted, true


def walk_dialog(sample: Mapping[str, Any]) -> Generator[Call, Answer, LabCounts]:
    """The lab's loop over one dialog: yields each :class:`Call`, receives the model's answer
    (the assistant messages it adds to the history, and the response the lab scores).

    Drive it with ``send``; the counts of the dialog are the generator's return value.
    """
    tools = sample["tools"]
    history: list[dict[str, Any]] = [
        {"role": "system", "content": TOOL_PROMPT + json.dumps(tools, ensure_ascii=False)}
    ]
    counts = LabCounts()
    pred_slot: Any = {}
    pred_reply = ""

    def take(call: Call, answer: Answer) -> None:
        # Free-running: the query and the model's own messages go into the history. A tool call
        # replaces the pending slots, a text reply the pending reply; neither clears the other.
        nonlocal pred_slot, pred_reply
        messages, response = answer
        history.append({"role": call.role, "content": call.query})
        history.extend(messages)
        counts.calls += 1
        if isinstance(response, dict):
            pred_slot = response["parameters"]
        elif isinstance(response, str):
            counts.unscored_replies += bool(pred_reply)
            pred_reply = response.strip()

    for turn in sample["conversations"]:
        role = turn.get("role")
        if role == "user":
            call = Call(turn["content"], "user", tuple(history))
            take(call, (yield call))
        elif role == "assistant":
            content = turn["content"]
            if THOUGHT_MARKER in content:
                continue
            label_reply = content.strip()
            # Only when both sides are non-empty; otherwise the pending reply stays pending.
            if pred_reply and label_reply:
                counts.bleu.append(char_bleu4(pred_reply, label_reply))
                pred_reply = ""
        elif role == "tool":
            c, p, t = lab_slot_counts(pred_slot, turn["parameters"])
            counts.correct += c
            counts.predicted += p
            counts.true += t
            pred_slot = {}
            if "observation" in turn:
                query = json.dumps(turn["observation"], ensure_ascii=False)
                call = Call(query, "observation", tuple(history))
                take(call, (yield call))
        # Other roles (system, observation) are not looked at by the lab's loop.
    counts.unscored_replies += bool(pred_reply)
    return counts


def lab_metrics(counts: LabCounts) -> dict[str, float]:
    """``slot_P``, ``slot_R``, ``slot_F1``, ``bleu-4`` in percent, rounded to 4 places, computed
    with the lab's own arithmetic (so the last decimal agrees). BLEU-4 is 0 when no pair was
    scored (the lab's script divides by zero there)."""
    p = float(counts.correct / counts.predicted) if counts.predicted > 0 else 0
    r = float(counts.correct / counts.true) if counts.true > 0 else 0
    f1 = 2 * p * r / (p + r) if (p + r) > 0 else 0
    bleu = sum(counts.bleu) / len(counts.bleu) if counts.bleu else 0
    return {k: round(v * 100, 4) for k, v in
            (("slot_P", p), ("slot_R", r), ("slot_F1", f1), ("bleu-4", bleu))}


def read_lab_file(path: str | Path) -> list[dict[str, Any]]:
    """Every line of a lab test file, in order, exactly as stored (tools stay double-encoded).

    Unlike :func:`trainer_plugin.data.load_samples` nothing is skipped: a blank or broken line,
    or a dialog the lab's loop cannot walk, is an error naming the line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"test file not found: {path}")
    samples = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                sample = json.loads(line)
            except ValueError as e:
                raise LabDataError(f"{path}:{n}: not a JSON object ({e})") from e
            problem = _check_dialog(sample)
            if problem:
                raise LabDataError(f"{path}:{n}: {problem}")
            samples.append(sample)
    return samples


def _check_dialog(sample: Any) -> str | None:
    if not isinstance(sample, dict):
        return f"expected a JSON object, got {type(sample).__name__}"
    if "tools" not in sample:
        return 'no "tools" (the lab protocol puts them in the system message)'
    if not isinstance(sample.get("conversations"), list):
        return '"conversations" must be a list'
    for i, turn in enumerate(sample["conversations"]):
        if not isinstance(turn, dict):
            return f"conversations[{i}]: expected an object"
        need = {"user": "content", "assistant": "content", "tool": "parameters"}.get(
            turn.get("role"))
        if need and need not in turn:
            return f'conversations[{i}]: a {turn["role"]} turn needs "{need}"'
        if need == "content" and not isinstance(turn["content"], str):
            return f'conversations[{i}]: "content" must be a string'
        if need == "parameters" and not isinstance(turn["parameters"], dict):
            return f'conversations[{i}]: "parameters" must be an object'
    return None


def read_responses(path: str | Path) -> list[list[Response]]:
    """A responses file: one ``{"responses": [...]}`` line per dialog (``dev_responses.jsonl``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"responses file not found: {path}")
    out = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                responses = json.loads(line)["responses"]
            except (ValueError, KeyError, TypeError) as e:
                raise LabDataError(
                    f'{path}:{n}: expected {{"responses": [...]}} ({type(e).__name__}: {e})'
                ) from e
            for k, r in enumerate(responses):
                if not isinstance(r, str) and not (
                    isinstance(r, dict) and isinstance(r.get("parameters"), dict)
                ):
                    raise LabDataError(
                        f'{path}:{n}: responses[{k}] must be a string or '
                        f'{{"name", "parameters": {{...}}}}, got {json.dumps(r)[:80]}'
                    )
            out.append(responses)
    return out


def run_dialogs(samples: Sequence[Mapping[str, Any]],
                answer: Callable[[list[tuple[int, Call]]], list[Answer]]) -> list[LabCounts]:
    """Walk every dialog, all in step: each round, ``answer`` gets the pending call of every
    dialog still running (``(dialog index, call)``) and returns one response per call.

    Dialogs are independent, so batching their calls changes nothing but speed.
    """
    walkers = [walk_dialog(s) for s in samples]
    results: list[LabCounts | None] = [None] * len(samples)
    pending: dict[int, Call] = {}
    for i, w in enumerate(walkers):
        try:
            pending[i] = next(w)
        except StopIteration as stop:
            results[i] = stop.value
    while pending:
        calls = sorted(pending.items())
        responses = answer(calls)
        if len(responses) != len(calls):
            raise ValueError(f"{len(calls)} calls got {len(responses)} responses")
        pending = {}
        for (i, _), response in zip(calls, responses, strict=True):
            try:
                pending[i] = walkers[i].send(response)
            except StopIteration as stop:
                results[i] = stop.value
    return [r if r is not None else LabCounts() for r in results]


def score_responses(test_file: str | Path, responses_file: str | Path) -> dict[str, Any]:
    """Score precomputed responses (one line per dialog, in call order) on the lab's test file."""
    samples = read_lab_file(test_file)
    scripted = read_responses(responses_file)
    if len(scripted) != len(samples):
        raise LabDataError(f"{responses_file}: {len(scripted)} lines for {len(samples)} dialogs "
                           f"in {test_file}; one line per dialog, in order")
    used = [0] * len(samples)

    def answer(calls: list[tuple[int, Call]]) -> list[Answer]:
        out = []
        for i, _ in calls:
            if used[i] >= len(scripted[i]):
                raise LabDataError(f"{responses_file}:{i + 1}: the dialog calls the model more "
                                   f"than the {len(scripted[i])} responses given")
            response = scripted[i][used[i]]
            used[i] += 1
            out.append((_history_messages(response), response))
        return out

    per_dialog = run_dialogs(samples, answer)
    for i, n in enumerate(used):
        if n != len(scripted[i]):
            raise LabDataError(f"{responses_file}:{i + 1}: {len(scripted[i])} responses, but the "
                               f"dialog calls the model {n} times")
    return _report(per_dialog, test_file)


def _history_messages(response: Response) -> list[dict[str, Any]]:
    # What the lab's chat() would have put in the history for this response.
    if isinstance(response, str):
        return [{"role": "assistant", "metadata": "", "content": response}]
    body = render_tool_call_body(response["parameters"])
    return [{"role": "assistant", "metadata": str(response.get("name", "")), "content": body}]


def _report(per_dialog: Sequence[LabCounts], test_file: str | Path) -> dict[str, Any]:
    total = LabCounts()
    for c in per_dialog:
        total.add(c)
    return {
        **lab_metrics(total),
        "protocol": "lab",
        "scale": "percent",
        "dialogs": len(per_dialog),
        "calls": total.calls,
        "slots_correct": total.correct,
        "slots_predicted": total.predicted,
        "slots_true": total.true,
        "bleu_pairs": len(total.bleu),
        "replies_not_scored": total.unscored_replies,
        "test_file": str(test_file),
    }


# ---------------------------------------------------------------------------------------------
# with a model: the lab's chat(), without eval


def parse_lab_response(text: str) -> tuple[list[dict[str, Any]], Response]:
    """Decoded generation -> (assistant messages for the history, the response the lab scores).

    As the lab's chat(): the text is split on ``<|assistant|>`` (a thought, then a call); in
    each part the first line is the metadata. Empty metadata: a text reply, stripped. Otherwise a
    tool call whose fenced body's inner lines are parsed; the lab ``eval``s them, we accept only
    ``tool_call(k=literal, ...)`` (``ast``), and like the lab give ``{}`` when that fails. The
    last part is the response.

    >>> parse_lab_response("search_hotels\\n ```python\\ntool_call(type='经济型')\\n```")[1]
    {'name': 'search_hotels', 'parameters': {'type': '经济型'}}
    """
    messages: list[dict[str, Any]] = []
    response: Response = ""
    for part in text.split("<|assistant|>"):
        metadata, newline, body = part.partition("\n")
        if not newline:
            metadata, body = "", part
        if not metadata.strip():
            response = body.strip()
            messages.append({"role": "assistant", "metadata": metadata, "content": response})
        else:
            messages.append({"role": "assistant", "metadata": metadata, "content": body})
            code = "\n".join(body.split("\n")[1:-1])
            response = {"name": metadata.strip(), "parameters": _literal_tool_call(code)}
    return messages, response


def _literal_tool_call(code: str) -> dict[str, Any]:
    try:
        node = ast.parse(code.strip(), mode="eval").body
    except (SyntaxError, ValueError):
        return {}
    if (not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name)
            or node.func.id != "tool_call" or node.args):
        return {}
    params: dict[str, Any] = {}
    for kw in node.keywords:
        if kw.arg is None or kw.arg in params:  # **kwargs, or a key given twice (a SyntaxError)
            return {}
        try:
            params[kw.arg] = ast.literal_eval(kw.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return {}
    return params


def chat_prompt(tok: Any, history: Sequence[Mapping[str, Any]], query: str, role: str) -> list[int]:
    """The ids ChatGLM3's ``build_chat_input`` gives the lab's chat(): ``[gMASK] sop``, every
    history message (``<|role|> enc(metadata + "\\n") enc(content)``), the query message with
    empty metadata, then ``<|assistant|>``. The system message carries no ``tools`` key, so its
    content (preamble + compact tools JSON) is used as it is."""
    ids = prefix_ids(tok)
    for item in history:
        ids += message_ids(tok, item["role"], item.get("metadata", ""), item["content"])
    ids += message_ids(tok, role, "", query)
    ids.append(tok.token_id("<|assistant|>"))
    return ids


def _generate_as_the_lab(generate_fn: Any, tok: Any, prompts: list[list[int]],
                         max_new_tokens: int) -> list[list[int]]:
    # The lab's chat() stops on eos, <|user|> and <|observation|> only, and drops the last
    # generated token. Our generate_fn (evaluate.hf_generate_fn) also stops on <|assistant|> and
    # <|system|>: where it stops on one of those, generation simply goes on from there (greedy,
    # so the result is what one long generation gives): a thought, <|assistant|>, then the call.
    from trainer_plugin.evaluate import stop_ids

    lab_stops = {tok.eos_id, *(tok.token_id(t) for t in LAB_STOPS)}
    all_stops = lab_stops | set(stop_ids(tok))
    sofar: list[list[int]] = [[] for _ in prompts]
    final: list[list[int] | None] = [None] * len(prompts)
    active = list(range(len(prompts)))
    while active:
        outputs = generate_fn([prompts[k] + sofar[k] for k in active])
        still = []
        for k, out in zip(active, outputs, strict=True):
            out = [int(t) for t in out]
            j = next((n for n, t in enumerate(out) if t in all_stops), None)
            if j is not None and out[j] in lab_stops:
                final[k] = sofar[k] + out[:j]
                continue
            sofar[k] += out if j is None else out[: j + 1]
            budget_left = (len(sofar[k]) < max_new_tokens
                           and len(prompts[k]) + len(sofar[k]) < LAB_MAX_LENGTH)
            if j is None or not budget_left:
                # Out of tokens without a stop: the lab drops the last token here too.
                final[k] = sofar[k][:max_new_tokens][:-1]
            else:
                still.append(k)
        active = still
    return [f or [] for f in final]


def model_answer(generate_fn: Any, tok: Any, max_new_tokens: int = 256,
                 record: Callable[[int, str, Response], None] | None = None
                 ) -> Callable[[list[tuple[int, Call]]], list[Answer]]:
    """An ``answer`` for :func:`run_dialogs` that asks a model, as the lab's chat() does.

    ``record(dialog, text, response)`` sees every decoded generation (for the predictions file).
    """
    def answer(calls: list[tuple[int, Call]]) -> list[Answer]:
        prompts = [chat_prompt(tok, c.history, c.query, c.role) for _, c in calls]
        answers = []
        for (i, _), ids in zip(calls, _generate_as_the_lab(generate_fn, tok, prompts,
                                                            max_new_tokens), strict=True):
            # Ids in the model's padded embedding rows have no text (evaluate.decode_generated).
            text = tok.decode([t for t in ids if 0 <= t < tok.vocab_size])
            messages, response = parse_lab_response(text)
            if record is not None:
                record(i, text, response)
            answers.append((messages, response))
        return answers

    return answer


def evaluate_lab(model: str | Path | None, tokenizer: str | Path | None, test_file: str | Path,
                 out_dir: str | Path, *, responses: str | Path | None = None,
                 max_new_tokens: int = 256, batch_size: int = 1, limit: int | None = None,
                 base: str | Path | None = None, quantization: str = "auto", dtype: str = "auto",
                 trust_remote_code: bool = False, generate_fn: Any = None) -> dict[str, Any]:
    """The lab protocol on ``test_file``: score ``responses`` (no model), or run ``model``
    free-running. Writes ``metrics.json`` (and, with a model, ``lab_responses.jsonl``: one line
    per dialog in the responses-file format, plus the raw generations) under ``out_dir``."""
    out = Path(out_dir)
    if responses is not None:
        if model is not None or generate_fn is not None:
            raise ValueError("give either --responses (scores them, no model) or --model")
        metrics = score_responses(test_file, responses)
        metrics["responses"] = str(responses)
    else:
        if model is None and generate_fn is None:
            raise ValueError("--protocol lab needs --model, or --responses FILE to score "
                             "precomputed responses")
        if max_new_tokens < 1 or batch_size < 1:
            raise ValueError("max_new_tokens and batch_size must be at least 1")
        from dataprep.tokenizer import load_tokenizer

        tok = load_tokenizer(tokenizer or model, trust_remote_code=trust_remote_code)
        samples = read_lab_file(test_file)[:limit]
        if generate_fn is None:
            from trainer_plugin.evaluate import hf_generate_fn, load_for_generation

            loaded = load_for_generation(model, base=base, quantization=quantization,  # type: ignore[arg-type]
                                         dtype=dtype, trust_remote_code=trust_remote_code)
            generate_fn = hf_generate_fn(loaded, tok, max_new_tokens, batch_size)
        made: list[dict[str, list]] = [{"responses": [], "raw": []} for _ in samples]

        def record(i: int, text: str, response: Response) -> None:
            made[i]["responses"].append(response)
            made[i]["raw"].append(text)

        per_dialog = run_dialogs(samples, model_answer(generate_fn, tok, max_new_tokens, record))
        metrics = {**_report(per_dialog, test_file), "model": str(model),
                   "max_new_tokens": max_new_tokens}
        out.mkdir(parents=True, exist_ok=True)
        with (out / LAB_RESPONSES).open("w", encoding="utf-8") as f:
            for row in made:
                f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False),
                                      encoding="utf-8")
    return metrics


def add_lab_arguments(p: Any) -> None:
    """``dataprep-train eval`` options of the lab protocol."""
    p.add_argument("--protocol", choices=("default", "lab"), default="default",
                   help="default: our per-turn scoring on the reference history; lab: the "
                        "hotel lab's own free-running protocol and metric (docs/evaluation.md)")
    p.add_argument("--responses", type=Path, metavar="FILE.jsonl",
                   help="with --protocol lab: score these precomputed responses (one "
                        '{"responses": [...]} line per dialog) instead of running a model')


def run_lab_eval(args: Any) -> int:
    """``dataprep-train eval --protocol lab``."""
    m = evaluate_lab(args.model, args.tokenizer, args.test_file, args.out_dir,
                     responses=args.responses, max_new_tokens=args.max_new_tokens,
                     batch_size=args.batch_size, limit=args.limit, base=args.base,
                     quantization=args.quantization, dtype=args.dtype,
                     trust_remote_code=args.trust_remote_code)
    print(f"lab protocol, {m['dialogs']} dialogs, {m['calls']} model calls: slot_P {m['slot_P']}, "
          f"slot_R {m['slot_R']}, slot_F1 {m['slot_F1']}, bleu-4 {m['bleu-4']}")
    print(f"wrote {Path(args.out_dir) / 'metrics.json'}")
    return 0
