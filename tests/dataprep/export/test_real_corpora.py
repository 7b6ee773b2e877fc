"""Exports of the three real-corpus runs: round trips through every chat format, OpenAI's own
request types, the ``datasets`` loaders."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from pydantic import ConfigDict, TypeAdapter

from dataprep.config import config_from_dict
from dataprep.export import export_run
from dataprep.export.common import read_run
from dataprep.pipeline import Pipeline
from dataprep.record import Conversation
from dataprep.registry import reader_class

CORPORA = ("spo", "docqa", "hotel")
FORMAT_READER = {"llamafactory": "sharegpt", "openai": "openai_chat", "glm4": "glm4"}


def _same(conv: Conversation) -> tuple:
    """What a round trip must keep: tools and every message (ids and lineage aside)."""
    return (json.dumps(conv.tools, ensure_ascii=False, sort_keys=True),
            [json.dumps(m.to_dict(), ensure_ascii=False, sort_keys=True) for m in conv.messages])


@pytest.mark.slow
@pytest.mark.parametrize("fmt", sorted(FORMAT_READER))
@pytest.mark.parametrize("corpus", CORPORA)
def test_round_trip_gives_back_the_same_conversations(real_runs: dict[str, Path], tmp_path: Path,
                                                      corpus: str, fmt: str) -> None:
    report = export_run(real_runs[corpus], fmt, tmp_path)
    assert not report.dropped
    original = read_run(real_runs[corpus])
    n_tool_messages = 0
    for split, convs in original.items():
        back = list(reader_class(FORMAT_READER[fmt])(tmp_path / f"{split}.jsonl").read())
        assert all(isinstance(c, Conversation) for c in back), [c for c in back
                                                                 if not isinstance(c, Conversation)][:1]
        assert [_same(c) for c in back] == [_same(c) for c in convs]
        n_tool_messages += sum(m.role == "tool" for c in back for m in c.messages)
    if corpus == "hotel":  # the case the issue is about: calls with observations survive
        assert n_tool_messages > 4000


class _Strict:
    """A TypeAdapter that also refuses keys the type does not declare (pydantic ignores them on
    a TypedDict, so a misspelt key would pass as "ignored")."""

    def __init__(self, tp: type) -> None:
        self.adapter = TypeAdapter(tp)
        self.keys = tp.__required_keys__ | tp.__optional_keys__  # type: ignore[attr-defined]

    def validate_python(self, value: dict) -> None:
        assert set(value) <= self.keys, sorted(set(value) - self.keys)
        self.adapter.validate_python(value)


def _forbid(tp: object) -> object:
    if hasattr(tp, "__required_keys__"):
        return _Strict(tp)  # type: ignore[arg-type]
    return TypeAdapter(tp, config=ConfigDict(extra="forbid"))  # a union: config applies


@pytest.mark.slow
@pytest.mark.parametrize("corpus", CORPORA)
def test_openai_lines_validate_against_the_openai_request_types(real_runs: dict[str, Path],
                                                               tmp_path: Path, corpus: str) -> None:
    from openai.types.chat import (
        ChatCompletionFunctionToolParam,
        ChatCompletionMessageFunctionToolCallParam,
        ChatCompletionMessageParam,
    )
    from openai.types.shared_params import FunctionDefinition

    message_t, call_t = _forbid(ChatCompletionMessageParam), _forbid(
        ChatCompletionMessageFunctionToolCallParam)
    tool_t, function_t = _forbid(ChatCompletionFunctionToolParam), _forbid(FunctionDefinition)
    export_run(real_runs[corpus], "openai", tmp_path)
    n_calls = 0
    validators: dict[str, jsonschema.Draft202012Validator] = {}  # one per distinct schema

    def validator(parameters: dict) -> jsonschema.Draft202012Validator:
        key = json.dumps(parameters, sort_keys=True)
        if key not in validators:
            jsonschema.Draft202012Validator.check_schema(parameters)
            validators[key] = jsonschema.Draft202012Validator(parameters)
        return validators[key]

    for split in ("train", "dev", "test"):
        for text in (tmp_path / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
            line = json.loads(text)
            assert set(line) <= {"messages", "tools"}
            schemas = {}
            for tool in line.get("tools", []):
                tool_t.validate_python(tool)
                function_t.validate_python(tool["function"])  # Iterable/nested: checked eagerly
                schemas[tool["function"]["name"]] = validator(tool["function"]["parameters"])
            answered = set()
            for m in line["messages"]:
                m = dict(m)
                weight = m.pop("weight", None)
                assert weight in (None, 0, 1) and (weight is None or m["role"] == "assistant")
                message_t.validate_python(m)
                for call in m.get("tool_calls") or []:
                    call_t.validate_python(call)
                    args = json.loads(call["function"]["arguments"])
                    schemas[call["function"]["name"]].validate(args)
                    answered.add(call["id"])
                    n_calls += 1
                if m["role"] == "tool":
                    assert m["tool_call_id"] in answered
    assert (n_calls > 4000) == (corpus == "hotel")


@pytest.mark.slow
def test_hf_export_loads_with_datasets(real_runs: dict[str, Path], tmp_path: Path) -> None:
    import datasets

    from dataprep.export.hf import conversation_from_row

    report = export_run(real_runs["hotel"], "hf", tmp_path)
    on_disk = datasets.load_from_disk(str(tmp_path / "dataset"))
    parquet = datasets.load_dataset(
        "parquet", data_files={s: str(tmp_path / "parquet" / f"{s}.parquet")
                               for s in ("train", "dev", "test")})
    assert {s: len(on_disk[s]) for s in on_disk} == report.written
    assert {s: len(parquet[s]) for s in parquet} == report.written
    # One schema for every split, on disk and in parquet.
    assert on_disk["train"].features == on_disk["dev"].features == on_disk["test"].features
    assert parquet["test"].features == on_disk["test"].features
    original = read_run(real_runs["hotel"])["dev"]
    rebuilt = [conversation_from_row(r) for r in parquet["dev"]]
    assert [c.to_chatglm3() for c in rebuilt] == [c.to_chatglm3() for c in original]


@pytest.mark.slow
def test_exported_chat_data_goes_through_the_quality_pipeline(real_runs: dict[str, Path],
                                                              hotel_db_path: Path,
                                                              tmp_path: Path) -> None:
    """Chat data in another format (here our own hotel export) runs clean -> validate -> dedup ->
    split -> write like any corpus, with every record accounted for; ``write`` exports again."""
    export_run(real_runs["hotel"], "openai", tmp_path / "openai")
    export_run(real_runs["hotel"], "llamafactory", tmp_path / "lf")
    config = config_from_dict({
        "name": "imported", "seed": 7, "hotel_db": str(hotel_db_path),
        "inputs": [{"reader": "openai_chat", "path": str(tmp_path / "openai" / "dev.jsonl"),
                    "corpus": "hotel"},
                   {"reader": "sharegpt", "path": str(tmp_path / "lf" / "test.jsonl"),
                    "corpus": "hotel"}],
        "stages": ["clean", "validate", "dedup", "split",
                   {"name": "write", "formats": ["glm4", {"name": "openai", "with_id": True}]}]})
    manifest = Pipeline(config).run(tmp_path / "run", progress=False)
    c = manifest["counts"]
    n_in = sum(len(read_run(real_runs["hotel"])[s]) for s in ("dev", "test"))
    assert c["input"] == n_in and not c["rejected"]  # validate finds nothing wrong in them
    assert c["input"] - sum(c["removed"].values()) == c["train"] + c["dev"] + c["test"]
    exports = manifest["artifacts"]["exports"]
    assert exports["glm4"]["written"] == {s: c[s] for s in ("train", "dev", "test")}
    first = json.loads((tmp_path / "run" / "export" / "openai" / "train.jsonl").open().readline())
    assert first["id"] in (tmp_path / "run" / "train.jsonl").read_text(encoding="utf-8")
