"""train, merge (both layouts, quantized), convert, eval and predict on the official-layout golden
folder given as is, as a user with a real ChatGLM3 checkpoint runs them."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import bitsandbytes as bnb
import pytest
import torch
from transformers import AutoModelForCausalLM, GlmForCausalLM

from dataprep.tokenizer import load_tokenizer
from trainer_plugin.chatglm3_checkpoint import is_chatglm3, iter_tensors, read_config
from trainer_plugin.cli import main
from trainer_plugin.evaluate import evaluate, hf_generate_fn, predict
from trainer_plugin.merge import merge
from trainer_plugin.modeling import load_causal_lm, output_rows, quiet_bitsandbytes


@pytest.fixture(scope="session")
def merged_native(chatglm3_model_dir: Path, chatglm3_qlora_run: Any,
                  tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("merge") / "native"
    merge(chatglm3_model_dir, chatglm3_qlora_run.adapter, out, dtype="float32", from_4bit=True)
    return out


def logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits[0].float()


@pytest.fixture(scope="session")
def sample_ids(official_outputs: dict[str, Any]) -> torch.Tensor:
    return torch.tensor([official_outputs["forward"][3]["input_ids"]])


def test_qlora_with_gradient_checkpointing_on_the_official_folder(chatglm3_qlora_run: Any) -> None:
    run = chatglm3_qlora_run
    assert run.checkpointing and run.result.global_step == 2
    lora = [n for n in run.before if "lora_" in n]
    base = [n for n in run.before if "lora_" not in n]
    assert lora and all(not torch.equal(run.before[n], run.after[n]) for n in lora)
    assert all(torch.equal(run.before[n], run.after[n]) for n in base)
    # It trained the native GLM (q/k/v/o and the MLP), with a 4-bit base.
    assert {"q_proj", "k_proj", "v_proj", "gate_up_proj"} <= set(run.result.target_modules)
    assert sum(run.before[n].dtype == torch.uint8 for n in base) == 12


def test_merge_into_the_official_folder_as_native(merged_native: Path, chatglm3_qlora_run: Any,
                                                  sample_ids: torch.Tensor) -> None:
    model = AutoModelForCausalLM.from_pretrained(merged_native)
    assert isinstance(model, GlmForCausalLM)
    info = json.loads((merged_native / "merge_info.json").read_text())
    assert info["verified"] and info["layers_round_tripped"] == 12
    assert (merged_native / "tokenizer.model").is_file()


def test_merge_in_the_official_layout_computes_the_same(
        chatglm3_model_dir: Path, chatglm3_qlora_run: Any, merged_native: Path, tmp_path: Path,
        sample_ids: torch.Tensor) -> None:
    out = tmp_path / "official"
    result = merge(chatglm3_model_dir, chatglm3_qlora_run.adapter, out, dtype="float32",
                   from_4bit=True, layout="chatglm3")
    assert result.layout == "chatglm3" and is_chatglm3(out)
    assert read_config(out)["auto_map"] == read_config(chatglm3_model_dir)["auto_map"]
    names = {n for n, _ in iter_tensors(out)}
    assert names == {n for n, _ in iter_tensors(chatglm3_model_dir)}
    # Loading the official-layout merge (converted on load) gives the native merge's logits.
    official = load_causal_lm(out, dtype="float32", device_map="cpu")
    native = GlmForCausalLM.from_pretrained(merged_native)
    assert (logits(official, sample_ids) - logits(native, sample_ids)).abs().max() < 1e-5


def test_merge_quantize_4_reloads_quantized_and_evaluates(
        chatglm3_model_dir: Path, chatglm3_qlora_run: Any, tmp_path: Path, lab_samples: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "nf4"
    code = main(["merge", "--base", str(chatglm3_model_dir), "--adapter",
                 str(chatglm3_qlora_run.adapter), "--out", str(out), "--dtype", "float32",
                 "--from-4bit", "--quantize", "4"])
    printed = capsys.readouterr().out
    assert code == 0 and "4-bit" in printed and "MB on disk" in printed
    assert f"3 samples of {lab_samples}" in printed  # the adapter's own training data
    info = json.loads((out / "merge_info.json").read_text())
    assert info["quantized_bits"] == 4 and 0 < info["quant_max_abs_diff"] < 5
    model = AutoModelForCausalLM.from_pretrained(out, device_map="cpu")
    assert isinstance(model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    m = evaluate(out, out, lab_samples, tmp_path / "eval", max_new_tokens=2, limit=1).metrics
    assert m["turns"] >= 1 and "bleu4" in m


def test_merge_quantize_8_reloads_quantized_and_predicts(
        chatglm3_model_dir: Path, chatglm3_qlora_run: Any, tmp_path: Path,
        tokenizer_dir: Path) -> None:
    out = tmp_path / "int8"
    result = merge(chatglm3_model_dir, chatglm3_qlora_run.adapter, out, dtype="float32",
                   from_4bit=True, quantize=8)
    assert result.quantized_bits == 8 and result.size_bytes > 0
    assert 0 <= result.quant_argmax_agreement <= 1 and result.quant_max_abs_diff > 0
    model = AutoModelForCausalLM.from_pretrained(out, device_map="cpu")
    assert isinstance(model.model.layers[0].mlp.down_proj, bnb.nn.Linear8bitLt)
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"conversations": [{"role": "user", "content": "推荐一家酒店"}]},
                              ensure_ascii=False) + "\n")
    (row,) = [json.loads(x) for x in predict(out, out, src, tmp_path / "p.jsonl",
                                             max_new_tokens=2).read_text().splitlines()]
    assert row["prediction"]["kind"] in ("text", "tool")


def test_quantize_refuses_the_official_layout(chatglm3_model_dir: Path, chatglm3_qlora_run: Any,
                                              tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="native layout"):
        merge(chatglm3_model_dir, chatglm3_qlora_run.adapter, tmp_path / "x", quantize=4,
              layout="chatglm3")


def test_eval_and_predict_on_the_official_folder_as_is(
        chatglm3_model_dir: Path, chatglm3_qlora_run: Any, lab_samples: Path, tokenizer_dir: Path,
        tmp_path: Path) -> None:
    # The adapter names the official folder as its base; eval loads it converted, in 4 bits.
    m = evaluate(chatglm3_qlora_run.adapter, tokenizer_dir, lab_samples, tmp_path / "eval",
                 max_new_tokens=2, limit=1).metrics
    assert m["samples"] == 1 and m["turns"] >= 1
    out = predict(chatglm3_model_dir, tokenizer_dir, lab_samples, tmp_path / "p.jsonl",
                  max_new_tokens=2)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 3 and all("prediction" in r for r in rows)


def test_convert_command_both_ways(chatglm3_model_dir: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["convert", "--to", "native", str(chatglm3_model_dir), str(tmp_path / "n")]) == 0
    assert main(["convert", "--to", "chatglm3", str(tmp_path / "n"), str(tmp_path / "o")]) == 0
    assert "wrote 18 tensors in the chatglm3 layout" in capsys.readouterr().out
    assert main(["convert", "--to", "native", str(chatglm3_model_dir), str(tmp_path / "n")]) == 2
    assert "not empty" in capsys.readouterr().err


def test_generation_without_get_output_embeddings(tokenizer_dir: Path, chatglm3_model_dir: Path,
                                                  official_outputs: dict[str, Any]) -> None:
    # ChatGLM's own code returns None here (its head is transformer.output_layer).
    model = load_causal_lm(chatglm3_model_dir, dtype="float32", device_map="cpu")
    model.get_output_embeddings = lambda: None
    assert output_rows(model) == 65024
    tok = load_tokenizer(tokenizer_dir)
    case = official_outputs["generate"][0]
    (generated,) = hf_generate_fn(model, tok, max_new_tokens=4)([case["prompt_ids"]])
    # The official code's first 4 greedy tokens are all real tokenizer ids, so nothing the
    # padded-row suppression removes: the same 4 come out.
    assert max(case["new_ids"][:4]) < tok.vocab_size
    assert generated == case["new_ids"][:4]


def test_bitsandbytes_cpu_messages_become_one_plain_line(caplog: pytest.LogCaptureFixture) -> None:
    quiet_bitsandbytes()
    quiet_bitsandbytes()  # idempotent: still one filter
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    assert len(logger.filters) == 1
    logger.filters[0].seen = False
    with caplog.at_level(logging.WARNING, logger="bitsandbytes"):
        for _ in range(3):
            logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. "
                           "Please make sure you already `pip install kernels`", "No module")
        logger.warning("something else")
    texts = [r.getMessage() for r in caplog.records]
    assert texts == [
        "bitsandbytes: no optional fast CPU 4-bit kernel (it needs the `kernels` package and a "
        "download); using bitsandbytes' own CPU kernels, same results, slower",
        "something else",
    ]
