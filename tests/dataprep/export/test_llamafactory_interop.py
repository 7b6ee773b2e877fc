"""LLaMA-Factory's own converter over our llamafactory export (bench/interop_check.py).

Needs the isolated install that ``make test`` makes (``pip install --no-deps --target
.venv/llamafactory llamafactory==0.9.5``) or $DATAPREP_LLAMAFACTORY pointing at one.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from dataprep.export import export_run

REPO_ROOT = Path(__file__).resolve().parents[3]


def _interop() -> ModuleType:
    spec = importlib.util.spec_from_file_location("interop_check",
                                                  REPO_ROOT / "bench" / "interop_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def lf() -> tuple[ModuleType, object]:
    interop = _interop()
    target = interop.find_llamafactory()
    if target is None:
        pytest.skip("needs LLaMA-Factory 0.9.5 installed in isolation: run `make test`, or "
                    "pip install --no-deps --target .venv/llamafactory llamafactory==0.9.5 "
                    "(or set DATAPREP_LLAMAFACTORY to such a folder)")
    return interop, interop.load_llamafactory(target)


@pytest.mark.slow
@pytest.mark.parametrize("corpus", ["spo", "docqa", "hotel"])
def test_llamafactory_converter_accepts_the_export(lf: tuple, real_runs: dict[str, Path],
                                                   tmp_path: Path, corpus: str) -> None:
    interop, modules = lf
    export_run(real_runs[corpus], "llamafactory", tmp_path)
    results = interop.check_export(tmp_path, modules)
    assert set(results) == {f"{corpus}_{s}" for s in ("train", "dev", "test")}
    total = sum(r["total"] for r in results.values())
    usable = sum(r["usable"] for r in results.values())
    assert total > 1000 and usable / total >= 0.99, [r["why_counts"] for r in results.values()]
    for r in results.values():
        assert r["aligned_usable"] == r["usable"]
        assert r["call_format_errors"] == []
    calls = sum(r["calls_formatted"] for r in results.values())
    assert (calls > 4000) == (corpus == "hotel")


@pytest.mark.slow
def test_llamafactory_converter_accepts_official_call_style(lf: tuple, real_runs: dict[str, Path],
                                                           tmp_path: Path) -> None:
    interop, modules = lf
    export_run(real_runs["hotel"], "llamafactory", tmp_path, call_style="official")
    results = interop.check_export(tmp_path, modules)
    assert all(r["usable"] == r["total"] > 0 for r in results.values())
    assert sum(r["calls_formatted"] for r in results.values()) == 0  # calls are gpt turns now
    line = json.loads((tmp_path / "train.jsonl").open(encoding="utf-8").readline())
    assert any("tool_call(" in t["value"] for t in line["conversations"] if t["from"] == "gpt")


def test_the_check_names_samples_that_llamafactory_skips(lf: tuple, tmp_path: Path) -> None:
    """The control: a sample in the old shape (our single tool message as a turn, as before this
    export existed) and one that ends on the user are reported skipped, with LLaMA-Factory's
    reason."""
    interop, modules = lf
    from dataprep.export.llamafactory import dataset_info

    good = {"id": "ok", "conversations": [{"from": "human", "value": "hi"},
                                          {"from": "gpt", "value": "yo"}], "tools": ""}
    old = {"id": "old", "conversations": [{"from": "human", "value": "找酒店"},
                                          {"from": "tool", "value": "{}"},
                                          {"from": "gpt", "value": "好的"}], "tools": ""}
    odd = {"id": "odd", "conversations": [{"from": "human", "value": "hi"}], "tools": ""}
    (tmp_path / "train.jsonl").write_text(
        "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in (good, old, odd)),
        encoding="utf-8")
    (tmp_path / "dataset_info.json").write_text(json.dumps(dataset_info("t", ["train"])),
                                                encoding="utf-8")
    r = interop.check_export(tmp_path, modules)["t_train"]
    assert r["total"] == 3 and r["usable"] == 1
    assert {s["id"]: s["why"] for s in r["skipped"]} == {"old": "Invalid role tag",
                                                         "odd": "Invalid message count"}


def test_llamafactory_loads_samples_carrying_our_extra_keys(lf: tuple, tmp_path: Path) -> None:
    """Every extra key (thought, loss, parallel, no_observation, final_observation) at once in
    one file: ``datasets`` must infer one schema and the converter must accept every sample."""
    from dataprep.export import export_splits
    from dataprep.record import Message

    from .test_formats import MASKED, PARALLEL, PLAIN, SEQUENTIAL, call, conv

    unanswered = conv("unanswered", Message("user", "找"), call(), Message("assistant", "没查到"),
                      Message("user", "再找"), call(obs=[1]))
    interop, modules = lf
    for options in ({}, {"parallel": "list"}):
        export_splits("llamafactory", {"train": [PARALLEL, SEQUENTIAL, MASKED, PLAIN, unanswered]},
                      tmp_path, **options)
        r = interop.check_export(tmp_path, modules)["dataprep_train"]
        assert r["usable"] == r["total"] == 5
        # The glm4 tool format refuses a list of calls: the reason `parallel: split` is default.
        assert len(r["call_format_errors"]) == (1 if options else 0)
