"""The LLM stage on Ray: ``rewrite_llm`` as a Ray Data actor pool, the real ``openai`` client
over HTTP to a fake chat server on 127.0.0.1, against the local engine on the real lab dialogs:
the same splits, rejects, discarded rewrites and manifest counts; the actors share one on-disk
answer cache, so a second run sends no request at all."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dataprep.config import config_from_dict
from dataprep.corpora.hotel.hotel_db import HotelDB
from dataprep.llm.cache import count_answers
from dataprep.pipeline import Pipeline
from dataprep.ray_engine import RayPipeline
from dataprep.stages.augment import DISCARDED_FILE, Augment
from tests.dataprep.stages.test_augment_llm import Model, llm_config
from tests.support.fake_chat_server import FakeChatServer

FILES = ("train.jsonl", "dev.jsonl", "test.jsonl", "rejects.jsonl", DISCARDED_FILE)


def _config(corpora: Path, hotel_db_path: Path, llm: dict[str, Any]) -> dict[str, Any]:
    lab = corpora / "crosswoz-hotel-finetune-lab"
    return {"name": "hotel-llm", "seed": 42, "hotel_db": str(hotel_db_path), "llm": llm,
            "inputs": [{"reader": "lab_chatglm3", "path": str(lab / "dev.chatglm3.jsonl")}],
            "stages": ["dedup", {"name": "split", "ratios": [0.8, 0.1, 0.1]},
                       {"name": "augment", "ops": [{"name": "rewrite_llm", "share": 0.6}]},
                       "write"]}


def _run(pipeline: Pipeline, out: Path) -> dict[str, Any]:
    pipeline.run(out, progress=False)
    return json.loads((out / "manifest.json").read_text(encoding="utf-8"))


def test_llm_rewrites_on_an_actor_pool_match_the_local_run(ray_local, corpora: Path,
                                                           hotel_db: HotelDB, hotel_db_path: Path,
                                                           tmp_path: Path) -> None:
    model = Model([h.name for h in hotel_db.hotels])
    with FakeChatServer(answer=model) as server:
        def config(cache: str) -> Any:
            llm = llm_config(server.base_url, max_concurrency=8, cache_dir=str(tmp_path / cache))
            return config_from_dict(_config(corpora, hotel_db_path, llm))

        local = _run(Pipeline(config("cache-local")), tmp_path / "local")
        sent_local = len(server.log)
        ray_pipeline = RayPipeline(config("cache-ray"), llm_batch_size=16)
        (stage,) = [s for s in ray_pipeline.stages if isinstance(s, Augment)]
        sharded_calls: list[int] = []

        def spy(op: Any, chosen: list, run: Any) -> Any:
            sharded_calls.append(len(chosen))
            return real(op, chosen, run)

        real, stage.sharded = stage.sharded, spy
        distributed = _run(ray_pipeline, tmp_path / "ray")
        assert sharded_calls and sharded_calls[0] > 50  # the op's records went to the actors
        sent_ray = len(server.log) - sent_local
        again = _run(RayPipeline(config("cache-ray"), llm_batch_size=16), tmp_path / "again")
        sent_again = len(server.log) - sent_local - sent_ray
    for name in FILES:
        a = (tmp_path / "local" / name).read_bytes()
        assert a == (tmp_path / "ray" / name).read_bytes() == \
            (tmp_path / "again" / name).read_bytes(), name
    assert local["counts"] == distributed["counts"] == again["counts"]
    augment = local["stage_stats"]["augment"]
    assert augment == distributed["stage_stats"]["augment"] == again["stage_stats"]["augment"]
    # The op really ran, with rewrites both added and discarded (the model's slot errors).
    outcomes = augment["ops"]["rewrite_llm"]
    assert outcomes["added"] > 20 and sum(augment["turns"]["rewrite_llm"].values()) > 100
    assert any(k.startswith("failed:slot") for k in augment["turns"]["rewrite_llm"])
    # Every HTTP request of the Ray run came from the actors, and the cache they shared holds
    # every answer: the second run asked nothing.
    llm_local, llm_ray, llm_again = (m["artifacts"]["llm"] for m in (local, distributed, again))
    for key in ("items", "items_ok", "items_failed", "failures"):
        assert llm_local[key] == llm_ray[key] == llm_again[key], key
    assert sent_local > 100 and sent_ray >= sent_local - 20
    assert llm_ray["requests_sent"] == sent_ray and count_answers(tmp_path / "cache-ray") > 100
    assert sent_again == 0 and llm_again["requests_sent"] == 0
    assert llm_again["cache_hits"] == llm_again["items"]
