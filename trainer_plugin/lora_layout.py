"""LoRA adapters between the official ChatGLM3 layout and native GLM.

ChatGLM3 QLoRA projects and LLaMA-Factory put LoRA on the fused ``query_key_value`` layer
(peft, ``target_modules=["query_key_value"]``). On native GLM that layer is three projections.

Import (fused -> native) is exact: the fused update is ``B A`` with ``B`` of
``(q + k + v rows) x r``; row block ``i`` of ``B A`` is ``B_i A``, so q/k/v each get the shared
``A`` (copied) and their own row block ``B_i`` of ``B``. Scale and rank stay the same.

Export (native -> fused) is exact too, but in general needs rank ``3r``: three independent LoRAs
``B_q A_q``, ``B_k A_k``, ``B_v A_v`` are one fused update ``blockdiag(B_q, B_k, B_v) [A_q; A_k; A_v]``,
so ``A_fused`` stacks the three ``A`` (``3r x in``) and ``B_fused`` is block-diagonal
(``out x 3r``). ``lora_alpha`` is raised with the rank so that the scale ``alpha / r`` (``alpha /
sqrt(r)`` with rsLoRA) is unchanged. Only when every layer's three ``A`` are identical (an imported
adapter, say) is the export the plain rank-``r`` form ``A``, ``[B_q; B_k; B_v]``. A projection
without LoRA contributes zero rows to ``B_fused``.

The other module names map one to one (``dense`` = ``o_proj``, ``dense_h_to_4h`` = ``gate_up_proj``,
``dense_4h_to_h`` = ``down_proj``, ``output_layer`` = ``lm_head``); the MLP's [gate; up] order is the
same in both layouts, so a LoRA on it needs no change.

>>> import_chatglm3_adapter("chatglm3-lora/", "lora-native/", base="chatglm3-6b/")  # doctest: +SKIP
PosixPath('lora-native')
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer_plugin.chatglm3_checkpoint import (
    CheckpointError,
    cache_root,
    glm_config_from_chatglm3,
    is_chatglm3,
    read_config,
)

if TYPE_CHECKING:
    import torch

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
FUSED_QKV = "query_key_value"
# official module path (under "transformer.") <-> native module path (under "model." / top level)
_MODULES = (
    ("transformer.encoder.layers.{}.self_attention.dense", "model.layers.{}.self_attn.o_proj"),
    ("transformer.encoder.layers.{}.mlp.dense_h_to_4h", "model.layers.{}.mlp.gate_up_proj"),
    ("transformer.encoder.layers.{}.mlp.dense_4h_to_h", "model.layers.{}.mlp.down_proj"),
    ("transformer.output_layer", "lm_head"),
    ("transformer.embedding.word_embeddings", "model.embed_tokens"),
)
_TARGETS = {"dense": "o_proj", "dense_h_to_4h": "gate_up_proj", "dense_4h_to_h": "down_proj",
            "output_layer": "lm_head", "word_embeddings": "embed_tokens"}
_KEY = re.compile(r"(base_model\.model\.)(.+)\.(lora_A|lora_B)\.weight")
_OFFICIAL_QKV = re.compile(r"transformer\.encoder\.layers\.(\d+)\.self_attention\.query_key_value")
_NATIVE_QKV = re.compile(r"model\.layers\.(\d+)\.self_attn\.([qkv])_proj")


def read_adapter(folder: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(adapter_config.json, tensors) of a peft adapter folder (safetensors or .bin)."""
    import torch
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / ADAPTER_CONFIG).is_file():
        raise FileNotFoundError(f"{folder}: no {ADAPTER_CONFIG}; give a peft adapter folder")
    config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    if (folder / ADAPTER_WEIGHTS).is_file():
        tensors = load_file(str(folder / ADAPTER_WEIGHTS))
    elif (folder / "adapter_model.bin").is_file():
        tensors = torch.load(str(folder / "adapter_model.bin"), map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"{folder}: no {ADAPTER_WEIGHTS} or adapter_model.bin")
    return config, tensors


def native_target_modules(targets: list[str] | str | None) -> list[str] | str | None:
    """LoRA target names written for the official layout, in native GLM names (others unchanged),
    so a ChatGLM3 recipe's ``target_modules: [query_key_value]`` trains the same projections.

    >>> native_target_modules(["query_key_value", "dense"])
    ['q_proj', 'k_proj', 'v_proj', 'o_proj']
    """
    if targets is None or isinstance(targets, str):
        return targets
    out: list[str] = []
    for t in targets:
        for name in (["q_proj", "k_proj", "v_proj"] if t == FUSED_QKV else [_TARGETS.get(t, t)]):
            if name not in out:
                out.append(name)
    return out


def is_chatglm3_adapter(folder: str | Path) -> bool:
    """True for an adapter written against the official ChatGLM module names."""
    path = Path(folder) / ADAPTER_CONFIG
    if not path.is_file():
        return False
    targets = json.loads(path.read_text(encoding="utf-8")).get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else targets
    return any(t in (FUSED_QKV, "dense_h_to_4h", "dense_4h_to_h") for t in targets)


def _check_plain_lora(config: Mapping[str, Any], source: Path) -> None:
    if config.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(f"{source}: peft_type {config['peft_type']!r}; only LoRA converts")
    for key in ("use_dora", "lora_bias"):
        if config.get(key):
            raise CheckpointError(f"{source}: {key} is set; only plain LoRA converts exactly")
    if isinstance(config.get("target_modules"), str):
        raise CheckpointError(f"{source}: target_modules is the regex {config['target_modules']!r}; "
                              "list the module names instead")


def _qkv_rows(base_config: Any) -> list[int]:
    d = base_config.head_dim
    return [base_config.num_attention_heads * d, base_config.num_key_value_heads * d,
            base_config.num_key_value_heads * d]


def _glm_config(base: str | Path) -> Any:
    from transformers import GlmConfig

    if is_chatglm3(base):
        return glm_config_from_chatglm3(read_config(base), str(Path(base) / "config.json"))
    return GlmConfig.from_pretrained(str(base))


def _write(out: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor], src: Path) -> Path:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / ADAPTER_WEIGHTS),
              metadata={"format": "pt"})
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                      encoding="utf-8")
    for f in src.iterdir():  # tokenizer files, trainer_plugin.json, README: they still apply
        if f.is_file() and f.name not in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, "adapter_model.bin"):
            shutil.copy2(f, out / f.name)
    return out


def _rename(path: str, to_native: bool) -> str:
    for official, native in _MODULES:
        source, target = (official, native) if to_native else (native, official)
        m = re.fullmatch(re.escape(source).replace(r"\{\}", r"(\d+)"), path)
        if m:
            return target.format(*m.groups())
    raise CheckpointError(f"LoRA on {path!r} has no counterpart in the other layout")


def import_chatglm3_adapter(src: str | Path, out: str | Path, base: str | Path) -> Path:
    """Convert a fused ``query_key_value`` adapter to native q/k/v LoRAs (exact, same rank)."""
    import torch

    src, out = Path(src), Path(out)
    config, tensors = read_adapter(src)
    _check_plain_lora(config, src)
    rows = _qkv_rows(_glm_config(base))
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        m = _KEY.fullmatch(key)
        if m is None:
            raise CheckpointError(f"{src}: unexpected adapter tensor {key!r}")
        prefix, path, kind = m.groups()
        qkv = _OFFICIAL_QKV.fullmatch(path)
        if qkv is None:
            converted[f"{prefix}{_rename(path, True)}.{kind}.weight"] = tensor
            continue
        native = f"{prefix}model.layers.{qkv.group(1)}.self_attn"
        if kind == "lora_A":
            for proj in "qkv":
                converted[f"{native}.{proj}_proj.lora_A.weight"] = tensor.clone()
        else:
            if tensor.shape[0] != sum(rows):
                raise CheckpointError(f"{src}: {key} has {tensor.shape[0]} rows; the base's fused "
                                      f"query_key_value has {sum(rows)}; wrong base model?")
            for proj, part in zip("qkv", torch.split(tensor, rows, dim=0), strict=True):
                converted[f"{native}.{proj}_proj.lora_B.weight"] = part.clone()

    def names(name: str) -> list[str]:
        return ["q_proj", "k_proj", "v_proj"] if name == FUSED_QKV else [_TARGETS.get(name, name)]

    new = dict(config)
    new["target_modules"] = sorted({n for t in config.get("target_modules") or [] for n in names(t)})
    for key in ("rank_pattern", "alpha_pattern"):
        if config.get(key):
            new[key] = {n: v for k, v in config[key].items() for n in names(k)}
    if config.get("modules_to_save"):
        new["modules_to_save"] = [_TARGETS.get(n, n) for n in config["modules_to_save"]]
    return _write(out, new, converted, src)


def export_chatglm3_adapter(src: str | Path, out: str | Path, base: str | Path) -> Path:
    """Convert native q/k/v LoRAs to one fused ``query_key_value`` LoRA (exact; rank r when the
    three ``A`` of every layer are equal, else the block form of rank ``3r``)."""
    import torch

    src, out = Path(src), Path(out)
    config, tensors = read_adapter(src)
    _check_plain_lora(config, src)
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise CheckpointError(f"{src}: per-module ranks (rank_pattern) are not converted")
    rows = _qkv_rows(_glm_config(base))
    r, alpha = int(config["r"]), float(config["lora_alpha"])
    layers: dict[tuple[str, str], dict[str, dict[str, torch.Tensor]]] = {}
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        m = _KEY.fullmatch(key)
        if m is None:
            raise CheckpointError(f"{src}: unexpected adapter tensor {key!r}")
        prefix, path, kind = m.groups()
        qkv = _NATIVE_QKV.fullmatch(path)
        if qkv is None:
            converted[f"{prefix}{_rename(path, False)}.{kind}.weight"] = tensor
        else:
            layers.setdefault((prefix, qkv.group(1)), {}).setdefault(qkv.group(2), {})[kind] = tensor
    shared = all(
        len(parts) == 3 and torch.equal(parts["q"]["lora_A"], parts["k"]["lora_A"])
        and torch.equal(parts["q"]["lora_A"], parts["v"]["lora_A"])
        for parts in layers.values()
    )
    fused_rank = r if shared else 3 * r
    for (prefix, layer), parts in layers.items():
        name = f"{prefix}transformer.encoder.layers.{layer}.self_attention.{FUSED_QKV}"
        a_any = next(iter(parts.values()))["lora_A"]
        if shared:
            converted[f"{name}.lora_A.weight"] = parts["q"]["lora_A"].clone()
            converted[f"{name}.lora_B.weight"] = torch.cat(
                [parts[p]["lora_B"] for p in "qkv"], dim=0)
            continue
        a = torch.zeros(3 * r, a_any.shape[1], dtype=a_any.dtype)
        b = torch.zeros(sum(rows), 3 * r, dtype=a_any.dtype)
        row = 0
        for i, (proj, n_rows) in enumerate(zip("qkv", rows, strict=True)):
            if proj in parts:  # an untargeted projection keeps zero rows in B
                a[i * r:(i + 1) * r] = parts[proj]["lora_A"]
                b[row:row + n_rows, i * r:(i + 1) * r] = parts[proj]["lora_B"]
            row += n_rows
        converted[f"{name}.lora_A.weight"] = a
        converted[f"{name}.lora_B.weight"] = b

    # Same scale at the new rank: alpha/r (rsLoRA: alpha/sqrt(r)).
    grow = fused_rank / r
    fused_alpha = alpha * (math.sqrt(grow) if config.get("use_rslora") else grow)
    back = {v: k for k, v in _TARGETS.items()}
    others = sorted({back.get(t, t) for t in config.get("target_modules") or []
                     if t not in ("q_proj", "k_proj", "v_proj")})
    new = dict(config)
    new["target_modules"] = sorted(([FUSED_QKV] if layers else []) + others)
    if fused_rank != r and others:
        new["rank_pattern"] = {FUSED_QKV: fused_rank}
        new["alpha_pattern"] = {FUSED_QKV: fused_alpha}
    elif fused_rank != r:
        new["r"], new["lora_alpha"] = fused_rank, fused_alpha
    if config.get("modules_to_save"):
        new["modules_to_save"] = [back.get(n, n) for n in config["modules_to_save"]]
    return _write(out, new, converted, src)


def native_adapter(adapter: str | Path, base: str | Path) -> Path:
    """``adapter`` itself if it targets native names, else its native conversion (cached by the
    adapter's content)."""
    adapter = Path(adapter)
    if not is_chatglm3_adapter(adapter):
        return adapter
    digest = hashlib.sha256(str(Path(base).resolve()).encode())
    for f in sorted(adapter.iterdir()):
        if f.is_file() and f.name.startswith("adapter_"):
            digest.update(f.name.encode() + f.read_bytes())
    out = cache_root() / "adapters" / f"{adapter.name}-{digest.hexdigest()[:16]}"
    if not (out / ADAPTER_CONFIG).is_file():
        tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        import_chatglm3_adapter(adapter, tmp, base)
        try:
            tmp.rename(out)
        except OSError:  # another process got there first
            shutil.rmtree(tmp, ignore_errors=True)
    return out
