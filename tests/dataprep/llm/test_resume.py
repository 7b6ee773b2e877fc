"""Kill a run midway (SIGKILL, or Ctrl-C), rerun it, and check that nothing answered is re-asked.

The run happens in a child process (``child_main`` below) against a fake server in this process,
so the server's request log spans both runs. Once ``K`` requests have been answered the server
starts holding every new request open, so that the child is killed with requests in flight but
with every answered request known: the strict claim "the rerun sends no request that had
already succeeded" can then be checked exactly, with no timing window to excuse.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dataprep.llm import LLMClient, LLMConfig, LLMRequest
from dataprep.llm.cache import count_answers
from tests.support.fake_chat_server import FakeChatServer, Fault, RequestInfo

N_ITEMS = 24
K_ANSWERED = 8
SCHEMA = {
    "type": "object",
    "required": ["text", "source_chars"],
    "properties": {"text": {"type": "string"}, "source_chars": {"type": "integer"}},
}
# Server outcomes that deliver a chat completion to the client (prose instead of JSON included).
ANSWERED = ("ok", "non_json")
CHILD = "from tests.dataprep.llm.test_resume import child_main; child_main()"


def make_requests() -> list[LLMRequest]:
    return [
        LLMRequest(
            f"rec-{i:03d}",
            [
                {"role": "system", "content": "把用户的句子改写得更口语化。"},
                {"role": "user", "content": f"{i}|第{i}条：明天上午十点在会议室开会。"},
            ],
            schema=SCHEMA,
        )
        for i in range(N_ITEMS)
    ]


def make_config(base_url: str, cache_dir: str) -> LLMConfig:
    return LLMConfig(
        model="fake-model",
        base_url=base_url,
        # long enough that requests held by the server are still in flight at the kill
        timeout_s=20,
        max_retries=2,
        backoff_base_s=0.01,
        backoff_max_s=0.02,
        jitter_seed=0,
        max_concurrency=4,
        max_reasks=1,
        cache_dir=cache_dir,
    )


def resume_faults(info: RequestInfo) -> Fault | None:
    """Transient faults on an item's first request, and items that always fail."""
    i = int(info.first_user.split("|")[0])
    first = info.item_attempt == 0
    if i % 12 == 5:
        return Fault.http_error(400, "content policy")  # kept with reason llm_http_4xx
    if first and i % 6 == 1:
        return Fault.server_error(500)
    if first and i % 6 == 2:
        return Fault.rate_limited("0")
    if first and i % 6 == 3:
        return Fault.non_json()  # answered, rejected, re-asked
    if first and i % 6 == 4:
        return Fault.drop()
    return None


def child_main() -> None:
    """Entry point of the child process: argv = base_url cache_dir output_path."""
    base_url, cache_dir, output = sys.argv[1:4]
    with LLMClient(make_config(base_url, cache_dir)) as client:
        results = client.complete_many_sync(make_requests())
        payload = {"results": [r.output_dict() for r in results], "stats": client.stats}
    Path(output).write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")


def run_child(
    repo_root: Path, base_url: str, cache_dir: Path, output: Path, stderr: Path
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, base_url, str(cache_dir), str(output)],
        cwd=repo_root,
        stdout=subprocess.DEVNULL,
        stderr=stderr.open("wb"),
    )


def uninterrupted_outputs(tmp_path: Path) -> list[dict[str, Any]]:
    with (
        FakeChatServer(faults=resume_faults) as server,
        LLMClient(make_config(server.base_url, str(tmp_path / "reference-cache"))) as client,
    ):
        return [r.output_dict() for r in client.complete_many_sync(make_requests())]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_rerun_after_kill_resends_nothing_answered_and_matches_uninterrupted_run(
    tmp_path: Path, repo_root: Path, sig: signal.Signals
) -> None:
    cache_dir = tmp_path / "cache"
    output = tmp_path / "out.json"
    holding = True
    server = FakeChatServer()

    def gate(info: RequestInfo) -> Fault | None:
        if holding and server.outcomes()["ok"] >= K_ANSWERED:
            return Fault.hold(25)
        return resume_faults(info)

    server.faults = gate
    with server:
        # --- run 1, killed once K requests are answered and everything else is held open ---
        child = run_child(repo_root, server.base_url, cache_dir, output, tmp_path / "err1.txt")
        try:

            def settled(s: FakeChatServer) -> bool:
                log = s.log
                answered = sum(e.outcome == "ok" for e in log)
                # every chat completion received is cached, the rejected prose ones included
                received = sum(e.outcome in ANSWERED for e in log)
                return (
                    answered >= K_ANSWERED
                    and not any(e.outcome == "pending" for e in log)
                    and count_answers(cache_dir) == received
                )

            assert server.wait_until(settled, 30), (tmp_path / "err1.txt").read_text()
            assert any(e.outcome == "held" for e in server.log)  # killed with requests in flight
            child.send_signal(sig)
            child.wait(timeout=15)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert child.returncode != 0 and not output.exists()
        first_run = server.log
        answered_bodies = {e.body_hash for e in first_run if e.outcome in ANSWERED}
        answered_items = {e.first_user for e in first_run if e.outcome == "ok"}
        assert len(answered_items) == sum(e.outcome == "ok" for e in first_run) >= K_ANSWERED

        # --- run 2: resume from the cache ---
        holding = False
        child = run_child(repo_root, server.base_url, cache_dir, output, tmp_path / "err2.txt")
        assert child.wait(timeout=60) == 0, (tmp_path / "err2.txt").read_text()
        second_run = server.log[len(first_run) :]

    # nothing that had already been answered was asked again, not even under another body
    assert not answered_bodies & {e.body_hash for e in second_run}
    assert not answered_items & {e.first_user for e in second_run}
    payload = json.loads(output.read_text(encoding="utf-8"))
    stats = payload["stats"]
    assert stats["cache_hits"] == len(answered_items)
    assert stats["requests_sent"] == len(second_run)

    # every record is augmented or kept with a reason, and the counts add up
    results = payload["results"]
    assert len(results) == N_ITEMS
    assert all(r["ok"] or r["reason"] for r in results)
    assert stats["items_ok"] + stats["items_failed"] == N_ITEMS
    assert stats["failures"] == {"llm_http_4xx": 2}

    # and the output is exactly what an uninterrupted run produces
    assert results == uninterrupted_outputs(tmp_path)
