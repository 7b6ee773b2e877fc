"""``expectations``: GE suites on the written splits, Data Docs built by GE, failing runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dataprep.config import config_from_dict
from dataprep.errors import ConfigError, ExpectationError
from dataprep.pipeline import Pipeline
from dataprep.stages.expectations import DATA_DOCS, Expectations, sample_rows


def _config(corpora: Path, *stages: Any) -> dict[str, Any]:
    return {"name": "spo", "inputs": [{"reader": "spo", "path": str(
        corpora / "spo-repair-records" / "spo_0.subset.json")}],
            "stages": ["clean", "validate", {"name": "split", "ratios": [8, 1, 1]}, "write",
                       *stages]}


@pytest.fixture(scope="module")
def run(corpora: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("gx_run")
    # max_chars 300 is below some SPO texts: a warning-level failure, which must not stop the run.
    cfg = _config(corpora, {"name": "expectations", "max_chars": 300})
    return out, Pipeline(config_from_dict(cfg)).run(out, progress=False)


def test_results_in_the_manifest(run: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = run
    exp = manifest["artifacts"]["expectations"]
    assert exp["rows"] == manifest["counts"]["train"] + manifest["counts"]["dev"] + \
        manifest["counts"]["test"] == 1125
    assert exp["suites"]["spo"]["evaluated"] == 13 and exp["suites"]["spo"]["rows"] == 1125
    assert exp["success"] is False and exp["critical_success"] is True
    assert [f["name"] for f in exp["failed"]] == ["max_message_chars"]
    fail = exp["failed"][0]
    assert fail["critical"] is False and fail["corpus"] == "spo"
    assert fail["observed"]["unexpected_count"] > 0
    assert "max_chars" in fail["summary"] and "unexpected" in fail["summary"]
    assert exp["data_docs"] == DATA_DOCS.as_posix()
    on_disk = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert on_disk["artifacts"]["expectations"] == exp


def test_data_docs_are_built_by_great_expectations(run: tuple[Path, dict[str, Any]]) -> None:
    out, _ = run
    index = out / DATA_DOCS
    assert index.is_file()
    html = index.read_text(encoding="utf-8")
    assert "Great Expectations" in html and "dataprep_spo" in html
    # GE's own stores: the suite as GE serialised it, and a rendered validation result page.
    suite = json.loads((out / "gx" / "expectations" / "dataprep_spo.json").read_text())
    types = {e["type"] for e in suite["expectations"]}
    assert {"expect_column_values_to_be_unique", "expect_column_values_to_match_regex",
            "expect_column_mean_to_be_between"} <= types
    (page,) = (index.parent / "validations").rglob("*.html")  # one run, one result page
    text = page.read_text(encoding="utf-8")
    assert "Great Expectations" in text and "values must be unique" in text


def test_tampered_splits_fail_critical_expectations(run: tuple[Path, dict[str, Any]],
                                                    tmp_path: Path) -> None:
    out, _ = run
    for split in ("train", "dev", "test"):
        (tmp_path / f"{split}.jsonl").write_bytes((out / f"{split}.jsonl").read_bytes())
    train = (tmp_path / "train.jsonl").read_text(encoding="utf-8").splitlines()
    bad = json.loads(train[0])
    bad["conversations"].append({"role": "user", "content": ""})  # ends on an empty user turn
    with (tmp_path / "dev.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(train[1] + "\n")  # the same id twice
        fh.write(json.dumps(bad, ensure_ascii=False) + "\n")
    result = Expectations().validate(tmp_path, [0.8, 0.1, 0.1])
    failed = {f["name"]: f for f in result["failed"]}
    assert {"id_unique", "last_turn_assistant", "no_empty_text"} <= set(failed)
    assert all(failed[n]["critical"] for n in ("id_unique", "last_turn_assistant", "no_empty_text"))
    assert result["critical_success"] is False
    assert json.loads(train[1])["id"] in failed["id_unique"]["observed"]["partial_unexpected_list"]
    rows = {r["id"]: r for r in sample_rows(tmp_path)}
    assert rows[bad["id"]]["last_role"] == "user"


def test_critical_failure_fails_the_run_after_the_manifest(corpora: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from dataprep.stages import report

    built: list[Path] = []
    real_rebuild = report.rebuild_report

    def counting_rebuild(out_dir: Path) -> Path:
        built.append(Path(out_dir))
        return real_rebuild(out_dir)

    monkeypatch.setattr(report, "rebuild_report", counting_rebuild)
    # SPO samples have no tool calls; demanding them is a critical expectation that must fail.
    cfg = _config(corpora, {"name": "expectations", "tool_call_rate": {"spo": [0.5, 1.0]}},
                  "report")
    with pytest.raises(ExpectationError) as err:
        Pipeline(config_from_dict(cfg)).run(tmp_path, progress=False)
    msg = str(err.value)
    assert msg.startswith("1 critical expectation(s) failed on the final splits: spo: "
                          "tool_call_rate: has_tool_call: observed 0")
    assert str(tmp_path / DATA_DOCS) in msg and "fail_on: never" in msg
    manifest = json.loads((tmp_path / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["artifacts"]["expectations"]["critical_success"] is False
    # The report that explains the failure was still built, once.
    assert built == [tmp_path]
    assert "Critical expectations failed" in (tmp_path / "report" / "index.html").read_text(
        encoding="utf-8")
    # fail_on: never records and carries on; any also stops on warnings.
    result = manifest["artifacts"]["expectations"]
    Expectations(fail_on="never").check(result, tmp_path)
    warnings_only = {**result, "failed": [{**f, "critical": False} for f in result["failed"]]}
    Expectations(fail_on="critical").check(warnings_only, tmp_path)
    with pytest.raises(ExpectationError, match="^1 expectation\\(s\\) failed"):
        Expectations(fail_on="any").check(warnings_only, tmp_path)


def test_split_shares_ignore_upsampled_copies(run: tuple[Path, dict[str, Any]],
                                              tmp_path: Path) -> None:
    out, _ = run
    for split in ("train", "dev", "test"):
        (tmp_path / f"{split}.jsonl").write_bytes((out / f"{split}.jsonl").read_bytes())
    lines = (tmp_path / "train.jsonl").read_text(encoding="utf-8").splitlines()
    copies = []
    for k, line in enumerate(lines[:600]):  # enough copies to push train far above 80%
        d = json.loads(line)
        d["id"] += f"#up{k}"
        d["lineage"]["ops"].append("balance_upsample")
        copies.append(json.dumps(d, ensure_ascii=False))
    (tmp_path / "train.jsonl").write_text("\n".join(lines + copies) + "\n", encoding="utf-8")
    result = Expectations().validate(tmp_path, [0.8, 0.1, 0.1])
    assert not [f for f in result["failed"] if f["name"].startswith("split_share")]
    assert result["success"] is True
    # Against other ratios the same splits fail (warning level).
    result = Expectations().validate(tmp_path, [0.6, 0.2, 0.2])
    assert {f["name"] for f in result["failed"]} == {"split_share_train", "split_share_dev",
                                                     "split_share_test"}
    assert result["critical_success"] is True


@pytest.mark.parametrize("options, match", [
    ({"fail_on": "sometimes"}, "critical, any, never"),
    ({"critical": ["ids_unique"]}, "unknown expectations"),
    ({"tool_call_rate": {"hotel": [0.9, 0.1]}}, "low <= high"),
])
def test_bad_options(options: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Expectations(**options)
