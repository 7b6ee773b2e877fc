"""ChatGLM3 LoRA adapters (fused query_key_value) <-> native q/k/v LoRAs, exact on the golden model.

The reference never goes through our adapter code: the fused adapter's update ``scale * B A`` is
added to the official weights by hand, that checkpoint is converted, and its logits are what
base + converted adapter must compute.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import GlmForCausalLM

from trainer_plugin.chatglm3_checkpoint import CheckpointError, convert_checkpoint, iter_tensors
from trainer_plugin.lora_layout import (
    export_chatglm3_adapter,
    import_chatglm3_adapter,
    is_chatglm3_adapter,
    native_adapter,
    read_adapter,
)

PREFIX = "base_model.model."


@pytest.fixture(scope="session")
def native_golden(tmp_path_factory: pytest.TempPathFactory, chatglm3_model_dir: Path) -> Path:
    return convert_checkpoint(chatglm3_model_dir, tmp_path_factory.mktemp("lora") / "native").out


@pytest.fixture(scope="session")
def sample_ids(official_outputs: dict[str, Any]) -> torch.Tensor:
    return torch.tensor([official_outputs["forward"][0]["input_ids"]])


def logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    # In float64: merged (W + sBA)x and unmerged Wx + sB(Ax) round differently by ~1e-4 in
    # float32 at these logit sizes; in float64 any difference above 1e-5 is a real mismatch.
    model.double().eval()
    with torch.no_grad():
        return model(input_ids=ids).logits[0]


def fused_adapter(folder: Path, *, r: int = 4, alpha: float = 8.0, seed: int = 0) -> Path:
    """A random adapter as ChatGLM3 QLoRA projects and LLaMA-Factory save it for the golden model."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(2):
        for module, rows in (("self_attention.query_key_value", 64), ("mlp.dense_h_to_4h", 128)):
            name = f"{PREFIX}transformer.encoder.layers.{layer}.{module}"
            tensors[f"{name}.lora_A.weight"] = torch.randn(r, 32, generator=gen) * 0.3
            tensors[f"{name}.lora_B.weight"] = torch.randn(rows, r, generator=gen) * 0.3
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha,
              "lora_dropout": 0.1, "bias": "none", "fan_in_fan_out": False,
              "target_modules": ["query_key_value", "dense_h_to_4h"], "inference_mode": True,
              "base_model_name_or_path": "THUDM/chatglm3-6b"}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def merged_official(chatglm3_model_dir: Path, adapter: Path, out: Path) -> Path:
    """The golden checkpoint with a fused adapter's update added by hand, converted to native."""
    config, lora = read_adapter(adapter)
    weights = dict(iter_tensors(chatglm3_model_dir))
    for key, a in lora.items():
        if not key.endswith("lora_A.weight"):
            continue
        module = key.removeprefix(PREFIX).removesuffix(".lora_A.weight")
        leaf = module.rsplit(".", 1)[1]
        r = config.get("rank_pattern", {}).get(leaf, config["r"])
        alpha = config.get("alpha_pattern", {}).get(leaf, config["lora_alpha"])
        b = lora[key.replace("lora_A", "lora_B")]
        weight = weights[f"{module}.weight"].double()
        weights[f"{module}.weight"] = weight + (alpha / r) * (b.double() @ a.double())
    weights = {k: v.double() for k, v in weights.items()}
    official = out / "official"
    official.mkdir(parents=True)
    save_file(weights, str(official / "model.safetensors"))
    official_cfg = json.loads((chatglm3_model_dir / "config.json").read_text())
    (official / "config.json").write_text(json.dumps({**official_cfg, "torch_dtype": "float64"}))
    return convert_checkpoint(official, out / "native").out


def test_fused_adapter_imports_exactly(chatglm3_model_dir: Path, native_golden: Path,
                                       sample_ids: torch.Tensor, tmp_path: Path) -> None:
    fused = fused_adapter(tmp_path / "fused")
    assert is_chatglm3_adapter(fused)
    native = import_chatglm3_adapter(fused, tmp_path / "native", base=chatglm3_model_dir)
    cfg = json.loads((native / "adapter_config.json").read_text())
    assert cfg["target_modules"] == ["gate_up_proj", "k_proj", "q_proj", "v_proj"]
    assert cfg["r"] == 4 and not is_chatglm3_adapter(native)
    got = logits(PeftModel.from_pretrained(GlmForCausalLM.from_pretrained(native_golden), native),
                 sample_ids)
    expected = logits(GlmForCausalLM.from_pretrained(
        merged_official(chatglm3_model_dir, fused, tmp_path / "ref")), sample_ids)
    assert (got - expected).abs().max().item() <= 1e-5
    # The adapter matters: without it the logits are far off.
    assert (logits(GlmForCausalLM.from_pretrained(native_golden), sample_ids) - expected
            ).abs().max().item() > 1e-1


def test_native_qkv_adapter_exports_exactly_in_block_form(
        chatglm3_model_dir: Path, native_golden: Path, sample_ids: torch.Tensor,
        tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = get_peft_model(GlmForCausalLM.from_pretrained(native_golden), LoraConfig(
        r=4, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        init_lora_weights=False, task_type="CAUSAL_LM"))
    expected = logits(model, sample_ids)
    model.save_pretrained(tmp_path / "trained")
    fused = export_chatglm3_adapter(tmp_path / "trained", tmp_path / "fused", base=native_golden)
    cfg, tensors = read_adapter(fused)
    # Three independent A matrices: one fused LoRA of rank 3r, block-diagonal B, same scale.
    assert cfg["target_modules"] == ["dense", "query_key_value"]
    assert cfg["rank_pattern"] == {"query_key_value": 12}
    assert cfg["alpha_pattern"]["query_key_value"] / 12 == 16 / 4
    b = tensors[f"{PREFIX}transformer.encoder.layers.0.self_attention.query_key_value.lora_B.weight"]
    assert b.shape == (64, 12) and not b[:32, 4:].any() and not b[32:48, :4].any()
    # Merged by hand into the official weights, the fused adapter computes what was trained ...
    by_hand = logits(GlmForCausalLM.from_pretrained(
        merged_official(chatglm3_model_dir, fused, tmp_path / "ref")), sample_ids)
    assert (by_hand - expected).abs().max().item() <= 1e-5
    # ... and imported back through peft's rank_pattern as well.
    back = import_chatglm3_adapter(fused, tmp_path / "back", base=chatglm3_model_dir)
    again = logits(PeftModel.from_pretrained(GlmForCausalLM.from_pretrained(native_golden), back),
                   sample_ids)
    assert (again - expected).abs().max().item() <= 1e-5


def test_shared_a_exports_at_the_same_rank_bit_for_bit(chatglm3_model_dir: Path,
                                                       tmp_path: Path) -> None:
    fused = fused_adapter(tmp_path / "fused", r=2)
    native = import_chatglm3_adapter(fused, tmp_path / "native", base=chatglm3_model_dir)
    again = export_chatglm3_adapter(native, tmp_path / "again", base=chatglm3_model_dir)
    cfg, tensors = read_adapter(again)
    original_cfg, original = read_adapter(fused)
    assert (cfg["r"], cfg["lora_alpha"], sorted(cfg["target_modules"])) == (
        2, 8.0, sorted(original_cfg["target_modules"]))
    assert tensors.keys() == original.keys()
    assert all(torch.equal(tensors[k], original[k]) for k in original)


def test_rslora_keeps_its_scale_at_the_block_rank(chatglm3_model_dir: Path, native_golden: Path,
                                                  tmp_path: Path) -> None:
    torch.manual_seed(2)
    model = get_peft_model(GlmForCausalLM.from_pretrained(native_golden), LoraConfig(
        r=4, lora_alpha=8, use_rslora=True, target_modules=["q_proj", "v_proj"],
        init_lora_weights=False))
    model.save_pretrained(tmp_path / "trained")
    cfg, _ = read_adapter(export_chatglm3_adapter(tmp_path / "trained", tmp_path / "fused",
                                                  base=chatglm3_model_dir))
    assert cfg["r"] == 12
    assert cfg["lora_alpha"] / math.sqrt(12) == pytest.approx(8 / math.sqrt(4))


def test_imported_adapters_are_cached_and_bad_ones_refused(chatglm3_model_dir: Path,
                                                            tmp_path: Path) -> None:
    fused = fused_adapter(tmp_path / "fused")
    first = native_adapter(fused, chatglm3_model_dir)
    assert first != fused and native_adapter(fused, chatglm3_model_dir) == first
    cfg = json.loads((fused / "adapter_config.json").read_text())
    (fused / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(CheckpointError, match="use_dora"):
        import_chatglm3_adapter(fused, tmp_path / "dora", base=chatglm3_model_dir)
    wrong = load_file(str(fused / "adapter_model.safetensors"))
    key = next(k for k in wrong if "query_key_value.lora_B" in k)
    wrong[key] = wrong[key][:48]
    save_file(wrong, str(fused / "adapter_model.safetensors"))
    (fused / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="wrong base model"):
        import_chatglm3_adapter(fused, tmp_path / "short", base=chatglm3_model_dir)


def test_convert_command_converts_adapters_both_ways(chatglm3_model_dir: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from trainer_plugin.cli import main

    fused = fused_adapter(tmp_path / "fused")
    base = ["--base", str(chatglm3_model_dir)]
    assert main(["convert", "--to", "native", str(fused), str(tmp_path / "n"), *base]) == 0
    assert main(["convert", "--to", "chatglm3", str(tmp_path / "n"), str(tmp_path / "f"), *base]) == 0
    assert "rank 4" in capsys.readouterr().out
    _, original = read_adapter(fused)
    _, again = read_adapter(tmp_path / "f")
    assert all(torch.equal(again[k], original[k]) for k in original)
    # The adapter names a hub id, not a folder: the base must be given.
    assert main(["convert", "--to", "native", str(fused), str(tmp_path / "x")]) == 2
    assert "pass --base" in capsys.readouterr().err


def test_official_target_names_in_a_training_recipe_mean_the_same_projections() -> None:
    from trainer_plugin.lora_layout import native_target_modules

    assert native_target_modules(["query_key_value"]) == ["q_proj", "k_proj", "v_proj"]
    assert native_target_modules(["dense_h_to_4h", "dense_4h_to_h", "q_proj"]) == [
        "gate_up_proj", "down_proj", "q_proj"]
    assert native_target_modules("all-linear") == "all-linear"
