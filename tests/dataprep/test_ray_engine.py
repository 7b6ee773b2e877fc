"""``--engine ray`` against the local engine on the real hotel and doc-QA inputs: the same
splits and rejects byte for byte, the same manifest counts and per-record stage stats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from bench.bench_run import corpus_configs
from dataprep.config import config_from_dict
from dataprep.pipeline import Pipeline
from dataprep.ray_engine import RayPipeline, merge_stats, per_record
from dataprep.stages.clean import Clean
from dataprep.stages.dedup import Dedup

ROOT = Path(__file__).resolve().parents[2]
FILES = ("train.jsonl", "dev.jsonl", "test.jsonl", "rejects.jsonl")


def _config(shared: Path, name: str) -> dict:
    # The demo config's stages on the real files, without the post-run steps (expectations,
    # report): they read the finished folder and are the same code on both engines.
    stages = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text(encoding="utf-8"))
    stages = [s for s in stages["stages"] if (s if isinstance(s, str) else s["name"])
              not in ("expectations", "report")]
    return {"name": name, "seed": 42, **corpus_configs(shared)[name], "stages": stages}


@pytest.mark.parametrize("corpus", ["hotel", "docqa"])
def test_ray_outputs_are_the_local_ones_byte_for_byte(ray_local, shared_dir: Path,
                                                     tmp_path: Path, corpus: str) -> None:
    cfg = _config(shared_dir, corpus)
    local = Pipeline(config_from_dict(cfg)).run(tmp_path / "local", progress=False)
    ray_pipeline = RayPipeline(config_from_dict(cfg), batch_size=256)
    assert [s.name for s in ray_pipeline.stages if per_record(s)] == ["clean", "validate"]
    distributed = ray_pipeline.run(tmp_path / "ray", progress=False)
    for name in FILES:
        a = (tmp_path / "local" / name).read_bytes()
        assert a == (tmp_path / "ray" / name).read_bytes(), name
    assert local["counts"] == distributed["counts"]
    # Something is dropped (the lab files no longer reject anything: removals count).
    assert local["counts"]["train"] > 500 and sum(local["counts"]["rejected"].values()) \
        + sum(local["counts"]["removed"].values()) > 0
    rejects = [json.loads(x) for x in (tmp_path / "ray" / "rejects.jsonl").read_text(
        encoding="utf-8").splitlines()]
    assert {r["stage"] for r in rejects} >= {"read", "dedup"} - (
        {"read"} if corpus == "docqa" else set())
    # validate's decisions on the workers: rejects, or (the lab's own tool) kept with flags.
    validate = distributed["stage_stats"]["validate"]
    assert validate["flagged"] > 0 or "validate" in {r["stage"] for r in rejects}
    for stage in ("clean", "validate", "dedup", "split"):
        assert local["stage_stats"].get(stage) == distributed["stage_stats"].get(stage), stage


def test_merge_stats_adds_counts_and_recomputes_rates() -> None:
    into = {"records": 3, "unit": "chars", "threshold": 0.5,
            "rules": {"x": {"checked": 2, "failed": 1, "rate": 0.5}}}
    merge_stats(into, {"records": 2, "unit": "chars", "threshold": 0.5, "new": {"a": 1},
                       "rules": {"x": {"checked": 2, "failed": 0, "rate": 0.0}}})
    assert into == {"records": 5, "unit": "chars", "threshold": 0.5, "new": {"a": 1},
                    "rules": {"x": {"checked": 4, "failed": 1, "rate": 0.25}}}
    assert per_record(Clean()) and not per_record(Dedup())


def test_cli_ray_options_need_the_ray_engine(tmp_path: Path, capsys) -> None:
    from dataprep.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"name": "x", "inputs": [], "stages": ["split", "write"]}))
    assert main(["run", str(cfg), "--ray-address", "auto", "--quiet"]) == 2
    assert "need --engine ray" in capsys.readouterr().err
