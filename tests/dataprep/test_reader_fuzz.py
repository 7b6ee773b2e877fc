"""Issue 9: a fuzz test over every reader in the registry.

Each example takes the reader's sample file from ``data/``, puts hostile values into random places
of random records (NaN, 1e999, a 5,000-digit integer, 100k-deep nesting, lone surrogates, a
repeated key, wrong types, truncated or undecodable bytes, script tags) and runs the pipeline
(clean, validate, split, write) on it. Whatever the input, the run must:

- end without a traceback (a whole-file problem may be a one-line ``DataprepError``);
- not hang (a hang guard per example, not a speed assertion);
- write strict JSON only (splits, rejects, manifest);
- account for every record: input − rejected − removed + added = train + dev + test;
- keep one rejects line per rejected or removed record.

Derandomized and bounded (``EXAMPLES`` per reader), so CI is reproducible and quick.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataprep.config import config_from_dict
from dataprep.errors import DataprepError
from dataprep.pipeline import Pipeline
from dataprep.registry import readers
from tests.dataprep.guards import hang_guard

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "data"
# 50 per reader in CI; DATAPREP_FUZZ_EXAMPLES=1000 for a deeper search before a release.
EXAMPLES = int(os.environ.get("DATAPREP_FUZZ_EXAMPLES", "50"))

# The seed file of each reader. A reader added to the registry without one fails
# test_every_reader_has_a_seed, so the fuzz test always covers every reader.
SEEDS = {
    "spo": "spo_sample.jsonl",
    "multidoc_qa": "docqa_multidoc_sample.jsonl",
    "cmrc2018": "cmrc2018_sample.json",
    "dureader": "dureader_sample.jsonl",
    "crosswoz": "crosswoz_sample.json",
    "lab_dialog": "lab_dialogs_sample.jsonl",
    "lab_chatglm3": "lab_chatglm3_sample.jsonl",
    "chatglm3": "lab_chatglm3_sample.jsonl",
    # generic chat formats (export's readers): small seeds written here, see INLINE_SEEDS
    "sharegpt": "sharegpt",
    "openai_chat": "openai_chat",
    "glm4": "glm4",
}
_TURNS = [("帮我找一家评分4.5分以上的酒店", "推荐北京饭店，评分4.7分。"), ("价格呢？", "每晚800元。")]
INLINE_SEEDS = {
    "sharegpt": [{"conversations": [x for u, a in _TURNS for x in
                                    ({"from": "human", "value": u}, {"from": "gpt", "value": a})]}],
    "openai_chat": [{"messages": [x for u, a in _TURNS for x in
                                  ({"role": "user", "content": u},
                                   {"role": "assistant", "content": a})]}],
    "glm4": [{"messages": [x for u, a in _TURNS for x in
                           ({"role": "user", "content": u},
                            {"role": "assistant", "content": a})]}],
}
DOCUMENT_READERS = {"cmrc2018", "crosswoz"}
HOTEL_DB = DATA / "hotel_db_sample.json"

# Raw JSON text put where a value was: everything that once crashed, hung or leaked.
HOSTILE = [
    "NaN", "Infinity", "-Infinity", "1e999", "-1e999", "9" * 5000, "1" + "0" * 400 + ".5",
    "[" * 100_000 + "]" * 100_000, '{"a":' * 5000 + "1" + "}" * 5000,
    '"\\ud800"', '"\\udfff\\u0041"', '"ok\\ud83d"', '{"\\ud800": 1}',
    '{"k": 1, "k": 2}', "null", "true", "0", "-1", "1.5", '""', "[]", "{}",
    '"<script>alert(1)</script>"', '"$\\\\frac{1}{$"', '"\\u0000\\u2028\\u2029"',
    '"' + "长" * 3000 + '"', '[["Inform", "酒店", "价格", "' + "9" * 400 + '-1元"]]',
    '{"type": "object", "$ref": "http://127.0.0.1:9/x.json"}',
    '{"type": "object", "properties": {"q": {"type": "string", "pattern": "^(a+)+$"}}}',
]
TOKEN = "\u0000HOSTILE\u0000"


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every location in a parsed value (object members and list items), depth-first."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.extend(_paths(v, (*prefix, i)))
    return out


def _inject(value: Any, path: tuple, raw: str) -> str:
    """The value serialized with the node at ``path`` replaced by the raw JSON text ``raw``."""
    if not path:
        return raw
    node = value
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = TOKEN
    text = json.dumps(value, ensure_ascii=False)
    return text.replace(json.dumps(TOKEN), raw, 1)


@st.composite
def mutation(draw: st.DrawFn, text: str) -> str:
    """One record (or document) with one hostile change."""
    kind = draw(st.sampled_from(["value", "value", "value", "drop_key", "truncate", "bytes"]))
    if kind == "truncate":
        return text[: draw(st.integers(0, max(0, len(text) - 1)))]
    if kind == "bytes":
        at = draw(st.integers(0, len(text)))
        junk = draw(st.sampled_from(["\udcff", "\ufeff", "\x00", "\\", '"', "\n", "}{"]))
        return text[:at] + junk + text[at:]
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # the seeds hold deliberately broken lines too
        return text[: draw(st.integers(0, max(0, len(text) - 1)))]
    paths = _paths(value)
    path = draw(st.sampled_from(paths))
    if kind == "drop_key":
        if path and isinstance(path[-1], str):
            node = value
            for key in path[:-1]:
                node = node[key]
            del node[path[-1]]
        return json.dumps(value, ensure_ascii=False)
    raw = draw(st.one_of(st.sampled_from(HOSTILE),
                         st.text(max_size=40).map(lambda s: json.dumps(s, ensure_ascii=False)),
                         st.integers().map(str), st.floats().map(repr)))
    return _inject(value, path, raw)


@st.composite
def hostile_file(draw: st.DrawFn, reader: str) -> bytes:
    if reader in INLINE_SEEDS:
        seed = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in INLINE_SEEDS[reader] * 3)
    else:
        seed = (DATA / SEEDS[reader]).read_text(encoding="utf-8")
    if reader in DOCUMENT_READERS:
        text = seed
        for _ in range(draw(st.integers(1, 3))):
            try:
                json.loads(text)
            except (ValueError, RecursionError):
                break  # already not JSON: the file as a whole is the test now
            text = draw(mutation(text))
        return text.encode("utf-8", "surrogatepass")
    lines = [x for x in seed.splitlines() if x.strip()]
    chosen = draw(st.sets(st.integers(0, len(lines) - 1), min_size=1, max_size=3))
    for i in chosen:
        lines[i] = draw(mutation(lines[i]))
    return "\n".join(lines).encode("utf-8", "surrogatepass") + b"\n"


def _strict(text: str) -> Any:
    def refuse(name: str) -> Any:
        raise AssertionError(f"{name} written to an output")
    return json.loads(text, parse_constant=refuse)


def check_run(reader: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / ("input.json" if reader in DOCUMENT_READERS else "input.jsonl")
        src.write_bytes(data)
        raw = {"name": "fuzz", "hotel_db": str(HOTEL_DB),
               "inputs": [{"reader": reader, "path": str(src)}],
               "stages": ["clean", "validate", {"name": "split", "ratios": [0.8, 0.1, 0.1]},
                          "write"]}
        out = Path(tmp) / "out"
        try:
            with hang_guard(120):
                manifest = Pipeline(config_from_dict(raw)).run(out, progress=False)
        except DataprepError as e:  # a whole-file problem: one clear line is the contract
            assert reader in DOCUMENT_READERS, f"{type(e).__name__}: {e}"
            assert "\n" not in str(e) and str(e)
            return
        for split in ("train", "dev", "test"):
            for line in (out / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
                assert isinstance(_strict(line), dict)
        rejects = [_strict(x) for x in
                   (out / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]
        _strict((out / "manifest.json").read_text(encoding="utf-8"))
        c = manifest["counts"]
        rejected, removed = sum(c["rejected"].values()), sum(c["removed"].values())
        assert c["input"] - rejected - removed + c["added"] == c["train"] + c["dev"] + c["test"]
        assert len(rejects) == rejected + removed
        assert all(isinstance(r.get("reason"), str) and r["reason"] for r in rejects)


def test_every_reader_has_a_seed() -> None:
    assert sorted(SEEDS) == sorted(readers())


@pytest.mark.parametrize("reader", sorted(readers()))
def test_fuzz_reader(reader: str) -> None:
    if reader not in SEEDS:
        pytest.fail(f"reader {reader!r} has no seed file in SEEDS")

    @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(hostile_file(reader))
    def run(data: bytes) -> None:
        check_run(reader, data)

    run()
