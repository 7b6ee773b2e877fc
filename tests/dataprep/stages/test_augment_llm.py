"""LLM rewrites through the real ``openai`` client over HTTP, against a fake chat-completions
server on 127.0.0.1 that these tests start, with injected faults.

The server "model" rewrites a user turn faithfully ("嗯，" + the turn), except for chosen turns
where it makes the mistakes a real model makes: it changes a number, drops a facility or swaps a
hotel name. Those rewrites must be discarded with their slot reason and the original kept;
transient faults (500, 429, a dropped connection, prose instead of JSON, a timeout) must be
retried or re-asked away; a permanent 400 must end as a kept record with reason ``llm_http_4xx``.

The resume test runs the real CLI in a child process, kills it (SIGKILL) once some requests were
answered, reruns it, and checks that no answered request is sent again and that the outputs are
byte-identical to an uninterrupted run's.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from dataprep.corpora.hotel.hotel_db import HotelDB
from dataprep.corpora.hotel.rewrite import REWRITE_SYSTEM_PROMPT, prompt_hash, user_turns
from dataprep.corpora.hotel.tools import FACILITIES
from dataprep.llm.cache import count_answers
from dataprep.record import Conversation
from dataprep.resources import Resources
from dataprep.stages.augment import DISCARDED_FILE, Augment
from dataprep.stages.base import RunContext, StageStats
from tests.support.fake_chat_server import FakeChatServer, Fault, RequestInfo, first_user_message

N_RECORDS = 30


def _h(text: str) -> int:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16)


class Model:
    """What the fake server answers: a deterministic function of the user turn, with deliberate
    slot errors on some turns. ``intent`` records which error each turn got."""

    def __init__(self, hotel_names: list[str]) -> None:
        self.names = sorted(hotel_names, key=len, reverse=True)
        self.intent: dict[str, str] = {}

    def rewrite(self, text: str) -> str:
        h = _h(text) % 3
        facility = next((f for f in sorted(FACILITIES, key=len, reverse=True) if f in text), None)
        name = next((n for n in self.names if n in text), None)
        # a number of its own, not the 24 of "24小时热水" or a digit inside a hotel name
        masked = text
        for part in (facility, name):
            if part:
                masked = masked.replace(part, "#" * len(part))
        number = re.search(r"\d+", masked)
        if h == 0 and number:
            self.intent[text] = "slot_number_changed"
            value = int(number.group()) + 100
            return "嗯，" + text[: number.start()] + str(value) + text[number.end():]
        if h == 1 and facility:
            self.intent[text] = "slot_facility_dropped"
            return "嗯，" + text.replace(facility, "")
        if name:  # every name-bearing turn gets its name swapped: names are rare in the data
            self.intent[text] = "slot_name_dropped"
            return "嗯，" + text.replace(name, "那家酒店")
        self.intent[text] = "ok"
        return "嗯，" + text

    def __call__(self, body: dict[str, Any]) -> str:
        return json.dumps({"rewrite": self.rewrite(first_user_message(body))}, ensure_ascii=False)


def faults(info: RequestInfo) -> Fault | None:
    """Transient faults on an item's first request, a few permanent 400s."""
    h = _h(info.first_user)
    first = info.item_attempt == 0
    if h % 17 == 0:
        return Fault.http_error(400, "content policy")
    if first and h % 7 == 1:
        return Fault.server_error(500)
    if first and h % 7 == 2:
        return Fault.rate_limited("0")
    if first and h % 7 == 3:
        return Fault.non_json()
    if first and h % 7 == 4:
        return Fault.drop()
    if first and h % 7 == 5:
        return Fault.off_schema()
    return None


def llm_config(base_url: str, **over: Any) -> dict[str, Any]:
    return {"model": "fake-model", "base_url": base_url, "timeout_s": 20, "max_retries": 2,
            "backoff_base_s": 0.01, "backoff_max_s": 0.02, "jitter_seed": 0,
            "max_concurrency": 4, "max_reasks": 1, **over}


@pytest.fixture(scope="module")
def records(lab_records: list[Conversation]) -> list[Conversation]:
    """Real lab dialogs, with every hotel-name query among them (names are rare in the data)."""
    named = [r for r in lab_records if any(m.role == "tool" and "name" in m.parameters
                                           for m in r.messages)][:5]
    rest = [r for r in lab_records if r not in named][: N_RECORDS - len(named)]
    out = []
    for rec in named + rest:
        dup = copy.deepcopy(rec)
        dup.split = "train"
        out.append(dup)
    return out


def run_stage(records: list[Conversation], out: Path, db_path: Path,
              llm: dict[str, Any]) -> tuple[list[Conversation], RunContext, StageStats]:
    ctx = RunContext(out, seed=5)
    stage = Augment(ops=["rewrite_llm"], resources=Resources(hotel_db_path=str(db_path), llm=llm))
    result = list(stage.run(records, ctx))
    return result, ctx, stage.stats


def test_llm_rewrites_with_faults_and_slot_errors(records: list[Conversation], hotel_db: HotelDB,
                                                 hotel_db_path: Path, tmp_path: Path) -> None:
    model = Model([h.name for h in hotel_db.hotels])
    with FakeChatServer(faults=faults, answer=model) as server:
        result, ctx, stats = run_stage(records, tmp_path, hotel_db_path, llm_config(server.base_url))
        log = server.log
    # the run completes; every original is passed on, and derived records follow their parent
    originals = [r for r in result if r.lineage.parent_id is None]
    derived = {r.lineage.parent_id: r for r in result if r.lineage.parent_id is not None}
    assert [r.id for r in originals] == [r.id for r in records]
    st = stats
    outcomes = st["ops"]["rewrite_llm"]
    # each record is either augmented or kept with a reason, and the counts add up
    assert outcomes.get("added", 0) == len(derived) == sum(ctx.counts.added.values())
    assert sum(outcomes.values()) == len(records)
    assert all(k == "added" or k.startswith("kept:") for k in outcomes)

    turns_seen: Counter[str] = Counter()
    reasons_by_text: dict[str, str] = {}
    for line in (tmp_path / DISCARDED_FILE).read_text(encoding="utf-8").splitlines():
        item = json.loads(line)
        reasons_by_text[item["original"]] = item["reasons"][0]
    for rec in records:
        child = derived.get(rec.id)
        for turn in user_turns(rec.messages):
            # a permanent 400 is never answered, so the model recorded no intent for it
            expected = ("llm_http_4xx" if _h(turn.text) % 17 == 0
                        else model.intent.get(turn.text))
            turns_seen[expected or "missing"] += 1
            new_text = child.messages[turn.index].content if child is not None else turn.text
            if expected == "ok":
                assert new_text == "嗯，" + turn.text
            else:
                # a failing rewrite is discarded, the original kept, the reason recorded
                assert new_text == turn.text
                assert reasons_by_text[turn.text] == expected, turn.text
        if child is not None:
            assert child.lineage.extra["model"] == "fake-model"
            assert child.lineage.extra["prompt_hash"] == prompt_hash()
            assert child.lineage.ops[-1] == "rewrite_llm"
            assert child.lineage.group_id == rec.lineage.group_id and child.split == "train"
            assert child.lineage.extra["rewritten_turns"] == sorted(
                t.index for t in user_turns(rec.messages)
                if child.messages[t.index].content != t.text)
    # every kind of outcome really happened in this run
    assert {"ok", "slot_number_changed", "slot_facility_dropped", "slot_name_dropped",
            "llm_http_4xx"} <= set(turns_seen), turns_seen
    turn_stats = st["turns"]["rewrite_llm"]
    assert turn_stats["ok"] == turns_seen["ok"]
    for reason in ("slot_number_changed", "slot_facility_dropped", "slot_name_dropped",
                   "llm_http_4xx"):
        assert turn_stats[f"failed:{reason}"] == turns_seen[reason], reason

    # the client's stats are in the artifacts, and the faults were met and overcome
    stats = stats.artifacts["llm"]
    assert stats["items"] == stats["items_ok"] + stats["items_failed"]
    slot_reasons = {"slot_number_changed", "slot_facility_dropped", "slot_name_dropped"}
    assert set(stats["failures"]) == {"llm_http_4xx"} | slot_reasons
    # the slot check ran inside the client: failing rewrites were re-asked before they failed
    # (fewer re-asks than failures: a turn whose one re-ask went to a transient off-schema or
    # prose answer fails on the slot check without another)
    for reason in slot_reasons:
        assert stats["failures"][reason] == turn_stats[f"failed:{reason}"]
        assert 0 < stats["reasks"][reason] <= stats["failures"][reason]
    assert stats["retries"]["server_error"] and stats["retries"]["rate_limited"]
    assert stats["retries"]["connection"] and stats["reasks_total"] >= 2
    outcomes_seen = Counter(e.outcome for e in log)
    assert {"ok", "http_500", "rate_limited", "non_json", "dropped", "off_schema",
            "http_400"} <= set(outcomes_seen)


def test_requests_carry_the_prompt_and_json_mode(records: list[Conversation], hotel_db: HotelDB,
                                                 hotel_db_path: Path, tmp_path: Path) -> None:
    bodies: list[dict[str, Any]] = []
    model = Model([h.name for h in hotel_db.hotels])

    def answer(body: dict[str, Any]) -> str:
        bodies.append(body)
        return model(body)

    with FakeChatServer(answer=answer) as server:
        run_stage(records[:3], tmp_path, hotel_db_path, llm_config(server.base_url))
    assert bodies
    for body in bodies:
        system = body["messages"][0]
        assert system["role"] == "system" and system["content"].startswith(REWRITE_SYSTEM_PROMPT)
        assert '"rewrite"' in system["content"]  # the schema is appended by the client
        assert body["response_format"] == {"type": "json_object"}
        assert body["model"] == "fake-model"


def test_budget_exhaustion_keeps_records_with_a_reason(records: list[Conversation],
                                                       hotel_db: HotelDB, hotel_db_path: Path,
                                                       tmp_path: Path) -> None:
    model = Model([h.name for h in hotel_db.hotels])
    with FakeChatServer(answer=model) as server:
        result, ctx, stats = run_stage(records, tmp_path, hotel_db_path,
                                llm_config(server.base_url, budget_max_requests=6,
                                           max_concurrency=1))
        assert len(server.log) == 6
    outcomes = stats["ops"]["rewrite_llm"]
    assert outcomes["kept:llm_budget_exhausted"] > 15
    assert sum(outcomes.values()) == len(records)
    assert len(result) == len(records) + outcomes.get("added", 0)
    assert stats.artifacts["llm"]["failures"]["llm_budget_exhausted"] > 15


def test_timeouts_are_retried(records: list[Conversation], hotel_db: HotelDB,
                              hotel_db_path: Path, tmp_path: Path) -> None:
    model = Model([h.name for h in hotel_db.hotels])
    rec = records[-1]
    slow_turn = user_turns(rec.messages)[0].text

    def plan(info: RequestInfo) -> Fault | None:
        return Fault.slow(3) if info.first_user == slow_turn and info.item_attempt == 0 else None

    with FakeChatServer(answer=model, faults=plan) as server:
        _, ctx, stats = run_stage([rec], tmp_path, hotel_db_path,
                           llm_config(server.base_url, timeout_s=0.5))
        assert Counter(e.outcome for e in server.log)["slow"] == 1
    assert stats.artifacts["llm"]["retries"]["timeout"] == 1
    # no item failed on the transport; the other turns only fail the slot check, if at all
    assert not any(k.startswith("llm_") for k in stats.artifacts["llm"]["failures"])
    assert slow_turn in model.intent  # answered on the retry


def test_dry_run_sends_nothing(records: list[Conversation], hotel_db_path: Path,
                               tmp_path: Path) -> None:
    with FakeChatServer() as server:
        result, ctx, stats = run_stage(records[:5], tmp_path, hotel_db_path,
                                llm_config(server.base_url, dry_run=True))
        assert server.log == []
    assert stats["ops"]["rewrite_llm"] == {"kept:llm_dry_run": 5}
    assert stats.artifacts["llm"]["dry_run"]["requests"] > 0
    assert len(result) == 5


# -- kill midway, rerun -------------------------------------------------------------------------

K_ANSWERED = 12
# Server outcomes that deliver a chat completion to the client (rejected answers included).
ANSWERED = ("ok", "non_json", "off_schema")


def write_config(path: Path, lab_input: Path, db_path: Path, base_url: str) -> Path:
    cfg = {
        "name": "augment-resume",
        "seed": 3,
        "hotel_db": str(db_path),
        "llm": llm_config(base_url),
        "inputs": [{"reader": "lab_chatglm3", "path": str(lab_input)}],
        "stages": [{"name": "split", "ratios": [0.7, 0.15, 0.15]},
                   {"name": "augment", "ops": ["rewrite_llm", {"name": "closing", "share": 0.5}]},
                   "write"],
    }
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return path


def start(repo_root: Path, config: Path, out: Path, err: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "dataprep.cli", "run", str(config), "--out", str(out), "--quiet"],
        cwd=repo_root, stdout=subprocess.DEVNULL, stderr=err.open("wb"))


OUTPUT_FILES = ("train.jsonl", "dev.jsonl", "test.jsonl", "rejects.jsonl", DISCARDED_FILE)


def test_kill_midway_and_rerun(tmp_path: Path, repo_root: Path, lab_train_path: Path,
                               hotel_db: HotelDB, hotel_db_path: Path) -> None:
    lab_input = tmp_path / "lab.jsonl"
    lab_input.write_text("".join(
        lab_train_path.read_text(encoding="utf-8").splitlines(True)[:40]), encoding="utf-8")
    model = Model([h.name for h in hotel_db.hotels])
    out = tmp_path / "out"
    holding = True
    server = FakeChatServer(answer=model)

    def gate(info: RequestInfo) -> Fault | None:
        # After K answers, hold every new request open: the child is then killed with requests
        # in flight but with every answered request known (and cached), so "nothing answered is
        # sent again" can be checked exactly.
        if holding and server.outcomes()["ok"] >= K_ANSWERED:
            return Fault.hold(25)
        return faults(info)

    server.faults = gate
    with server:
        config = write_config(tmp_path / "run.yaml", lab_input, hotel_db_path, server.base_url)
        child = start(repo_root, config, out, tmp_path / "err1.txt")
        try:
            def settled(s: FakeChatServer) -> bool:
                log = s.log
                answered = sum(e.outcome == "ok" for e in log)
                # every chat completion received is cached, rejected ones included
                received = sum(e.outcome in ANSWERED for e in log)
                return (answered >= K_ANSWERED and not any(e.outcome == "pending" for e in log)
                        and any(e.outcome == "held" for e in log)
                        and count_answers(out / "llm_cache") == received)

            assert server.wait_until(settled, 40), (tmp_path / "err1.txt").read_text()
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=15)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert child.returncode != 0 and not (out / "manifest.json").exists()
        first_run = server.log
        answered_bodies = {e.body_hash for e in first_run if e.outcome in ANSWERED}
        # turns whose item finished: an answer that passed, or a rejected one re-asked and
        # answered again (max_reasks=1); a turn whose re-ask was held is resumed, not repeated
        ok_count = Counter(e.first_user for e in first_run if e.outcome == "ok")
        answered_turns = {t for t, n in ok_count.items() if model.intent.get(t) == "ok" or n >= 2}
        assert sum(ok_count.values()) >= K_ANSWERED and answered_turns

        holding = False
        child = start(repo_root, config, out, tmp_path / "err2.txt")
        assert child.wait(timeout=90) == 0, (tmp_path / "err2.txt").read_text()
        second_run = server.log[len(first_run):]

    # the rerun sent no request that had already succeeded, not even under another body
    assert second_run
    assert not answered_bodies & {e.body_hash for e in second_run}
    assert not answered_turns & {e.first_user for e in second_run}
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["artifacts"]["llm"]["cache_hits"] >= len(answered_turns)

    # an uninterrupted run on a fresh server and cache gives byte-identical outputs
    ref = tmp_path / "reference"
    with FakeChatServer(answer=Model([h.name for h in hotel_db.hotels]), faults=faults) as srv:
        config = write_config(tmp_path / "ref.yaml", lab_input, hotel_db_path, srv.base_url)
        child = start(repo_root, config, ref, tmp_path / "err3.txt")
        assert child.wait(timeout=90) == 0, (tmp_path / "err3.txt").read_text()
    for name in OUTPUT_FILES:
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    ref_manifest = json.loads((ref / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["counts"] == ref_manifest["counts"]
    assert manifest["stage_stats"]["augment"] == ref_manifest["stage_stats"]["augment"]

    # the run completed with every record augmented or kept with a reason, counts adding up
    counts = manifest["counts"]
    assert counts["input"] - sum(counts["rejected"].values()) - sum(counts["removed"].values()) \
        + counts["added"] == counts["train"] + counts["dev"] + counts["test"]
    ops = manifest["stage_stats"]["augment"]["ops"]
    in_scope = manifest["stage_stats"]["augment"]["in_scope"]
    assert sum(ops["rewrite_llm"].values()) == in_scope
    assert ops["rewrite_llm"].get("added", 0) == counts["added_by_op"].get("rewrite_llm", 0) > 0
    assert any(k.startswith("kept:") for k in ops["rewrite_llm"])


# -- the slot check inside the client's re-ask loop -------------------------------------------

def test_a_rewrite_failing_the_slot_check_is_reasked(records: list[Conversation],
                                                     hotel_db_path: Path, tmp_path: Path) -> None:
    # A record with exactly one user turn that states a price: the fake model changes that
    # number on its first answer and gets it right once told why.
    def priced(text: str) -> bool:
        return re.search(r"\d+元", text) is not None

    rec = next(r for r in records
               if sum(priced(t.text) for t in user_turns(r.messages)) == 1)
    bodies: list[dict[str, Any]] = []

    def answer(body: dict[str, Any]) -> str:
        bodies.append(body)
        text = first_user_message(body)
        first_try = len(body["messages"]) == 2  # system + user: no correction yet
        if first_try and priced(text):
            number = re.search(r"\d+(?=元)", text)
            assert number is not None
            text = text[: number.start()] + str(int(number.group()) + 100) + text[number.end():]
        return json.dumps({"rewrite": "嗯，" + text}, ensure_ascii=False)

    with FakeChatServer(answer=answer) as server:
        result, ctx, stage_stats = run_stage([rec], tmp_path, hotel_db_path,
                                             llm_config(server.base_url))
    [child] = [r for r in result if r.lineage.parent_id == rec.id]
    for turn in user_turns(rec.messages):
        assert child.messages[turn.index].content == "嗯，" + turn.text  # the corrected rewrite
    stats = stage_stats.artifacts["llm"]
    assert stats["reasks"] == {"slot_number_changed": 1} and stats["reasks_total"] == 1
    assert stats["failures"] == {} and stats["items_ok"] == stats["items"]
    assert stage_stats["turns"]["rewrite_llm"] == {"ok": len(user_turns(rec.messages))}
    # the re-ask carried the rejected answer and the reason back to the model
    [reask] = [b for b in bodies if len(b["messages"]) > 2]
    assert "slot_number_changed" in reask["messages"][-1]["content"]
    assert not (tmp_path / DISCARDED_FILE).read_text(encoding="utf-8")


# -- runs that must not end as a quiet success ------------------------------------------------

def _cli_run(tmp_path: Path, lab_train_path: Path, db_path: Path, base_url: str,
             capsys: pytest.CaptureFixture[str]) -> tuple[int, str, Path]:
    from dataprep.cli import main

    lab_input = tmp_path / "lab.jsonl"
    lab_input.write_text("".join(
        lab_train_path.read_text(encoding="utf-8").splitlines(True)[:12]), encoding="utf-8")
    config = write_config(tmp_path / "run.yaml", lab_input, db_path, base_url)
    out = tmp_path / "out"
    code = main(["run", str(config), "--out", str(out), "--quiet"])
    return code, capsys.readouterr().err, out


def test_a_refused_key_stops_the_run_early(tmp_path: Path, lab_train_path: Path,
                                           hotel_db_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-this-key-is-revoked-000")
    with FakeChatServer(api_key="sk-the-right-key-123456") as server:
        code, err, out = _cli_run(tmp_path, lab_train_path, hotel_db_path, server.base_url,
                                  capsys)
        sent = len(server.log)
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "refused authentication on 3 requests in a row (Error code: 401" in err
    assert "sk-this-key-is-revoked" not in err
    # stopped at the third refusal, give or take the requests already in flight (concurrency 4)
    assert 3 <= sent <= 3 + 3
    assert not (out / "manifest.json").exists()


def test_a_run_whose_llm_requests_all_fail_exits_1(tmp_path: Path, lab_train_path: Path,
                                                   hotel_db_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    with FakeChatServer(faults=lambda info: Fault.server_error(500)) as server:
        code, err, out = _cli_run(tmp_path, lab_train_path, hotel_db_path, server.base_url,
                                  capsys)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    llm = manifest["artifacts"]["llm"]
    assert llm["all_failed"] and llm["items"] > 0 and llm["items_ok"] == 0
    assert code == 1
    assert f"all {llm['items']} LLM requests failed (llm_server_error_exhausted " in err
    assert "Traceback" not in err
    # the splits are still complete: the originals are all there, nothing was added by the LLM
    assert manifest["counts"]["added_by_op"].get("rewrite_llm", 0) == 0


def test_a_corrupt_llm_cache_is_one_line(tmp_path: Path, lab_train_path: Path,
                                         hotel_db_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "out" / "llm_cache" / "llm_cache.sqlite3"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"\x00garbage, not sqlite\n" * 100)
    with FakeChatServer() as server:
        code, err, _ = _cli_run(tmp_path, lab_train_path, hotel_db_path, server.base_url, capsys)
        assert server.log == []
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert str(cache) in err and "not an sqlite file" in err
