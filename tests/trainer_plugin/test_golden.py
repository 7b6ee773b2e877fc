"""Golden tests: our encoder against tokens produced by ChatGLM3's own code.

See ../shared/golden/chatglm3/README.md. Every line of the golden token files is its own test id.
The ids are read at collection time; when ../shared is absent, one placeholder id per test takes
the ``golden_dir`` fixture, which skips with the reason (the only skip allowed).
"""

from __future__ import annotations

import ast
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from dataprep.tokenizer import CHATGLM3_SPECIAL_TOKENS, load_tokenizer
from tests.conftest import SHARED
from trainer_plugin.data import PadCollator
from trainer_plugin.encoding import (
    IGNORE_INDEX,
    EncodingError,
    encode_conversation,
    fit_length,
    message_ids,
    prefix_ids,
)

GOLDEN = SHARED / "golden" / "chatglm3"
LAB = SHARED / "corpora" / "crosswoz-hotel-finetune-lab"
MISSING = "shared-files-missing"
# The one input the legacy code was given with tools left undecoded (its note says so).
UNDECODED_CASES = {"case-25-undecoded-tools-string"}
OBSERVATION_CASE = "case-22-explicit-observation-role"
INVALID_ROLE_CASE = "case-24-invalid-role"


def _ids_of(name: str) -> list[str]:
    path = GOLDEN / name
    if not path.is_file():
        return [MISSING]
    with path.open(encoding="utf-8") as f:
        return [m.group(1) for m in (re.match(r'\{"id": "([^"]+)"', line) for line in f) if m]


@cache
def _rows(name: str) -> dict[str, dict[str, Any]]:
    with (GOLDEN / name).open(encoding="utf-8") as f:
        return {r["id"]: r for r in map(json.loads, f)}


@cache
def _inputs() -> dict[str, dict[str, Any]]:
    """Golden id -> the exact ``{tools?, conversations}`` object (README, "About the ids")."""
    out: dict[str, dict[str, Any]] = {}
    for name in ("cases.jsonl", "train_textonly_variants.jsonl"):
        with (GOLDEN / name).open(encoding="utf-8") as f:
            out.update((r["id"], r["example"]) for r in map(json.loads, f))
    for split in ("train", "dev"):
        with (LAB / f"{split}.chatglm3.jsonl").open(encoding="utf-8") as f:
            out.update((f"{split}-{i:04d}", json.loads(line)) for i, line in enumerate(f))
    return out


@pytest.fixture(scope="module")
def tok(tokenizer_dir: Path):
    return load_tokenizer(tokenizer_dir)


@pytest.fixture
def golden(golden_dir: Path) -> Path:
    assert golden_dir == GOLDEN
    return golden_dir


def _encode(golden_id: str, tok, compat: str, decode_tools: bool | None = None):
    if decode_tools is None:
        decode_tools = golden_id not in UNDECODED_CASES
    return encode_conversation(_inputs()[golden_id], tok, compat=compat, decode_tools=decode_tools)


# --- legacy_tokens.jsonl: official mode, id for id ---------------------------------------------

LEGACY_IDS = _ids_of("legacy_tokens.jsonl")


@pytest.mark.parametrize("golden_id", LEGACY_IDS)
def test_legacy_official(golden, tok, golden_id):
    row = _rows("legacy_tokens.jsonl")[golden_id]
    if "error" in row:
        # The official code died on an AssertionError; we raise a clear, documented error.
        assert golden_id == INVALID_ROLE_CASE and row["error"].startswith("AssertionError")
        with pytest.raises(EncodingError, match=r"conversations\[1\]: unknown role 'function'"):
            _encode(golden_id, tok, "official")
        return
    enc = _encode(golden_id, tok, "official")
    assert enc.input_ids == row["input_ids"]
    assert enc.labels == row["labels"]


@pytest.mark.parametrize("golden_id", LEGACY_IDS)
def test_legacy_default(golden, tok, golden_id):
    row = _rows("legacy_tokens.jsonl")[golden_id]
    if "error" in row:
        with pytest.raises(EncodingError, match="unknown role 'function'"):
            _encode(golden_id, tok, "default")
        return
    enc = _encode(golden_id, tok, "default")
    assert enc.input_ids == row["input_ids"]
    if golden_id != OBSERVATION_CASE:
        assert enc.labels == row["labels"]
        return
    # The one deliberate deviation: the directly written observation is not learned. With the
    # one-token shift the labels differ from the observation's first content token through the
    # token right after it (the next <|assistant|>).
    (obs,) = [s for s in enc.spans if s.role == "observation"]
    differ = [i for i, (x, y) in enumerate(zip(enc.labels, row["labels"], strict=True)) if x != y]
    assert differ == list(range(obs.start + 1, obs.end + 1))
    assert all(enc.labels[i] == IGNORE_INDEX for i in differ)


# --- legacy_tokens_tools_undecoded.jsonl: tools kept as the lab code consumed them -------------


@pytest.mark.parametrize("golden_id", _ids_of("legacy_tokens_tools_undecoded.jsonl"))
def test_legacy_tools_undecoded(golden, tok, golden_id):
    row = _rows("legacy_tokens_tools_undecoded.jsonl")[golden_id]
    enc = _encode(golden_id, tok, "official", decode_tools=False)
    assert enc.input_ids == row["input_ids"]
    assert enc.labels == row["labels"]
    # and the default decoding changes only the tool prompt, never what is learned
    decoded = _encode(golden_id, tok, "default", decode_tools=True)
    assert decoded.input_ids != enc.input_ids
    assert [x for x in decoded.labels if x != IGNORE_INDEX] == [
        x for x in enc.labels if x != IGNORE_INDEX
    ]


# --- truncated_256: what the official 256-token cut did, and what we do instead ----------------


@pytest.mark.parametrize("golden_id", LEGACY_IDS)
def test_truncated_256(golden, tok, golden_id):
    row = _rows("legacy_tokens.jsonl")[golden_id]
    if "error" in row:
        assert "truncated_256" not in row
        return
    legacy = row["truncated_256"]
    enc = _encode(golden_id, tok, "official")
    if len(enc) <= 256:
        # Short samples: legacy right-pads to 256 with id 0 / label -100, as our collator does.
        batch = PadCollator(tok.pad_id, pad_to_multiple_of=256)(
            [{"input_ids": enc.input_ids, "labels": enc.labels}]
        )
        assert batch["input_ids"][0].tolist() == legacy["input_ids"]
        assert batch["labels"][0].tolist() == legacy["labels"]
        return
    # Long samples: legacy keeps a plain 256-token prefix and loses the eos.
    assert legacy["input_ids"] == enc.input_ids[:256]
    assert tok.eos_id not in legacy["input_ids"]
    cut, reason = fit_length(enc, 256, "cut")
    if cut is None:
        # We drop it; legacy trained, at most, on a conversation entry cut in the middle (a
        # message, or a tool call whose observation was cut off).
        assert reason == "too_long_nothing_trained_fits"
        entry_ends = [
            s.end
            for s, nxt in zip(enc.spans, enc.spans[1:], strict=False)
            if s.index is None or s.index != nxt.index
        ]
        boundary = max((e for e in entry_ends if e < 256), default=2)
        assert all(x == IGNORE_INDEX for x in legacy["labels"][: boundary + 1])
        return
    assert reason == "cut_at_message_boundary" and len(cut) <= 256
    assert cut.input_ids[-1] == tok.eos_id
    assert cut.input_ids[:-1] == legacy["input_ids"][: len(cut) - 1]
    assert cut.labels[:-1] == legacy["labels"][: len(cut) - 1]


def test_lab_records_have_nothing_trained_in_256_tokens(golden, tok):
    # README: the decoded tool prompt alone is ~427 tokens, so every lab record's official
    # truncated_256 trains on nothing; we drop those instead of feeding them to the loss.
    lab = [i for i in LEGACY_IDS if i.startswith(("train-0", "dev-"))]
    assert len(lab) == 301
    for golden_id in lab:
        row = _rows("legacy_tokens.jsonl")[golden_id]
        assert set(row["truncated_256"]["labels"]) == {IGNORE_INDEX}
        assert fit_length(_encode(golden_id, tok, "official"), 256, "cut") == (
            None,
            "too_long_nothing_trained_fits",
        )


# --- current_finetune_hf_tokens.jsonl: the current official trainer, text-only inputs -----------


def _current_ok_ids() -> list[str]:
    ids = _ids_of("current_finetune_hf_tokens.jsonl")
    if ids == [MISSING]:
        return ids
    return [i for i, r in _rows("current_finetune_hf_tokens.jsonl").items() if "error" not in r]


@pytest.mark.parametrize("golden_id", _current_ok_ids())
def test_current_finetune_hf(golden, tok, golden_id):
    # The current trainer ignores the per-message "loss" key; with the key removed our official
    # mode gives its exact ids and labels.
    row = _rows("current_finetune_hf_tokens.jsonl")[golden_id]
    sample = _inputs()[golden_id]
    stripped = {
        **sample,
        "conversations": [
            {k: v for k, v in m.items() if k != "loss"} for m in sample["conversations"]
        ],
    }
    enc = encode_conversation(stripped, tok, compat="official")
    assert enc.input_ids == row["input_ids"]
    assert enc.labels == row["labels"]
    assert row["truncated_256"]["input_ids"] == enc.input_ids[:256]


def test_current_rejects_what_legacy_accepts(golden):
    rows = _rows("current_finetune_hf_tokens.jsonl")
    errors = {i for i, r in rows.items() if "error" in r}
    assert len(rows) == 65 and len(errors) == 32
    # all but the invalid-role case were rejected for tools, which we (and legacy) encode
    legacy = _rows("legacy_tokens.jsonl")
    assert {i for i in errors if "error" in legacy[i]} == {INVALID_ROLE_CASE}


# --- special_tokens.json and the legacy sanity-check print-out ----------------------------------


def test_special_tokens_json(golden, tok):
    ref = json.loads((golden / "special_tokens.json").read_text(encoding="utf-8"))
    assert list(ref["special_ids"]) == list(CHATGLM3_SPECIAL_TOKENS)
    assert {t: tok.token_id(t) for t in ref["special_ids"]} == ref["special_ids"]
    assert (tok.eos_id, tok.pad_id, tok.bos_id, tok.unk_id) == (
        ref["eos_token_id"],
        ref["pad_token_id"],
        ref["bos_id"],
        ref["unk_id"],
    )
    assert tok.convert_ids_to_tokens([tok.eos_id, tok.pad_id]) == [
        ref["eos_token"],
        ref["pad_token"],
    ]
    assert tok.sp_vocab_size == ref["sentencepiece_vocab_size"]
    assert tok.vocab_size == ref["tokenizer_vocab_size"]
    assert tok.encode("\n") == ref["encode_newline_add_special_tokens_false"]
    assert tok.convert_ids_to_tokens(tok.encode("\n")) == ref["encode_newline_pieces"]
    assert tok.encode("") == ref["sp_encode_empty_string"]
    assert tok.encode("search_hotels\n") == ref["sp_encode_search_hotels_newline"]
    assert prefix_ids(tok) == ref["get_prefix_tokens"]
    assert prefix_ids(tok) + tok.encode("你好") == ref["encode_nihao_add_special_tokens_true"]
    assert (
        message_ids(tok, "assistant", "", "你好")
        == ref["build_single_message_assistant_empty_metadata_nihao"]
    )


def test_sanity_check_printout_of_train_0000(golden, tok):
    # Lines like "   '[gMASK]':  64790 ->   -100": the decoded token (repr), its id and label.
    text = (golden / "legacy_sanity_check_train-0000.txt").read_text(encoding="utf-8")
    rows = re.findall(r"^\s*('.*'|\".*\"):\s+(-?\d+) ->\s+(-?\d+)$", text, flags=re.M)
    enc = _encode("train-0000", tok, "official")
    assert len(rows) == len(enc) > 900
    assert [int(i) for _, i, _ in rows] == enc.input_ids
    assert [int(lab) for _, _, lab in rows] == enc.labels
    assert [ast.literal_eval(t) for t, _, _ in rows] == [tok.decode([i]) for i in enc.input_ids]
