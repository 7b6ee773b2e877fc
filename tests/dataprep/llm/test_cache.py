"""The on-disk answer cache: keys, persistence, crash safety, and how the client uses it."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from dataprep.llm import LLMClient, LLMConfig, LLMRequest, OutputRejected
from dataprep.llm.cache import CACHE_FILENAME, CachedAnswer, ResponseCache, cache_key
from dataprep.llm.fake_server import FakeChatServer, Fault

MESSAGES = [{"role": "system", "content": "改写"}, {"role": "user", "content": "今天天气很好"}]
SCHEMA = {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}}


def test_key_is_canonical_and_covers_everything_that_changes_the_answer() -> None:
    base = cache_key("m", MESSAGES, {"temperature": 0.7, "max_tokens": 64}, SCHEMA)
    reordered = cache_key(
        "m",
        [{"content": m["content"], "role": m["role"]} for m in MESSAGES],
        {"max_tokens": 64, "temperature": 0.7},
        dict(reversed(list(SCHEMA.items()))),
    )
    assert base == reordered
    assert len(base) == 64 and int(base, 16) >= 0
    changed = [
        cache_key("m2", MESSAGES, {"temperature": 0.7, "max_tokens": 64}, SCHEMA),
        cache_key("m", MESSAGES[::-1], {"temperature": 0.7, "max_tokens": 64}, SCHEMA),
        cache_key("m", MESSAGES, {"temperature": 0.8, "max_tokens": 64}, SCHEMA),
        cache_key("m", MESSAGES, {"temperature": 0.7}, SCHEMA),
        cache_key("m", MESSAGES, {"temperature": 0.7, "max_tokens": 64}, None),
    ]
    assert len({base, *changed}) == 6


def test_put_get_persist_across_reopen(tmp_path: Path) -> None:
    with ResponseCache(tmp_path) as cache:
        assert cache.get("k") is None and "k" not in cache and len(cache) == 0
        cache.put("k", CachedAnswer("答案", prompt_tokens=3, completion_tokens=2, model="m"))
        cache.put("k2", CachedAnswer("二"))
    with ResponseCache(tmp_path) as cache:
        hit = cache.get("k")
        assert hit is not None
        assert (hit.text, hit.prompt_tokens, hit.completion_tokens, hit.model) == (
            "答案",
            3,
            2,
            "m",
        )
        assert hit.created_at > 0
        assert len(cache) == 2 and "k2" in cache
        cache.delete("k2")
        assert "k2" not in cache
        assert cache.integrity_ok()
    with pytest.raises(RuntimeError, match="is closed"):
        cache.get("k")


def test_cache_dir_that_is_a_file_is_explained(tmp_path: Path) -> None:
    target = tmp_path / "not-a-dir"
    target.write_text("x")
    with pytest.raises(NotADirectoryError, match="point cache_dir at a folder"):
        ResponseCache(target)


def test_concurrent_writers_in_one_process(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path)

    def write(worker: int) -> None:
        for i in range(50):
            cache.put(f"{worker}-{i}", CachedAnswer(f"answer {worker} {i}", 1, 1))
            assert cache.get(f"{worker}-{i}") is not None

    threads = [threading.Thread(target=write, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(cache) == 400
    assert cache.integrity_ok()
    cache.close()


WRITER = """
import sys
from dataprep.llm.cache import CachedAnswer, ResponseCache
cache = ResponseCache(sys.argv[1])
i = 0
while True:
    cache.put(f"key-{i}", CachedAnswer("回答" * 200 + str(i), 10, 20, "m"))
    print(i, flush=True)  # acknowledged: the put has returned
    i += 1
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_a_killed_writer_leaves_every_acknowledged_entry_readable(
    tmp_path: Path, sig: signal.Signals
) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert child.stdout is not None
    acknowledged = -1
    deadline = time.monotonic() + 20
    while acknowledged < 300 and time.monotonic() < deadline:
        acknowledged = int(child.stdout.readline())
    child.send_signal(sig)  # mid-write: the writer never stops on its own
    child.wait(timeout=10)
    assert acknowledged >= 300
    with ResponseCache(tmp_path) as cache:
        assert cache.integrity_ok()
        assert len(cache) >= acknowledged + 1
        for i in range(acknowledged + 1):
            hit = cache.get(f"key-{i}")
            assert hit is not None and hit.text.endswith(str(i))


# ---------------------------------------------------------------------------------------------
# How the client uses the cache
# ---------------------------------------------------------------------------------------------
def config(server: FakeChatServer, cache_dir: Path, **overrides: Any) -> LLMConfig:
    values: dict[str, Any] = {
        "model": "fake-model",
        "base_url": server.base_url,
        "timeout_s": 2,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.02,
        "max_retries": 1,
        "max_reasks": 1,
        "cache_dir": str(cache_dir),
    }
    values.update(overrides)
    return LLMConfig(**values)


def requests(n: int, schema: dict[str, Any] | None = SCHEMA) -> list[LLMRequest]:
    return [
        LLMRequest(f"r{i}", [{"role": "user", "content": f"第{i}句"}], schema=schema)
        for i in range(n)
    ]


def test_second_run_is_served_entirely_from_cache(tmp_path: Path) -> None:
    with FakeChatServer() as server:
        with LLMClient(config(server, tmp_path)) as client:
            first = client.complete_many_sync(requests(5))
        assert len(server.log) == 5
        with LLMClient(config(server, tmp_path)) as client:
            second = client.complete_many_sync(requests(5))
            stats = client.stats
        assert len(server.log) == 5  # not one more request
    assert [r.output_dict() for r in first] == [r.output_dict() for r in second]
    assert all(r.from_cache and r.attempts == 0 for r in second)
    assert stats["cache_hits"] == 5 and stats["requests_sent"] == 0 and stats["cost"] == 0
    # a cache hit reports what the answer originally cost, for the record
    assert [r.usage for r in second] == [r.usage for r in first]


def test_only_validated_answers_are_cached(tmp_path: Path) -> None:
    def plan(info: Any) -> Fault | None:
        return Fault.off_schema() if "坏" in info.first_user else None

    reqs = [
        LLMRequest("good", [{"role": "user", "content": "好"}], schema=SCHEMA),
        LLMRequest("bad", [{"role": "user", "content": "坏"}], schema=SCHEMA),
    ]
    with FakeChatServer(faults=plan) as server:
        with LLMClient(config(server, tmp_path)) as client:
            good, bad = client.complete_many_sync(reqs)
            assert client.cache is not None and len(client.cache) == 1
        assert good.ok and not bad.ok and bad.reason == "llm_off_schema"
        sent = len(server.log)
        with LLMClient(config(server, tmp_path)) as client:
            good2, bad2 = client.complete_many_sync(reqs)
        assert good2.from_cache and not bad2.from_cache
        assert len(server.log) == sent + 2  # the failed item is asked again (and re-asked)


def test_a_changed_parameter_misses_the_cache(tmp_path: Path) -> None:
    with FakeChatServer() as server:
        with LLMClient(config(server, tmp_path, temperature=0.7)) as client:
            client.complete_many_sync(requests(2))
        with LLMClient(config(server, tmp_path, temperature=0.1)) as client:
            results = client.complete_many_sync(requests(2))
        assert len(server.log) == 4
    assert not any(r.from_cache for r in results)


def test_cached_answers_are_validated_again(tmp_path: Path) -> None:
    with FakeChatServer() as server:
        with LLMClient(config(server, tmp_path)) as client:
            [old] = client.complete_many_sync(requests(1, schema=None))

        def stricter(text: str) -> None:
            if not text.startswith("!"):
                raise OutputRejected("must start with !")

        with LLMClient(config(server, tmp_path, max_reasks=0)) as client:
            [new] = client.complete_many_sync(requests(1, schema=None), validator=stricter)
        # the cached answer fails the new validator, so the item is asked again
        assert old.ok and not new.from_cache and len(server.log) == 2
        assert new.reason == "llm_invalid_output"


def test_cache_holds_answers_and_usage_only(tmp_path: Path) -> None:
    with FakeChatServer() as server, LLMClient(config(server, tmp_path)) as client:
        client.complete_many_sync(requests(1))
    db = sqlite3.connect(tmp_path / CACHE_FILENAME)
    columns = [row[1] for row in db.execute("PRAGMA table_info(answers)")]
    rows = db.execute("SELECT * FROM answers").fetchall()
    db.close()
    assert columns == ["key", "text", "prompt_tokens", "completion_tokens", "model", "created_at"]
    assert len(rows) == 1 and rows[0][4] == "fake-model"


def test_count_answers_reads_without_creating(tmp_path) -> None:
    from dataprep.llm.cache import count_answers

    assert count_answers(tmp_path / "nowhere") == 0
    assert not (tmp_path / "nowhere").exists()
    with ResponseCache(tmp_path) as cache:
        for i in range(3):
            cache.put(f"k{i}", CachedAnswer("t", 1, 1, "m", 0.0))
        assert count_answers(tmp_path) == len(cache) == 3
