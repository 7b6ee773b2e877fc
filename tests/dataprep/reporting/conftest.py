"""Real runs shared by the report, Data Docs and browser tests (session scope: each runs once)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dataprep.config import config_from_dict, load_config
from dataprep.pipeline import Pipeline

# Markup and script in every field a record has; it must come out as text everywhere.
PAYLOAD = "<script>alert('gx')</script><img src=x onerror=alert(1)>"


def hostile_lines() -> list[str]:
    P = PAYLOAD
    tool = {"name": "search_hotels", "description": P,
            "parameters": {"type": "object", "properties": {"name": {"type": "string"}}}}
    lines = []
    for i in range(14):
        rec: dict[str, Any] = {
            "id": P if i < 2 else f"rec-{i}",  # a duplicate id: GX lists it as unexpected
            "label": P if i % 2 else f"正常{i % 3}",
            "corpus": "hotel",
            "tools": [tool],
            "conversations": [
                {"role": "system", "content": f"系统 {P}"},
                {"role": "user", "content": f"第{i}个问题 {P}"},
                {"role": "tool", "name": "search_hotels", "parameters": {"name": P},
                 "observation": [{"name": P, "price": i}]},
                {"role": "assistant", "content": f"回答{i} {P}"}]}
        lines.append(json.dumps(rec, ensure_ascii=False))
    lines.append('{"conversations": "' + P.replace('"', "'"))  # malformed: a reject, raw kept
    return lines


@pytest.fixture(scope="session")
def hostile_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("hostile")
    src = base / "hostile.jsonl"
    src.write_text("\n".join(hostile_lines()) + "\n", encoding="utf-8")
    cfg = {"name": "hostile", "inputs": [{"reader": "chatglm3", "path": str(src)}],
           "stages": ["split", "write", {"name": "expectations", "fail_on": "never"}, "report"]}
    out = base / "out"
    Pipeline(config_from_dict(cfg)).run(out, progress=False)
    return out


@pytest.fixture(scope="session")
def hotel_warning_run(repo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo hotel run with a warning-severity expectation that fails (longest message
    over 20 characters): the run succeeds with warnings."""
    out = tmp_path_factory.mktemp("hotel") / "out"
    cfg = load_config(repo_root / "configs" / "hotel.yaml",
                      overrides=["stages.expectations.max_chars=20"])
    Pipeline(cfg).run(out, progress=False)
    return out


@pytest.fixture(scope="session")
def spo_run(repo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo SPO run: Chinese labels."""
    out = tmp_path_factory.mktemp("spo") / "out"
    Pipeline(load_config(repo_root / "configs" / "spo.yaml")).run(out, progress=False)
    return out
