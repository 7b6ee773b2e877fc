"""ChatGLM3 checkpoints in the official layout <-> transformers' native ``GlmForCausalLM``.

ChatGLM3-6B (and GLM-4-9B's ``model_type: chatglm`` release) ship their own modelling code; under
transformers 5 that code no longer runs. Its architecture is exactly transformers' native GLM, so
the official weights only need renaming and one split:

=====================================================  ===========================================
official (``transformer.`` prefix)                      native (``model.`` prefix)
=====================================================  ===========================================
``embedding.word_embeddings``                           ``embed_tokens``
``encoder.layers.N.self_attention.query_key_value``     ``layers.N.self_attn.{q,k,v}_proj`` (rows
                                                        [q: heads x d; k: groups x d; v: groups x d],
                                                        weight and bias)
``encoder.layers.N.self_attention.dense``               ``layers.N.self_attn.o_proj``
``encoder.layers.N.mlp.dense_h_to_4h`` ([gate; up])     ``layers.N.mlp.gate_up_proj`` (same order)
``encoder.layers.N.mlp.dense_4h_to_h``                  ``layers.N.mlp.down_proj``
``encoder.layers.N.{input,post_attention}_layernorm``   ``layers.N.{input,post_attention}_layernorm``
``encoder.final_layernorm``                             ``norm``
``output_layer`` (untied)                               ``lm_head``
``rotary_pos_emb.inv_freq`` (a buffer nothing reads)    dropped; rebuilt on the way back
=====================================================  ===========================================

Both rotate interleaved channel pairs of the first half of each head (native GLM's
``partial_rotary_factor`` 0.5) with base 10000 x ``rope_ratio``; both use RMSNorm with the config's
epsilon. Tensors are converted one at a time and written in shards, so converting a 6B model holds
at most one shard in memory, never two copies of the model.

>>> convert_checkpoint("chatglm3-6b/", "chatglm3-6b-native/", to="native")   # doctest: +SKIP
ConversionResult(out=PosixPath('chatglm3-6b-native'), layout='native', tensors=226, ...)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported inside the functions so that `dataprep-train --help` is fast
    import torch

CONFIG = "config.json"
CHATGLM_MODEL_TYPE = "chatglm"
# Kept inside a converted native config so that the way back restores every official key
# (auto_map, flags the native model has no use for) exactly.
ORIGINAL_CONFIG_KEY = "chatglm3_config"
DEFAULT_SHARD_BYTES = 2 * 1024**3
LAYOUTS = ("native", "chatglm3")

# The official chatglm3-6b config.json minus the sizes: what a native model converted to the
# official layout gets for the keys that native GLM has no equivalent of.
CHATGLM3_TEMPLATE: dict[str, Any] = {
    "add_bias_linear": False,
    "add_qkv_bias": True,
    "apply_query_key_layer_scaling": True,
    "apply_residual_connection_post_layernorm": False,
    "architectures": ["ChatGLMModel"],
    "attention_dropout": 0.0,
    "attention_softmax_in_fp32": True,
    "auto_map": {
        "AutoConfig": "configuration_chatglm.ChatGLMConfig",
        "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
        "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
        "AutoModelForSeq2SeqLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
        "AutoModelForSequenceClassification": "modeling_chatglm.ChatGLMForSequenceClassification",
    },
    "bias_dropout_fusion": True,
    "classifier_dropout": None,
    "eos_token_id": 2,
    "fp32_residual_connection": False,
    "hidden_dropout": 0.0,
    "model_type": CHATGLM_MODEL_TYPE,
    "multi_query_attention": True,
    "original_rope": True,
    "pad_token_id": 0,
    "post_layer_norm": True,
    "pre_seq_len": None,
    "prefix_projection": False,
    "quantization_bit": 0,
    "rmsnorm": True,
    "tie_word_embeddings": False,
    "use_cache": True,
}
# Official options the native architecture cannot express: (key, value that is supported).
_SUPPORTED_FLAGS = (
    ("rmsnorm", True),
    ("post_layer_norm", True),
    ("add_bias_linear", False),
    ("apply_residual_connection_post_layernorm", False),
    ("fp32_residual_connection", False),
)

_REQUIRED = ("hidden_size", "ffn_hidden_size", "num_layers", "num_attention_heads")

_OFFICIAL = re.compile(r"transformer\.encoder\.layers\.(\d+)\.(.+)")
_NATIVE = re.compile(r"model\.layers\.(\d+)\.(.+)")
# Per-layer names that are a plain rename (the fused query_key_value is handled separately).
_LAYER_RENAMES = {
    "input_layernorm.weight": "input_layernorm.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "self_attention.dense.weight": "self_attn.o_proj.weight",
    "mlp.dense_h_to_4h.weight": "mlp.gate_up_proj.weight",
    "mlp.dense_4h_to_h.weight": "mlp.down_proj.weight",
}
_TOP_RENAMES = {
    "transformer.embedding.word_embeddings.weight": "model.embed_tokens.weight",
    "transformer.encoder.final_layernorm.weight": "model.norm.weight",
    "transformer.output_layer.weight": "lm_head.weight",
}
_INV_FREQ = "transformer.rotary_pos_emb.inv_freq"


class CheckpointError(ValueError):
    """A checkpoint this converter cannot read or represent; the message says what and where."""


# ---------------------------------------------------------------------------------------------
# configs


def read_config(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {CONFIG}; give a model folder")
    return json.loads(path.read_text(encoding="utf-8"))


def is_chatglm3(folder: str | Path) -> bool:
    """True for a folder in the official ChatGLM layout (``model_type: chatglm`` in config.json)."""
    path = Path(folder) / CONFIG
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("model_type") == CHATGLM_MODEL_TYPE
    except (json.JSONDecodeError, AttributeError):
        return False


def _heads(cfg: dict[str, Any]) -> tuple[int, int, int]:
    """(query heads, key/value groups, channels per head) of an official config."""
    heads = int(cfg["num_attention_heads"])
    groups = int(cfg["multi_query_group_num"]) if cfg.get("multi_query_attention") else heads
    head_dim = int(cfg.get("kv_channels") or cfg["hidden_size"] // heads)
    return heads, groups, head_dim


def glm_config_from_chatglm3(cfg: dict[str, Any], source: str = "config.json") -> Any:
    """The native ``GlmConfig`` that computes what the official config computes.

    >>> glm_config_from_chatglm3(read_config("chatglm3-6b")).num_key_value_heads  # doctest: +SKIP
    2
    """
    from transformers import GlmConfig

    missing = [k for k in _REQUIRED if cfg.get(k) is None]
    if missing or not (cfg.get("padded_vocab_size") or cfg.get("vocab_size")):
        raise CheckpointError(f"{source}: an official ChatGLM config needs "
                              f"{', '.join(missing) or 'padded_vocab_size'}; is it complete?")
    for key, supported in _SUPPORTED_FLAGS:
        if key in cfg and bool(cfg[key]) != supported:
            raise CheckpointError(f"{source}: {key}={cfg[key]!r} has no native GLM equivalent "
                                  f"(only {key}={supported} is supported)")
    if cfg.get("pre_seq_len"):
        raise CheckpointError(f"{source}: pre_seq_len={cfg['pre_seq_len']} is a P-tuning v2 "
                              "prefix, which native GLM has no place for; use the base model")
    if cfg.get("quantization_bit"):
        raise CheckpointError(f"{source}: quantization_bit={cfg['quantization_bit']} is the "
                              "official code's own int4/int8 format; convert the unquantized model")
    heads, groups, head_dim = _heads(cfg)
    vocab = int(cfg.get("padded_vocab_size") or cfg["vocab_size"])
    return GlmConfig(
        vocab_size=vocab,
        hidden_size=int(cfg["hidden_size"]),
        intermediate_size=int(cfg["ffn_hidden_size"]),
        num_hidden_layers=int(cfg["num_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=groups,
        head_dim=head_dim,
        hidden_act="silu",
        attention_dropout=float(cfg.get("attention_dropout") or 0.0),
        max_position_embeddings=int(cfg.get("seq_length") or 8192),
        rms_norm_eps=float(cfg.get("layernorm_epsilon", 1e-5)),
        attention_bias=bool(cfg.get("add_qkv_bias", True)),
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "partial_rotary_factor": 0.5,
                         "rope_theta": 10000.0 * float(cfg.get("rope_ratio", 1) or 1)},
        pad_token_id=cfg.get("pad_token_id", 0),
        eos_token_id=cfg.get("eos_token_id", 2),
        bos_token_id=None,
        use_cache=bool(cfg.get("use_cache", True)),
        dtype=cfg.get("torch_dtype") or cfg.get("dtype") or "float32",
        architectures=["GlmForCausalLM"],
        **{ORIGINAL_CONFIG_KEY: cfg},
    )


def chatglm3_config_from_glm(config: Any) -> dict[str, Any]:
    """The official config.json of a native GLM config (the inverse of :func:`glm_config_from_chatglm3`).

    A config that came from an official one gets every official key back unchanged; the sizes
    are always taken from the native config, so a resized model stays consistent.
    """
    rope = dict(getattr(config, "rope_parameters", None) or {})
    if rope.get("rope_type", "default") != "default":
        raise CheckpointError(f"rope_type {rope['rope_type']!r}: the official code only has plain RoPE")
    if float(rope.get("partial_rotary_factor", 0.5)) != 0.5:
        raise CheckpointError("the official code rotates half of each head "
                              f"(partial_rotary_factor 0.5), this model {rope['partial_rotary_factor']}")
    if config.hidden_act != "silu":
        raise CheckpointError(f"hidden_act {config.hidden_act!r}: the official MLP is SwiGLU (silu)")
    original = getattr(config, ORIGINAL_CONFIG_KEY, None)
    out = dict(original) if isinstance(original, dict) else dict(CHATGLM3_TEMPLATE)
    groups = config.num_key_value_heads
    ratio = float(rope.get("rope_theta", 10000.0)) / 10000.0
    dtype = config.dtype if isinstance(config.dtype, str) or config.dtype is None else \
        str(config.dtype).removeprefix("torch.")
    out.update({
        "hidden_size": config.hidden_size,
        "ffn_hidden_size": config.intermediate_size,
        "num_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "kv_channels": config.head_dim,
        "multi_query_attention": groups != config.num_attention_heads or
        bool(out.get("multi_query_attention")),
        "multi_query_group_num": groups,
        "padded_vocab_size": config.vocab_size,
        "seq_length": config.max_position_embeddings,
        "layernorm_epsilon": config.rms_norm_eps,
        "add_qkv_bias": bool(config.attention_bias),
        "pad_token_id": config.pad_token_id,
        "tie_word_embeddings": False,
    })
    out.setdefault("vocab_size", config.vocab_size)
    if config.eos_token_id is not None and original is None:
        out["eos_token_id"] = config.eos_token_id
    if ratio != 1.0 or "rope_ratio" in out:
        out["rope_ratio"] = ratio
    if dtype is not None:
        out["torch_dtype"] = dtype
    return out


# ---------------------------------------------------------------------------------------------
# reading checkpoints tensor by tensor


def weight_files(folder: str | Path) -> list[Path]:
    """The weight files of a model folder, in shard order: safetensors first, else pytorch .bin."""
    folder = Path(folder)
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        index = folder / index_name
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            return [folder / name for name in dict.fromkeys(weight_map.values())]
        if (folder / single).is_file():
            return [folder / single]
    found = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not found:
        raise CheckpointError(f"{folder}: no model.safetensors, *.safetensors shards or "
                              "pytorch_model*.bin files")
    return found


def iter_tensors(folder: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of a checkpoint, one at a time (safetensors are memory-mapped; .bin shards are
    loaded one shard at a time, memory-mapped where torch can)."""
    import torch
    from safetensors import safe_open

    for path in weight_files(folder):
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt", device="cpu") as f:
                for name in f.keys():  # noqa: SIM118 - safe_open handles are not mappings
                    yield name, f.get_tensor(name)
        else:
            shard = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            yield from shard.items()
            del shard


# ---------------------------------------------------------------------------------------------
# tensor mapping


def official_to_native(tensors: Iterable[tuple[str, torch.Tensor]], cfg: dict[str, Any]
                       ) -> Iterator[tuple[str, torch.Tensor]]:
    """Official names and fused q/k/v rows -> native names and separate projections."""
    heads, groups, head_dim = _heads(cfg)
    sizes = [heads * head_dim, groups * head_dim, groups * head_dim]
    for name, tensor in tensors:
        if name == _INV_FREQ:
            continue  # native GLM computes its rotary frequencies from the config
        if name in _TOP_RENAMES:
            yield _TOP_RENAMES[name], tensor
            continue
        m = _OFFICIAL.fullmatch(name)
        if m is None:
            raise CheckpointError(f"unexpected tensor {name!r} in an official ChatGLM checkpoint")
        layer, rest = m.groups()
        prefix = f"model.layers.{layer}."
        if rest in _LAYER_RENAMES:
            yield prefix + _LAYER_RENAMES[rest], tensor
        elif rest.startswith("self_attention.query_key_value."):
            kind = rest.rsplit(".", 1)[1]  # weight or bias
            if tensor.shape[0] != sum(sizes):
                raise CheckpointError(f"{name}: {tensor.shape[0]} rows, expected {sum(sizes)} "
                                      f"({heads} heads + 2 x {groups} groups of {head_dim})")
            # clone: the three views share one storage, which safetensors refuses to write
            for proj, part in zip("qkv", tensor.split(sizes, dim=0), strict=True):
                yield f"{prefix}self_attn.{proj}_proj.{kind}", part.clone()
        else:
            raise CheckpointError(f"unexpected tensor {name!r} in an official ChatGLM checkpoint")


def native_to_official(tensors: Iterable[tuple[str, torch.Tensor]], config: Any
                       ) -> Iterator[tuple[str, torch.Tensor]]:
    """Native names and q/k/v projections -> the official names and fused rows.

    q, k and v of one layer are held until all three have arrived (a checkpoint may store them
    in any order); everything else passes straight through.
    """
    import torch

    back_top = {v: k for k, v in _TOP_RENAMES.items()}
    back_layer = {v: k for k, v in _LAYER_RENAMES.items()}
    pending: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    embedding = None
    seen_head = False
    for name, tensor in tensors:
        if name in back_top:
            seen_head |= name == "lm_head.weight"
            if name == "model.embed_tokens.weight" and getattr(config, "tie_word_embeddings", False):
                embedding = tensor  # kept only when it is also the output layer
            yield back_top[name], tensor
            continue
        m = _NATIVE.fullmatch(name)
        if m is None:
            raise CheckpointError(f"unexpected tensor {name!r} in a native GLM checkpoint")
        layer, rest = m.groups()
        prefix = f"transformer.encoder.layers.{layer}."
        if rest in back_layer:
            yield prefix + back_layer[rest], tensor
            continue
        qkv = re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest)
        if qkv is None:
            raise CheckpointError(f"unexpected tensor {name!r} in a native GLM checkpoint")
        proj, kind = qkv.groups()
        parts = pending.setdefault((layer, kind), {})
        parts[proj] = tensor
        if len(parts) == 3:
            del pending[(layer, kind)]
            yield (f"{prefix}self_attention.query_key_value.{kind}",
                   torch.cat([parts["q"], parts["k"], parts["v"]], dim=0))
    if pending:
        missing = sorted(f"layer {layer} {kind}" for layer, kind in pending)
        raise CheckpointError(f"incomplete q/k/v projections: {', '.join(missing)}")
    if not seen_head:
        if embedding is None or not getattr(config, "tie_word_embeddings", False):
            raise CheckpointError("the checkpoint has no lm_head.weight")
        # A tied native model: the official code always has its own output layer.
        yield "transformer.output_layer.weight", embedding.clone()
    yield _INV_FREQ, rotary_inv_freq(config)


def rotary_inv_freq(config: Any) -> torch.Tensor:
    """The official ``rotary_pos_emb.inv_freq`` buffer, computed as its code does (in the model's
    dtype, base 10000 whatever ``rope_ratio`` is: the official forward ignores this buffer)."""
    import torch

    dtype = getattr(config, "dtype", None) or torch.float32
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    dim = config.head_dim // 2
    return 1.0 / (10000 ** (torch.arange(0, dim, 2).to(dtype=dtype) / dim))


# ---------------------------------------------------------------------------------------------
# writing


def write_safetensors(tensors: Iterable[tuple[str, torch.Tensor]], out: str | Path,
                      max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> int:
    """Write tensors as ``model.safetensors`` or as shards plus an index; returns the count.

    Only the shard being filled is held in memory.
    """
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shard: dict[str, torch.Tensor] = {}
    shard_bytes, files, weight_map, total, count = 0, [], {}, 0, 0

    def flush() -> None:
        nonlocal shard, shard_bytes
        path = out / f".shard-{len(files) + 1:05d}.safetensors"
        save_file(shard, str(path), metadata={"format": "pt"})
        files.append((path, list(shard)))
        shard, shard_bytes = {}, 0

    for name, tensor in tensors:
        size = tensor.numel() * tensor.element_size()
        if shard and shard_bytes + size > max_shard_bytes:
            flush()
        shard[name] = tensor.contiguous()
        shard_bytes += size
        total += size
        count += 1
    if shard or not files:
        flush()
    if len(files) == 1:
        files[0][0].rename(out / "model.safetensors")
        return count
    n = len(files)
    for i, (path, names) in enumerate(files, start=1):
        final = f"model-{i:05d}-of-{n:05d}.safetensors"
        path.rename(out / final)
        weight_map.update(dict.fromkeys(names, final))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    return count


# Files of a model folder that are neither weights nor config: the tokenizer (and its remote
# code), the model code, the generation config, licences and model cards travel with the weights.
_WEIGHT_OR_CONFIG = re.compile(r"(.*\.safetensors|pytorch_model.*\.bin|.*\.index\.json|config\.json)")


def copy_companions(src: Path, out: Path) -> None:
    """Copy the non-weight files of ``src`` into ``out``.

    The official model code goes along into a native folder too: nothing there refers to it (a
    native config has no ``auto_map``), and the way back to the official layout needs it.
    """
    for f in src.iterdir():
        if not f.is_file() or _WEIGHT_OR_CONFIG.fullmatch(f.name) or f.name.startswith("."):
            continue
        if not (out / f.name).exists():
            shutil.copy2(f, out / f.name)


@dataclass
class ConversionResult:
    out: Path
    layout: str
    tensors: int
    bytes_on_disk: int


def convert_checkpoint(src: str | Path, out: str | Path, to: str = "native",
                       max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> ConversionResult:
    """Convert a model folder to ``to`` (native or chatglm3); the source layout is detected.

    Written next to ``out`` first and renamed into place, so ``out`` never holds half a model.
    """
    from transformers import GlmConfig

    src, out = Path(src), Path(out)
    if to not in LAYOUTS:
        raise ValueError(f"unknown layout {to!r}; use one of {', '.join(LAYOUTS)}")
    if src.resolve() == out.resolve():
        raise ValueError(f"{out}: write the converted model to another folder than {src}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not empty; remove it or choose another folder")
    cfg = read_config(src)
    source_layout = "chatglm3" if cfg.get("model_type") == CHATGLM_MODEL_TYPE else "native"
    if source_layout == "native" and cfg.get("model_type") != "glm":
        raise CheckpointError(f"{src}: model_type {cfg.get('model_type')!r}; convert reads "
                              "official ChatGLM (chatglm) and native GLM (glm) folders")
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if source_layout == "chatglm3":
            glm = glm_config_from_chatglm3(cfg, str(src / CONFIG))
        else:
            glm = GlmConfig.from_pretrained(str(src))
        if source_layout == to:
            tensors: Iterable[tuple[str, torch.Tensor]] = iter_tensors(src)
        elif to == "native":
            tensors = official_to_native(iter_tensors(src), cfg)
        else:
            tensors = native_to_official(iter_tensors(src), glm)
        count = write_safetensors(tensors, tmp, max_shard_bytes)
        if to == "native":
            glm.save_pretrained(str(tmp))
        else:
            official = cfg if source_layout == "chatglm3" else chatglm3_config_from_glm(glm)
            (tmp / CONFIG).write_text(json.dumps(official, indent=2, ensure_ascii=False) + "\n",
                                      encoding="utf-8")
        copy_companions(src, tmp)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    return ConversionResult(out, to, count, size)


# ---------------------------------------------------------------------------------------------
# converted on load


def cache_root() -> Path:
    """Where official checkpoints are converted on load: ``$DATAPREP_TRAIN_CACHE`` or
    ``~/.cache/chatglm-dataprep``."""
    env = os.environ.get("DATAPREP_TRAIN_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "chatglm-dataprep"


def native_folder(src: str | Path) -> Path:
    """A native-layout copy of an official folder, converted once and reused while the source's
    files are unchanged (the cache key hashes their names, sizes and modification times)."""
    src = Path(src).resolve()
    key = hashlib.sha256(str(src).encode())
    for f in sorted(src.iterdir()):
        if f.is_file():
            st = f.stat()
            key.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    out = cache_root() / "native" / f"{src.name}-{key.hexdigest()[:16]}"
    if not (out / CONFIG).is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            convert_checkpoint(src, out, to="native")
        except OSError:  # another process (an xdist worker) finished the same conversion first
            if not (out / CONFIG).is_file():
                raise
    return out
