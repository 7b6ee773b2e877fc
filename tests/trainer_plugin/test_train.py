"""QLoRA training on a tiny GLM with the real ChatGLM3 tokenizer and real lab samples, on the CPU.

The tiny model and the two-step training runs are session fixtures of ``conftest.py``, built once
per run and shared by every module and xdist worker.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from trainer_plugin.modeling import TRAIN_INFO, lora_target_modules, tiny_glm_config
from trainer_plugin.train import TrainConfig, train

REPO_ROOT = Path(__file__).resolve().parents[2]
TWO_STEPS = {"max_steps": 2, "learning_rate": 1e-3, "save_steps": 1, "logging_steps": 1,
             "per_device_train_batch_size": 2, "max_length": 560, "seed": 0}


# ---------------------------------------------------------------------------------------------
# config


def test_config_file_splits_our_keys_from_training_arguments(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("lora_r: 16\nmax_length: 512\nlearning_rate: 1.0e-4\nnum_train_epochs: 2\n")
    cfg = TrainConfig.from_file(path, overrides={"lora_r": 4})
    assert (cfg.lora_r, cfg.max_length) == (4, 512)
    assert cfg.training_args == {"learning_rate": 1e-4, "num_train_epochs": 2}


def test_example_config_in_the_repository_is_valid() -> None:
    cfg = TrainConfig.from_file(REPO_ROOT / "configs" / "train_qlora.yaml")
    assert cfg.quantization_bits == 4 and cfg.bnb_4bit_quant_type == "nf4"
    assert cfg.training_args["report_to"] == "none"


@pytest.mark.parametrize(("values", "message"), [
    ({"lora_rank": 8}, "unknown key 'lora_rank'"),
    ({"lora_dropout": 1.5}, "lora_dropout"),
    ({"truncation": "head"}, "truncation"),
    ({"quantization_bits": 3}, "--no-quant"),
    ({"bnb_4bit_quant_type": "int4"}, "nf4 or fp4"),
    ({"compute_dtype": "half"}, "unknown dtype"),
    ({"gradient_checkpointing_kwargs": {"use_reentrant": True}}, "remove it"),
])
def test_config_rejects_bad_values_with_a_hint(values: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(values)


# ---------------------------------------------------------------------------------------------
# LoRA targets


def test_lora_targets_are_all_linear_layers_but_the_head() -> None:
    from transformers import GlmForCausalLM

    model = GlmForCausalLM(tiny_glm_config(num_hidden_layers=1))
    targets = lora_target_modules(model)
    assert targets == ["down_proj", "gate_up_proj", "k_proj", "o_proj", "q_proj", "v_proj"]
    assert "lm_head" not in targets


def test_lora_targets_for_chatglm_are_the_fused_qkv() -> None:
    class FakeChatGLM(nn.Module):  # ChatGLM's remote code: model_type "chatglm", own layer names
        config = type("Config", (), {"model_type": "chatglm"})()

        def __init__(self) -> None:
            super().__init__()
            self.query_key_value = nn.Linear(4, 12)
            self.dense_h_to_4h = nn.Linear(4, 16)
            self.output_layer = nn.Linear(4, 10)

    assert lora_target_modules(FakeChatGLM()) == ["query_key_value"]


# ---------------------------------------------------------------------------------------------
# training


def test_qlora_trains_the_adapter_and_leaves_the_base_frozen(qlora_run) -> None:
    before, after = qlora_run.before, qlora_run.after
    lora = [n for n in before if "lora_" in n]
    base = [n for n in before if "lora_" not in n]
    assert lora and base
    changed = [n for n in lora if not torch.equal(before[n], after[n])]
    assert changed == lora, "every LoRA A and B matrix must move in two steps"
    assert all(torch.equal(before[n], after[n]) for n in base)
    # The base really was 4-bit: its linear weights are packed uint8 NF4 codes.
    packed = [n for n in base if before[n].dtype == torch.uint8]
    assert len(packed) == 12  # 6 linear layers x 2 decoder layers
    assert qlora_run.result.global_step == 2


def test_training_writes_a_self_contained_adapter_folder(qlora_run, tokenizer_dir: Path) -> None:
    adapter = qlora_run.adapter
    assert (adapter / "adapter_model.safetensors").is_file()
    assert (adapter / "tokenizer.model").read_bytes() == (tokenizer_dir / "tokenizer.model").read_bytes()
    info = json.loads((adapter / TRAIN_INFO).read_text())
    assert info["quantization"] == {"bits": 4, "quant_type": "nf4", "double_quant": True,
                                    "compute_dtype": "float32"}
    adapter_cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert sorted(adapter_cfg["target_modules"]) == qlora_run.result.target_modules
    assert (adapter / "checkpoint-1").is_dir() and (adapter / "checkpoint-2").is_dir()


def test_length_summary_is_reported_before_training(qlora_run) -> None:
    summary = "\n".join(qlora_run.report)
    # One of the three lab dialogues has 667 tokens: over max_length 560, cut, not dropped.
    assert "3 samples" in summary and "1 over max_length 560" in summary
    assert qlora_run.result.dataset_stats["cut"] == 1


def test_plain_lora_trains_without_quantization(lora_run) -> None:
    before, after = lora_run.before, lora_run.after
    assert lora_run.checkpointing  # asked for in the config: non-reentrant, LoRA still learns
    assert all(t.dtype == torch.float32 for t in before.values())
    for name in before:
        assert torch.equal(before[name], after[name]) == ("lora_" not in name), name
    assert json.loads((lora_run.adapter / TRAIN_INFO).read_text())["quantization"] is None


def test_resume_continues_the_step_count(qlora_run, tmp_path: Path, tokenizer_dir: Path,
                                         lab_samples: Path, tiny_model: Path,
                                         snapshot_type: type) -> None:
    out = tmp_path / "adapter"
    shutil.copytree(qlora_run.adapter / "checkpoint-2", out / "checkpoint-2")
    snap = snapshot_type()
    result = train(None, data=lab_samples, output_dir=out, tokenizer=tokenizer_dir,
                   model=tiny_model, resume=True, overrides={**TWO_STEPS, "max_steps": 3},
                   callbacks=[snap])
    assert result.resumed_from == str(out / "checkpoint-2")
    assert result.global_step == 3
    assert snap.steps == 1, "only the third step is left to run"
    # The resumed run starts from the checkpoint's adapter, not from a fresh initialisation.
    lora_b = next(n for n in snap.before if "lora_B" in n)
    assert snap.before[lora_b].abs().sum() > 0
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3


def test_resume_and_restart_guard_the_output_folder(qlora_run, tmp_path: Path,
                                                    tokenizer_dir: Path) -> None:
    common = dict(data="unused.jsonl", tokenizer=tokenizer_dir, model="unused", overrides=TWO_STEPS)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(None, output_dir=tmp_path / "empty", resume=True, **common)
    with pytest.raises(FileExistsError, match="--resume"):
        train(None, output_dir=qlora_run.adapter, **common)
