"""Model loading shared by train, merge and evaluate: dtypes, devices, 4-bit configs, LoRA targets.

Also builds the tiny randomly initialised models the tests (and ``bench --tiny``) run on:

>>> cfg = tiny_glm_config(num_hidden_layers=1)
>>> cfg.vocab_size, cfg.pad_token_id
(65024, 0)
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported inside the functions so that `dataprep-train --help` is fast
    import torch
    from torch import nn

# dtype names users may write -> attribute of the torch module
DTYPES: dict[str, str] = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}

# ChatGLM's own (remote-code) architecture fuses q, k and v into one layer; LoRA on it alone is
# what THUDM's and most published ChatGLM3 recipes do.
CHATGLM_TARGETS = ["query_key_value"]
# Output heads by name, for architectures whose get_output_embeddings() is not wired up
# (ChatGLM's remote code calls it ``output_layer``).
OUTPUT_HEAD_NAMES = {"lm_head", "output_layer", "embed_out"}

ADAPTER_CONFIG = "adapter_config.json"
TRAIN_INFO = "trainer_plugin.json"  # what train() used, written next to the adapter
TOKENIZER_FILE_PATTERNS = (
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.*",
    "merges.txt",
    "*.tiktoken",
    "chat_template*",
    "tokenization_*.py",
)


# bitsandbytes' CPU messages, said once in words a user can act on. On CPUs with AVX512-BF16 its
# import tries to fetch an optional faster 4-bit kernel from the Hugging Face hub (the `kernels`
# package) and logs the failure with its exception on every run; LLM.int8 on the CPU logs a cast
# to float16 for every matmul.
BNB_MESSAGES = {
    "bitsandbytes.backends.cpu.ops": (
        "Failed to load CPU gemm_4bit_forward",
        "bitsandbytes: no optional fast CPU 4-bit kernel (it needs the `kernels` package and a "
        "download); using bitsandbytes' own CPU kernels, same results, slower",
    ),
    "bitsandbytes.autograd._functions": (
        "MatMul8bitLt: inputs will be cast",
        "bitsandbytes: int8 layers quantize their float32 inputs through float16 (LLM.int8), "
        "so outputs differ slightly from float32",
    ),
}


class _OnceInWords:
    """A logging filter: the first matching record is rewritten into one plain line, the rest
    are dropped; any other record passes unchanged."""

    def __init__(self, starts: str, line: str) -> None:
        self.starts, self.line, self.seen = starts, line, False

    def filter(self, record: Any) -> bool:
        if not str(record.msg).startswith(self.starts):
            return True
        if self.seen:
            return False
        self.seen = True
        record.msg, record.args = self.line, ()
        return True


def quiet_bitsandbytes() -> None:
    """Install the filters of :data:`BNB_MESSAGES` (idempotent; before bitsandbytes is imported
    is best, since its kernel message comes at import time)."""
    import logging

    for name, (starts, line) in BNB_MESSAGES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _OnceInWords) for f in logger.filters):
            logger.addFilter(_OnceInWords(starts, line))


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_dtype(name: str | torch.dtype, *, cuda: bool | None = None) -> torch.dtype:
    """``"auto"`` is bf16 on a GPU that supports it, fp16 on other GPUs and fp32 on the CPU.

    >>> resolve_dtype("bf16")
    torch.bfloat16
    """
    import torch

    if isinstance(name, torch.dtype):
        return name
    if name == "auto":
        cuda = has_cuda() if cuda is None else cuda
        if not cuda:
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of auto, {', '.join(DTYPES)}")
    return getattr(torch, DTYPES[name])


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def default_device_map() -> str | dict[str, int]:
    """Where ``from_pretrained`` puts the weights.

    Under torchrun every process must hold a whole copy on its own GPU ("auto" would split one
    model across all of them), so a set LOCAL_RANK pins the model to that GPU.
    """
    if not has_cuda():
        return "cpu"
    if "LOCAL_RANK" in os.environ:
        return {"": int(os.environ["LOCAL_RANK"])}
    return "auto"


@dataclass
class QuantConfig:
    """bitsandbytes settings of a QLoRA base; stored with the adapter so merge can redo them."""

    bits: int = 4
    """4 (NF4/FP4, QLoRA) or 8 (LLM.int8)."""
    quant_type: str = "nf4"
    """4-bit data type: nf4 or fp4."""
    double_quant: bool = True
    """Quantise the per-block scales too (saves ~0.4 bit per weight)."""
    compute_dtype: str = "auto"
    """dtype the 4-bit weights are dequantised to for each matmul."""

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise ValueError(f"quantization bits must be 4 or 8, got {self.bits}; "
                             "use --no-quant for plain LoRA")
        if self.quant_type not in ("nf4", "fp4"):
            raise ValueError(f"bnb_4bit_quant_type must be nf4 or fp4, got {self.quant_type!r}")
        resolve_dtype(self.compute_dtype, cuda=False)  # reject typos early

    def to_bnb(self) -> Any:
        from transformers import BitsAndBytesConfig

        if self.bits == 8:
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=self.quant_type,
            bnb_4bit_use_double_quant=self.double_quant,
            bnb_4bit_compute_dtype=resolve_dtype(self.compute_dtype),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_causal_lm(
    path: str | Path,
    *,
    dtype: str | torch.dtype = "auto",
    quant: QuantConfig | None = None,
    device_map: str | dict[str, int] | None = None,
    trust_remote_code: bool = False,
) -> Any:
    """Load a causal LM, 4/8-bit when ``quant`` is given. Remote code only when asked for.

    A folder in the official ChatGLM3 layout (``model_type: chatglm``) is loaded as transformers'
    native ``GlmForCausalLM``: converted once into a cache folder (see
    :mod:`trainer_plugin.chatglm3_checkpoint`), never through its own remote code, which does not
    run under transformers 5.
    """
    quiet_bitsandbytes()
    from transformers import AutoModelForCausalLM

    from trainer_plugin.chatglm3_checkpoint import is_chatglm3, native_folder

    if is_chatglm3(path):
        path, trust_remote_code = native_folder(path), False

    kwargs: dict[str, Any] = {
        "dtype": resolve_dtype(dtype),
        "device_map": default_device_map() if device_map is None else device_map,
        "trust_remote_code": trust_remote_code,
    }
    if quant is not None:
        kwargs["quantization_config"] = quant.to_bnb()
    try:
        return AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except ValueError as err:
        if not trust_remote_code and "trust_remote_code" in str(err):
            raise ValueError(
                f"{path}: this model needs its own Python code; pass --trust-remote-code "
                "if you have read it and trust it"
            ) from err
        raise


def output_rows(model: nn.Module) -> int:
    """Number of logits the model produces per position.

    ``get_output_embeddings()`` is the transformers way, but models with their own code may not
    wire it up (ChatGLM's remote code returns None; its head is ``transformer.output_layer``), so
    a head found by name, then the config's vocabulary size, stand in.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        head = next((m for name, m in model.named_modules()
                     if name.rsplit(".", 1)[-1] in OUTPUT_HEAD_NAMES and _is_linear(m)), None)
    if head is not None and getattr(head, "out_features", None):
        return int(head.out_features)  # a 4-bit weight's shape is its packed storage, not rows
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    config = getattr(model, "config", None)
    rows = getattr(config, "padded_vocab_size", None) or getattr(config, "vocab_size", None)
    if not rows:
        raise ValueError(f"cannot tell how many logits {type(model).__name__} produces: it has "
                         "no output head by a known name and no vocab_size in its config")
    return int(rows)


def _is_linear(module: nn.Module) -> bool:
    # bitsandbytes' Linear4bit/Linear8bitLt subclass nn.Linear; GPT-2 style models use Conv1D.
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, nn.Linear | Conv1D)


def lora_target_modules(model: nn.Module) -> list[str]:
    """LoRA targets for ``model``: ``query_key_value`` for ChatGLM's own architecture, otherwise
    every linear layer except the output head (the suffix names peft matches on).

    >>> from transformers import GlmForCausalLM
    >>> lora_target_modules(GlmForCausalLM(tiny_glm_config(num_hidden_layers=1)))
    ['down_proj', 'gate_up_proj', 'k_proj', 'o_proj', 'q_proj', 'v_proj']
    """
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) == "chatglm":
        return list(CHATGLM_TARGETS)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = set()
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if module is head or leaf in OUTPUT_HEAD_NAMES or not _is_linear(module):
            continue
        names.add(leaf)
    if not names:
        raise ValueError(
            f"found no linear layers in {type(model).__name__} to put LoRA on; "
            "name them with target_modules in the training config"
        )
    return sorted(names)


def tiny_glm_config(**overrides: Any) -> Any:
    """A 2-layer GLM sized for the ChatGLM3 tokenizer (65,024 embedding rows, pad 0, eos 2).

    GlmConfig's own default pad id (151329) lies outside a 65,024-row table, hence the override.
    """
    from transformers import GlmConfig

    kwargs: dict[str, Any] = {
        "vocab_size": 65024,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 8192,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    kwargs.update(overrides)
    return GlmConfig(**kwargs)


def build_tiny_model(out_dir: str | Path, *, seed: int = 0, **overrides: Any) -> Path:
    """Save a randomly initialised tiny GLM (fp32) to ``out_dir`` and return the folder."""
    import torch
    from transformers import GlmForCausalLM

    torch.manual_seed(seed)
    model = GlmForCausalLM(tiny_glm_config(**overrides))
    out = Path(out_dir)
    model.save_pretrained(out)
    return out
