"""The on-disk answer cache: keys, persistence, crash safety, and how the client uses it."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from dataprep.llm import LLMClient, LLMConfig, LLMRequest, OutputRejected
from dataprep.llm.cache import CACHE_FILENAME, CachedAnswer, CacheError, ResponseCache, cache_key
from tests.support.fake_chat_server import FakeChatServer, Fault

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
    with pytest.raises(CacheError, match="point llm.cache_dir at a folder"):
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


def test_rejected_answers_are_replayed_on_a_rerun_not_paid_for_again(tmp_path: Path) -> None:
    def plan(info: Any) -> Fault | None:
        return Fault.off_schema() if "坏" in info.first_user else None

    reqs = [
        LLMRequest("good", [{"role": "user", "content": "好"}], schema=SCHEMA),
        LLMRequest("bad", [{"role": "user", "content": "坏"}], schema=SCHEMA),
    ]
    with FakeChatServer(faults=plan) as server:
        with LLMClient(config(server, tmp_path)) as client:
            good, bad = client.complete_many_sync(reqs)
            # every answer received is stored: the good one, the bad one and its re-ask
            assert client.cache is not None and len(client.cache) == 3
        assert good.ok and not bad.ok and bad.reason == "llm_off_schema" and bad.reasks == 1
        assert bad.rejected_text is not None and "source_chars" not in bad.rejected_text
        sent = len(server.log)
        with LLMClient(config(server, tmp_path)) as client:
            good2, bad2 = client.complete_many_sync(reqs)
            stats = client.stats
        assert len(server.log) == sent  # nothing answered before is sent again
    assert good2.from_cache and bad2.from_cache
    assert [good2.output_dict(), bad2.output_dict()] == [good.output_dict(), bad.output_dict()]
    assert stats["cache_hits"] == 2 and stats["cache_replays"] == 3
    assert stats["reasks"] == {"llm_off_schema": 1}  # the replayed re-ask is still counted


def test_the_endpoint_is_part_of_the_key(tmp_path: Path) -> None:
    # Same model name, same request, another server: another model, so no shared answers.
    with FakeChatServer() as first, FakeChatServer() as second:
        with LLMClient(config(first, tmp_path)) as client:
            client.complete_many_sync(requests(2))
        with LLMClient(config(second, tmp_path)) as client:
            results = client.complete_many_sync(requests(2))
        assert len(first.log) == 2 and len(second.log) == 2
    assert not any(r.from_cache for r in results)


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

        with LLMClient(config(server, tmp_path, max_reasks=1)) as client:
            [new] = client.complete_many_sync(requests(1, schema=None), validator=stricter)
        # the cached answer fails the new validator, so the model is asked again (re-asked)
        assert old.ok and not new.from_cache and len(server.log) == 2
        assert new.reasks == 1 and new.attempts == 1
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


# ---------------------------------------------------------------------------------------------
# A cache that cannot be used: one line naming the file and what to do, never an sqlite traceback
# ---------------------------------------------------------------------------------------------
def test_a_file_that_is_not_sqlite_is_explained(tmp_path: Path) -> None:
    (tmp_path / CACHE_FILENAME).write_bytes(b"this is not a database, just some text\n" * 50)
    with pytest.raises(CacheError) as info:
        ResponseCache(tmp_path)
    message = str(info.value)
    assert str(tmp_path / CACHE_FILENAME) in message and "not an sqlite file" in message
    assert "\n" not in message


def test_a_folder_in_place_of_the_cache_file_is_explained(tmp_path: Path) -> None:
    (tmp_path / CACHE_FILENAME).mkdir()
    with pytest.raises(CacheError, match="is a folder, not a cache file; move it away"):
        ResponseCache(tmp_path)


def test_a_locked_cache_is_explained(tmp_path: Path) -> None:
    ResponseCache(tmp_path).close()
    other = sqlite3.connect(tmp_path / CACHE_FILENAME, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")  # another run in the middle of a write
        with pytest.raises(CacheError, match="another process holds its lock"):
            ResponseCache(tmp_path, busy_timeout_s=0.05)
    finally:
        other.close()
    with ResponseCache(tmp_path) as cache:  # usable again once the other writer is gone
        assert len(cache) == 0


def _open_in_child(folder: Path, uid: int | None) -> tuple[int, str]:
    """Open the cache in a forked child (as ``uid`` when given); (exit code, its message)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no pytest machinery, report through the pipe and _exit
        code = 0
        try:
            if uid is not None:
                os.setgid(uid)
                os.setuid(uid)
            try:
                ResponseCache(folder).close()
                message = "opened"
            except CacheError as exc:
                message, code = str(exc), 3
        except BaseException as exc:  # noqa: BLE001 - anything else is reported, not raised
            message, code = f"{type(exc).__name__}: {exc}", 4
        os.write(write_end, message.encode("utf-8"))
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode("utf-8")
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), message


def test_a_read_only_cache_is_explained() -> None:
    # Root writes to read-only files regardless, so as root the cache is opened by a forked
    # child that has dropped to the "nobody" user; the file and its folder are read-only.
    folder = Path(tempfile.mkdtemp(prefix="ro-cache-"))
    try:
        with ResponseCache(folder) as cache:
            cache.put("k", CachedAnswer("答", 1, 1, "m"))
        for path in folder.iterdir():
            path.chmod(0o444)
        folder.chmod(0o555)
        code, message = _open_in_child(folder, 65534 if os.geteuid() == 0 else None)
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder)
    assert code == 3, message
    assert str(folder / CACHE_FILENAME) in message and "set llm.cache_dir" in message
    assert "\n" not in message
