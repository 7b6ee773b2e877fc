"""Exports of a run's splits to the formats people train with, one module per format.

Each format module has ``export(splits, out_dir, report, **options)``; it writes its files under
``out_dir`` and counts in the :class:`~dataprep.export.common.ExportReport` every conversation it
changed or could not write, with the reason. The report is saved as ``export_report.json``.

>>> export_run("out/hotel", "llamafactory").written  # doctest: +SKIP
{'train': 3534, 'dev': 442, 'test': 442}
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from dataprep.errors import ConfigError
from dataprep.export.common import ExportReport, read_run, take_options, write_report
from dataprep.record import Conversation

# Import strings, as in dataprep.registry: ``hf`` pulls in ``datasets`` only when used.
EXPORTERS: dict[str, str] = {
    "chatglm3": "dataprep.export.chatglm3:export",
    "llamafactory": "dataprep.export.llamafactory:export",
    "openai": "dataprep.export.openai_chat:export",
    "glm4": "dataprep.export.glm4:export",
    "hf": "dataprep.export.hf:export",
}


def exporter(fmt: str) -> Any:
    if fmt not in EXPORTERS:
        raise ConfigError(f"unknown export format {fmt!r}; available: {', '.join(sorted(EXPORTERS))}")
    module, _, attr = EXPORTERS[fmt].partition(":")
    return getattr(importlib.import_module(module), attr)


def parse_formats(formats: Any) -> list[tuple[str, dict[str, Any]]]:
    """``[llamafactory, {name: openai, with_id: true}]`` -> [(format, options)], checked.

    >>> parse_formats(["openai", {"name": "llamafactory", "call_style": "official"}])
    [('openai', {}), ('llamafactory', {'call_style': 'official'})]
    """
    if not isinstance(formats, list):
        raise ConfigError(f"write: formats must be a list of format names, got {formats!r}")
    out = []
    for item in formats:
        if isinstance(item, dict):
            options = dict(item)
            name = options.pop("name", None)
        else:
            name, options = item, {}
        if name not in EXPORTERS:
            raise ConfigError(f"write: unknown export format {name!r}; available: "
                              f"{', '.join(sorted(EXPORTERS))}")
        # Check the options now, so that a typo fails the config instead of the end of a run.
        module = importlib.import_module(EXPORTERS[name].partition(":")[0])
        take_options(name, options, module.OPTIONS)
        out.append((name, options))
    return out


def export_splits(fmt: str, splits: Mapping[str, Iterable[Conversation]], out_dir: str | Path,
                  **options: Any) -> ExportReport:
    """Write ``splits`` (split name -> conversations) as ``fmt`` under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = ExportReport(format=fmt, out_dir=str(out))
    exporter(fmt)(splits, out, report, **options)
    write_report(out, report)
    return report


def export_run(run_dir: str | Path, fmt: str, out_dir: str | Path | None = None,
               **options: Any) -> ExportReport:
    """Export a finished run folder; ``out_dir`` defaults to ``RUN_DIR/export/FMT``."""
    run = Path(run_dir)
    if fmt == "llamafactory":
        options.setdefault("name", run.resolve().name)
    splits = read_run(run)
    return export_splits(fmt, splits, out_dir or run / "export" / fmt, **options)
