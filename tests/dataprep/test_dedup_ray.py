"""The dedup engine on a local Ray: the same decisions, components and pairs as the local engine
on the real lab dialogs (with tool-call guards) and on synthetic near duplicates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dataprep.dedup import DedupConfig, call_signature, find_duplicates, sample_key
from dataprep.dedup.distributed import find_duplicates_ray
from dataprep.record import Conversation

FIELDS = ("kept", "roots", "exact_rep", "key_hash", "similarity", "edge_i", "edge_j", "edge_sim")


def _lab(corpora: Path) -> list[Conversation]:
    out = []
    for name in ("train.chatglm3.jsonl", "dev.chatglm3.jsonl"):
        for line in (corpora / "crosswoz-hotel-finetune-lab" / name).read_text(
                encoding="utf-8").split("\n"):
            if line.strip():
                obj = json.loads(line)
                obj["tools"] = json.loads(obj["tools"][0])
                out.append(Conversation.from_chatglm3(obj))
    return out


def test_ray_dedup_equals_local_on_the_lab_dialogs(ray_local, corpora: Path) -> None:
    convs = _lab(corpora)
    keys = [sample_key(c) for c in convs]
    guards = [call_signature(c) for c in convs]
    local_stats: dict = {}
    ray_stats: dict = {}
    local = find_duplicates(keys, guards=guards, stats=local_stats)
    distributed = find_duplicates_ray(keys, guards=guards, batch_size=512, stats=ray_stats)
    for name in FIELDS:
        assert np.array_equal(getattr(local, name), getattr(distributed, name)), name
    assert local.removed() > 100 and local_stats == ray_stats
    exact_only = find_duplicates_ray(keys, DedupConfig(near=False), batch_size=512)
    assert np.array_equal(exact_only.kept, find_duplicates(keys, DedupConfig(near=False)).kept)
