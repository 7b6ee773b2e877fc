"""Shared fixtures.

Tests that need the real corpora in ../shared (next to the repository root) take the ``shared_dir``
fixture: on a fresh clone without it they skip with a reason that says where the files belong.
Nothing else may skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("DATAPREP_SHARED", REPO_ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "corpora" / "MANIFEST.md").is_file():
        pytest.skip(
            f"needs the shared corpora at {SHARED} (../shared next to the repository root, "
            "or set DATAPREP_SHARED); CI always has them"
        )
    return SHARED


@pytest.fixture(scope="session")
def corpora(shared_dir: Path) -> Path:
    return shared_dir / "corpora"


@pytest.fixture(scope="session")
def golden_dir(shared_dir: Path) -> Path:
    return shared_dir / "golden" / "chatglm3"


@pytest.fixture(scope="session")
def tokenizer_dir(corpora: Path) -> Path:
    """Folder holding the real ChatGLM3-6B ``tokenizer.model``."""
    return corpora / "chatglm3-6b-tokenizer"


@pytest.fixture(scope="session")
def hotel_db_path(corpora: Path) -> Path:
    return corpora / "crosswoz" / "database" / "hotel_db.json"


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray (2 CPUs, no dashboard) shared by every test that needs one: Ray takes seconds
    to start, so it starts once per test session (per xdist worker) and stops at the end."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install .[ray])")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             ignore_reinit_error=True)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()
