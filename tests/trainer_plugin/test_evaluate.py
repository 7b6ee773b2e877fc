"""Turn-by-turn evaluation: prompts from the training encoding, decoding, parsing, files written."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import GlmForCausalLM

from dataprep.tokenizer import load_tokenizer
from trainer_plugin.data import load_samples
from trainer_plugin.encoding import encode_conversation
from trainer_plugin.evaluate import (
    METRICS,
    PREDICTIONS,
    build_turns,
    evaluate,
    hf_generate_fn,
    infer_task,
    parse_reply,
    predict,
    stop_ids,
)
from trainer_plugin.modeling import tiny_glm_config


@pytest.fixture(scope="session")
def tok(tokenizer_dir: Path) -> Any:
    return load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="session")
def test_file(lab_samples: Path) -> Path:
    return lab_samples


def replay(turns: list, pick: Callable) -> Callable[[list[list[int]]], list[list[int]]]:
    """A stand-in model that answers each known prompt with ``pick(turn)`` token ids."""
    by_prompt = {tuple(t.prompt_ids): t for t in turns}
    return lambda prompts: [pick(by_prompt[tuple(p)]) for p in prompts]


# ---------------------------------------------------------------------------------------------
# parsing model output


def test_parse_reply_reads_the_metadata_line() -> None:
    assert parse_reply("\n 好的，为您查询。").text == "好的，为您查询。"
    call = parse_reply("search_hotels\n ```python\ntool_call(type='经济型', price_range_upper=300)\n```")
    assert (call.kind, call.name, call.parameters) == (
        "tool", "search_hotels", {"type": "经济型", "price_range_upper": 300})
    assert parse_reply("没有换行的回答").kind == "text"


def test_parse_reply_never_evaluates_model_output(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    code = f"search_hotels\n```python\ntool_call(x=open({str(marker)!r}, 'w'))\n```"
    reply = parse_reply(code)
    assert reply.kind == "tool" and reply.parameters is None
    assert not marker.exists()


def test_infer_task_from_sample_hints() -> None:
    assert infer_task({"corpus": "spo", "conversations": []}) == "triple"
    assert infer_task({"lineage": {"source": "cmrc2018_dev.json"}}) == "docqa"
    assert infer_task({"task": "docqa", "corpus": "spo"}) == "docqa"
    assert infer_task({"corpus": "multi-doc-qa-chinese"}) == "docqa"
    assert infer_task({"tools": []}) == "dialog"
    assert infer_task({"id": "hotel:response-12"}) == "dialog"  # "spo" inside a word is no hint


# ---------------------------------------------------------------------------------------------
# prompts


def test_prompts_are_the_training_stream_up_to_the_assistant_token(tok, test_file: Path) -> None:
    samples = load_samples(test_file)
    turns = build_turns(samples, tok)
    assistant = tok.token_id("<|assistant|>")
    expected = sum(1 for s in samples for m in s["conversations"]
                   if m["role"] in ("assistant", "tool"))
    assert len(turns) == expected == 7
    assert sum(t.reference.kind == "tool" for t in turns) == 3
    for t in turns:
        full = encode_conversation(samples[t.sample], tok).input_ids
        n = len(t.prompt_ids)
        assert t.prompt_ids[-1] == assistant
        assert full[:n] == t.prompt_ids and full[n : n + len(t.reference_ids)] == t.reference_ids
        assert t.reference_ids[-1] in stop_ids(tok)


def test_untrained_assistant_turns_are_not_scored(tok) -> None:
    sample = {"conversations": [
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "不要学这句", "loss": False},
        {"role": "user", "content": "推荐酒店"},
        {"role": "assistant", "content": "推荐北京饭店"},
    ]}
    turns = build_turns([sample], tok)
    assert [t.message for t in turns] == [3]


# ---------------------------------------------------------------------------------------------
# end to end with stand-in models


def test_perfect_answers_score_100(tok, tokenizer_dir: Path, test_file: Path,
                                   tmp_path: Path) -> None:
    turns = build_turns(load_samples(test_file), tok)
    result = evaluate("unused", tokenizer_dir, test_file, tmp_path,
                      generate_fn=replay(turns, lambda t: t.reference_ids))
    m = result.metrics
    assert (m["slot_f1"], m["bleu4"], m["rouge_l"], m["tool_name_accuracy"]) == (100, 100, 100, 100)
    assert m["slots_reference"] == 3 and m["unfinished_generations"] == 0
    lines = result.predictions_path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(turns) == m["turns"]


def test_cross_penalties_apply_end_to_end(tok, tokenizer_dir: Path, test_file: Path,
                                          tmp_path: Path) -> None:
    turns = build_turns(load_samples(test_file), tok)
    text_ids = tok.encode("\n") + tok.encode("好的，请稍等。") + [tok.eos_id]
    call_ids = (tok.encode("search_hotels\n") + tok.encode("```python\ntool_call(type='经济型')\n```")
                + [tok.token_id("<|observation|>")])
    # Always text: every tool turn loses all its slots.
    m = evaluate("unused", tokenizer_dir, test_file, tmp_path / "text",
                 generate_fn=replay(turns, lambda t: text_ids)).metrics
    assert m["slot_recall"] == 0 and m["tool_answered_as_text"] == 3
    # Always the same tool call: text turns get BLEU 0.
    m = evaluate("unused", tokenizer_dir, test_file, tmp_path / "tool",
                 generate_fn=replay(turns, lambda t: call_ids)).metrics
    assert m["bleu4"] == 0 and m["text_answered_as_tool"] == 4
    assert m["slots_predicted"] == 3 and m["tool_name_accuracy"] == 100


def test_triple_samples_get_triple_scores(tok: Any, tokenizer_dir: Path, tmp_path: Path) -> None:
    sample = {"id": "spo:1", "corpus": "spo", "conversations": [
        {"role": "user", "content": "故障现象：发动机水温高，风扇始终是低速转动。"},
        {"role": "assistant", "content": "发动机_部件故障_水温高\n风扇_部件故障_低速转动"}]}
    path = tmp_path / "spo.jsonl"
    path.write_text(json.dumps(sample, ensure_ascii=False) + "\n", encoding="utf-8")
    (turn,) = build_turns([sample], tok)
    half = tok.encode("\n") + tok.encode("发动机_部件故障_水温高") + [tok.eos_id]
    m = evaluate("unused", tokenizer_dir, path, tmp_path / "out",
                 generate_fn=lambda prompts: [half]).metrics
    assert m["task"] == "triple"
    assert (m["triple_precision"], m["triple_recall"]) == (100.0, 50.0)
    assert turn.reference.text.count("_") == 4


# ---------------------------------------------------------------------------------------------
# end to end with real (tiny) models


def test_generation_never_picks_ids_the_tokenizer_lacks(tok: Any) -> None:
    # Make id 64900 (a padded embedding row past the 64,798 tokenizer ids) the model's favourite.
    model = GlmForCausalLM(tiny_glm_config(num_hidden_layers=1))
    model.lm_head.register_forward_hook(
        lambda module, args, out: out.index_fill(-1, torch.tensor([64900]), 1e4))
    prompt = [tok.token_id("[gMASK]"), tok.token_id("sop"), tok.token_id("<|assistant|>")]
    with torch.no_grad():
        assert model(input_ids=torch.tensor([prompt])).logits[0, -1].argmax() == 64900
    (generated,) = hf_generate_fn(model, tok, max_new_tokens=3)([prompt])
    assert len(generated) == 3 and all(t < tok.vocab_size for t in generated)


def test_eval_runs_an_adapter_on_its_4bit_base(qlora_run, test_file: Path,
                                              tmp_path: Path) -> None:
    # The adapter folder holds the tokenizer files and names its base and 4-bit settings.
    result = evaluate(qlora_run.adapter, qlora_run.adapter, test_file, tmp_path,
                      max_new_tokens=3, batch_size=2, limit=2)
    m = json.loads((tmp_path / METRICS).read_text())
    assert m == result.metrics
    assert m["samples"] == 2 and m["turns"] == 5
    assert {"slot_f1", "bleu4", "rouge_l"} <= m.keys()
    rows = [json.loads(x) for x in (tmp_path / PREDICTIONS).read_text().splitlines()]
    assert len(rows) == 5
    assert all(r["prediction"]["kind"] in ("text", "tool") for r in rows)
    assert all(0 <= (r["scores"].get("bleu4") or 0) <= 1 for r in rows)


def test_predict_continues_each_conversation(tiny_model: Path, tokenizer_dir: Path,
                                             tmp_path: Path) -> None:
    base = tiny_model
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "a", "conversations": [
        {"role": "user", "content": "帮我找一家经济型酒店"}]}, ensure_ascii=False) + "\n")
    out = predict(base, tokenizer_dir, src, tmp_path / "out.jsonl", max_new_tokens=3)
    (row,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert row["id"] == "a" and row["conversations"][0]["content"] == "帮我找一家经济型酒店"
    assert row["prediction"]["kind"] in ("text", "tool")

