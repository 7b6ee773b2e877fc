"""Merging: the merged model must compute what base + adapter computed, checked independently here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import GlmForCausalLM

from dataprep.tokenizer import load_tokenizer
from trainer_plugin import merge as merge_module
from trainer_plugin.encoding import encode_conversation
from trainer_plugin.merge import MERGE_INFO, MergeVerificationError, merge
from trainer_plugin.modeling import QuantConfig, load_causal_lm

SAMPLE = {"conversations": [{"role": "user", "content": "帮我找一家评分4.5以上的经济型酒店"},
                            {"role": "assistant", "content": "好的，推荐您去北京饭店。"}]}


@pytest.fixture(scope="session")
def base_dir(tiny_model: Path) -> Path:
    return tiny_model


@pytest.fixture(scope="session")
def ids(tokenizer_dir: Path) -> torch.Tensor:
    """A real ChatGLM3 token stream (not the random ids merge checks itself with)."""
    return torch.tensor([encode_conversation(SAMPLE, load_tokenizer(tokenizer_dir)).input_ids])


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def logits_as_trained(peft_model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    # Training mode is the code path the adapter was trained through (bitsandbytes' CPU
    # inference path would multiply in bf16); dropout is switched off to make it deterministic.
    peft_model.train()
    for m in peft_model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.eval()
    return logits(peft_model, ids)


def test_plain_merge_equals_base_plus_adapter(base_dir: Path, lora_run, tmp_path: Path,
                                              ids: torch.Tensor, tokenizer_dir: Path) -> None:
    out = tmp_path / "merged"
    result = merge(base_dir, lora_run.adapter, out, dtype="float32")
    assert result.verified and result.max_abs_diff <= result.tolerance and result.note is None
    reference = PeftModel.from_pretrained(GlmForCausalLM.from_pretrained(base_dir), lora_run.adapter)
    reference.eval()
    merged = GlmForCausalLM.from_pretrained(out)
    expected = logits(reference, ids)
    torch.testing.assert_close(logits(merged, ids), expected, atol=1e-5, rtol=1e-4)
    # The adapter does change the model, so the comparison above is not base == base.
    assert not torch.allclose(logits(GlmForCausalLM.from_pretrained(base_dir), ids), expected,
                              atol=1e-5, rtol=0)
    assert (out / "tokenizer.model").read_bytes() == (tokenizer_dir / "tokenizer.model").read_bytes()
    assert json.loads((out / MERGE_INFO).read_text())["from_4bit"] is False


def test_4bit_merge_equals_what_was_trained(base_dir: Path, qlora_run, tmp_path: Path,
                                            ids: torch.Tensor) -> None:
    result = merge(base_dir, qlora_run.adapter, tmp_path / "nf4", dtype="float32", from_4bit=True)
    assert result.verified and result.layers_round_tripped == 12
    quant = QuantConfig(compute_dtype="float32")
    trained = PeftModel.from_pretrained(
        load_causal_lm(base_dir, dtype="float32", quant=quant, device_map="cpu"), qlora_run.adapter)
    expected = logits_as_trained(trained, ids)
    merged = GlmForCausalLM.from_pretrained(tmp_path / "nf4")
    nf4_error = (logits(merged, ids) - expected).abs().max()
    assert nf4_error < 1e-4
    # Merging the same adapter into the unquantized weights misses by the whole NF4 error.
    plain = merge(base_dir, qlora_run.adapter, tmp_path / "plain", dtype="float32")
    assert "--from-4bit" in plain.note
    plain_error = (logits(GlmForCausalLM.from_pretrained(tmp_path / "plain"), ids) - expected).abs().max()
    assert plain_error > 100 * nf4_error


def test_bf16_merge_is_verified_with_a_looser_tolerance(base_dir: Path, lora_run,
                                                        tmp_path: Path) -> None:
    result = merge(base_dir, lora_run.adapter, tmp_path / "bf16", dtype="bfloat16")
    assert result.dtype == "bfloat16" and result.max_abs_diff <= result.tolerance
    assert GlmForCausalLM.from_pretrained(tmp_path / "bf16").dtype == torch.bfloat16


def test_verification_fails_loudly_and_leaves_nothing_behind(
        base_dir: Path, qlora_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Simulate a merge that forgets the NF4 round trip: the check against the 4-bit model must
    # catch it, and no folder may appear at --out.
    monkeypatch.setattr(merge_module, "_round_trip_like", lambda model, quantized: 0)
    out = tmp_path / "merged"
    with pytest.raises(MergeVerificationError, match="differ"):
        merge(base_dir, qlora_run.adapter, out, dtype="float32", from_4bit=True)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_rerun_replaces_an_earlier_merge_but_not_a_foreign_folder(
        base_dir: Path, lora_run, tmp_path: Path) -> None:
    out = tmp_path / "merged"
    merge(base_dir, lora_run.adapter, out, dtype="float32", verify=False)
    (out / "stale.txt").write_text("from the first run")
    merge(base_dir, lora_run.adapter, out, dtype="float32", verify=False)
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]  # no partial/old folders

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an earlier merge output"):
        merge(base_dir, lora_run.adapter, foreign, dtype="float32", verify=False)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_from_4bit_refuses_an_adapter_trained_without_quantization(
        base_dir: Path, lora_run, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="without quantization"):
        merge(base_dir, lora_run.adapter, tmp_path / "m", from_4bit=True)
