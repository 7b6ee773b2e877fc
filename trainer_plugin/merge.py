"""Merge a LoRA adapter into its base model, check the result, and write it atomically.

>>> merge("base/", "out/adapter", "out/merged", dtype="bfloat16")  # doctest: +SKIP
MergeResult(out=PosixPath('out/merged'), max_abs_diff=0.0123, tolerance=0.31, ...)

``from_4bit``: an adapter trained with QLoRA learned a correction to the NF4-rounded weights, not
to the full-precision ones. Adding it to the original weights gives a model that differs from the
one that was trained by the whole quantisation error; so each weight that bitsandbytes quantised
during training is first quantised and dequantised the same way, and the delta added to that.
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
) -> MergeResult:
    """Write ``base`` + ``adapter`` merged into ``out`` (weights, config, tokenizer files).

    ``verify`` compares logits of the merged model with base+adapter (for ``from_4bit``: the
    4-bit base as loaded for training + adapter) on fixed token ids and raises
    :class:`MergeVerificationError` above ``tolerance`` (default: a dtype-dependent share of the
    largest logit). Nothing is left at ``out`` unless the whole merge succeeded; rerunning
    replaces an earlier merge output there.
    """
    base, adapter, out = Path(base), Path(adapter), Path(out)
    if not (adapter / ADAPTER_CONFIG).is_file():
        raise FileNotFoundError(f"{adapter}: no {ADAPTER_CONFIG}; pass the folder train wrote")
    _check_out(out)
    from peft import PeftModel

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
                         note=None if from_4bit else _quantized_training_note(adapter))
    _write_atomically(merged, out, result, base, adapter, tokenizer)
    return result


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


def _write_atomically(merged: Any, out: Path, result: MergeResult, base: Path, adapter: Path,
                      tokenizer: str | Path | None) -> None:
    # Write beside the target, then swap with renames: a crash leaves either the old merge or
    # the new one at ``out``, never a half-written folder. Leftovers of killed runs are removed.
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        merged.save_pretrained(tmp)
        src = _tokenizer_source(Path(tokenizer) if tokenizer else None, adapter, base)
        if src is not None:
            for pattern in TOKENIZER_FILE_PATTERNS:
                for f in src.glob(pattern):
                    if f.is_file():
                        shutil.copy2(f, tmp / f.name)
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
    p.add_argument("--base", required=True, type=Path, metavar="PATH", help="base model folder")
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
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow the base model folder to run its own Python code")


def run(args: Any) -> int:
    """``dataprep-train merge``: thin wrapper over :func:`merge`."""
    result = merge(args.base, args.adapter, args.out, dtype=args.dtype, from_4bit=args.from_4bit,
                   verify=not args.no_verify, tokenizer=args.tokenizer, tolerance=args.tolerance,
                   device=args.device, trust_remote_code=args.trust_remote_code)
    check = (f"max logit difference {result.max_abs_diff:.3g} <= {result.tolerance:.3g}"
             if result.verified else "not verified")
    extra = f", {result.layers_round_tripped} layers NF4 round-tripped" if result.from_4bit else ""
    print(f"merged model written to {result.out} ({result.dtype}{extra}); {check}")
    if result.note:
        print(f"note: {result.note}")
    return 0
