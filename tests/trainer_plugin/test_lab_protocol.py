"""eval --protocol lab: the hotel lab's own protocol and metric (../shared/golden/lab-eval)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import GlmForCausalLM

from dataprep.tokenizer import load_tokenizer
from trainer_plugin.cli import main
from trainer_plugin.encoding import TOOL_PROMPT, render_tool_call_body
from trainer_plugin.evaluate import stop_ids
from trainer_plugin.lab_protocol import (
    LAB_RESPONSES,
    LabDataError,
    lab_slot_counts,
    model_answer,
    parse_lab_response,
    read_lab_file,
    run_dialogs,
    score_responses,
    walk_dialog,
)
from trainer_plugin.modeling import tiny_glm_config


@pytest.fixture(scope="module")
def tok(tokenizer_dir: Path) -> Any:
    return load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="module")
def lab_eval(golden_dir: Path) -> Path:
    return golden_dir.parent / "lab-eval"


@pytest.fixture(scope="module")
def dev_file(corpora: Path) -> Path:
    return corpora / "crosswoz-hotel-finetune-lab" / "dev.chatglm3.jsonl"


def test_cli_reproduces_the_lab_scores_to_4_decimals(lab_eval, dev_file, tmp_path, capsys):
    code = main(["eval", "--protocol", "lab", "--responses", str(lab_eval / "dev_responses.jsonl"),
                 "--test-file", str(dev_file), "--out-dir", str(tmp_path)])
    assert code == 0
    golden = json.loads((lab_eval / "dev_scores.json").read_text(encoding="utf-8"))
    metrics = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    assert {k: metrics[k] for k in golden["scores"]} == golden["scores"]
    assert (metrics["dialogs"], metrics["calls"]) == (golden["dialogs"], golden["calls"])
    assert "slot_F1 87.7676, bleu-4 61.5943" in capsys.readouterr().out


def test_the_lab_file_is_read_exactly_as_stored(dev_file):
    samples = read_lab_file(dev_file)
    assert len(samples) == 201
    # tools stay double-encoded: the system message holds the compact JSON of a one-string list
    assert isinstance(samples[0]["tools"], list) and isinstance(samples[0]["tools"][0], str)
    call = next(walk_dialog(samples[0]))
    system = call.history[0]["content"]
    assert system == TOOL_PROMPT + json.dumps(samples[0]["tools"], ensure_ascii=False)
    assert '[\"[{\\\"name\\\": \\\"search_hotels\\\"' in system  # still an escaped string


def test_slot_counting_keeps_the_lab_quirks():
    # a repeated list item scores twice; a string reference matches by substring
    assert lab_slot_counts({"facilities": ["wifi", "wifi"]}, {"facilities": ["wifi"]}) == (2, 2, 1)
    assert lab_slot_counts({"facilities": ["wifi"]}, {"facilities": "免费wifi"}) == (1, 1, 1)
    # a None value scores nothing but is a predicted slot
    assert lab_slot_counts({"type": None, "rating_range_lower": 4.5},
                           {"rating_range_lower": 4.5}) == (1, 2, 1)
    # scalars compare with ==, so 300 and 300.0 agree; a list against a number scores 0 (the
    # lab's script dies there)
    assert lab_slot_counts({"price_range_upper": 300}, {"price_range_upper": 300.0}) == (1, 1, 1)
    assert lab_slot_counts({"price_range_upper": [300]}, {"price_range_upper": 300}) == (0, 1, 1)
    assert lab_slot_counts({}, {"facilities": ["a", "b"], "type": "经济型"}) == (0, 0, 3)
    assert lab_slot_counts(None, {}) == (0, 0, 0)


DIALOG = {
    "tools": ["[]"],
    "conversations": [
        {"role": "user", "content": "找一家经济型酒店"},
        {"role": "assistant", "content": "我需要使用search_hotels工具来查询酒店"},
        {"role": "tool", "name": "search_hotels", "parameters": {"type": "经济型"},
         "observation": [{"name": "如家"}]},
        {"role": "assistant", "content": ""},  # empty reference: nothing scored, reply stays
        {"role": "user", "content": "还有吗"},
        {"role": "assistant", "content": "推荐如家"},
    ],
}


def _run_scripted(dialog: dict, responses: list) -> tuple[Any, list]:
    walker, calls = walk_dialog(dialog), []
    try:
        call = next(walker)
        for r in responses:
            calls.append(call)
            call = walker.send(([{"role": "assistant", "metadata": "", "content": str(r)}], r))
    except StopIteration as stop:
        return stop.value, calls
    raise AssertionError("the dialog asked for more responses than given")


def test_walk_skips_thoughts_and_keeps_an_unscored_reply_pending():
    call = {"name": "search_hotels", "parameters": {"type": "经济型"}}
    counts, calls = _run_scripted(DIALOG, [call, "推荐如家", "推荐如家"])
    assert [c.role for c in calls] == ["user", "observation", "user"]
    assert (counts.correct, counts.predicted, counts.true) == (1, 1, 1)
    # The reply after the observation met an empty reference (not scored, stays pending), the
    # user turn's reply replaced it (counted as never scored), and that one was scored.
    assert counts.bleu == [1.0] and counts.unscored_replies == 1
    # free-running: the second user call's history holds the model's answers, not the references
    history = calls[2].history
    assert [m["role"] for m in history] == ["system", "user", "assistant", "observation",
                                            "assistant"]
    assert "我需要使用" not in json.dumps(history, ensure_ascii=False)
    assert history[3]["content"] == '[{"name": "如家"}]'


def test_a_text_answer_where_a_call_was_expected_scores_no_slot():
    counts, _ = _run_scripted(DIALOG, ["好的", "推荐如家", "推荐如家"])
    assert (counts.correct, counts.predicted, counts.true) == (0, 0, 1)


def test_generated_calls_are_parsed_without_eval(tmp_path: Path):
    text = "\n 我需要使用search_hotels工具来查询酒店<|assistant|>search_hotels\n ```python\n" \
           "tool_call(type='经济型', facilities=['wifi'])\n```"
    messages, response = parse_lab_response(text)
    assert response == {"name": "search_hotels",
                        "parameters": {"type": "经济型", "facilities": ["wifi"]}}
    assert [m["metadata"] for m in messages] == ["", "search_hotels"]
    assert messages[0]["content"] == "我需要使用search_hotels工具来查询酒店"
    marker = tmp_path / "pwned"
    evil = f"search_hotels\n```python\ntool_call(x=open({str(marker)!r}, 'w'))\n```"
    assert parse_lab_response(evil)[1] == {"name": "search_hotels", "parameters": {}}
    assert not marker.exists()
    assert parse_lab_response("\n 推荐如家。")[1] == "推荐如家。"


def test_bad_inputs_name_the_line(tmp_path: Path, dev_file: Path, lab_eval: Path):
    bad = tmp_path / "test.jsonl"
    bad.write_text(json.dumps({"tools": [], "conversations": [{"role": "tool"}]}) + "\n")
    with pytest.raises(LabDataError, match=r"test.jsonl:1: conversations\[0\]: a tool turn needs"):
        read_lab_file(bad)
    short = tmp_path / "responses.jsonl"
    lines = (lab_eval / "dev_responses.jsonl").read_text(encoding="utf-8").splitlines()
    short.write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")
    with pytest.raises(LabDataError, match="200 lines for 201 dialogs"):
        score_responses(dev_file, short)
    lines[3] = json.dumps({"responses": json.loads(lines[3])["responses"][:-1]})
    short.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(LabDataError, match="responses.jsonl:4: the dialog calls the model more"):
        score_responses(dev_file, short)


class ScriptedModel:
    """Stands in for generate(): "generates" the golden responses as token ids, one round of
    dialogs at a time, stopping where evaluate.hf_generate_fn stops (on every role token)."""

    def __init__(self, tok: Any, outputs: dict[int, list[int]]):
        self.stops = set(stop_ids(tok))
        self.outputs = outputs  # dialog -> the ids it still has to generate this round
        self.returned: dict[int, list[int]] = {}

    def __call__(self, prompts: list[list[int]]) -> list[list[int]]:
        # The dialogs still generating, in order: every one on the first call of the round.
        dialogs = [d for d, ids in self.outputs.items() if ids]
        assert len(dialogs) == len(prompts)
        out = []
        for d, prompt in zip(dialogs, prompts, strict=True):
            if d in self.returned:  # a continuation starts from what was generated so far
                assert prompt[-len(self.returned[d]):] == self.returned[d]
            ids = self.outputs[d]
            cut = next(k for k, t in enumerate(ids) if t in self.stops) + 1
            out.append(ids[:cut])
            self.returned[d] = ids[:cut]
            self.outputs[d] = ids[cut:]
        return out


def _as_generated(tok: Any, response: Any) -> list[int]:
    enc = tok.encode
    if isinstance(response, str):
        return [*enc("\n"), *enc(response), tok.token_id("<|user|>")]
    # a thought, then the call, as the model was trained to write them
    return [*enc("\n"), *enc("我需要使用search_hotels工具来查询酒店"), tok.token_id("<|assistant|>"),
            *enc(response["name"] + "\n"), *enc(render_tool_call_body(response["parameters"])),
            tok.token_id("<|observation|>")]


def test_the_model_path_scores_what_the_responses_path_scores(tok, lab_eval, dev_file):
    # A model that "answers" the golden responses, through prompts, generation that stops on
    # <|assistant|> and goes on, decoding and parsing, must give the golden scores.
    samples = read_lab_file(dev_file)
    scripted = [json.loads(x)["responses"] for x in
                (lab_eval / "dev_responses.jsonl").read_text(encoding="utf-8").splitlines()]
    used = [0] * len(samples)

    def one_round(calls):
        outputs = {}
        for i, _ in calls:
            outputs[i] = _as_generated(tok, scripted[i][used[i]])
            used[i] += 1
        return model_answer(ScriptedModel(tok, outputs), tok, max_new_tokens=4096)(calls)

    per_dialog = run_dialogs(samples, one_round)
    golden = json.loads((lab_eval / "dev_scores.json").read_text(encoding="utf-8"))["scores"]
    from trainer_plugin.lab_protocol import _report

    assert {k: _report(per_dialog, dev_file)[k] for k in golden} == golden
    assert used == [len(r) for r in scripted]


def test_cli_runs_a_real_tiny_model_free(tokenizer_dir, dev_file, tmp_path, capsys):
    torch.manual_seed(0)
    GlmForCausalLM(tiny_glm_config(num_hidden_layers=1)).save_pretrained(tmp_path / "model")
    out = tmp_path / "out"
    code = main(["eval", "--protocol", "lab", "--model", str(tmp_path / "model"),
                 "--tokenizer", str(tokenizer_dir), "--test-file", str(dev_file),
                 "--out-dir", str(out), "--limit", "2", "--max-new-tokens", "3"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dialogs"] == 2 and metrics["protocol"] == "lab" and metrics["calls"] >= 2
    assert "lab protocol, 2 dialogs" in capsys.readouterr().out
    rows = [json.loads(x) for x in (out / LAB_RESPONSES).read_text().splitlines()]
    assert sum(len(r["responses"]) for r in rows) == metrics["calls"]
    assert all(len(r["raw"]) == len(r["responses"]) for r in rows)
    # what it answered, written in the responses format, scores the same without the model
    two = tmp_path / "two.jsonl"
    two.write_text("".join(dev_file.read_text(encoding="utf-8").splitlines(True)[:2]),
                   encoding="utf-8")
    again = score_responses(two, out / LAB_RESPONSES)
    keys = ("slot_P", "slot_R", "slot_F1", "bleu-4", "calls")
    assert {k: again[k] for k in keys} == {k: metrics[k] for k in keys}
    # --responses and --model together, or --responses without the lab protocol: usage errors
    assert main(["eval", "--protocol", "lab", "--model", "m", "--responses", "r",
                 "--test-file", str(dev_file), "--out-dir", str(tmp_path)]) == 2
    assert main(["eval", "--responses", "r", "--test-file", str(dev_file),
                 "--out-dir", str(tmp_path)]) == 2
