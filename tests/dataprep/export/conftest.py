"""Real-corpus runs (validate, split, write only: fast) shared by the export tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from dataprep.config import config_from_dict
from dataprep.pipeline import Pipeline

REPO_ROOT = Path(__file__).resolve().parents[3]
CORPORA = ("spo", "docqa", "hotel")


def _bench_configs(shared: Path) -> dict:
    # The same inputs bench/bench_run.py times, so the export checks see the benchmark's data.
    spec = importlib.util.spec_from_file_location("bench_run", REPO_ROOT / "bench" / "bench_run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.corpus_configs(shared)


@pytest.fixture(scope="session")
def real_runs(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Corpus name -> finished run folder (train/dev/test.jsonl) on the full shared corpora."""
    base = tmp_path_factory.mktemp("export_runs")
    runs = {}
    for name, cfg in _bench_configs(shared_dir).items():
        config = config_from_dict({"name": name, "seed": 42, **cfg,
                                   "stages": ["validate", "split", "write"]})
        Pipeline(config).run(base / name, progress=False)
        runs[name] = base / name
    return runs
