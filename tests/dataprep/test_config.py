from __future__ import annotations

from pathlib import Path

import pytest

from dataprep.config import load_config
from dataprep.errors import ConfigError


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_paths_resolve_against_the_config_folder_and_overrides_apply(tmp_path: Path) -> None:
    p = _write(tmp_path, "name: t\ninputs: [{reader: spo, path: d/a.jsonl}]\n"
                         "stages: [validate, {name: split, ratios: [8, 1, 1]}, write]\n")
    cfg = load_config(p, overrides=["seed=7", "stages.split.ratios=[0.7, 0.2, 0.1]",
                                    "stages.0.name=validate"])
    assert cfg.inputs[0].path == str(tmp_path / "d" / "a.jsonl")
    assert cfg.seed == 7
    assert cfg.stages[1] == {"name": "split", "ratios": [0.7, 0.2, 0.1]}


@pytest.mark.parametrize("text, overrides, match", [
    ("name: t\n", [], "no inputs"),
    ("name: t\ninputs: [{reader: spo, path: a}]\nbogus: 1\n", [], "unknown config keys"),
    ("name: t\ninputs: [{reader: spo, path: a}]\n", ["seed"], "key=value"),
    ("name: t\ninputs: [{reader: spo, path: a}]\n", ["stages.dedupe.x=1"], "no list item 'dedupe'"),
    ("name: t\ninputs: [{path: a}]\n", [], r"inputs\[0\]: expected"),
    ("name: [unclosed\n", [], "not valid YAML"),
])
def test_bad_configs_say_what_to_do(tmp_path: Path, text: str, overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(_write(tmp_path, text), overrides=overrides)


def test_unknown_stage_lists_the_available_ones(tmp_path: Path) -> None:
    from dataprep.pipeline import build_stages

    with pytest.raises(ConfigError, match=r"unknown stage 'dedupe'; available: .*dedup"):
        build_stages([{"name": "dedupe"}])
    with pytest.raises(ConfigError, match="no 'write' stage"):
        build_stages([{"name": "split"}])
    with pytest.raises(ConfigError, match="three non-negative numbers"):
        build_stages([{"name": "split", "ratios": [1, 1]}, {"name": "write"}])


def test_whole_stage_list_can_be_overridden(tmp_path: Path) -> None:
    p = _write(tmp_path, "name: t\ninputs: [{reader: spo, path: a.jsonl}]\n")
    cfg = load_config(p, overrides=["stages=[validate, {name: split, ratios: [1, 0, 0]}, write]"])
    assert cfg.stages == [{"name": "validate"}, {"name": "split", "ratios": [1, 0, 0]},
                          {"name": "write"}]
    with pytest.raises(ConfigError, match="must be a list"):
        load_config(p, overrides=["stages=validate"])


def test_api_keys_are_refused_in_configs(tmp_path: Path) -> None:
    p = _write(tmp_path, "name: t\ninputs: [{reader: spo, path: a.jsonl}]\n"
                         "llm: {model: m, api_key: sk-secret, cache_dir: cache}\n")
    with pytest.raises(ConfigError, match="do not put an API key in the config"):
        load_config(p)
    p = _write(tmp_path, "name: t\ninputs: [{reader: spo, path: a.jsonl}]\n"
                         "llm: {model: m, cache_dir: cache}\n")
    assert load_config(p).llm["cache_dir"] == str(tmp_path / "cache")
