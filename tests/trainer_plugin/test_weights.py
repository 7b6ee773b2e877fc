"""Sample weights (dataprep's ``balance`` default mode) reach the loss: a sample of weight 0 never
influences the adapter."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dataprep.tokenizer import load_tokenizer
from trainer_plugin.data import PadCollator, build_dataset
from trainer_plugin.train import train, weighted_loss


def _token_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                             labels[:, 1:].reshape(-1), ignore_index=-100)


def test_weighted_loss_ignores_weight_zero_and_counts_weights() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 11, generator=g)
    labels = torch.tensor([[-100, 3, 4, 5, -100, -100], [-100, -100, 7, 8, 9, 1]])
    alone = _token_ce(logits[:1], labels[:1])
    assert torch.allclose(weighted_loss(logits, labels, torch.tensor([1.0, 0.0])), alone)
    # Equal weights: the usual mean over every trained token of the batch.
    assert torch.allclose(weighted_loss(logits, labels, torch.tensor([2.0, 2.0])),
                          _token_ce(logits, labels))
    assert not torch.allclose(weighted_loss(logits, labels, torch.tensor([1.0, 1.0])), alone)


def test_weights_travel_from_the_file_to_the_batch(tmp_path: Path, corpora: Path,
                                                   tokenizer_dir: Path) -> None:
    lines = (corpora / "crosswoz-hotel-finetune-lab" / "dev.chatglm3.jsonl").read_text(
        encoding="utf-8").splitlines()[:3]
    recs = [{**json.loads(x), "weight": w} for x, w in zip(lines, (2.5, 0.0, None), strict=True)]
    path = tmp_path / "w.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), "utf-8")
    tok = load_tokenizer(tokenizer_dir)
    ds, _ = build_dataset(path, tok)
    assert ds["weight"] == [2.5, 0.0, 1.0]
    batch = PadCollator(tok.pad_id)([ds[0], ds[1]])
    assert batch["weight"].tolist() == [2.5, 0.0]
    # All weights 1 (or none): no weight column, the plain Trainer loss.
    path.write_text(lines[0] + "\n", "utf-8")
    assert build_dataset(path, tok)[0].column_names == ["input_ids", "labels"]


ONE_STEP = {"max_steps": 1, "learning_rate": 1e-2, "save_steps": 10, "logging_steps": 1,
            "per_device_train_batch_size": 2, "max_length": 560, "seed": 0,
            "lora_dropout": 0.0}


def test_a_sample_of_weight_zero_never_influences_the_adapter(
        tmp_path: Path, lab_samples: Path, tokenizer_dir: Path, tiny_model: Path,
        snapshot_type: type) -> None:
    a, b = lab_samples.read_text(encoding="utf-8").splitlines()[:2]
    runs = {}
    for name, rows in (("with_b", [(a, 1.0), (b, 0.0)]), ("a_only", [(a, 1.0)])):
        data = tmp_path / f"{name}.jsonl"
        data.write_text("".join(json.dumps({**json.loads(x), "weight": w}, ensure_ascii=False)
                                + "\n" for x, w in rows), encoding="utf-8")
        snap = snapshot_type()
        torch.manual_seed(0)  # the same LoRA initialisation for both runs
        train(None, data=data, output_dir=tmp_path / name, tokenizer=tokenizer_dir,
              model=tiny_model, no_quant=True, overrides=ONE_STEP, callbacks=[snap])
        runs[name] = {k: v for k, v in snap.after.items() if "lora_" in k}
        moved = sum(not torch.equal(v, snap.before[k]) for k, v in runs[name].items())
        assert moved > 0, name  # the step did train the adapter
    assert runs["with_b"].keys() == runs["a_only"].keys()
    for k, v in runs["with_b"].items():
        assert torch.allclose(v, runs["a_only"][k], atol=1e-6), k
