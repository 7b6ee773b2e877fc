"""Name -> implementation tables for readers and stages.

Entries are import strings so that a pipeline only imports what its config uses (the augment stage
pulls in ``openai``, the report stage ``matplotlib``; a plain ``convert`` needs neither).
"""

from __future__ import annotations

import importlib
from typing import Any

from dataprep.errors import ConfigError

READERS: dict[str, str] = {
    "spo": "dataprep.readers.spo:SpoReader",
    "multidoc_qa": "dataprep.readers.multidoc_qa:MultiDocQAReader",
    "cmrc2018": "dataprep.readers.cmrc2018:Cmrc2018Reader",
    "dureader": "dataprep.readers.dureader:DuReaderReader",
    "crosswoz": "dataprep.readers.crosswoz:CrossWOZReader",
    "lab_dialog": "dataprep.readers.lab:LabDialogReader",
    "lab_chatglm3": "dataprep.readers.lab:LabChatGLM3Reader",
    "chatglm3": "dataprep.readers.chatglm3:ChatGLM3Reader",
    "sharegpt": "dataprep.readers.sharegpt:ShareGPTReader",
    "openai_chat": "dataprep.readers.openai_chat:OpenAIChatReader",
    "glm4": "dataprep.readers.glm4:GLM4Reader",
}

STAGES: dict[str, str] = {
    "clean": "dataprep.stages.clean:Clean",
    "validate": "dataprep.stages.validate:Validate",
    "dedup": "dataprep.stages.dedup:Dedup",
    "balance": "dataprep.stages.balance:Balance",
    "split": "dataprep.stages.split:Split",
    "augment": "dataprep.stages.augment:Augment",
    "write": "dataprep.stages.write:Write",
    "expectations": "dataprep.stages.expectations:Expectations",
    "report": "dataprep.stages.report:Report",
}


def _load(table: dict[str, str], kind: str, name: str) -> Any:
    if name not in table:
        raise ConfigError(f"unknown {kind} {name!r}; available: {', '.join(sorted(table))}")
    module, _, attr = table[name].partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"{kind} {name!r} is not available: {e}") from e


def reader_class(name: str) -> Any:
    return _load(READERS, "reader", name)


def stage_class(name: str) -> Any:
    return _load(STAGES, "stage", name)
