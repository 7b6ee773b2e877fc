"""GPU training benchmark: tokens/s and peak memory of LoRA steps on a ChatGLM3-6B-sized model.

The model is randomly initialised (no weights are downloaded): transformers' GLM architecture at
ChatGLM3-6B's sizes (28 layers, hidden 4096, FFN 13696, 32 heads, multi-query with 2 KV groups,
65,024-row vocabulary). It is built on the meta device and materialised directly on the GPU, layer
by layer, so the full-precision 6B weights never exist at once in QLoRA mode:

    python bench/bench_train_gpu.py --mode both --seq-len 1024 --batch-size 4 --steps 10

Modes: ``qlora`` (NF4 base with double quantisation, bf16 compute, gradient checkpointing,
peft.prepare_model_for_kbit_training, as ``dataprep-train train`` does) and ``lora`` (bf16 base).
The step is a plain forward/backward/AdamW loop, which measures the model, not the Trainer.
``--tiny --cpu`` runs the same construction code at toy size on the CPU (a smoke test).
Without a CUDA device (and without ``--cpu``) it prints "no CUDA device, skipped" and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

CHATGLM3_6B = dict(
    vocab_size=65024, hidden_size=4096, intermediate_size=13696, num_hidden_layers=28,
    num_attention_heads=32, num_key_value_heads=2, head_dim=128, max_position_embeddings=8192,
    rms_norm_eps=1e-5, attention_bias=True,  # ChatGLM3 has a bias on its fused qkv projection
    pad_token_id=0, bos_token_id=1, eos_token_id=2,
)
TINY = dict(CHATGLM3_6B, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16)


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

    for module in model.modules():  # everything still on meta: embeddings, norms, head, linears
        for name, param in list(module.named_parameters(recurse=False)):
            if param.is_meta:
                value = (torch.ones(param.shape, device=device, dtype=dtype) if "norm" in name
                         or param.dim() == 1 and "bias" not in name else random(*param.shape))
                if "bias" in name:
                    value = torch.zeros(param.shape, device=device, dtype=dtype)
                module._parameters[name] = nn.Parameter(value, requires_grad=False)
    # Non-persistent buffers (the RoPE frequencies) do not survive the meta device: rebuild.
    model.model.rotary_emb = GlmRotaryEmbedding(config=config).to(device)
    return model


def add_lora(model: Any, mode: str, checkpointing: bool) -> Any:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from trainer_plugin.modeling import lora_target_modules

    kwargs = {"use_reentrant": False}
    if mode == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing,
                                                gradient_checkpointing_kwargs=kwargs)
    elif checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False
    return get_peft_model(model, LoraConfig(r=8, lora_alpha=32, lora_dropout=0.05,
                                            target_modules=lora_target_modules(model),
                                            task_type="CAUSAL_LM"))


def batches(args: argparse.Namespace, vocab: int, device: Any) -> Any:
    """Endless (input_ids, labels) of shape [batch, seq_len]: real tokens if --data, else random."""
    import torch

    if args.data:
        from dataprep.tokenizer import load_tokenizer
        from trainer_plugin.data import build_dataset

        tok = load_tokenizer(args.tokenizer)
        # A benchmark only needs realistic token streams: slice every sample to seq_len.
        ds, _ = build_dataset(args.data, tok, max_length=None, use_cache=False)
        if len(ds) == 0:
            raise SystemExit(f"{args.data}: no usable sample")
        rows = [(r["input_ids"] + [tok.pad_id] * args.seq_len)[: args.seq_len] for r in ds]
        ids = torch.tensor(rows, device=device)
    else:
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(3, 64798, (args.batch_size * 4, args.seq_len), generator=gen).to(device)
    # Every position is a target: the loss mask does not change the compute, and a slice that
    # holds only prompt tokens would otherwise give a NaN loss.
    labels = ids.clone()
    k = 0
    while True:
        pick = [(k + j) % len(ids) for j in range(args.batch_size)]
        k += args.batch_size
        yield ids[pick], labels[pick]


def run_mode(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    import torch
    from transformers import GlmConfig

    cuda = not args.cpu
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    config = GlmConfig(**(TINY if args.tiny else CHATGLM3_6B))
    t0 = time.perf_counter()
    model = add_lora(build_model(config, mode, device, dtype), mode, not args.no_grad_ckpt)
    build_s = time.perf_counter() - t0
    weights_gib = torch.cuda.memory_allocated() / 2**30 if cuda else None
    trainable, total = model.get_nb_trainable_parameters()
    quantized = sum(type(m).__module__.startswith("bitsandbytes") for m in model.modules())
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    data = batches(args, config.vocab_size, device)
    model.train()

    def step() -> float:
        ids, labels = next(data)
        with torch.autocast(device.type, dtype=dtype, enabled=cuda):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        return float(loss.detach())

    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    losses = [step() for _ in range(args.steps)]
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    tokens = args.steps * args.batch_size * args.seq_len
    result = {
        "mode": mode, "device": torch.cuda.get_device_name() if cuda else "cpu",
        "layers": config.num_hidden_layers, "hidden": config.hidden_size,
        "seq_len": args.seq_len, "batch_size": args.batch_size, "steps": args.steps,
        "gradient_checkpointing": not args.no_grad_ckpt,
        "trainable_params": trainable, "total_params": total, "quantized_layers": quantized,
        "build_s": round(build_s, 2),
        "tokens_per_s": round(tokens / elapsed, 1), "s_per_step": round(elapsed / args.steps, 4),
        "last_loss": round(losses[-1], 4),
        "weights_gib": round(weights_gib, 3) if weights_gib is not None else None,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else None,
    }
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("qlora", "lora", "both"), default="both")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--no-grad-ckpt", action="store_true", help="disable gradient checkpointing")
    p.add_argument("--data", type=Path, help="dataprep JSONL for real token batches (else random ids)")
    p.add_argument("--tokenizer", type=Path, help="tokenizer folder, needed with --data")
    p.add_argument("--tiny", action="store_true", help="2-layer toy model (smoke test)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU (only sensible with --tiny)")
    p.add_argument("--json", type=Path, help="also write the results to this file")
    args = p.parse_args(argv)
    if args.data and not args.tokenizer:
        p.error("--data needs --tokenizer")

    import torch

    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA device, skipped (use --tiny --cpu for a CPU smoke test)")
        return 0
    modes = ("qlora", "lora") if args.mode == "both" else (args.mode,)
    results = []
    for mode in modes:
        r = run_mode(args, mode)
        if not args.cpu:
            torch.cuda.empty_cache()  # the previous mode's model is gone; give its memory back
        results.append(r)
        mem = f", peak memory {r['peak_memory_gib']} GiB" if r["peak_memory_gib"] is not None else ""
        print(f"{mode:>5}: {r['tokens_per_s']} tokens/s ({r['s_per_step']} s/step, "
              f"seq {r['seq_len']} x batch {r['batch_size']}){mem} on {r['device']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
