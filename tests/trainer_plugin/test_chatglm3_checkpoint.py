"""Official ChatGLM3 checkpoints as native GLM: checked against what the official code computed.

The golden folder holds a tiny random checkpoint saved by the official ``modeling_chatglm.py`` and
that code's own forward passes and greedy generations on real tokenized samples.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, GlmForCausalLM

from trainer_plugin.chatglm3_checkpoint import (
    CheckpointError,
    chatglm3_config_from_glm,
    convert_checkpoint,
    glm_config_from_chatglm3,
    is_chatglm3,
    iter_tensors,
    read_config,
)
from trainer_plugin.modeling import load_causal_lm


@pytest.fixture(scope="session")
def native_dir(tmp_path_factory: pytest.TempPathFactory, chatglm3_model_dir: Path) -> Path:
    return convert_checkpoint(chatglm3_model_dir, tmp_path_factory.mktemp("conv") / "native").out


@pytest.fixture(scope="session")
def native_model(native_dir: Path) -> Any:
    # Plain transformers, no code of ours: what a user of the converted folder does.
    return AutoModelForCausalLM.from_pretrained(native_dir).eval()


def test_converted_forward_equals_the_official_code(native_model: Any,
                                                    official_outputs: dict[str, Any]) -> None:
    assert isinstance(native_model, GlmForCausalLM)
    subset = torch.tensor(official_outputs["logit_ids"])
    for case in official_outputs["forward"]:
        with torch.no_grad():
            out = native_model(input_ids=torch.tensor([case["input_ids"]]),
                               labels=torch.tensor([case["labels"]]))
        logits = out.logits[0]
        diff = (logits[:, subset] - torch.tensor(case["logits_subset"])).abs().max().item()
        assert diff <= 1e-4, case["id"]
        assert logits.argmax(-1).tolist() == case["argmax"], case["id"]
        assert out.loss.item() == pytest.approx(case["loss"], abs=1e-5), case["id"]


def test_greedy_generation_equals_the_official_code(native_model: Any,
                                                    official_outputs: dict[str, Any]) -> None:
    for case in official_outputs["generate"]:
        prompt = torch.tensor([case["prompt_ids"]])
        out = native_model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                                    max_new_tokens=case["max_new_tokens"], do_sample=False,
                                    eos_token_id=case["eos_token_id"], pad_token_id=0)
        assert out[0, prompt.shape[1]:].tolist() == case["new_ids"], case["id"]


def test_official_folder_loads_directly_as_native_glm(chatglm3_model_dir: Path,
                                                      official_outputs: dict[str, Any]) -> None:
    model = load_causal_lm(chatglm3_model_dir, dtype="float32", device_map="cpu")
    assert isinstance(model, GlmForCausalLM)
    case = official_outputs["forward"][1]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([case["input_ids"]])).logits[0]
    assert logits.argmax(-1).tolist() == case["argmax"]


def test_round_trip_gives_the_official_checkpoint_back_bit_for_bit(
        chatglm3_model_dir: Path, native_dir: Path, tmp_path: Path) -> None:
    back = convert_checkpoint(native_dir, tmp_path / "official", to="chatglm3").out
    original = dict(iter_tensors(chatglm3_model_dir))
    again = dict(iter_tensors(back))
    assert again.keys() == original.keys()
    for name, tensor in original.items():
        assert again[name].dtype == tensor.dtype and torch.equal(again[name], tensor), name
    assert read_config(back) == read_config(chatglm3_model_dir)
    assert is_chatglm3(back) and not is_chatglm3(native_dir)


def test_sharded_safetensors_and_bin_shards_convert_alike(native_dir: Path, tmp_path: Path,
                                                          chatglm3_model_dir: Path) -> None:
    # Shards of ~3 MB: the 8 MB embedding and head each get their own file, with an index.
    sharded = convert_checkpoint(native_dir, tmp_path / "sharded", to="chatglm3",
                                 max_shard_bytes=3_000_000).out
    assert json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(list(sharded.glob("model-*-of-*.safetensors"))) >= 3
    # pytorch_model-*.bin shards with their index, as THUDM/chatglm3-6b ships them.
    bins = tmp_path / "bins"
    bins.mkdir()
    (bins / "config.json").write_bytes((chatglm3_model_dir / "config.json").read_bytes())
    tensors = dict(iter_tensors(chatglm3_model_dir))
    names = sorted(tensors)
    weight_map = {}
    for i, part in enumerate((names[:9], names[9:]), start=1):
        file = f"pytorch_model-0000{i}-of-00002.bin"
        torch.save({n: tensors[n] for n in part}, bins / file)
        weight_map.update(dict.fromkeys(part, file))
    (bins / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    expected = dict(iter_tensors(native_dir))
    for src in (sharded, bins):
        got = dict(iter_tensors(convert_checkpoint(src, tmp_path / f"{src.name}-native").out))
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[n], expected[n]) for n in expected), src.name


def test_native_model_without_an_official_origin_gets_a_complete_official_config() -> None:
    from trainer_plugin.modeling import tiny_glm_config

    official = chatglm3_config_from_glm(tiny_glm_config())
    assert official["model_type"] == "chatglm" and official["num_layers"] == 2
    assert (official["kv_channels"], official["multi_query_group_num"]) == (16, 2)
    assert "auto_map" in official and "rope_ratio" not in official
    # And the way back reproduces the native sizes.
    glm = glm_config_from_chatglm3(official)
    assert (glm.head_dim, glm.num_key_value_heads, glm.intermediate_size) == (16, 2, 128)


@pytest.mark.parametrize(("change", "message"), [
    ({"rmsnorm": False}, "rmsnorm"),
    ({"pre_seq_len": 128}, "P-tuning"),
    ({"quantization_bit": 4}, "unquantized"),
    ({"apply_residual_connection_post_layernorm": True}, "no native GLM equivalent"),
    ({"ffn_hidden_size": None}, "needs ffn_hidden_size"),
])
def test_official_options_native_glm_lacks_are_refused(chatglm3_model_dir: Path, change: dict,
                                                       message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        glm_config_from_chatglm3({**read_config(chatglm3_model_dir), **change})


def test_rope_ratio_scales_the_rotary_base(chatglm3_model_dir: Path) -> None:
    cfg = {**read_config(chatglm3_model_dir), "rope_ratio": 500}  # GLM-4-9B's value
    glm = glm_config_from_chatglm3(cfg)
    assert glm.rope_parameters["rope_theta"] == 5_000_000
    assert chatglm3_config_from_glm(glm)["rope_ratio"] == 500


def test_convert_refuses_to_overwrite(native_dir: Path, chatglm3_model_dir: Path,
                                      tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        convert_checkpoint(chatglm3_model_dir, tmp_path / "x")
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"
