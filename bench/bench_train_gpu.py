"""GPU LoRA/QLoRA training throughput of ``dataprep-train train``'s code path on a ChatGLM3-6B-sized model.

Comparable with LLaMA-Factory's published benchmark (ChatGLM2-6B LoRA on an A100: samples/s at
batch 4, cutoff 1024, rank 32 on ``query_key_value``). What runs here is what ``dataprep-train
train`` runs after loading a model: :func:`trainer_plugin.train.fit` (peft's k-bit preparation,
non-reentrant gradient checkpointing, LoRA, ``transformers.Trainer``), not a hand-written loop.

- Model: transformers' native GLM with ChatGLM3-6B's exact architecture and sizes (the official
  config.json mapped by :mod:`trainer_plugin.chatglm3_checkpoint`: 28 layers, hidden 4096, FFN 13696,
  32 heads of 128, multi-query with 2 groups, qkv bias, padded vocabulary 65,024), randomly
  initialised on the GPU (nothing downloaded). QLoRA builds it on the meta device and quantizes
  layer by layer, so the bf16 6B weights never exist at once.
- LoRA: rank 32 (alpha 64, dropout 0) on q/k/v (ChatGLM3's fused ``query_key_value``).
- Data: the lab's hotel training file tokenized with the real ChatGLM3 tokenizer, cut at 1,024
  tokens, batch 4, padded per batch with attention masks; padding is not counted in tokens/s.
  ``--pack`` instead concatenates the samples and cuts rows of exactly 1,024 real tokens, with a
  block-diagonal attention mask and per-sample positions so samples do not see each other.
- Reports samples/s (rows/s when packed), real tokens/s, s/step and peak reserved GPU memory,
  timed over ``--steps`` after ``--warmup`` steps.

    python bench/bench_train_gpu.py                      # LoRA and QLoRA, sdpa, no packing
    python bench/bench_train_gpu.py --mode qlora --attn eager --pack
    python bench/bench_train_gpu.py --tiny --cpu --limit 16 --max-length 128   # CPU smoke test

Without a CUDA device (and without ``--cpu``) it prints why it skipped and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "corpora"
ANCHOR = ("LLaMA-Factory, ChatGLM2-6B LoRA (rank 32, query_key_value), A100 40GB, batch 4, "
          "cutoff 1024: see its README's benchmark table for samples/s")
# THUDM/chatglm3-6b's config.json (the keys that matter; the rest are the official defaults).
CHATGLM3_6B = {
    "model_type": "chatglm", "num_layers": 28, "hidden_size": 4096, "ffn_hidden_size": 13696,
    "kv_channels": 128, "num_attention_heads": 32, "multi_query_attention": True,
    "multi_query_group_num": 2, "padded_vocab_size": 65024, "vocab_size": 65024,
    "seq_length": 8192, "layernorm_epsilon": 1e-5, "add_qkv_bias": True, "add_bias_linear": False,
    "rmsnorm": True, "post_layer_norm": True, "pad_token_id": 0, "eos_token_id": 2,
    "torch_dtype": "bfloat16",
}
TINY = dict(CHATGLM3_6B, num_layers=2, hidden_size=64, ffn_hidden_size=128, kv_channels=16,
            num_attention_heads=4)
TARGETS = ["q_proj", "k_proj", "v_proj"]


def model_config(tiny: bool, attn: str) -> Any:
    from trainer_plugin.chatglm3_checkpoint import glm_config_from_chatglm3

    config = glm_config_from_chatglm3(TINY if tiny else CHATGLM3_6B, "ChatGLM3-6B config")
    config._attn_implementation = attn
    return config


def build_model(config: Any, mode: str, device: Any, dtype: Any) -> Any:
    """GLM on the meta device, then every weight materialised on ``device`` (4-bit in qlora)."""
    import torch
    from torch import nn
    from transformers import GlmForCausalLM
    from transformers.models.glm.modeling_glm import GlmRotaryEmbedding

    with torch.device("meta"):
        model = GlmForCausalLM(config)
    gen = torch.Generator(device=device).manual_seed(0)

    def random(*shape: int) -> Any:
        return torch.empty(*shape, device=device, dtype=dtype).normal_(0.0, 0.02, generator=gen)

    if mode == "qlora":
        import bitsandbytes as bnb

        for parent in list(model.modules()):
            for child_name, child in list(parent.named_children()):
                if not isinstance(child, nn.Linear) or child is model.lm_head:
                    continue
                q = bnb.nn.Linear4bit(child.in_features, child.out_features,
                                      bias=child.bias is not None, compute_dtype=dtype,
                                      compress_statistics=True, quant_type="nf4", device="meta")
                q.weight = bnb.nn.Params4bit(random(child.out_features, child.in_features),
                                             requires_grad=False, compress_statistics=True,
                                             quant_type="nf4", module=q)
                if child.bias is not None:
                    q.bias = nn.Parameter(torch.zeros(child.out_features, device=device,
                                                      dtype=dtype), requires_grad=False)
                setattr(parent, child_name, q.to(device))  # .to() quantises on arrival
        model.is_loaded_in_4bit = True  # what prepare_model_for_kbit_training looks for
        model.quantization_method = "bitsandbytes"

    for module in model.modules():  # everything still on meta: embeddings, norms, head, linears
        for name, param in list(module.named_parameters(recurse=False)):
            if param.is_meta:
                if "bias" in name:
                    value = torch.zeros(param.shape, device=device, dtype=dtype)
                elif param.dim() == 1:  # RMSNorm scales
                    value = torch.ones(param.shape, device=device, dtype=dtype)
                else:
                    value = random(*param.shape)
                module._parameters[name] = nn.Parameter(value, requires_grad=False)
    # Non-persistent buffers (the RoPE frequencies) do not survive the meta device: rebuild.
    model.model.rotary_emb = GlmRotaryEmbedding(config=config).to(device)
    return model


def lab_rows(args: argparse.Namespace) -> tuple[Any, int]:
    """Tokenized lab samples (cut at --max-length), or packed rows of exactly --max-length."""
    import datasets

    from dataprep.tokenizer import load_tokenizer
    from trainer_plugin.data import build_dataset

    tok = load_tokenizer(args.tokenizer)
    samples = [json.loads(x) for x in args.data.read_text(encoding="utf-8").splitlines() if x.strip()]
    samples = samples[: args.limit] if args.limit else samples
    # Packed rows are cut from the whole samples; unpacked samples are cut at --max-length.
    ds, _ = build_dataset(samples, tok, max_length=None if args.pack else args.max_length,
                          truncation="cut", use_cache=False)
    if len(ds) == 0:
        raise SystemExit(f"no sample of {args.data} fits in --max-length {args.max_length} "
                         "(the hotel tool prompt alone is ~735 tokens); raise it or use --pack")
    if not args.pack:
        return ds, tok.pad_id
    ids, labels, segments, positions = [], [], [], []
    for k, row in enumerate(ds):
        ids += row["input_ids"]
        labels += row["labels"]
        segments += [k] * len(row["input_ids"])
        positions += list(range(len(row["input_ids"])))
    n = args.max_length
    rows = [{"input_ids": ids[i:i + n], "labels": labels[i:i + n], "segment": segments[i:i + n],
             # a sample split across two rows restarts its positions in the second
             "position_ids": [p - positions[i] if segments[j] == segments[i] else p
                              for j, p in zip(range(i, i + n), positions[i:i + n], strict=True)]}
            for i in range(0, len(ids) - n + 1, n)]
    return datasets.Dataset.from_list(rows), tok.pad_id


class PackedCollator:
    """Rows of equal length: a block-diagonal causal mask (additive, in the compute dtype) keeps
    each sample to itself, which eager and sdpa attention both honour."""

    def __init__(self, dtype: Any) -> None:
        self.dtype = dtype

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        seg = torch.tensor([f["segment"] for f in features])
        n = seg.shape[1]
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        allowed = (seg[:, :, None] == seg[:, None, :]) & causal
        mask = torch.zeros(allowed.shape, dtype=self.dtype).masked_fill(
            ~allowed, torch.finfo(self.dtype).min)
        return {"input_ids": torch.tensor([f["input_ids"] for f in features]),
                "labels": torch.tensor([f["labels"] for f in features]),
                "position_ids": torch.tensor([f["position_ids"] for f in features]),
                "attention_mask": mask[:, None]}


def make_timer(cuda: bool, warmup: int, pad_id: int) -> tuple[Any, Any]:
    """A Trainer callback timing the steps after ``warmup``, and a forward pre-hook counting the
    real (non-padding) tokens of each step."""
    import torch
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.start: float | None = None
            self.elapsed = 0.0
            self.tokens = self.rows = self.timed_steps = 0
            self.step_tokens = self.step_rows = 0

        def count(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
            mask = kwargs.get("attention_mask")
            ids = kwargs["input_ids"]
            real = mask.sum() if mask is not None and mask.dim() == 2 else (ids != pad_id).sum()
            self.step_tokens, self.step_rows = int(real), ids.shape[0]

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if cuda:
                torch.cuda.synchronize()
            self.start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if cuda:
                torch.cuda.synchronize()
            if state.global_step > warmup and self.start is not None:
                self.elapsed += time.perf_counter() - self.start
                self.tokens += self.step_tokens
                self.rows += self.step_rows
                self.timed_steps += 1

    timer = Timer()
    return timer, timer.count


def run_mode(args: argparse.Namespace, mode: str, dataset: Any, pad_id: int) -> dict[str, Any]:
    import torch

    from trainer_plugin.data import PadCollator
    from trainer_plugin.train import TrainConfig, fit

    cuda = not args.cpu
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    config = model_config(args.tiny, args.attn)
    base = build_model(config, mode, device, dtype)
    timer, count = make_timer(cuda, args.warmup, pad_id)
    base.register_forward_pre_hook(count, with_kwargs=True)
    cfg = TrainConfig(
        lora_r=32, lora_alpha=64, lora_dropout=0.0, target_modules=TARGETS,
        quantization_bits=4 if mode == "qlora" else None, max_length=args.max_length,
        compute_dtype="bfloat16" if cuda else "float32",
        training_args={"max_steps": args.warmup + args.steps,
                       "per_device_train_batch_size": args.batch_size, "learning_rate": 1e-4,
                       "save_strategy": "no", "logging_steps": 1_000_000, "seed": 0,
                       "dataloader_num_workers": 0, "disable_tqdm": True,
                       "gradient_checkpointing": not args.no_grad_ckpt},
    )
    collator = PackedCollator(dtype) if args.pack else PadCollator(pad_id)
    with tempfile.TemporaryDirectory() as out:
        fitted = fit(base, cfg, dataset, out, quantized=mode == "qlora", compute_dtype=dtype,
                     collator=collator, callbacks=[timer])
    if timer.timed_steps == 0:
        raise SystemExit("no timed step: raise --steps")
    return {
        "mode": mode, "device": torch.cuda.get_device_name() if cuda else "cpu",
        "attn": args.attn, "packed": args.pack, "layers": config.num_hidden_layers,
        "hidden": config.hidden_size, "max_length": args.max_length,
        "batch_size": args.batch_size, "timed_steps": timer.timed_steps,
        "gradient_checkpointing": not args.no_grad_ckpt, "lora_r": 32,
        "target_modules": fitted.target_modules,
        "trainable_params": fitted.trainable_params, "total_params": fitted.total_params,
        "samples_per_s": round(timer.rows / timer.elapsed, 3),
        "tokens_per_s": round(timer.tokens / timer.elapsed, 1),
        "real_tokens_per_row": round(timer.tokens / timer.rows, 1),
        "s_per_step": round(timer.elapsed / timer.timed_steps, 4),
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2) if cuda else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("qlora", "lora", "both"), default="both")
    p.add_argument("--attn", choices=("sdpa", "eager"), default="sdpa",
                   help="attention implementation (default: sdpa)")
    p.add_argument("--pack", action="store_true",
                   help="rows of exactly --max-length real tokens (samples packed, kept apart by "
                        "the attention mask)")
    p.add_argument("--max-length", type=int, default=1024, help="cutoff / packed row length")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--no-grad-ckpt", action="store_true", help="disable gradient checkpointing")
    p.add_argument("--data", type=Path,
                   default=SHARED / "crosswoz-hotel-finetune-lab" / "train.chatglm3.jsonl",
                   help="dataprep/lab JSONL to train on (default: the lab's hotel train file)")
    p.add_argument("--tokenizer", type=Path, default=SHARED / "chatglm3-6b-tokenizer",
                   help="the ChatGLM3 tokenizer folder")
    p.add_argument("--limit", type=int, help="only the first N samples (smoke tests)")
    p.add_argument("--tiny", action="store_true", help="2-layer toy model (smoke test)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU (only sensible with --tiny)")
    p.add_argument("--json", type=Path, help="also write the results to this file")
    args = p.parse_args(argv)

    import torch

    if not args.cpu and not torch.cuda.is_available():
        print("bench_train_gpu: skipped: no CUDA device here (the benchmark measures GPU "
              "training; --tiny --cpu runs a CPU smoke test of the same code path)")
        return 0
    if not args.data.is_file() or not args.tokenizer.exists():
        p.error(f"needs {args.data} and the tokenizer at {args.tokenizer} (--data, --tokenizer)")
    dataset, pad_id = lab_rows(args)
    modes = ("lora", "qlora") if args.mode == "both" else (args.mode,)
    results = []
    print(f"anchor: {ANCHOR}")
    for mode in modes:
        r = run_mode(args, mode, dataset, pad_id)
        if not args.cpu:
            torch.cuda.empty_cache()  # the previous mode's model is gone; give its memory back
        results.append(r)
        mem = f", peak reserved {r['peak_reserved_gib']} GiB" if r["peak_reserved_gib"] else ""
        print(f"{mode:>5} ({r['attn']}{', packed' if r['packed'] else ''}): "
              f"{r['samples_per_s']} samples/s, {r['tokens_per_s']} real tokens/s "
              f"({r['real_tokens_per_row']} real tokens per row, {r['s_per_step']} s/step, "
              f"batch {r['batch_size']}, cutoff {r['max_length']}){mem} on {r['device']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
