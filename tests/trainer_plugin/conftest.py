"""Expensive trainer fixtures, built once per test run and shared by every module and xdist worker.

Each artifact (the tiny model, the lab samples, a two-step training run) is built into a folder
named after it under one per-run root, behind a file lock: the first worker that needs it builds
it, the others wait and reuse it. The root is pytest's base temp of this run (its parent under
xdist, where every worker has its own base temp), so nothing leaks from one run into the next.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from filelock import FileLock
from transformers import TrainerCallback

from trainer_plugin.modeling import TRAIN_INFO, build_tiny_model
from trainer_plugin.train import TrainResult, train

# Small but real: 2 optimizer steps, a learning rate that moves LoRA A and B visibly in 2 steps.
TWO_STEPS = {"max_steps": 2, "learning_rate": 1e-3, "save_steps": 1, "logging_steps": 1,
             "per_device_train_batch_size": 2, "max_length": 560, "seed": 0}
# Three short lab dialogues (460-670 tokens; the 65,024-wide logits dominate CPU time). Line 2 is
# over max_length and gets cut at a message boundary.
LAB_LINES = (2, 4, 7)
_DONE = ".complete"


def run_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def build_once(root: Path, name: str, build: Callable[[Path], None]) -> Path:
    """``root/name``, built by ``build(folder)`` exactly once per run across all workers."""
    folder = root / "shared" / name
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if not (folder / _DONE).is_file():
            folder.mkdir(exist_ok=True)
            build(folder)
            (folder / _DONE).touch()
    return folder


@pytest.fixture(scope="session", autouse=True)
def conversion_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Official checkpoints converted on load go to this run's folder, not ~/.cache."""
    root = run_root(tmp_path_factory) / "shared" / "convert-cache"
    old = os.environ.get("DATAPREP_TRAIN_CACHE")
    os.environ["DATAPREP_TRAIN_CACHE"] = str(root)
    yield root
    if old is None:
        os.environ.pop("DATAPREP_TRAIN_CACHE", None)
    else:
        os.environ["DATAPREP_TRAIN_CACHE"] = old


@pytest.fixture(scope="session")
def chatglm3_model_dir(shared_dir: Path) -> Path:
    """The tiny ChatGLM3 checkpoint in the official layout, with the official code's outputs."""
    return shared_dir / "golden" / "chatglm3-model"


@pytest.fixture(scope="session")
def official_outputs(chatglm3_model_dir: Path) -> dict[str, Any]:
    return json.loads((chatglm3_model_dir / "official_outputs.json").read_text(encoding="utf-8"))


class Snapshot(TrainerCallback):
    """Copies every parameter (4-bit packed weights included) when training starts and ends."""

    def __init__(self) -> None:
        self.before: dict[str, torch.Tensor] = {}
        self.after: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.checkpointing = False

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        self.before = {n: p.detach().clone() for n, p in model.named_parameters()}
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.checkpointing = bool(getattr(base, "is_activation_checkpointing", False))

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.steps += 1

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        self.after = {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.fixture(scope="session")
def snapshot_type() -> type[Snapshot]:
    """The parameter-snapshot callback, for tests that train on their own."""
    return Snapshot


@dataclass
class Run:
    """A finished training run as the tests see it (rebuilt from files in every worker)."""

    result: TrainResult
    before: dict[str, torch.Tensor]
    after: dict[str, torch.Tensor]
    report: list[str] = field(default_factory=list)
    checkpointing: bool = False
    """Whether the model trained with activation (gradient) checkpointing on."""

    @property
    def adapter(self) -> Path:
        return self.result.adapter_dir


def train_once(root: Path, name: str, *, data: Path, tokenizer: Path, model: Path,
               no_quant: bool = False, overrides: dict[str, Any] | None = None) -> Run:
    """Train (once per run) and return the run, with parameter snapshots from before and after."""
    from safetensors.torch import load_file, save_file

    def build(folder: Path) -> None:
        snap, lines = Snapshot(), []
        train(None, data=data, output_dir=folder / "adapter", tokenizer=tokenizer, model=model,
              no_quant=no_quant, overrides={**TWO_STEPS, **(overrides or {})},
              report=lines.append, callbacks=[snap])
        save_file(snap.before, str(folder / "before.safetensors"))
        save_file(snap.after, str(folder / "after.safetensors"))
        meta = {"report": lines, "checkpointing": snap.checkpointing}
        (folder / "run.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")

    folder = build_once(root, name, build)
    saved = json.loads((folder / "adapter" / TRAIN_INFO).read_text(encoding="utf-8"))["result"]
    result = TrainResult(**{**saved, "adapter_dir": Path(saved["adapter_dir"])})
    meta = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    return Run(result, load_file(str(folder / "before.safetensors")),
               load_file(str(folder / "after.safetensors")), meta["report"], meta["checkpointing"])


@pytest.fixture(scope="session")
def shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_root(tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_model(shared_root: Path) -> Path:
    """A randomly initialised 2-layer native GLM (seed 0) sized for the ChatGLM3 tokenizer."""
    return build_once(shared_root, "tiny-glm", lambda folder: build_tiny_model(folder, seed=0))


@pytest.fixture(scope="session")
def lab_samples(shared_root: Path, corpora: Path) -> Path:
    """Three dialogues of the lab dev file (tools double-encoded as the lab stores them)."""
    def build(folder: Path) -> None:
        lines = (corpora / "crosswoz-hotel-finetune-lab" / "dev.chatglm3.jsonl").read_text(
            encoding="utf-8").splitlines()
        text = "\n".join(lines[i] for i in LAB_LINES) + "\n"
        (folder / "train.jsonl").write_text(text, encoding="utf-8")

    return build_once(shared_root, "lab-samples", build) / "train.jsonl"


@pytest.fixture(scope="session")
def qlora_run(shared_root: Path, lab_samples: Path, tokenizer_dir: Path, tiny_model: Path) -> Run:
    return train_once(shared_root, "qlora", data=lab_samples, tokenizer=tokenizer_dir,
                      model=tiny_model)


@pytest.fixture(scope="session")
def lora_run(shared_root: Path, lab_samples: Path, tokenizer_dir: Path, tiny_model: Path) -> Run:
    # With checkpointing, which a full-precision base gets only when asked for.
    return train_once(shared_root, "lora", data=lab_samples, tokenizer=tokenizer_dir,
                      model=tiny_model, no_quant=True, overrides={"gradient_checkpointing": True})


@pytest.fixture(scope="session")
def chatglm3_qlora_run(shared_root: Path, lab_samples: Path, tokenizer_dir: Path,
                       chatglm3_model_dir: Path) -> Run:
    """Two QLoRA steps with gradient checkpointing on the official-layout folder, given as is."""
    return train_once(shared_root, "chatglm3-qlora", data=lab_samples, tokenizer=tokenizer_dir,
                      model=chatglm3_model_dir, overrides={"gradient_checkpointing": True})
