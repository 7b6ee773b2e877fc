"""trainer_plugin.batch_encoding: the fast path gives what the plain per-sample encoder gives.

Checked against the golden files made by ChatGLM3's own code (every legacy row), against
``encode_conversation`` (ids, labels, loss mask and spans, both compat modes, tools decoded or
not), and through ``encode_dataset`` on the whole lab train file with cutting and dropping.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dataprep.tokenizer import load_tokenizer
from trainer_plugin import batch_encoding
from trainer_plugin.batch_encoding import BatchEncoder
from trainer_plugin.data import encode_dataset
from trainer_plugin.encoding import EncodingError, encode_conversation, fit_length

# The one golden input the legacy code was given with tools left undecoded (its README says so).
UNDECODED_CASES = {"case-25-undecoded-tools-string"}


@pytest.fixture(scope="module")
def tok(tokenizer_dir: Path):
    return load_tokenizer(tokenizer_dir)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def golden_inputs(golden_dir: Path, corpora: Path) -> dict:
    """Golden id -> the exact ``{tools?, conversations}`` object (README, "About the ids")."""
    out = {}
    for name in ("cases.jsonl", "train_textonly_variants.jsonl"):
        out.update((r["id"], r["example"]) for r in _jsonl(golden_dir / name))
    for split in ("train", "dev"):
        lab = _jsonl(corpora / "crosswoz-hotel-finetune-lab" / f"{split}.chatglm3.jsonl")
        out.update((f"{split}-{i:04d}", sample) for i, sample in enumerate(lab))
    return out


@pytest.fixture(scope="module")
def golden_rows(golden_dir: Path) -> dict:
    return {name: {r["id"]: r for r in _jsonl(golden_dir / name)}
            for name in ("legacy_tokens.jsonl", "legacy_tokens_tools_undecoded.jsonl")}


@pytest.mark.parametrize("tools_as_stored", [False, True])
def test_every_legacy_golden_row_id_for_id(tok, golden_inputs, golden_rows, tools_as_stored):
    name = "legacy_tokens_tools_undecoded.jsonl" if tools_as_stored else "legacy_tokens.jsonl"
    rows = golden_rows[name]
    ids = list(rows)
    # One batch for the decoded inputs, the undecoded case in its own (it needs decode_tools off).
    groups = [[i for i in ids if tools_as_stored or i not in UNDECODED_CASES]]
    if not tools_as_stored:
        groups.append([i for i in ids if i in UNDECODED_CASES])
    checked = 0
    for group in groups:
        decode = not tools_as_stored and group[0] not in UNDECODED_CASES
        batch = BatchEncoder(tok, "official", decode_tools=decode).encode(
            [golden_inputs[i] for i in group]
        )
        for k, golden_id in enumerate(group):
            row = rows[golden_id]
            if "error" in row:
                assert "unknown role 'function'" in str(batch.errors[k])
                continue
            a, b = batch.offsets[k], batch.offsets[k + 1]
            assert batch.ids[a:b].tolist() == row["input_ids"], golden_id
            assert batch.labels[a:b].tolist() == row["labels"], golden_id
            checked += 1
    assert checked == (301 if tools_as_stored else 345)


@pytest.mark.parametrize(("compat", "decode_tools"), [("default", True), ("official", False)])
def test_same_as_the_plain_encoder_with_spans(tok, golden_inputs, compat, decode_tools):
    samples = list(golden_inputs.values())
    batch = BatchEncoder(tok, compat, decode_tools).encode(samples)
    for k, sample in enumerate(samples):
        try:
            expected = encode_conversation(sample, tok, compat, decode_tools)
        except EncodingError as e:
            assert str(batch.errors[k]) == str(e)
            continue
        assert batch.errors[k] is None
        assert batch.encoded(k) == expected
        assert batch.n_trained[k] == expected.num_trained


def test_the_cache_between_batches_changes_nothing(tok, golden_inputs, monkeypatch):
    # A tiny cache limit makes it start over many times within and between batches.
    monkeypatch.setattr(batch_encoding, "_CACHE_LIMIT", 3)
    samples = [s for i, s in golden_inputs.items() if i.startswith(("train-", "case-"))]
    samples = [s for s in samples if not any(m.get("role") == "function"
                                             for m in s["conversations"])]
    encoder = BatchEncoder(tok)
    for start in range(0, len(samples), 7):
        chunk = samples[start : start + 7]
        batch = encoder.encode(chunk)
        for k, sample in enumerate(chunk):
            assert batch.encoded(k) == encode_conversation(sample, tok)
    assert len(encoder._known) <= 3 and len(encoder._headers) <= 3


def test_a_tokenizer_without_batch_encode(tok, golden_inputs):
    class OneAtATime:  # the Tokenizer protocol only, no encode_batch
        def __init__(self, inner):
            self._inner = inner
            self.eos_id, self.pad_id, self.vocab_size = inner.eos_id, inner.pad_id, inner.vocab_size

        def encode(self, text):
            return self._inner.encode(text)

        def token_id(self, name):
            return self._inner.token_id(name)

    sample = golden_inputs["train-0000"]
    batch = BatchEncoder(OneAtATime(tok)).encode([sample, sample])
    assert batch.encoded(1) == batch.encoded(0) == encode_conversation(sample, tok)


def test_invalid_samples_are_recorded_not_raised(tok):
    good = {"conversations": [{"role": "user", "content": "你好"},
                              {"role": "assistant", "content": "你好！"}]}
    bad = [
        {"conversations": "no"},
        {"conversations": [{"role": "function", "content": "x"}]},
        {"conversations": [{"role": "tool", "name": "f", "parameters": []}]},
        EncodingError("not valid JSON (...)"),
        None,
    ]
    batch = BatchEncoder(tok).encode([good, *bad, good])
    assert batch.errors[0] is None and batch.errors[-1] is None
    for k, sample in enumerate(bad, 1):
        assert batch.offsets[k] == batch.offsets[k + 1]  # no tokens
        if isinstance(sample, dict):
            with pytest.raises(EncodingError) as plain:
                encode_conversation(sample, tok)
            assert str(batch.errors[k]) == str(plain.value)
        else:
            assert isinstance(batch.errors[k], EncodingError)
    assert batch.encoded(6) == batch.encoded(0) == encode_conversation(good, tok)
    with pytest.raises(EncodingError):
        batch.encoded(1)


def test_encode_dataset_on_lab_train_samples(tok, corpora, tmp_path, monkeypatch):
    # 400 lab dialogues through the CLI's path (one process, no cache; small batches so that
    # the encoder's cache spans several) and through datasets.map with workers, with a
    # max_length that cuts or drops a good share of them.
    monkeypatch.setattr("trainer_plugin.data.BATCH_SIZE", 97)
    lines = (corpora / "crosswoz-hotel-finetune-lab" / "train.chatglm3.jsonl").read_text(
        encoding="utf-8").splitlines()[:400]
    path = tmp_path / "train400.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    plain = [encode_conversation(json.loads(line), tok) for line in lines]
    for truncation in ("cut", "drop"):
        direct = encode_dataset(path, tok, max_length=1000, truncation=truncation,
                                use_cache=False).to_dict()
        assert direct["line"] == list(range(1, 401))
        reasons = set()
        for k, enc in enumerate(plain):
            fitted, reason = fit_length(enc, 1000, truncation)
            reasons.add(reason)
            assert direct["n_tokens"][k] == len(enc)
            assert direct["reason"][k] == (reason or "")
            assert direct["input_ids"][k] == (fitted.input_ids if fitted else [])
            assert direct["labels"][k] == (fitted.labels if fitted else [])
            assert direct["n_trained"][k] == (fitted.num_trained if fitted else 0)
            cut_fits = len(enc) > 1000 and fit_length(enc, 1000, "cut")[0] is not None
            assert direct["cut_fits"][k] == cut_fits
        assert None in reasons and len(reasons) > 1
    mapped = encode_dataset(path, tok, max_length=1000, truncation="drop", num_proc=2,
                            cache_dir=tmp_path / "cache")
    assert mapped.to_dict() == direct
