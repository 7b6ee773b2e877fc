"""The GPU training benchmark's own pieces, on the CPU: packed rows keep samples apart, and the
``--tiny --cpu`` smoke run goes through the Trainer and reports real-token throughput."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import GlmForCausalLM

from bench.bench_train_gpu import PackedCollator, lab_rows, main, model_config


def test_packed_rows_compute_what_each_sample_computes_alone(corpora: Path,
                                                             tokenizer_dir: Path) -> None:
    args = argparse.Namespace(
        tokenizer=tokenizer_dir, limit=3, pack=True, max_length=1024,
        data=corpora / "crosswoz-hotel-finetune-lab" / "dev.chatglm3.jsonl")
    rows, pad_id = lab_rows(args)
    assert len(rows) >= 1 and all(len(r["input_ids"]) == 1024 for r in rows)
    row = rows[0]
    first_len = row["segment"].count(row["segment"][0])
    assert row["position_ids"][first_len] == 0  # the second sample starts again at position 0
    batch = PackedCollator(torch.float32)([row])
    torch.manual_seed(0)
    model = GlmForCausalLM(model_config(tiny=True, attn="eager")).eval()
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                       attention_mask=batch["attention_mask"]).logits[0]
        alone = model(input_ids=batch["input_ids"][:, first_len:first_len + 50]).logits[0]
    assert (packed[first_len:first_len + 50] - alone).abs().max() < 1e-4


def test_tiny_cpu_smoke_run_reports_throughput(tmp_path: Path, corpora: Path,
                                               tokenizer_dir: Path) -> None:
    out = tmp_path / "r.json"
    code = main(["--tiny", "--cpu", "--mode", "qlora", "--pack", "--max-length", "128",
                 "--batch-size", "2", "--steps", "1", "--warmup", "1", "--limit", "2",
                 "--tokenizer", str(tokenizer_dir), "--json", str(out),
                 "--data", str(corpora / "crosswoz-hotel-finetune-lab" / "dev.chatglm3.jsonl")])
    (result,) = json.loads(out.read_text())
    assert code == 0 and result["mode"] == "qlora" and result["timed_steps"] == 1
    assert result["target_modules"] == ["q_proj", "k_proj", "v_proj"]
    assert result["real_tokens_per_row"] == 128 and result["tokens_per_s"] > 0
