"""Peak memory of converting an official-layout ChatGLM3 checkpoint to native GLM and back.

The checkpoint is synthetic (random fp16 tensors, nothing downloaded) with ChatGLM3-6B's exact
tensor shapes for ``--layers`` layers (the real model has 28), stored as safetensors shards of
``--shard-mb`` like THUDM's. Each conversion runs in a fresh process; its peak resident memory is
printed next to the checkpoint's size. The anchor is the claim being checked: streaming holds about
one shard (plus the largest tensor), never a second copy of the model, so peak RSS stays well under
the checkpoint size and does not grow with the number of layers.

    python bench/bench_convert.py --layers 4 --shard-mb 500
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_train_gpu import CHATGLM3_6B  # noqa: E402


def write_checkpoint(folder: Path, layers: int, shard_bytes: int) -> int:
    import torch

    from trainer_plugin.chatglm3_checkpoint import write_safetensors

    cfg = dict(CHATGLM3_6B, num_layers=layers, torch_dtype="float16")
    h, ffn, vocab = cfg["hidden_size"], cfg["ffn_hidden_size"], cfg["padded_vocab_size"]
    qkv = (cfg["num_attention_heads"] + 2 * cfg["multi_query_group_num"]) * cfg["kv_channels"]
    gen = torch.Generator().manual_seed(0)

    def t(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float32).to(torch.float16)

    def tensors():  # generated one at a time, like the checkpoint is read back
        yield "transformer.embedding.word_embeddings.weight", t(vocab, h)
        for i in range(layers):
            p = f"transformer.encoder.layers.{i}."
            yield p + "input_layernorm.weight", t(h)
            yield p + "self_attention.query_key_value.weight", t(qkv, h)
            yield p + "self_attention.query_key_value.bias", t(qkv)
            yield p + "self_attention.dense.weight", t(h, h)
            yield p + "post_attention_layernorm.weight", t(h)
            yield p + "mlp.dense_h_to_4h.weight", t(2 * ffn, h)
            yield p + "mlp.dense_4h_to_h.weight", t(h, ffn)
        yield "transformer.encoder.final_layernorm.weight", t(h)
        yield "transformer.output_layer.weight", t(vocab, h)
        yield "transformer.rotary_pos_emb.inv_freq", t(32)

    write_safetensors(tensors(), folder, shard_bytes)
    (folder / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


_CHILD = """
import resource, sys
{body}
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss_mb(body: str) -> float:
    """Run ``body`` in a fresh Python process; that process's peak resident set size in MB."""
    out = subprocess.run([sys.executable, "-c", _CHILD.format(body=body)], check=True, cwd=REPO,
                         capture_output=True, text=True).stdout
    return int(out.strip().splitlines()[-1]) / 1024


def convert_rss(src: Path, out: Path, to: str, shard_mb: int) -> float:
    return peak_rss_mb(f"from trainer_plugin.convert import convert\n"
                       f"convert({str(src)!r}, {str(out)!r}, {to!r}, max_shard_size='{shard_mb}MB')")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=4, help="layers of ChatGLM3-6B size (real: 28)")
    p.add_argument("--shard-mb", type=int, default=500, help="shard size, read and written")
    args = p.parse_args(argv)
    shard = args.shard_mb * 1024**2
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # In a child too: Linux carries a parent's peak RSS over into its children, so this
        # process must never hold much itself.
        peak_rss_mb(f"from bench.bench_convert import write_checkpoint\nfrom pathlib import Path\n"
                    f"write_checkpoint(Path({str(root / 'official')!r}), {args.layers}, {shard})")
        size = sum(f.stat().st_size for f in (root / "official").glob("*.safetensors")) / 1024**2
        baseline = peak_rss_mb("import torch, safetensors.torch, transformers.models.glm")
        to_native = convert_rss(root / "official", root / "native", "native", args.shard_mb)
        back = convert_rss(root / "native", root / "back", "chatglm3", args.shard_mb)
    print(f"checkpoint: {args.layers} ChatGLM3-6B layers + embedding + head, fp16, "
          f"{size:.0f} MB in {args.shard_mb} MB shards")
    print(f"python + torch + transformers alone: peak RSS {baseline:.0f} MB")
    print(f"official -> native: peak RSS {to_native:.0f} MB "
          f"(+{to_native - baseline:.0f} MB over that = {(to_native - baseline) / size:.2f} x checkpoint)")
    print(f"native -> official: peak RSS {back:.0f} MB "
          f"(+{back - baseline:.0f} MB = {(back - baseline) / size:.2f} x checkpoint)")
    print("anchor: loading the model to convert it costs >= 1.0 x the checkpoint over the baseline "
          "(2.0 x holding a converted copy); streaming should cost about one shard or the largest "
          "tensor (the 508 MB embedding), the same for any number of layers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
