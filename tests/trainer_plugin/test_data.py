"""trainer_plugin.data: reading JSONL, the datasets.map path, drop/cut accounting, the collator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trainer_plugin.data import (
    DataError,
    PadCollator,
    build_dataset,
    encode_dataset,
    format_stats,
    load_samples,
)
from trainer_plugin.encoding import encode_conversation, fit_length


@pytest.fixture(scope="module")
def tok(tokenizer_dir: Path):
    from dataprep.tokenizer import load_tokenizer

    return load_tokenizer(tokenizer_dir)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    return path


TOOLS = [
    {
        "name": "search_hotels",
        "description": "查酒店",
        "parameters": {"type": "object", "properties": {}, "required": []},
    }
]

# Rows that break datasets.load_dataset("json"): observation is a list of dicts in one row and a
# string in the next, parameters have different keys, and id/lineage ride along.
MIXED = [
    {
        "id": "a",
        "lineage": {"source": "x", "ops": ["clean"]},
        "tools": TOOLS,
        "conversations": [
            {"role": "user", "content": "找经济型酒店"},
            {
                "role": "tool",
                "name": "search_hotels",
                "parameters": {"type": "经济型"},
                "observation": [{"name": "北京饭店", "price": 303.0}],
            },
            {"role": "assistant", "content": "推荐北京饭店。"},
        ],
    },
    {
        "id": "b",
        "tools": TOOLS,
        "conversations": [
            {"role": "user", "content": "评分4.5以上"},
            {
                "role": "tool",
                "name": "search_hotels",
                "parameters": {"rating_range_lower": 4.5, "facilities": ["早餐服务"]},
                "observation": "没有找到",
            },
            {"role": "assistant", "content": "抱歉，没有找到。"},
        ],
    },
    {
        "conversations": [
            {"role": "user", "content": "你好"},
            {"role": "assistant", "content": "你好！"},
        ]
    },
]


def test_load_samples_reads_values_exactly(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in MIXED) + "\n\n", encoding="utf-8"
    )
    assert load_samples(path) == MIXED  # blank line skipped, no schema unification


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"conversations": []}\n{"conversations": [\n', r"bad\.jsonl:2: not valid JSON"),
        ('{"conversations": []}\n\n[1, 2]\n', r"bad\.jsonl:3: expected a JSON object, got list"),
    ],
)
def test_load_samples_names_the_bad_line(tmp_path, content, message):
    (tmp_path / "bad.jsonl").write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        load_samples(tmp_path / "bad.jsonl")


def test_missing_file(tmp_path, tok):
    with pytest.raises(FileNotFoundError, match="input file not found"):
        build_dataset(tmp_path / "nope.jsonl", tok)


def test_build_dataset_equals_direct_encoding_on_mixed_rows(tmp_path, tok):
    path = write_jsonl(tmp_path / "mixed.jsonl", MIXED)
    ds, stats = build_dataset(path, tok, use_cache=False)
    assert ds.column_names == ["input_ids", "labels"]
    for row, sample in zip(ds, MIXED, strict=True):
        enc = encode_conversation(sample, tok)
        assert (row["input_ids"], row["labels"]) == (enc.input_ids, enc.labels)
    # the extra id/lineage keys change nothing
    stripped = {k: v for k, v in MIXED[0].items() if k not in ("id", "lineage")}
    assert ds[0]["input_ids"] == encode_conversation(stripped, tok).input_ids
    assert stats["samples"] == stats["kept"] == 3 and stats["dropped"] == {}


def test_workers_and_plain_loop_agree_on_real_data(corpora, tok, tmp_path):
    path = corpora / "crosswoz-hotel-finetune-lab" / "dev.chatglm3.jsonl"
    samples = load_samples(path)
    expected = []
    for s in samples:
        enc, _ = fit_length(encode_conversation(s, tok), 1024, "cut")
        if enc is not None:
            expected.append((enc.input_ids, enc.labels))
    ds, stats = build_dataset(path, tok, max_length=1024, num_proc=2, cache_dir=tmp_path)
    assert [(r["input_ids"], r["labels"]) for r in ds] == expected
    assert stats["samples"] == len(samples) == 201
    assert stats["cut"] > 0 and stats["kept"] == len(expected)
    assert stats["lengths"]["max"] > 1024 >= max(len(r["input_ids"]) for r in ds)


def test_every_drop_and_cut_is_counted_with_its_reason(tmp_path, tok):
    long_answer = "很长的回答。" * 40
    rows = [
        MIXED[2],  # kept
        {"conversations": [{"role": "user", "content": "只有用户"}]},  # no_trained_tokens
        {
            "conversations": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "短"},
                {"role": "user", "content": "q2"},
                {"role": "assistant", "content": long_answer},
            ]
        },  # cut
        {
            "conversations": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": long_answer},
            ]
        },  # nothing fits
        {"conversations": [{"role": "function", "content": "x"}]},  # invalid
    ]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(DataError, match=r"rows\.jsonl:5: conversations\[0\]: unknown role"):
        build_dataset(path, tok, max_length=64, use_cache=False)

    ds, stats = build_dataset(path, tok, max_length=64, on_error="drop", use_cache=False)
    assert stats["dropped"] == {
        "invalid_sample": 1,
        "no_trained_tokens": 1,
        "too_long_nothing_trained_fits": 1,
    }
    assert (stats["samples"], stats["kept"], stats["cut"], len(ds)) == (5, 2, 1, 2)
    assert all(row["input_ids"][-1] == tok.eos_id for row in ds)
    assert stats["errors"] == [
        f"{path}:5: conversations[0]: unknown role 'function'; "
        "expected one of: system, user, assistant, tool, observation"
    ]
    lengths = stats["lengths"]
    assert (lengths["count"], lengths["over_max_length"], lengths["cut_would_keep"]) == (4, 2, 1)

    _, dropped = build_dataset(
        path, tok, max_length=64, truncation="drop", on_error="drop", use_cache=False
    )
    assert dropped["dropped"] == {"invalid_sample": 1, "no_trained_tokens": 1, "too_long": 2}
    assert dropped["lengths"] == lengths  # the summary describes the input, not the strategy
    text = format_stats(stats)
    # one line per truncation mode
    assert "; 2 over max_length 64\n" in text
    assert "\n  --truncation cut:  1 kept (cut at a message boundary), 1 dropped\n" in text
    assert "\n  --truncation drop: 2 dropped\n" in text
    assert "dropped: invalid_sample 1, no_trained_tokens 1, too_long_nothing_trained_fits 1" in text


def test_encode_dataset_keeps_line_numbers(tmp_path, tok):
    path = tmp_path / "gaps.jsonl"
    path.write_text(
        "\n" + json.dumps(MIXED[2]) + "\n\n" + json.dumps(MIXED[0]) + "\n", encoding="utf-8"
    )
    ds = encode_dataset(path, tok, use_cache=False)
    assert ds["line"] == [2, 4]


def test_cache_is_reused_and_never_stale(tmp_path, tok):
    cache = tmp_path / "cache"
    path = write_jsonl(tmp_path / "data.jsonl", MIXED[:2])
    first, _ = build_dataset(path, tok, cache_dir=cache)
    written = {p: p.stat().st_mtime_ns for p in cache.rglob("cache-*.arrow")}
    assert written  # the map result was written
    again, _ = build_dataset(path, tok, cache_dir=cache)
    # nothing recomputed: the same files, untouched
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("cache-*.arrow")} == written
    assert again["input_ids"] == first["input_ids"]
    write_jsonl(path, MIXED[1:])  # same path, new content
    changed, _ = build_dataset(path, tok, cache_dir=cache)
    assert changed["input_ids"] == [encode_conversation(s, tok).input_ids for s in MIXED[1:]]
    # every option is part of the cache key: a limit that cuts is not served the uncut rows
    limited, stats = build_dataset(path, tok, cache_dir=cache, max_length=40)
    assert stats["cut"] + sum(stats["dropped"].values()) > 0
    assert limited["input_ids"] != changed["input_ids"]


def test_samples_list_input_and_empty_input(tmp_path, tok):
    ds, stats = build_dataset(MIXED, tok, use_cache=False)
    assert len(ds) == 3
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    ds, stats = build_dataset(empty, tok, use_cache=False)
    assert len(ds) == 0 and stats["samples"] == 0 and ds.column_names == ["input_ids", "labels"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"truncation": "left"}, "unknown truncation 'left'"),
        ({"compat": "legacy"}, "unknown compat 'legacy'"),
        ({"max_length": 0}, "max_length must be a positive"),
        ({"num_proc": 0}, "num_proc must be at least 1"),
        ({"on_error": "ignore"}, "unknown on_error 'ignore'"),
    ],
)
def test_bad_options(tok, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_dataset(MIXED, tok, use_cache=False, **kwargs)


# --- PadCollator ------------------------------------------------------------------------------


def test_collator_right_pads_and_builds_the_attention_mask():
    batch = PadCollator(pad_id=0)(
        [
            {"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
            {"input_ids": [8], "labels": [8], "extra": "ignored"},
        ]
    )
    assert set(batch) == {"input_ids", "labels", "attention_mask"}
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert all(t.dtype == torch.long for t in batch.values())


def test_collator_pad_to_multiple_and_errors():
    batch = PadCollator(pad_id=3, pad_to_multiple_of=4)([{"input_ids": [1], "labels": [1]}])
    assert batch["input_ids"].tolist() == [[1, 3, 3, 3]]
    with pytest.raises(ValueError, match="feature 0: 2 input_ids but 1 labels"):
        PadCollator(0)([{"input_ids": [1, 2], "labels": [1]}])
    with pytest.raises(ValueError, match="empty batch"):
        PadCollator(0)([])
