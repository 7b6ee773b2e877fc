"""``dataprep-train convert``: models and LoRA adapters between the official ChatGLM3 layout and
native GLM (see :mod:`trainer_plugin.chatglm3_checkpoint` and :mod:`trainer_plugin.lora_layout`).

    dataprep-train convert --to native chatglm3-6b/ chatglm3-6b-native/
    dataprep-train convert --to chatglm3 out/lora/ out/lora-fused/ --base chatglm3-6b/
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from trainer_plugin.chatglm3_checkpoint import LAYOUTS, convert_checkpoint

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMG]?B)", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}


def parse_size(text: str) -> int:
    """``"2GB"`` -> bytes.

    >>> parse_size("500MB")
    524288000
    """
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"--max-shard-size: expected a size like 2GB or 500MB, got {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def convert(src: str | Path, out: str | Path, to: str, *, base: str | Path | None = None,
            max_shard_size: str = "2GB") -> str:
    """Convert a model folder or an adapter folder; returns a one-line summary."""
    from trainer_plugin.lora_layout import (
        ADAPTER_CONFIG,
        export_chatglm3_adapter,
        import_chatglm3_adapter,
        is_chatglm3_adapter,
    )

    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: not a folder; give a model or adapter folder")
    if to not in LAYOUTS:
        raise ValueError(f"--to must be one of {', '.join(LAYOUTS)}, got {to!r}")
    if not (src / ADAPTER_CONFIG).is_file():
        result = convert_checkpoint(src, out, to=to, max_shard_bytes=parse_size(max_shard_size))
        return (f"wrote {result.tensors} tensors in the {to} layout to {out} "
                f"({result.bytes_on_disk / 1024**2:.1f} MB)")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; remove it or choose another folder")
    if base is None:
        named = json.loads((src / ADAPTER_CONFIG).read_text(encoding="utf-8")).get(
            "base_model_name_or_path")
        if not named or not Path(named).is_dir():
            raise ValueError(f"{src}: converting an adapter needs its base model folder (for the "
                             "q/k/v sizes); pass --base")
        base = named
    fused = is_chatglm3_adapter(src)
    if to == "native" and fused:
        import_chatglm3_adapter(src, out, base)
    elif to == "chatglm3" and not fused:
        export_chatglm3_adapter(src, out, base)
    else:
        raise ValueError(f"{src} is already a {to}-layout adapter")
    cfg = json.loads((out / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    ranks = f"rank {cfg['r']}" + (f", query_key_value rank {cfg['rank_pattern']['query_key_value']}"
                                  if cfg.get("rank_pattern") else "")
    return f"wrote the adapter in the {to} layout to {out} (LoRA on {cfg['target_modules']}, {ranks})"


# ---------------------------------------------------------------------------------------------
# command line (registered in trainer_plugin.cli)


def add_arguments(p: Any) -> None:
    """Options of ``dataprep-train convert``."""
    p.add_argument("--to", required=True, choices=LAYOUTS,
                   help="native: transformers' GlmForCausalLM (loads with plain "
                        "AutoModelForCausalLM.from_pretrained); chatglm3: the official layout")
    p.add_argument("src", type=Path, metavar="SRC",
                   help="model folder (either layout, safetensors or .bin shards) or LoRA adapter folder")
    p.add_argument("out", type=Path, metavar="OUT", help="new folder for the converted copy")
    p.add_argument("--base", type=Path, metavar="PATH",
                   help="an adapter's base model, either layout (default: the one the adapter names)")
    p.add_argument("--max-shard-size", default="2GB", metavar="SIZE",
                   help="largest weight file written (default: 2GB)")


def run(args: Any) -> int:
    """``dataprep-train convert``: thin wrapper over :func:`convert`."""
    print(convert(args.src, args.out, args.to, base=args.base, max_shard_size=args.max_shard_size))
    return 0
