"""The YAML run config, ``--set`` overrides, and path resolution.

A config names inputs (a reader and a file each) and a list of stages::

    name: spo
    seed: 42
    inputs:
      - {reader: spo, path: spo_sample.jsonl}
    stages: [validate, {name: split, ratios: [0.8, 0.1, 0.1]}, write]

Relative paths are relative to the config file, so a config travels with its data.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dataprep.errors import ConfigError

DEFAULT_STAGES: list[dict[str, Any]] = [{"name": "validate"}, {"name": "split"}, {"name": "write"}]
TOP_KEYS = {"name", "seed", "strict", "out", "tokenizer", "hotel_db", "inputs", "stages",
            "llm", "matching"}


@dataclass
class InputSpec:
    """One input file: which reader parses it and the reader's options."""

    reader: str
    path: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunConfig:
    """A resolved run config.

    ``out`` is where the splits go; ``tokenizer`` (a folder with ChatGLM3's tokenizer.model) makes
    length limits count tokens; ``hotel_db`` is CrossWOZ's hotel_db.json for the hotel corpus;
    ``matching`` is the duplicate matching shared by dedup, split and the leakage audit.
    """

    name: str
    inputs: list[InputSpec]
    stages: list[dict[str, Any]]
    seed: int = 42
    strict: bool = False
    out: str | None = None
    tokenizer: str | None = None
    hotel_db: str | None = None
    llm: dict[str, Any] = field(default_factory=dict)
    matching: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ConfigError("the config has no inputs: add e.g. "
                              "'inputs: [{reader: spo, path: data/spo_sample.jsonl}]'")
        if not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")


def _set_path(tree: Any, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            # Stage lists are addressed by stage name (stages.split.ratios) or by index.
            match = None
            if key.isdigit() and int(key) < len(node):
                match = int(key)
            else:
                for j, item in enumerate(node):
                    if isinstance(item, dict) and item.get("name") == key:
                        match = j
                        break
            if match is None:
                names = [it.get("name") for it in node if isinstance(it, dict)]
                raise ConfigError(f"--set {dotted}: no list item {key!r}; have {names}")
            if last:
                node[match] = value
            else:
                node = node[match]
        elif isinstance(node, dict):
            if last:
                node[key] = value
            else:
                node = node.setdefault(key, {})
        else:
            raise ConfigError(f"--set {dotted}: {'.'.join(keys[:i])} is not a mapping")


def parse_override(text: str) -> tuple[str, Any]:
    """``"stages.split.ratios=[0.7,0.2,0.1]"`` -> key and YAML-parsed value."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: value is not valid YAML: {e}") from e


def normalise_stages(stages: list[Any]) -> list[dict[str, Any]]:
    out = []
    for i, st in enumerate(stages):
        if isinstance(st, str):
            out.append({"name": st})
        elif isinstance(st, dict) and "name" in st:
            out.append(dict(st))
        elif isinstance(st, dict) and len(st) == 1:
            ((name, opts),) = st.items()
            out.append({"name": name, **(opts or {})})
        else:
            raise ConfigError(f"stages[{i}]: expected a stage name or {{name: ..., options}}, got {st!r}")
    return out


def load_config(path: str | Path, overrides: list[str] | None = None,
                out: str | None = None) -> RunConfig:
    """Read a YAML config, apply ``--set`` overrides and resolve paths against its folder."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return config_from_dict(raw, base_dir=p.parent, overrides=overrides, out=out)


def _resolve_llm(llm: dict[str, Any], resolve: Any) -> dict[str, Any]:
    if not isinstance(llm, dict):
        raise ConfigError(f"'llm' must be a mapping of client options, got {llm!r}")
    out = dict(llm)
    if out.get("cache_dir"):
        out["cache_dir"] = resolve(out["cache_dir"])
    for key in out:
        # The key itself never belongs in a config file (it would end up in manifests): only the
        # name of the environment variable that holds it.
        if key.lower() in ("api_key", "key", "openai_api_key"):
            raise ConfigError(f"llm.{key}: do not put an API key in the config; set it in the "
                              "environment and name the variable with llm.api_key_env")
    return out


def _matching_section(section: Any) -> dict[str, Any]:
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ConfigError(f"'matching' must be a mapping of options (threshold, ngram, ...), "
                          f"got {section!r}")
    return dict(section)


def config_from_dict(raw: dict[str, Any], base_dir: str | Path = ".",
                     overrides: list[str] | None = None, out: str | None = None) -> RunConfig:
    raw = copy.deepcopy(raw)
    raw["stages"] = normalise_stages(raw.get("stages") or DEFAULT_STAGES)
    for ov in overrides or []:
        key, value = parse_override(ov)
        _set_path(raw, key, value)
        if key == "stages" or key.startswith("stages."):
            if not isinstance(raw["stages"], list):
                raise ConfigError(f"--set {key}: 'stages' must be a list, got {raw['stages']!r}")
            raw["stages"] = normalise_stages(raw["stages"])
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise ConfigError(f"unknown config keys {sorted(unknown)}; allowed: {sorted(TOP_KEYS)}")
    base = Path(base_dir)

    def resolve(value: str | None) -> str | None:
        if value is None:
            return None
        q = Path(str(value)).expanduser()
        return str(q if q.is_absolute() else (base / q))

    inputs = []
    for i, spec in enumerate(raw.get("inputs") or []):
        if not isinstance(spec, dict) or "reader" not in spec or "path" not in spec:
            raise ConfigError(f"inputs[{i}]: expected {{reader: NAME, path: FILE}}, got {spec!r}")
        opts = dict(spec.get("options") or {})
        if "hotel_db" in opts:
            opts["hotel_db"] = resolve(opts["hotel_db"])
        inputs.append(InputSpec(reader=spec["reader"], path=resolve(spec["path"]) or "",
                                options=opts))
    return RunConfig(
        name=str(raw.get("name", "run")),
        inputs=inputs,
        stages=raw["stages"],
        seed=raw.get("seed", 42),
        strict=bool(raw.get("strict", False)),
        out=out or resolve(raw.get("out")),
        tokenizer=resolve(raw.get("tokenizer")),
        hotel_db=resolve(raw.get("hotel_db")),
        llm=_resolve_llm(raw.get("llm") or {}, resolve),
        matching=_matching_section(raw.get("matching")),
        raw=raw,
    )
