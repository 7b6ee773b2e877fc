"""Merge a LoRA adapter into its base model, check the result, and write it atomically.

>>> merge("base/", "out/adapter", "out/merged", dtype="bfloat16")  # doctest: +SKIP
MergeResult(out=PosixPath('out/merged'), max_abs_diff=0.0123, tolerance=0.31, ...)

``from_4bit``: an adapter trained with QLoRA learned a correction to the NF4-rounded weights, not
to the full-precision ones. Adding it to the original weights gives a model that differs from the
one that was trained by the whole quantisation error; so each weight that bitsandbytes quantised
during training is first quantised and dequantised the same way, and the delta added to that.

``layout="chatglm3"`` writes the merged model in the official ChatGLM3 layout (config + safetensors
with the official names), for the official code, vLLM's ChatGLM support and other tools that expect
it. ``quantize=4|8`` writes it quantized with bitsandbytes (NF4 / LLM.int8), serialized so that a
plain ``from_pretrained`` loads it quantized, and measures what quantization did to the logits.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer_plugin.modeling import (
    ADAPTER_CONFIG,
    TOKENIZER_FILE_PATTERNS,
    TRAIN_INFO,
    QuantConfig,
    dtype_name,
    load_causal_lm,
    resolve_dtype,
)

if TYPE_CHECKING:  # torch is imported inside the functions so that `dataprep-train --help` is fast
    import torch

MERGE_INFO = "merge_info.json"
# Relative logit tolerance per dtype of the compared models: merging W + BA and computing
# Wx + B(Ax) round differently, and the rounding of a half-precision model grows over the layers.
RTOL = {"float32": 1e-4, "float16": 2e-2, "bfloat16": 5e-2}


LAYOUTS = ("native", "chatglm3")
N_QUANT_SAMPLES = 3  # real samples the quantized model's logits are compared on
QUANT_SAMPLE_TOKENS = 256


class MergeVerificationError(RuntimeError):
    """The merged model's logits differ from base+adapter by more than the tolerance."""


@dataclass
class MergeResult:
    out: Path
    dtype: str
    from_4bit: bool
    layers_round_tripped: int
    verified: bool
    max_abs_diff: float | None
    tolerance: float | None
    note: str | None = None
    """Something the caller should tell the user (e.g. a 4-bit adapter merged without --from-4bit)."""
    layout: str = "native"
    quantized_bits: int | None = None
    size_bytes: int | None = None
    """Size on disk of the written model folder."""
    quant_max_abs_diff: float | None = None
    """Largest logit difference quantized vs unquantized merge, on ``quant_probe``."""
    quant_mean_abs_diff: float | None = None
    quant_argmax_agreement: float | None = None
    """Share of positions where both pick the same next token."""
    quant_probe: str | None = None
    """What the quantized model was compared on (real samples, or random ids when none were found)."""


def merge(
    base: str | Path,
    adapter: str | Path,
    out: str | Path,
    dtype: str = "bfloat16",
    from_4bit: bool = False,
    verify: bool = True,
    tokenizer: str | Path | None = None,
    tolerance: float | None = None,
    device: str = "cpu",
    trust_remote_code: bool = False,
    layout: str = "native",
    quantize: int | None = None,
    samples: str | Path | None = None,
) -> MergeResult:
    """Write ``base`` + ``adapter`` merged into ``out`` (weights, config, tokenizer files).

    ``base`` may be in the official ChatGLM3 layout and ``adapter`` a fused ``query_key_value``
    adapter; both are converted to native GLM first. ``layout`` is the layout written (native or
    chatglm3). ``quantize`` (4 or 8) writes the merged model quantized; its logits are compared
    with the unquantized merge on the first samples of ``samples`` (dataprep JSONL; default: the
    data the adapter was trained on).

    ``verify`` compares logits of the merged model with base+adapter (for ``from_4bit``: the
    4-bit base as loaded for training + adapter) on fixed token ids and raises
    :class:`MergeVerificationError` above ``tolerance`` (default: a dtype-dependent share of the
    largest logit). Nothing is left at ``out`` unless the whole merge succeeded; rerunning
    replaces an earlier merge output there.
    """
    base, adapter, out = Path(base), Path(adapter), Path(out)
    if not (adapter / ADAPTER_CONFIG).is_file():
        raise FileNotFoundError(f"{adapter}: no {ADAPTER_CONFIG}; pass the folder train wrote")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    if quantize not in (None, 4, 8):
        raise ValueError(f"quantize must be 4 or 8, got {quantize}")
    if quantize is not None and layout != "native":
        raise ValueError("--quantize writes bitsandbytes weights, which only the native layout "
                         "can hold (the official code has its own int4/int8 format); drop "
                         "--layout chatglm3 or --quantize")
    _check_out(out)
    from peft import PeftModel

    from trainer_plugin.lora_layout import native_adapter

    source_adapter, adapter = adapter, native_adapter(adapter, base)

    out_dtype = resolve_dtype(dtype)
    quantized, n_round_tripped = None, 0
    if from_4bit:
        quant = _training_quant(adapter)
        quantized = load_causal_lm(base, dtype=resolve_dtype(quant.compute_dtype), quant=quant,
                                   device_map=device, trust_remote_code=trust_remote_code)
        _compute_like_training(quantized)
        # Round-trip in the dtype bitsandbytes saw at training time so the codes come out equal.
        work_dtype = _quantized_source_dtype(quantized)
    else:
        work_dtype = out_dtype
    model = load_causal_lm(base, dtype=work_dtype, device_map=device,
                           trust_remote_code=trust_remote_code)
    if quantized is not None:
        n_round_tripped = _round_trip_like(model, quantized)
    model = PeftModel.from_pretrained(model, str(adapter))
    ids = _probe_ids(model.get_base_model().config.vocab_size, device)

    reference = None
    if verify:
        ref_model = PeftModel.from_pretrained(quantized, str(adapter)) if quantized else model
        reference = _logits(ref_model, ids)
        del ref_model, quantized
    merged = model.merge_and_unload().to(out_dtype)

    diff = tol = None
    if verify:
        got = _logits(merged, ids)
        diff = float((got - reference).abs().max())
        rtol = max(RTOL[dtype_name(work_dtype)], RTOL[dtype_name(out_dtype)])
        tol = tolerance if tolerance is not None else rtol * max(1.0, float(reference.abs().max()))
        if not diff <= tol:  # also catches NaN
            raise MergeVerificationError(
                f"merged logits differ from base+adapter by {diff:.4g} (tolerance {tol:.4g}); "
                + ("check that base is the model the adapter was trained on" if from_4bit else
                   "try --dtype float32, or a larger --tolerance if you accept the difference")
            )
    result = MergeResult(out, dtype_name(out_dtype), from_4bit, n_round_tripped, verify, diff, tol,
                         note=None if from_4bit else _quantized_training_note(adapter),
                         layout=layout, quantized_bits=quantize)

    def save(folder: Path) -> None:
        if layout == "chatglm3":
            _save_chatglm3(merged, folder, base)
        elif quantize is None:
            merged.save_pretrained(folder)
        else:
            probe, what = _quant_probe(samples, source_adapter, tokenizer, base,
                                       merged.config.vocab_size, device)
            _save_quantized(merged, folder, quantize, out_dtype, device, probe, result)
            result.quant_probe = what

    _write_atomically(save, out, result, base, source_adapter, tokenizer)
    return result


def _save_chatglm3(merged: Any, folder: Path, base: Path) -> None:
    from trainer_plugin.chatglm3_checkpoint import (
        chatglm3_config_from_glm,
        copy_companions,
        native_to_official,
        write_safetensors,
    )

    # The dtype the weights are written in, not the one of the model merged into (the official
    # rotary buffer is computed in it too).
    merged.config.dtype = next(merged.parameters()).dtype
    config = chatglm3_config_from_glm(merged.config)
    write_safetensors(native_to_official(merged.state_dict().items(), merged.config), folder)
    (folder / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                        encoding="utf-8")
    if base.is_dir():
        # The official model code, tokenizer code and generation config the config.json's auto_map
        # and the official loaders expect next to the weights.
        copy_companions(base, folder)


def _save_quantized(merged: Any, folder: Path, bits: int, dtype: torch.dtype, device: str,
                    probe: torch.Tensor, result: MergeResult) -> None:
    """Quantize through ``from_pretrained`` (what bitsandbytes' serialization expects), save it,
    and record how far its logits moved from the unquantized merge on ``probe``."""
    import torch

    plain = folder.parent / f"{folder.name}.unquantized"
    try:
        merged.save_pretrained(plain)
        quant = QuantConfig(bits=bits, compute_dtype=dtype_name(dtype))
        quantized = load_causal_lm(plain, dtype=dtype, quant=quant, device_map=device)
        before, after = _logits(merged, probe), _logits(quantized, probe)
        quantized.save_pretrained(folder)
    finally:
        shutil.rmtree(plain, ignore_errors=True)
    delta = (after - before).abs()
    result.quant_max_abs_diff = float(delta.max())
    result.quant_mean_abs_diff = float(delta.mean())
    result.quant_argmax_agreement = float(
        (after.argmax(-1) == before.argmax(-1)).to(torch.float32).mean())


def _quant_probe(samples: str | Path | None, adapter: Path, tokenizer: str | Path | None,
                 base: Path, vocab_size: int, device: str) -> tuple[torch.Tensor, str]:
    """Token ids of a few real samples (``samples``, else the adapter's training data), else
    random ids; and a description of which it is."""
    import torch

    from dataprep.tokenizer import load_tokenizer
    from trainer_plugin.data import load_samples
    from trainer_plugin.encoding import encode_conversation

    if samples is None and (adapter / TRAIN_INFO).is_file():
        data = json.loads((adapter / TRAIN_INFO).read_text(encoding="utf-8")).get("data")
        samples = data if data and Path(data).is_file() else None
    tok_dir = _tokenizer_source(Path(tokenizer) if tokenizer else None, adapter, base)
    if samples is None or tok_dir is None:
        return _probe_ids(vocab_size, device), "random token ids (no samples or tokenizer found)"
    tok = load_tokenizer(tok_dir)
    rows = [encode_conversation(s, tok).input_ids[:QUANT_SAMPLE_TOKENS]
            for s in load_samples(samples)[:N_QUANT_SAMPLES]]
    width = min(len(r) for r in rows)  # equal lengths: no padding to mask
    ids = torch.tensor([r[:width] for r in rows], device=device)
    return ids, f"{len(rows)} samples of {samples} ({width} tokens each)"


def _quantized_training_note(adapter: Path) -> str | None:
    info = adapter / TRAIN_INFO
    quant = json.loads(info.read_text(encoding="utf-8")).get("quantization") if info.is_file() else None
    if quant and quant.get("bits") == 4:
        return ("the adapter was trained on a 4-bit base; --from-4bit merges it into the weights it "
                "was trained against")
    return None


def _training_quant(adapter: Path) -> QuantConfig:
    info = adapter / TRAIN_INFO
    if info.is_file():
        quant = json.loads(info.read_text(encoding="utf-8")).get("quantization")
        if quant is None:
            raise ValueError(f"{adapter} was trained without quantization; merge without --from-4bit")
        quant = QuantConfig(**quant)
    else:  # an adapter from elsewhere: assume the usual QLoRA settings
        quant = QuantConfig()
    if quant.bits != 4:
        raise ValueError(f"--from-4bit needs a 4-bit adapter, {adapter} was trained with {quant.bits} bits")
    return quant


def _quantized_source_dtype(quantized: torch.nn.Module) -> torch.dtype:
    import bitsandbytes as bnb

    for module in quantized.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            return module.weight.quant_state.dtype
    raise ValueError("the 4-bit base has no quantized linear layer; merge without --from-4bit")


def _compute_like_training(quantized: torch.nn.Module) -> None:
    # On CPUs with AVX512-BF16, bitsandbytes' inference path repacks the 4-bit weights and
    # multiplies in bf16, while training (what we verify against) dequantizes and multiplies in
    # the compute dtype; without this the reference itself would be off by bf16 rounding.
    for module in quantized.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def _round_trip_like(model: torch.nn.Module, quantized: torch.nn.Module) -> int:
    """Replace each weight that bitsandbytes quantised in ``quantized`` by its NF4 round trip.

    The 4-bit load only tells which layers were quantised and with which settings; the round trip
    itself runs on ``model``'s own weights, so verification against the 4-bit model is a real check.
    """
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf

    n = 0
    for name, module in quantized.named_modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        q = module.weight
        weight = model.get_submodule(name).weight
        codes, state = bnbf.quantize_4bit(
            weight.data, blocksize=q.blocksize, compress_statistics=q.compress_statistics,
            quant_type=q.quant_type, quant_storage=q.quant_storage,
        )
        weight.data = bnbf.dequantize_4bit(codes, state).to(weight.dtype).reshape(weight.shape)
        n += 1
    return n


def _probe_ids(vocab_size: int, device: str) -> torch.Tensor:
    import torch

    # Fixed pseudo-random ids: independent of any tokenizer and touching many embedding rows.
    gen = torch.Generator().manual_seed(1234)
    return torch.randint(3, vocab_size, (3, 24), generator=gen).to(device)


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    import torch

    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits.float().cpu()


def _check_out(out: Path) -> None:
    if out.is_file():
        raise FileExistsError(f"{out} is a file; give a folder for the merged model")
    if out.is_dir() and any(out.iterdir()) and not (out / MERGE_INFO).is_file():
        raise FileExistsError(
            f"{out} exists and is not an earlier merge output (no {MERGE_INFO}); "
            "remove it or choose another --out"
        )


def _tokenizer_source(*candidates: Path | None) -> Path | None:
    for folder in candidates:
        if folder is not None and any(any(folder.glob(p)) for p in TOKENIZER_FILE_PATTERNS):
            return folder
    return None


def _write_atomically(save: Any, out: Path, result: MergeResult, base: Path, adapter: Path,
                      tokenizer: str | Path | None) -> None:
    # Write beside the target, then swap with renames: a crash leaves either the old merge or
    # the new one at ``out``, never a half-written folder. Leftovers of killed runs are removed.
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        tmp.mkdir()
        save(tmp)
        src = _tokenizer_source(Path(tokenizer) if tokenizer else None, adapter, base)
        if src is not None:
            for pattern in TOKENIZER_FILE_PATTERNS:
                for f in src.glob(pattern):
                    if f.is_file():
                        shutil.copy2(f, tmp / f.name)
        result.size_bytes = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
        info = {**asdict(result), "out": str(out), "base": str(base), "adapter": str(adapter),
                "tokenizer_from": str(src) if src else None}
        (tmp / MERGE_INFO).write_text(json.dumps(info, indent=2), encoding="utf-8")
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# command line (registered in trainer_plugin.cli)


def add_arguments(p: Any) -> None:
    """Options of ``dataprep-train merge``."""
    p.add_argument("--base", required=True, type=Path, metavar="PATH",
                   help="base model folder (native, or the official ChatGLM3 layout: converted on load)")
    p.add_argument("--adapter", required=True, type=Path, metavar="DIR",
                   help="LoRA adapter folder written by train")
    p.add_argument("--out", required=True, type=Path, metavar="DIR",
                   help="merged model folder (replaced if it holds an earlier merge)")
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16",
                   help="dtype of the merged weights (default: bfloat16)")
    p.add_argument("--from-4bit", action="store_true",
                   help="the adapter was trained on a 4-bit base: merge into the NF4 round-tripped "
                        "weights it was trained against")
    p.add_argument("--no-verify", action="store_true",
                   help="skip comparing merged logits with base+adapter")
    p.add_argument("--tolerance", type=float, metavar="X",
                   help="largest allowed logit difference (default: depends on the dtype)")
    p.add_argument("--tokenizer", type=Path, metavar="PATH",
                   help="copy tokenizer files from here (default: the adapter, else the base)")
    p.add_argument("--device", default="cpu", help="where to merge (default: cpu)")
    p.add_argument("--layout", choices=LAYOUTS, default="native",
                   help="native: transformers' GlmForCausalLM; chatglm3: the official ChatGLM3 "
                        "layout (config + safetensors with the official names) (default: native)")
    p.add_argument("--quantize", type=int, choices=(4, 8), metavar="4|8",
                   help="write the merged model quantized with bitsandbytes (4: NF4, 8: LLM.int8); "
                        "it reloads quantized with plain from_pretrained")
    p.add_argument("--samples", type=Path, metavar="FILE.jsonl",
                   help="real samples to compare quantized and unquantized logits on "
                        "(default: the adapter's training data)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow the base model folder to run its own Python code")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"


def run(args: Any) -> int:
    """``dataprep-train merge``: thin wrapper over :func:`merge`."""
    result = merge(args.base, args.adapter, args.out, dtype=args.dtype, from_4bit=args.from_4bit,
                   verify=not args.no_verify, tokenizer=args.tokenizer, tolerance=args.tolerance,
                   device=args.device, trust_remote_code=args.trust_remote_code,
                   layout=args.layout, quantize=args.quantize, samples=args.samples)
    check = (f"max logit difference {result.max_abs_diff:.3g} <= {result.tolerance:.3g}"
             if result.verified else "not verified")
    extra = f", {result.layers_round_tripped} layers NF4 round-tripped" if result.from_4bit else ""
    kind = f"{result.layout} layout" + (f", {result.quantized_bits}-bit" if result.quantized_bits else "")
    print(f"merged model written to {result.out} ({kind}, {result.dtype}{extra}, "
          f"{_size(result.size_bytes or 0)} on disk); {check}")
    if result.quantized_bits:
        print(f"quantized vs unquantized merge on {result.quant_probe}: max logit difference "
              f"{result.quant_max_abs_diff:.3g}, mean {result.quant_mean_abs_diff:.3g}, same next "
              f"token at {100 * result.quant_argmax_agreement:.1f}% of positions")
    if result.note:
        print(f"note: {result.note}")
    return 0
