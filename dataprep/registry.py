"""Name -> implementation tables for readers and stages.

Entries are import strings so that a pipeline only imports what its config uses (the augment stage
pulls in ``openai``, the report stage ``matplotlib``; a plain ``convert`` needs neither).
"""

from __future__ import annotations

import importlib
from typing import Any

from dataprep.errors import ConfigError

# Generic formats that are no corpus of their own; every corpus package adds its readers
# (dataprep.corpora).
FORMAT_READERS: dict[str, str] = {
    "chatglm3": "dataprep.readers.chatglm3:ChatGLM3Reader",
    "sharegpt": "dataprep.readers.sharegpt:ShareGPTReader",
    "openai_chat": "dataprep.readers.openai_chat:OpenAIChatReader",
    "glm4": "dataprep.readers.glm4:GLM4Reader",
}


def readers() -> dict[str, str]:
    """Reader name -> import string: the corpus readers, then the generic formats."""
    from dataprep.corpora import reader_specs

    return {**reader_specs(), **FORMAT_READERS}


STAGES: dict[str, str] = {
    "clean": "dataprep.stages.clean:Clean",
    "validate": "dataprep.stages.validate:Validate",
    "dedup": "dataprep.stages.dedup:Dedup",
    "balance": "dataprep.stages.balance:Balance",
    "split": "dataprep.stages.split:Split",
    "augment": "dataprep.stages.augment:Augment",
    "write": "dataprep.stages.write:Write",
}

# Steps that run once on the finished run folder, after manifest.json is written. In a config
# they are listed among the stages (their position there does not matter, their order does).
POST_RUN: dict[str, str] = {
    "expectations": "dataprep.stages.expectations:Expectations",
    "report": "dataprep.stages.report:Report",
}


def _load(table: dict[str, str], kind: str, name: str) -> Any:
    if name not in table:
        names = sorted({**STAGES, **POST_RUN}) if kind == "stage" else sorted(table)
        raise ConfigError(f"unknown {kind} {name!r}; available: {', '.join(names)}")
    module, _, attr = table[name].partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"{kind} {name!r} is not available: {e}") from e


def reader_class(name: str) -> Any:
    return _load(readers(), "reader", name)


def stage_class(name: str) -> Any:
    """The class of a stage or of a post-run step (both are listed under ``stages:``)."""
    return _load({**STAGES, **POST_RUN}, "stage", name)


def is_post_run(name: str) -> bool:
    return name in POST_RUN
