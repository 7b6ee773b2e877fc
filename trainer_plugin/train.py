"""QLoRA (or plain LoRA) fine-tuning of a causal LM on dataprep JSONL, through ``transformers.Trainer``.

The config file is YAML or JSON. Our own keys are the fields of :class:`TrainConfig`; every other
key is passed to ``transformers.TrainingArguments`` as is (``learning_rate``, ``num_train_epochs``,
``per_device_train_batch_size``, ``save_steps``, ...):

    lora_r: 8
    quantization_bits: 4
    max_length: 2048
    learning_rate: 2.0e-4
    num_train_epochs: 3

>>> result = train("configs/train_qlora.yaml", data="out/train.jsonl", output_dir="out/lora",
...                tokenizer="tok/", model="THUDM/chatglm3-6b-base/")   # doctest: +SKIP
>>> result.global_step, result.adapter_dir                             # doctest: +SKIP
(603, PosixPath('out/lora'))
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer_plugin.encoding import COMPAT_MODES
from trainer_plugin.modeling import (
    TOKENIZER_FILE_PATTERNS,
    TRAIN_INFO,
    QuantConfig,
    default_device_map,
    dtype_name,
    has_cuda,
    load_causal_lm,
    lora_target_modules,
    quiet_bitsandbytes,
    require_model_folder,
    resolve_dtype,
)


@dataclass
class TrainConfig:
    """Our keys of the training config file; the rest of the file is ``training_args``."""

    lora_r: int = 8
    """LoRA rank."""
    lora_alpha: float = 32
    """LoRA scaling numerator (the update is scaled by lora_alpha / lora_r)."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA input."""
    target_modules: list[str] | str | None = None
    """Module names to put LoRA on; None = query_key_value for ChatGLM, else all linear layers
    except the output head; "all-linear" = peft's own choice."""
    max_length: int | None = 2048
    """Longest sample in tokens; longer ones are cut or dropped (see truncation). None: no limit."""
    truncation: str = "cut"
    """cut: keep the whole leading messages that fit; drop: drop the sample."""
    compat: str = "default"
    """default, or official: mask exactly like ChatGLM3's own scripts."""
    quantization_bits: int | None = 4
    """4 = QLoRA (NF4), 8 = LLM.int8 base, None = plain LoRA on a full-precision base."""
    bnb_4bit_quant_type: str = "nf4"
    """nf4 or fp4."""
    bnb_4bit_use_double_quant: bool = True
    """Quantise the quantisation scales as well."""
    compute_dtype: str = "auto"
    """dtype of the unquantised weights and of each 4-bit matmul; auto: bf16 on GPUs that have
    it, fp16 on other GPUs, fp32 on the CPU."""
    num_proc: int = 1
    """Worker processes for tokenizing."""
    eval_data: str | None = None
    """Optional dataprep JSONL to compute the eval loss on (set eval_strategy too)."""
    training_args: dict[str, Any] = field(default_factory=dict)
    """Keys for transformers.TrainingArguments."""

    def __post_init__(self) -> None:
        if self.lora_r < 1:
            raise ValueError(f"lora_r must be at least 1, got {self.lora_r}")
        if self.lora_alpha <= 0:
            raise ValueError(f"lora_alpha must be positive, got {self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.truncation not in ("cut", "drop"):
            raise ValueError(f"truncation must be 'cut' or 'drop', got {self.truncation!r}")
        if self.compat not in COMPAT_MODES:
            raise ValueError(f"compat must be one of {', '.join(COMPAT_MODES)}, got {self.compat!r}")
        if self.max_length is not None and self.max_length < 8:
            raise ValueError(f"max_length must be at least 8 tokens (or null), got {self.max_length}")
        if self.quantization_bits not in (None, 4, 8):
            raise ValueError(f"quantization_bits must be 4, 8 or null, got {self.quantization_bits}; "
                             "null (or --no-quant) trains plain LoRA")
        if isinstance(self.target_modules, str) and self.target_modules != "all-linear":
            self.target_modules = [self.target_modules]
        if self.quantization_bits is not None:
            self.quant()  # validates the bitsandbytes keys
        else:
            resolve_dtype(self.compute_dtype, cuda=False)
        if self.training_args.get("gradient_checkpointing_kwargs"):
            raise ValueError("gradient_checkpointing_kwargs is set by the trainer (non-reentrant "
                             "checkpointing); remove it from the config")

    def quant(self) -> QuantConfig | None:
        if self.quantization_bits is None:
            return None
        return QuantConfig(bits=self.quantization_bits, quant_type=self.bnb_4bit_quant_type,
                           double_quant=self.bnb_4bit_use_double_quant,
                           compute_dtype=self.compute_dtype)

    @classmethod
    def from_file(cls, path: str | Path | None, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
        """Read a YAML/JSON config; ``overrides`` (same keys) win over the file."""
        import yaml

        loaded: Any = {}
        if path is not None:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))  # YAML is a JSON superset
            if loaded is not None and not isinstance(loaded, dict):
                raise ValueError(f"{path}: expected a mapping of settings, got {type(loaded).__name__}")
        own, hf = _split_keys(loaded or {}, str(path))
        more_own, more_hf = _split_keys(overrides or {}, "--set")
        return cls(**{**own, **more_own}, training_args={**hf, **more_hf})

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "config") -> TrainConfig:
        """Build from one mapping of our keys and TrainingArguments keys."""
        own, hf = _split_keys(values, source)
        return cls(**own, training_args=hf)


def _split_keys(values: Mapping[str, Any], source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(our keys, TrainingArguments keys); anything else is an error naming where it came from."""
    from transformers import TrainingArguments

    ours = {f.name for f in dataclasses.fields(TrainConfig)} - {"training_args"}
    hf_keys = {f.name for f in dataclasses.fields(TrainingArguments)}
    own: dict[str, Any] = {}
    hf: dict[str, Any] = dict(values.get("training_args") or {})
    for key, value in values.items():
        if key == "training_args":
            continue
        if key in ours:
            own[key] = value
        elif key in hf_keys:
            hf[key] = value
        else:
            raise ValueError(
                f"{source}: unknown key {key!r}; our keys are {', '.join(sorted(ours))}; "
                "any other key must be a transformers TrainingArguments field"
            )
    return own, hf


@dataclass
class TrainResult:
    adapter_dir: Path
    global_step: int
    train_loss: float | None
    resumed_from: str | None
    target_modules: list[str] | str
    trainable_params: int
    total_params: int
    dataset_stats: dict[str, Any]


def train(
    config: str | Path | TrainConfig | None = None,
    *,
    data: str | Path,
    output_dir: str | Path,
    tokenizer: str | Path,
    model: str | Path,
    resume: bool = False,
    no_quant: bool = False,
    trust_remote_code: bool = False,
    overrides: Mapping[str, Any] | None = None,
    report: Callable[[str], None] | None = None,
    callbacks: list[Any] | None = None,
) -> TrainResult:
    """Fine-tune ``model`` with LoRA on ``data``; the adapter lands in ``output_dir``.

    ``resume`` continues from the last ``checkpoint-*`` in ``output_dir``; ``no_quant`` trains
    plain LoRA on a full-precision base. ``report`` receives human-readable progress lines (the
    token-length summary before training); ``callbacks`` go to the ``Trainer``.
    """
    quiet_bitsandbytes()  # before peft/transformers import bitsandbytes
    from transformers.trainer_utils import get_last_checkpoint

    from dataprep.tokenizer import load_tokenizer
    from trainer_plugin.data import PadCollator, build_dataset, format_stats

    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_file(config, overrides)
    if no_quant:
        cfg = dataclasses.replace(cfg, quantization_bits=None)
    say = report or (lambda _line: None)
    output_dir = Path(output_dir)

    last_checkpoint = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    if resume and last_checkpoint is None:
        raise FileNotFoundError(f"--resume: no checkpoint-* folder in {output_dir}; "
                                "train without --resume to start afresh")
    if not resume and last_checkpoint is not None:
        raise FileExistsError(f"{output_dir} already holds {Path(last_checkpoint).name}; pass "
                              "--resume to continue that run or choose a new output_dir")

    # Before the (long) tokenization: a wrong --model must fail in the first second.
    model_path = require_model_folder(model)
    tok = load_tokenizer(tokenizer, trust_remote_code=trust_remote_code)
    build = dict(max_length=cfg.max_length, truncation=cfg.truncation, compat=cfg.compat,
                 num_proc=cfg.num_proc)
    train_ds, stats = build_dataset(data, tok, **build)
    say(format_stats(stats))
    if len(train_ds) == 0:
        raise ValueError(f"{data}: no sample left to train on; see the summary above")
    eval_ds = build_dataset(cfg.eval_data, tok, **build)[0] if cfg.eval_data else None

    quant = cfg.quant()
    compute_dtype = resolve_dtype(cfg.compute_dtype)
    if quant is not None:
        quant = dataclasses.replace(quant, compute_dtype=dtype_name(compute_dtype))
    base = load_causal_lm(model_path, dtype=compute_dtype, quant=quant,
                          device_map=default_device_map(), trust_remote_code=trust_remote_code)
    rows = base.get_input_embeddings().weight.shape[0]
    if tok.vocab_size > rows:
        raise ValueError(f"the tokenizer has {tok.vocab_size} tokens but the model's embedding only "
                         f"{rows} rows; tokenizer and model do not belong together")
    fitted = fit(base, cfg, train_ds, output_dir, quantized=quant is not None,
                 compute_dtype=compute_dtype, collator=PadCollator(tok.pad_id), eval_ds=eval_ds,
                 callbacks=callbacks, resume_from=last_checkpoint if resume else None)
    trainer, outcome, targets = fitted.trainer, fitted.outcome, fitted.target_modules
    trainable, total = fitted.trainable_params, fitted.total_params
    trainer.save_model(str(output_dir))

    _copy_tokenizer_files(Path(tokenizer), output_dir)
    result = TrainResult(
        adapter_dir=output_dir, global_step=trainer.state.global_step,
        train_loss=getattr(outcome, "training_loss", None),
        resumed_from=last_checkpoint if resume else None, target_modules=targets,
        trainable_params=trainable, total_params=total,
        dataset_stats={k: v for k, v in stats.items() if k != "errors"},
    )
    info = {
        "base_model": str(model_path), "tokenizer": str(tokenizer), "data": str(data),
        "quantization": quant.to_dict() if quant else None,
        "compute_dtype": dtype_name(compute_dtype),
        "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "training_args"},
        "training_args": cfg.training_args,
        "result": {**dataclasses.asdict(result), "adapter_dir": str(output_dir)},
    }
    (output_dir / TRAIN_INFO).write_text(json.dumps(info, indent=2, ensure_ascii=False, default=str),
                                         encoding="utf-8")
    return result


@dataclass
class Fitted:
    trainer: Any
    outcome: Any
    target_modules: list[str] | str
    trainable_params: int
    total_params: int


def weighted_loss(logits: Any, labels: Any, weight: Any) -> Any:
    """Cross-entropy where each sample's tokens count ``weight`` times: the sum over samples of
    ``weight × token losses`` divided by the sum of ``weight × trained tokens``. A sample of
    weight 0 adds nothing to the loss nor to its normaliser, so a batch [A, B (w=0)] gives the
    gradient of [A] alone. Labels are aligned with ``input_ids`` (shifted here, as the model
    would), ``-100`` ignored.
    """
    import torch.nn.functional as F

    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    token_loss = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]),
                                 shift_labels.reshape(-1), ignore_index=-100,
                                 reduction="none").view(shift_labels.shape)
    trained = (shift_labels != -100).float()
    w = weight.to(token_loss.device, token_loss.dtype).unsqueeze(1)
    denom = (w * trained).sum()
    return (w * token_loss * trained).sum() / denom.clamp(min=1e-12)


def weighted_trainer_class() -> type:
    """``transformers.Trainer`` whose loss honours the per-sample ``weight`` column that
    dataprep's ``balance`` stage writes (mode ``weight``, its default). Batches without weights
    (evaluation) use the model's own loss. The loss is normalised per batch (not across gradient
    accumulation steps)."""
    from transformers import Trainer

    class WeightedTrainer(Trainer):
        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            weight = inputs.pop("weight", None)
            if weight is None:
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            loss = weighted_loss(outputs.logits, labels, weight)
            return (loss, outputs) if return_outputs else loss

    return WeightedTrainer


def fit(base: Any, cfg: TrainConfig, train_ds: Any, output_dir: str | Path, *, quantized: bool,
        compute_dtype: Any, collator: Callable[[list[dict[str, Any]]], dict[str, Any]],
        eval_ds: Any = None, callbacks: list[Any] | None = None,
        resume_from: str | None = None) -> Fitted:
    """LoRA on an already loaded ``base`` through ``transformers.Trainer``: the part of
    :func:`train` after loading, shared with ``bench/bench_train_gpu.py`` so that the benchmark
    measures exactly this code path.

    ``quantized``: the base was loaded 4/8-bit (peft's k-bit preparation, checkpointing on by
    default). ``cfg.training_args`` go to ``TrainingArguments`` (``gradient_checkpointing`` is
    handled here, non-reentrant).
    """
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import Trainer, TrainingArguments

    base.config.use_cache = False  # the KV cache is useless in training and clashes with checkpointing
    hf = dict(cfg.training_args)
    checkpointing = bool(hf.pop("gradient_checkpointing", quantized))
    ckpt_kwargs = {"use_reentrant": False}  # reentrant checkpointing needs inputs that require grad
    if quantized:
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=checkpointing,
                                               gradient_checkpointing_kwargs=ckpt_kwargs)
    elif checkpointing:
        if hasattr(base, "activation_checkpointing_enable"):  # the transformers >= 5.x name
            base.activation_checkpointing_enable(activation_checkpointing_kwargs=ckpt_kwargs)
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kwargs)
        # Models with their own checkpointing code may still checkpoint reentrantly, which
        # only back-propagates into LoRA when the embedding output requires grad.
        base.enable_input_require_grads()
    targets = cfg.target_modules or lora_target_modules(base)
    if getattr(base.config, "model_type", None) == "glm":  # official ChatGLM3 names in a recipe
        from trainer_plugin.lora_layout import native_target_modules

        targets = native_target_modules(targets)
    peft_model = get_peft_model(base, LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=targets, bias="none", task_type="CAUSAL_LM",
    ))
    trainable, total = peft_model.get_nb_trainable_parameters()

    cuda = has_cuda()
    defaults = {"report_to": "none", "use_cpu": not cuda, "logging_steps": 10,
                "remove_unused_columns": False, "label_names": ["labels"],
                "bf16": cuda and compute_dtype == resolve_dtype("bf16"),
                "fp16": cuda and compute_dtype == resolve_dtype("fp16")}
    hf.pop("output_dir", None)  # the command line's output_dir wins
    args = TrainingArguments(output_dir=str(output_dir), **{**defaults, **hf})
    weighted = "weight" in (getattr(train_ds, "column_names", None) or ())
    trainer_cls = weighted_trainer_class() if weighted else Trainer
    trainer = trainer_cls(model=peft_model, args=args, train_dataset=train_ds,
                          eval_dataset=eval_ds, data_collator=collator, callbacks=callbacks)
    outcome = trainer.train(resume_from_checkpoint=resume_from)
    return Fitted(trainer, outcome, targets, trainable, total)


def _copy_tokenizer_files(src: Path, dst: Path) -> None:
    # The adapter folder is then self-contained for merge and evaluate.
    if src.is_file():
        shutil.copy2(src, dst / src.name)
        return
    for pattern in TOKENIZER_FILE_PATTERNS:
        for f in src.glob(pattern):
            if f.is_file():
                shutil.copy2(f, dst / f.name)


# ---------------------------------------------------------------------------------------------
# command line (registered in trainer_plugin.cli)


def add_arguments(p: Any) -> None:
    """Options of ``dataprep-train train``."""
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="YAML/JSON: our keys (lora_r, max_length, quantization_bits, ...) and any "
                        "transformers TrainingArguments key")
    p.add_argument("--data", required=True, type=Path, metavar="TRAIN.jsonl",
                   help="dataprep output to train on")
    p.add_argument("--output-dir", required=True, type=Path, metavar="DIR",
                   help="where checkpoints and the final adapter go")
    p.add_argument("--model", required=True, metavar="PATH",
                   help="base model folder (native, or the official ChatGLM3 layout: converted on load)")
    p.add_argument("--tokenizer", required=True, type=Path, metavar="PATH",
                   help="tokenizer folder (or tokenizer.model file)")
    p.add_argument("--eval-data", type=Path, metavar="DEV.jsonl",
                   help="compute the eval loss on this file (set eval_strategy in --config)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key (value read as YAML), e.g. --set lora_r=16")
    p.add_argument("--resume", action="store_true",
                   help="continue from the last checkpoint-* in --output-dir")
    p.add_argument("--no-quant", action="store_true", help="plain LoRA on a full-precision base")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow the model/tokenizer folder to run its own Python code")


def run(args: Any) -> int:
    """``dataprep-train train``: thin wrapper over :func:`train`."""
    import yaml

    overrides: dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    if args.eval_data:
        overrides["eval_data"] = str(args.eval_data)
    result = train(args.config, data=args.data, output_dir=args.output_dir,
                   tokenizer=args.tokenizer, model=args.model, resume=args.resume,
                   no_quant=args.no_quant, trust_remote_code=args.trust_remote_code,
                   overrides=overrides, report=print)
    loss = f"{result.train_loss:.4f}" if result.train_loss is not None else "n/a"
    print(f"adapter saved to {result.adapter_dir}: {result.global_step} steps, train loss {loss}, "
          f"{result.trainable_params:,} of {result.total_params:,} parameters trained "
          f"(LoRA on {result.target_modules})")
    return 0
