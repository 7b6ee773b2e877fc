"""Generate on a test split turn by turn and score it; or just predict the next turn.

For every trained assistant-side turn of a sample (a text reply or a tool call) the prompt is the
sample's own training token stream up to and including that turn's ``<|assistant|>`` token, so
the model sees exactly what it was trained on. The generated ids are decoded with the tokenizer;
the text is a metadata line (a tool name, or empty) followed by the body, as in training.
Scoring lives in :mod:`trainer_plugin.metrics` (pure functions).

>>> result = evaluate("out/merged", "out/merged", "out/test.jsonl", "out/eval")  # doctest: +SKIP
>>> result.metrics["slot_f1"], result.metrics["bleu4"]                          # doctest: +SKIP
(95.3, 60.1)
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer_plugin.metrics import TASKS, Reply, aggregate, score_turn
from trainer_plugin.modeling import (
    ADAPTER_CONFIG,
    TRAIN_INFO,
    QuantConfig,
    default_device_map,
    load_causal_lm,
    output_rows,
)

#: Takes prompts (token ids), returns the generated ids of each (stop token included or not).
GenerateFn = Callable[[list[list[int]]], list[list[int]]]

PREDICTIONS = "predictions.jsonl"
METRICS = "metrics.json"
# A turn ends where the next message would start (ChatGLM3's own chat() stops on these too).
STOP_TOKENS = ("<|user|>", "<|observation|>", "<|assistant|>", "<|system|>")


@dataclass
class Turn:
    """One assistant-side turn of a test sample, ready to generate and score."""

    sample: int
    sample_id: str | None
    message: int
    task: str
    prompt_ids: list[int]
    reference: Reply
    reference_ids: list[int]
    """The turn's tokens in the training stream, with the token that ends it."""


def infer_task(sample: Mapping[str, Any]) -> str:
    """dialog, triple or docqa: the sample's ``task`` key, else a hint in its corpus/label/id.

    >>> infer_task({"corpus": "spo", "conversations": []})
    'triple'
    """
    if sample.get("task") in TASKS:
        return str(sample["task"])
    lineage = sample.get("lineage") if isinstance(sample.get("lineage"), Mapping) else {}
    hint = " ".join(str(x) for x in (sample.get("corpus"), sample.get("label"), sample.get("id"),
                                     lineage.get("source"))).lower()
    # Whole words only: "spo" must match "spo_0.json" but not "response".
    words = set(re.split(r"[^a-z0-9]+", hint))
    if words & {"spo", "triple", "triples"}:
        return "triple"
    if any(w.startswith(("cmrc", "dureader", "docqa")) for w in words) or {"doc", "qa"} <= words:
        return "docqa"
    return "dialog"


def reference_reply(message: Mapping[str, Any]) -> Reply:
    from trainer_plugin.encoding import render_tool_call

    if message.get("role") == "tool":
        params = dict(message.get("parameters") or {})
        return Reply("tool", render_tool_call(message["name"], params), message["name"], params)
    return Reply("text", str(message.get("content", "")))


def parse_reply(text: str) -> Reply:
    """Generated text -> a text reply or a tool call (parsed with ``ast``, never evaluated).

    A non-empty metadata line marks a tool call; if its arguments do not parse it still counts as
    a tool call, with ``parameters=None``. Text without a newline has no metadata line and is read
    as a text reply.

    >>> parse_reply("\\n 好的，为您查询。")
    Reply(kind='text', text='好的，为您查询。', name=None, parameters=None)
    >>> parse_reply("search_hotels\\n ```python\\ntool_call(type='经济型')\\n```").parameters
    {'type': '经济型'}
    """
    from trainer_plugin.encoding import parse_tool_call

    call = parse_tool_call(text)
    if call is not None:
        return Reply("tool", text.strip(), call[0], call[1])
    meta, newline, body = text.partition("\n")
    if newline and meta.strip():
        return Reply("tool", text.strip(), meta.strip(), None)
    return Reply("text", (body if newline else text).strip())


def build_turns(samples: Sequence[Mapping[str, Any]], tok: Any, compat: str = "default",
                task: str = "auto") -> list[Turn]:
    """Every trained assistant-side turn of every sample, with its prompt and reference."""
    from trainer_plugin.encoding import encode_conversation

    if task != "auto" and task not in TASKS:
        raise ValueError(f"unknown task {task!r}; use auto or one of {', '.join(TASKS)}")
    turns = []
    for i, sample in enumerate(samples):
        enc = encode_conversation(sample, tok, compat)
        sample_task = infer_task(sample) if task == "auto" else task
        for span in enc.spans:
            # A tool message renders as an assistant span (the call) plus an observation span.
            if span.role != "assistant" or not span.trained or span.index is None:
                continue
            turns.append(Turn(
                sample=i, sample_id=sample.get("id"), message=span.index, task=sample_task,
                prompt_ids=enc.input_ids[: span.start + 1],
                reference=reference_reply(sample["conversations"][span.index]),
                reference_ids=enc.input_ids[span.start + 1 : span.end + 1],
            ))
    return turns


def stop_ids(tok: Any) -> list[int]:
    from dataprep.tokenizer import TokenizerError

    ids = [tok.eos_id]
    for name in STOP_TOKENS:
        with contextlib.suppress(TokenizerError):  # a tokenizer without that role token
            ids.append(tok.token_id(name))
    return ids


def decode_generated(ids: Sequence[int], tok: Any, stops: Sequence[int]) -> tuple[str, bool]:
    """Text of the generated ids up to the first stop token, and whether one was reached."""
    ids = [int(t) for t in ids]
    stopped = next((k for k, t in enumerate(ids) if t in stops), None)
    if stopped is not None:
        ids = ids[:stopped]
    # Ids past the tokenizer (the model's padded embedding rows) have no text; skip them.
    return tok.decode([t for t in ids if 0 <= t < tok.vocab_size]), stopped is not None


def hf_generate_fn(model: Any, tok: Any, max_new_tokens: int = 256, batch_size: int = 1) -> GenerateFn:
    """Greedy generation with a transformers model; batches are left-padded, shortest first."""
    import torch

    stops = stop_ids(tok)
    rows = output_rows(model)
    # The embedding is padded past the tokenizer (65,024 rows for 64,798 ChatGLM3 tokens); an id
    # there means nothing, so the model may not pick one.
    suppress = list(range(tok.vocab_size, rows)) or None

    @torch.no_grad()
    def generate(prompts: list[list[int]]) -> list[list[int]]:
        model.eval()
        out: list[list[int]] = [[] for _ in prompts]
        order = sorted(range(len(prompts)), key=lambda k: len(prompts[k]))
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            width = max(len(prompts[k]) for k in chunk)
            ids = [[tok.pad_id] * (width - len(prompts[k])) + prompts[k] for k in chunk]
            mask = [[0] * (width - len(prompts[k])) + [1] * len(prompts[k]) for k in chunk]
            device = model.device
            gen = model.generate(
                input_ids=torch.tensor(ids, device=device),
                attention_mask=torch.tensor(mask, device=device),
                max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops,
                pad_token_id=tok.pad_id, suppress_tokens=suppress,
            )
            for row, k in enumerate(chunk):
                out[k] = gen[row, width:].tolist()
        return out

    return generate


def load_for_generation(model: str | Path, *, base: str | Path | None = None,
                        quantization: str = "auto", dtype: str = "auto",
                        trust_remote_code: bool = False) -> Any:
    """A merged model folder, or an adapter folder on its base (in 4-bit if it was trained so).

    ``quantization``: auto (as the adapter was trained; full precision for a plain model),
    none, 4 or 8.
    """
    model = Path(model)
    if quantization not in ("auto", "none", "4", "8"):
        raise ValueError(f"quantization must be auto, none, 4 or 8, got {quantization!r}")
    is_adapter = (model / ADAPTER_CONFIG).is_file()
    info: dict[str, Any] = {}
    if (model / TRAIN_INFO).is_file():
        info = json.loads((model / TRAIN_INFO).read_text(encoding="utf-8"))
    quant = None
    if quantization in ("4", "8"):
        quant = QuantConfig(bits=int(quantization), compute_dtype=dtype)
    elif quantization == "auto" and is_adapter and info.get("quantization"):
        quant = QuantConfig(**{**info["quantization"], "compute_dtype": dtype})
    if not is_adapter:
        return load_causal_lm(model, dtype=dtype, quant=quant, device_map=default_device_map(),
                              trust_remote_code=trust_remote_code)
    from peft import PeftModel

    if base is None:
        adapter_cfg = json.loads((model / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        base = info.get("base_model") or adapter_cfg.get("base_model_name_or_path")
        if not base:
            raise ValueError(f"{model}: the adapter does not name its base model; pass --base")
    from trainer_plugin.lora_layout import native_adapter

    loaded = load_causal_lm(base, dtype=dtype, quant=quant, device_map=default_device_map(),
                            trust_remote_code=trust_remote_code)
    # An adapter on ChatGLM3's fused query_key_value is converted for the native model first.
    return PeftModel.from_pretrained(loaded, str(native_adapter(model, base)))


@dataclass
class EvalResult:
    metrics: dict[str, Any]
    predictions_path: Path
    metrics_path: Path


def evaluate(
    model: str | Path,
    tokenizer: str | Path,
    test_file: str | Path,
    out_dir: str | Path,
    max_new_tokens: int = 256,
    batch_size: int = 1,
    *,
    base: str | Path | None = None,
    task: str = "auto",
    compat: str = "default",
    limit: int | None = None,
    quantization: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    generate_fn: GenerateFn | None = None,
) -> EvalResult:
    """Score ``model`` on ``test_file`` turn by turn; writes predictions.jsonl and metrics.json.

    ``model`` is a merged model folder or an adapter folder (its base is found from the adapter,
    or given as ``base``). ``limit`` evaluates the first N samples only. ``generate_fn`` replaces
    the model (tests, or a serving backend).
    """
    from dataprep.tokenizer import load_tokenizer
    from trainer_plugin.data import load_samples

    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError("max_new_tokens and batch_size must be at least 1")
    tok = load_tokenizer(tokenizer, trust_remote_code=trust_remote_code)
    samples = load_samples(test_file)[:limit]
    turns = build_turns(samples, tok, compat, task)
    if not turns:
        raise ValueError(f"{test_file}: no trained assistant turn to evaluate")
    if generate_fn is None:
        loaded = load_for_generation(model, base=base, quantization=quantization, dtype=dtype,
                                     trust_remote_code=trust_remote_code)
        generate_fn = hf_generate_fn(loaded, tok, max_new_tokens, batch_size)
    generated = generate_fn([t.prompt_ids for t in turns])

    stops = stop_ids(tok)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scores, unfinished = [], 0
    predictions_path = out_dir / PREDICTIONS
    with predictions_path.open("w", encoding="utf-8") as f:
        for turn, ids in zip(turns, generated, strict=True):
            text, stopped = decode_generated(ids, tok, stops)
            unfinished += not stopped
            prediction = parse_reply(text)
            score = score_turn(prediction, turn.reference, turn.task)
            scores.append(score)
            f.write(json.dumps({
                "sample": turn.sample, "id": turn.sample_id, "message": turn.message,
                "task": turn.task, "prompt_tokens": len(turn.prompt_ids),
                "reference": turn.reference.to_dict(), "prediction": prediction.to_dict(),
                "raw": text, "stopped": stopped, "scores": score.to_dict(),
            }, ensure_ascii=False, default=str) + "\n")
    metrics = {
        **aggregate(scores), "samples": len(samples), "unfinished_generations": unfinished,
        "model": str(model), "test_file": str(test_file), "max_new_tokens": max_new_tokens,
    }
    metrics_path = out_dir / METRICS
    metrics_path.write_text(json.dumps(metrics, indent=2, ensure_ascii=False), encoding="utf-8")
    return EvalResult(metrics, predictions_path, metrics_path)


def predict(
    model: str | Path,
    tokenizer: str | Path,
    input_file: str | Path,
    out_file: str | Path,
    max_new_tokens: int = 256,
    batch_size: int = 1,
    *,
    base: str | Path | None = None,
    compat: str = "default",
    quantization: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    generate_fn: GenerateFn | None = None,
) -> Path:
    """Generate the next assistant turn after each conversation of ``input_file``.

    Writes each input sample back with a ``prediction`` key (``kind``, ``text``, and for a tool
    call ``name`` and ``parameters``).
    """
    from dataprep.tokenizer import load_tokenizer
    from trainer_plugin.data import load_samples
    from trainer_plugin.encoding import encode_conversation

    tok = load_tokenizer(tokenizer, trust_remote_code=trust_remote_code)
    samples = load_samples(input_file)
    assistant = tok.token_id("<|assistant|>")
    # Drop the eos that closes every encoded sample: the conversation goes on with our turn.
    prompts = [encode_conversation(s, tok, compat).input_ids[:-1] + [assistant] for s in samples]
    if generate_fn is None:
        loaded = load_for_generation(model, base=base, quantization=quantization, dtype=dtype,
                                     trust_remote_code=trust_remote_code)
        generate_fn = hf_generate_fn(loaded, tok, max_new_tokens, batch_size)
    stops = stop_ids(tok)
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with out_file.open("w", encoding="utf-8") as f:
        for sample, ids in zip(samples, generate_fn(prompts), strict=True):
            text, _ = decode_generated(ids, tok, stops)
            line = {**sample, "prediction": parse_reply(text).to_dict()}
            f.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")
    return out_file


# ---------------------------------------------------------------------------------------------
# command line (registered in trainer_plugin.cli)


def _add_model_arguments(p: Any, model_required: bool = True) -> None:
    p.add_argument("--model", required=model_required, type=Path, metavar="DIR",
                   help="model folder (native or official ChatGLM3 layout, quantized or not), "
                        "or a LoRA adapter folder (ours, or a ChatGLM3 query_key_value one)")
    p.add_argument("--tokenizer", type=Path, metavar="PATH",
                   help="tokenizer folder (default: the --model folder, where train and merge "
                        "copy it)")
    p.add_argument("--base", type=Path, metavar="PATH",
                   help="base model of an adapter (default: the one it was trained on)")
    p.add_argument("--max-new-tokens", type=int, default=256, metavar="N")
    p.add_argument("--batch-size", type=int, default=1, metavar="N",
                   help="prompts generated together (left-padded)")
    p.add_argument("--compat", choices=("default", "official"), default="default",
                   help="prompt encoding, as in training")
    p.add_argument("--quantization", choices=("auto", "none", "4", "8"), default="auto",
                   help="load the base in 4/8 bits; auto: as the adapter was trained")
    p.add_argument("--dtype", choices=("auto", "bfloat16", "float16", "float32"), default="auto")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow the model/tokenizer folder to run its own Python code")


def add_eval_arguments(p: Any) -> None:
    """Options of ``dataprep-train eval``."""
    from trainer_plugin.lab_protocol import add_lab_arguments

    _add_model_arguments(p, model_required=False)  # --protocol lab --responses needs no model
    add_lab_arguments(p)
    p.add_argument("--test-file", required=True, type=Path, metavar="TEST.jsonl",
                   help="dataprep test split")
    p.add_argument("--out-dir", required=True, type=Path, metavar="DIR",
                   help="gets predictions.jsonl and metrics.json")
    p.add_argument("--task", choices=("auto", *TASKS), default="auto",
                   help="scoring: dialog (slots + BLEU), triple, docqa; auto: from each sample")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N samples")


def run_eval(args: Any) -> int:
    """``dataprep-train eval``: thin wrapper over :func:`evaluate` (or the lab protocol)."""
    if args.protocol == "lab":
        from trainer_plugin.lab_protocol import run_lab_eval

        return run_lab_eval(args)
    if args.responses is not None:
        raise ValueError("--responses is for --protocol lab")
    if args.model is None:
        raise ValueError("eval: --model is required (or --protocol lab --responses FILE)")
    result = evaluate(args.model, args.tokenizer or args.model, args.test_file, args.out_dir,
                      args.max_new_tokens, args.batch_size, base=args.base, task=args.task,
                      compat=args.compat, limit=args.limit, quantization=args.quantization,
                      dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    m = result.metrics
    parts = [f"{m['turns']} turns of {m['samples']} samples"]
    for key in ("slot_f1", "bleu4", "rouge_l", "triple_f1"):
        if key in m:
            parts.append(f"{key} {m[key]:.2f}")
    print("; ".join(parts))
    print(f"wrote {result.metrics_path} and {result.predictions_path}")
    return 0


def add_predict_arguments(p: Any) -> None:
    """Options of ``dataprep-train predict``."""
    _add_model_arguments(p)
    p.add_argument("--input", required=True, type=Path, metavar="FILE.jsonl",
                   help="conversations to continue with one assistant turn each")
    p.add_argument("--output", required=True, type=Path, metavar="OUT.jsonl",
                   help="each input line with a 'prediction' key added")


def run_predict(args: Any) -> int:
    """``dataprep-train predict``: thin wrapper over :func:`predict`."""
    out = predict(args.model, args.tokenizer or args.model, args.input, args.output,
                  args.max_new_tokens, args.batch_size, base=args.base, compat=args.compat,
                  quantization=args.quantization, dtype=args.dtype,
                  trust_remote_code=args.trust_remote_code)
    print(f"wrote {out}")
    return 0
