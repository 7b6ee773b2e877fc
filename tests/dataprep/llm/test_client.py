"""The real ``openai`` client over HTTP against the fake server on 127.0.0.1, with faults."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import random
from collections import Counter
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

from dataprep.llm import (
    REASONS,
    LLMAuthError,
    LLMClient,
    LLMConfig,
    LLMRequest,
    MissingAPIKeyError,
    OutputRejected,
    extract_json,
    redact,
    sdk_debug_logging,
)
from dataprep.llm.budget import estimate_prompt_tokens, estimate_tokens
from dataprep.llm.transport import Transport, backoff_delay, parse_retry_after
from tests.support.fake_chat_server import FakeChatServer, Fault, RequestInfo

SCHEMA = {
    "type": "object",
    "required": ["text", "source_chars"],
    "properties": {"text": {"type": "string"}, "source_chars": {"type": "integer"}},
}
KEY = "sk-test-0123456789abcdefSECRET"


def fast_config(server: FakeChatServer, **overrides: Any) -> LLMConfig:
    """Small timeouts and backoff so that fault tests take fractions of a second."""
    values: dict[str, Any] = {
        "model": "fake-model",
        "base_url": server.base_url,
        # 1 s, not less: a loaded 2-core CI machine must never time out a normal request here
        "timeout_s": 1.0,
        "max_retries": 2,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.05,
        "jitter_seed": 0,
        "max_concurrency": 8,
        "max_reasks": 2,
    }
    values.update(overrides)
    return LLMConfig(**values)


def request(rid: str, text: str, schema: dict[str, Any] | None = SCHEMA) -> LLMRequest:
    return LLMRequest(rid, [{"role": "user", "content": text}], schema=schema)


# ---------------------------------------------------------------------------------------------
# The chaos run: every fault the issue lists, in one run.
# ---------------------------------------------------------------------------------------------
PAST_DATE = format_datetime(datetime.now(timezone.utc) - timedelta(hours=1), usegmt=True)

# category -> (fault for the item's n-th request or None, expected reason, expected retries by
# cause, expected re-asks)
CATEGORIES: dict[str, tuple[Any, str | None, dict[str, int], int]] = {
    "plain": (lambda n: None, None, {}, 0),
    "r429": (
        lambda n: Fault.rate_limited("0.05") if n == 0 else None,
        None,
        {"rate_limited": 1},
        0,
    ),
    "r429date": (
        lambda n: Fault.rate_limited(PAST_DATE) if n == 0 else None,
        None,
        {"rate_limited": 1},
        0,
    ),
    "e500": (lambda n: Fault.server_error(500) if n == 0 else None, None, {"server_error": 1}, 0),
    "e503x2": (lambda n: Fault.server_error(503) if n < 2 else None, None, {"server_error": 2}, 0),
    "slow": (lambda n: Fault.slow(2.5) if n == 0 else None, None, {"timeout": 1}, 0),
    "malformed": (
        lambda n: Fault.malformed_body() if n == 0 else None,
        None,
        {"bad_response": 1},
        0,
    ),
    "drop": (lambda n: Fault.drop() if n == 0 else None, None, {"connection": 1}, 0),
    "nonjson": (lambda n: Fault.non_json() if n == 0 else None, None, {}, 1),
    "offschema": (lambda n: Fault.off_schema() if n == 0 else None, None, {}, 1),
    "fenced": (
        lambda n: Fault.content('好的：\n```json\n{"text": "围栏", "source_chars": 2}\n```'),
        None,
        {},
        0,
    ),
    "always429": (
        lambda n: Fault.rate_limited("0"),
        "llm_rate_limited_exhausted",
        {"rate_limited": 2},
        0,
    ),
    "always500": (
        lambda n: Fault.server_error(502),
        "llm_server_error_exhausted",
        {"server_error": 2},
        0,
    ),
    "alwaysslow": (lambda n: Fault.slow(2.5), "llm_timeout_exhausted", {"timeout": 2}, 0),
    "alwaysdrop": (lambda n: Fault.drop(), "llm_connection_exhausted", {"connection": 2}, 0),
    "alwaysmalformed": (
        lambda n: Fault.malformed_body(),
        "llm_bad_response_exhausted",
        {"bad_response": 2},
        0,
    ),
    "alwaysoff": (lambda n: Fault.off_schema(), "llm_off_schema", {}, 2),
    "alwaysnonjson": (lambda n: Fault.non_json(), "llm_malformed_json", {}, 2),
    "bad400": (lambda n: Fault.http_error(400, "unsupported parameter"), "llm_http_4xx", {}, 0),
    "auth401": (lambda n: Fault.http_error(401, "no such key"), "llm_auth_failed", {}, 0),
}


def chaos_plan(info: RequestInfo) -> Fault | None:
    category = info.first_user.split("|")[0]
    return CATEGORIES[category][0](info.item_attempt)


def test_chaos_run_completes_and_counts_add_up() -> None:
    categories = list(CATEGORIES)
    items = [(f"{cat}-{i}", f"{cat}|第{i}条：今天天气很好") for i in range(2) for cat in categories]
    with FakeChatServer(faults=chaos_plan) as server:
        config = fast_config(server, price_per_1k_prompt=0.5, price_per_1k_completion=2.0)
        with LLMClient(config, api_key=KEY) as client:
            results = client.complete_many_sync([request(rid, text) for rid, text in items])
            stats = client.stats
        log = server.log

    # one result per item, in input order, each either ok or failed with a known reason
    assert [r.id for r in results] == [rid for rid, _ in items]
    for result, (_, text) in zip(results, items, strict=True):
        category = text.split("|")[0]
        _, reason, retries, reasks = CATEGORIES[category]
        assert result.reason == reason, (result.id, result.detail)
        assert result.ok is (reason is None)
        assert result.reasks == reasks, result.id
        assert result.attempts == 1 + sum(retries.values()) + reasks, result.id
        if result.ok:
            expected = "围栏" if category == "fenced" else text[::-1]
            assert result.parsed["text"] == expected
            assert not result.from_cache
        else:
            assert result.reason in REASONS and result.text is None and result.detail

    # counts add up: items, failures by reason, retries by cause, re-asks, requests
    n_fail = sum(1 for r in results if not r.ok)
    assert stats["items"] == len(items) == stats["items_ok"] + stats["items_failed"]
    assert stats["items_failed"] == n_fail == sum(stats["failures"].values())
    assert stats["failures"] == dict(Counter(r.reason for r in results if not r.ok))
    expected_retries: Counter[str] = Counter()
    for _, text in items:
        expected_retries.update(CATEGORIES[text.split("|")[0]][2])
    assert {k: v for k, v in stats["retries"].items() if v} == dict(expected_retries)
    assert stats["reasks_total"] == sum(r.reasks for r in results)
    assert stats["reasks"] == {"llm_malformed_json": 6, "llm_off_schema": 6}
    assert stats["requests_sent"] == sum(r.attempts for r in results) == len(log)
    # responses = parsed completions: 200s minus timed-out and unreadable ones
    unread = ("slow", "malformed_body")
    assert stats["responses"] == sum(1 for e in log if e.status == 200 and e.outcome not in unread)

    # tokens and cost come from the server's usage blocks
    assert stats["prompt_tokens"] == sum(r.usage.prompt_tokens for r in results)
    assert stats["completion_tokens"] == sum(r.usage.completion_tokens for r in results)
    assert stats["prompt_tokens"] > 0
    expected_cost = (stats["prompt_tokens"] * 0.5 + stats["completion_tokens"] * 2.0) / 1000
    assert stats["cost"] == pytest.approx(expected_cost)
    json.dumps(stats)  # the manifest must be able to store it


def test_retry_after_seconds_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    # The wait the client chose, read from the client rather than timed with a clock.
    waits: list[float] = []
    choose = Transport._retry_delay

    def recorded(self: Transport, retry: int, wait_hint: float | None) -> float:
        waits.append(choose(self, retry, wait_hint))
        return waits[-1]

    monkeypatch.setattr(Transport, "_retry_delay", recorded)
    plan = {0: Fault.rate_limited("0.4")}
    with FakeChatServer(faults=plan) as server:
        config = fast_config(server, backoff_base_s=0.001, backoff_max_s=0.002)
        with LLMClient(config) as client:
            [result] = client.complete_many_sync([request("a", "你好")])
        first, second = server.log
    assert result.ok and result.attempts == 2
    assert (first.outcome, second.outcome) == ("rate_limited", "ok")
    # The header's 0.4 s plus at most backoff_base_s of jitter; without the header the backoff
    # would have waited at most 2 ms.
    assert len(waits) == 1 and 0.4 <= waits[0] <= 0.401


def test_client_errors_are_never_retried() -> None:
    with FakeChatServer(faults=lambda info: Fault.http_error(404, "model not found")) as server:
        with LLMClient(fast_config(server, max_retries=5)) as client:
            [result] = client.complete_many_sync([request("a", "你好")])
        assert len(server.log) == 1
    assert (result.ok, result.reason, result.attempts) == (False, "llm_http_4xx", 1)
    assert "404" in result.detail and "model not found" in result.detail


def test_concurrency_is_bounded_and_used() -> None:
    with FakeChatServer(latency_s=0.1) as server:
        with LLMClient(fast_config(server, max_concurrency=3, timeout_s=2)) as client:
            results = client.complete_many_sync([request(str(i), f"第{i}条") for i in range(12)])
        log = server.log
    assert all(r.ok for r in results)
    # A handler stamps ``finished`` after its write returns, by which time the client may have
    # sent the next request; trimming 20 ms off each 100 ms interval removes that false overlap.
    events = sorted([(e.started, 1) for e in log] + [(e.finished - 0.02, -1) for e in log])
    peak = current = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    assert peak == 3


def test_validator_rejection_is_reasked_with_feedback() -> None:
    bodies: list[dict[str, Any]] = []

    def answer(body: dict[str, Any]) -> str:
        bodies.append(body)
        # first answer too short; after the correction the model gets it right
        return "短" if len(body["messages"]) == 1 else "这是一个足够长的回答"

    def at_least_five_chars(text: str) -> str:
        if len(text) < 5:
            raise OutputRejected(f"the answer has {len(text)} characters; write at least 5")
        return text.upper()

    with FakeChatServer(answer=answer) as server, LLMClient(fast_config(server)) as client:
        [result] = client.complete_many_sync(
            [request("a", "写一句话", schema=None)], validator=at_least_five_chars
        )
        stats = client.stats
    assert result.ok and result.reasks == 1 and result.attempts == 2
    assert result.text == "这是一个足够长的回答" and result.parsed == "这是一个足够长的回答".upper()
    reask = bodies[1]["messages"]
    assert reask[0] == {"role": "user", "content": "写一句话"}
    assert reask[1] == {"role": "assistant", "content": "短"}
    assert reask[2]["role"] == "user" and "write at least 5" in reask[2]["content"]
    assert stats["reasks"] == {"llm_invalid_output": 1}


def test_value_error_from_validator_counts_as_invalid_output() -> None:
    def never(text: str) -> None:
        raise ValueError("not good enough")

    with FakeChatServer() as server, LLMClient(fast_config(server, max_reasks=1)) as client:
        [result] = client.complete_many_sync([request("a", "你好", schema=None)], validator=never)
    assert (result.ok, result.reason, result.reasks, result.attempts) == (
        False,
        "llm_invalid_output",
        1,
        2,
    )
    assert "ValueError: not good enough" in result.detail


def test_a_validator_tripping_over_the_answer_shape_is_a_rejection() -> None:
    def needs_key(value: dict[str, Any]) -> None:
        value["missing"]  # KeyError: the answer has another shape

    with FakeChatServer() as server, LLMClient(fast_config(server, max_reasks=0)) as client:
        [result] = client.complete_many_sync([request("a", "你好")], validator=needs_key)
    assert (result.ok, result.reason) == (False, "llm_invalid_output")
    assert "KeyError" in result.detail


def test_a_validator_bug_stops_the_run() -> None:
    def buggy(value: Any) -> None:
        raise RuntimeError("bug in the stage")

    with (
        FakeChatServer() as server,
        LLMClient(fast_config(server)) as client,
        pytest.raises(RuntimeError, match="bug in the stage"),
    ):
        client.complete_many_sync([request("a", "你好")], validator=buggy)


def test_request_body_carries_sampling_params_schema_hint_and_json_mode() -> None:
    seen: list[dict[str, Any]] = []

    def plan(info: RequestInfo) -> None:
        seen.append(info.body)

    with FakeChatServer(faults=plan) as server:
        config = fast_config(server, temperature=0.2, extra_params={"top_k": 5, "seed": 7})
        with LLMClient(config) as client:
            client.complete_many_sync(
                [
                    LLMRequest(
                        "a",
                        [
                            {"role": "system", "content": "你是改写助手"},
                            {"role": "user", "content": "x"},
                        ],
                        params={"stop": ["\n\n"], "max_tokens": None},
                        schema=SCHEMA,
                    )
                ]
            )
        with LLMClient(fast_config(server, json_mode=False, schema_in_prompt=False)) as client:
            client.complete_many_sync([request("b", "y")])
    with_schema, plain_mode = seen[:2]  # b is re-asked: the fake answers it in plain text
    assert with_schema["temperature"] == 0.2 and with_schema["seed"] == 7
    assert with_schema["top_k"] == 5  # not an SDK keyword: sent through extra_body
    assert with_schema["stop"] == ["\n\n"]
    assert "max_tokens" not in with_schema  # None removes the config default
    assert with_schema["response_format"] == {"type": "json_object"}
    system = with_schema["messages"][0]["content"]
    assert system.startswith("你是改写助手") and '"required": ["text", "source_chars"]' in system
    assert "response_format" not in plain_mode
    assert plain_mode["messages"] == [{"role": "user", "content": "y"}]


def test_usage_is_estimated_when_the_server_omits_it() -> None:
    with (
        FakeChatServer(include_usage=False) as server,
        LLMClient(fast_config(server, price_per_1k_prompt=1.0)) as client,
    ):
        [result] = client.complete_many_sync([request("a", "今天天气很好", schema=None)])
        stats = client.stats
    assert result.ok and result.usage.estimated
    assert result.usage.prompt_tokens == estimate_prompt_tokens(
        [{"role": "user", "content": "今天天气很好"}]
    )
    assert result.usage.completion_tokens == estimate_tokens("好很气天天今") == 4
    assert stats["responses_with_estimated_usage"] == 1
    assert stats["cost"] == pytest.approx(result.usage.prompt_tokens / 1000)


def test_without_a_cache_identical_requests_are_each_sent() -> None:
    with FakeChatServer(latency_s=0.05) as server:
        with LLMClient(fast_config(server, cache_dir=None)) as client:
            results = client.complete_many_sync([request("a", "同一句"), request("b", "同一句")])
        assert len(server.log) == 2  # nothing to share the answer through
    assert [r.from_cache for r in results] == [False, False]


def test_identical_requests_share_one_answer_through_the_cache(tmp_path: Path) -> None:
    with FakeChatServer(latency_s=0.05) as server:
        with LLMClient(fast_config(server, cache_dir=str(tmp_path))) as client:
            results = client.complete_many_sync([request("a", "同一句"), request("b", "同一句")])
        assert len(server.log) == 1
    assert [r.ok for r in results] == [True, True]
    assert results[0].parsed == results[1].parsed
    assert sorted(r.from_cache for r in results) == [False, True]


def test_openai_base_url_and_key_env_are_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeChatServer(api_key=KEY) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("DATAPREP_TEST_KEY", KEY)
        config = LLMConfig(model="m", api_key_env="DATAPREP_TEST_KEY", timeout_s=2)
        with LLMClient(config) as client:
            [result] = client.complete_many_sync([request("a", "你好")])
        assert server.outcomes() == Counter({"ok": 1})
    assert result.ok


def test_missing_key_for_a_remote_endpoint_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DATAPREP_TEST_KEY", raising=False)
    config = LLMConfig(
        model="deepseek-chat",
        base_url="https://api.deepseek.com/v1",
        api_key_env="DATAPREP_TEST_KEY",
    )
    with pytest.raises(MissingAPIKeyError, match="DATAPREP_TEST_KEY is not set; export it"):
        LLMClient(config)
    # a local server needs no key, and neither does a dry run
    LLMClient(LLMConfig(model="m", base_url="http://127.0.0.1:9/v1")).close()
    LLMClient(LLMConfig(model="m", base_url="https://api.deepseek.com/v1", dry_run=True)).close()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model": ""}, "model is empty; set it"),
        ({"api_key_env": "sk-abcdef123456"}, "NAME of an environment variable"),
        ({"base_url": "api.deepseek.com"}, "not an http"),
        ({"max_concurrency": 0}, "use 1 to send requests one at a time"),
        ({"backoff_base_s": 2.0, "backoff_max_s": 1.0}, "raise backoff_max_s"),
        ({"budget_max_cost": 1.0}, "both prices are 0"),
        ({"dry_run": True, "max_tokens": None}, "set max_tokens or expected_completion_tokens"),
        ({"extra_params": {"stream": True}}, "may not set"),
        ({"temperature": 3.0}, r"\[0, 2\]"),
        ({"max_retries": -1}, ">= 0"),
        ({"max_auth_failures": 0}, "1 stops at the first refused key"),
    ],
)
def test_config_rejects_bad_combinations(overrides: dict[str, Any], message: str) -> None:
    values = {"model": "m", **overrides}
    with pytest.raises(ValueError, match=message) as info:
        LLMConfig(**values)
    assert "sk-abcdef123456" not in str(info.value)


def test_config_from_mapping_names_unknown_keys() -> None:
    with pytest.raises(ValueError, match=r"unknown llm config key\(s\) \['modle'\]; available"):
        LLMConfig.from_mapping({"modle": "m"})


def test_bad_requests_are_rejected_before_any_call() -> None:
    with pytest.raises(ValueError, match="messages is empty"):
        LLMRequest("a", [])
    with pytest.raises(ValueError, match="not a valid JSON Schema"):
        LLMRequest("a", [{"role": "user", "content": "x"}], schema={"type": "no-such-type"})
    with pytest.raises(ValueError, match="params may not set"):
        LLMRequest("a", [{"role": "user", "content": "x"}], params={"model": "other"})
    client = LLMClient(LLMConfig(model="m", base_url="http://127.0.0.1:9/v1"))
    with pytest.raises(ValueError, match="duplicate request id 'a'"):
        client.complete_many_sync([request("a", "x"), request("a", "y")])
    client.close()


def test_sync_wrapper_refuses_to_nest_event_loops() -> None:
    client = LLMClient(LLMConfig(model="m", base_url="http://127.0.0.1:9/v1"))

    async def inside() -> None:
        client.complete_many_sync([request("a", "x")])

    with pytest.raises(RuntimeError, match="await client.complete_many"):
        asyncio.run(inside())
    client.close()


# ---------------------------------------------------------------------------------------------
# Secret hygiene
# ---------------------------------------------------------------------------------------------
def test_api_key_never_appears_in_logs_results_stats_cache_or_errors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # everything, the SDK and HTTP layers included
    wrong_key = "sk-wrong-key-9876543210-SECRET"
    outputs: list[str] = []
    sdk_debug = io.StringIO()
    with FakeChatServer(api_key=KEY) as server:
        # 1. a good run: cache written, stats produced
        with LLMClient(fast_config(server, cache_dir=str(tmp_path)), api_key=KEY) as client:
            results = client.complete_many_sync([request("a", "你好"), request("b", "再见")])
            outputs += [repr(client), repr(client.config), json.dumps(client.stats)]
            # a record on one of our own loggers is masked, whoever formats it
            logging.getLogger("dataprep.llm.client").warning("header was Bearer %s", KEY)
        assert all(r.ok for r in results)
        # 2. a provider that echoes the wrong key back in its 401 message, with the SDK's own
        # debug logging turned on through our switch
        with (
            sdk_debug_logging(sdk_debug),
            LLMClient(fast_config(server), api_key=wrong_key) as client,
        ):
            [failed] = client.complete_many_sync([request("c", "你好")])
            logging.getLogger("dataprep.test").error("detail: %s", failed.detail)
            outputs += [json.dumps(failed.to_dict()), json.dumps(client.stats)]
    assert failed.reason == "llm_auth_failed"
    assert "Incorrect API key provided: ***" in failed.detail
    assert "HTTP Response: POST" in sdk_debug.getvalue()  # the SDK's debug lines did show
    outputs += [json.dumps(r.to_dict(), ensure_ascii=False) for r in results]
    outputs += [caplog.text, sdk_debug.getvalue()]
    outputs += [record.getMessage() for record in caplog.records]
    cache_bytes = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert len(cache_bytes) > 0
    for secret in (KEY, wrong_key):
        assert secret.encode() not in cache_bytes
        for text in outputs:
            assert secret not in text
    assert "header was Bearer ***" in caplog.text


def test_other_libraries_log_records_are_left_alone() -> None:
    # Masking is scoped to our loggers: the process-wide record factory is not replaced.
    factory = logging.getLogRecordFactory()
    with LLMClient(LLMConfig(model="m", base_url="http://127.0.0.1:9/v1"), api_key=KEY):
        assert logging.getLogRecordFactory() is factory
        record = logging.getLogger("some.other.library").makeRecord(
            "some.other.library", logging.INFO, __file__, 1, "token %s", (KEY,), None
        )
        assert record.getMessage() == f"token {KEY}"


def test_redact_masks_only_real_secrets() -> None:
    assert redact("key=sk-abcdefgh1234 end", ["sk-abcdefgh1234"]) == "key=*** end"
    # short placeholders such as vLLM's EMPTY are not secrets; masking them would mangle logs
    assert redact("EMPTY response", ["EMPTY"]) == "EMPTY response"


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def test_extract_json_finds_the_object() -> None:
    assert extract_json('{"a": 1}') == {"a": 1}
    assert extract_json('好的：\n```json\n{"a": "中文"}\n```\n希望有帮助') == {"a": "中文"}
    assert extract_json("```\n[1, 2]\n```") == [1, 2]
    assert extract_json('结果如下 {"a": {"b": 2}} 以上。') == {"a": {"b": 2}}
    assert extract_json('先是坏的 {a: 1} 然后 {"a": 1}') == {"a": 1}
    with pytest.raises(ValueError, match="no JSON"):
        extract_json("没有任何 JSON")


def test_backoff_is_full_jitter_exponential_and_seedable() -> None:
    draws = [backoff_delay(k, 0.5, 4.0, random.Random(1)) for k in range(8)]
    assert draws == [backoff_delay(k, 0.5, 4.0, random.Random(1)) for k in range(8)]
    rng = random.Random(2)
    for k in range(10):
        ceiling = min(4.0, 0.5 * 2**k)
        samples = [backoff_delay(k, 0.5, 4.0, rng) for _ in range(200)]
        assert all(0 <= s <= ceiling for s in samples)
        assert max(samples) > 0.8 * ceiling  # the whole range is used, not a fixed delay
    assert backoff_delay(10_000, 0.5, 4.0, rng) <= 4.0  # no overflow for huge retry counts


def test_parse_retry_after_reads_seconds_ms_and_http_dates() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert parse_retry_after({"Retry-After": "3"}) == 3.0
    assert parse_retry_after({"retry-after": "1.5"}) == 1.5
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    date = format_datetime(now + timedelta(seconds=7), usegmt=True)
    assert parse_retry_after({"Retry-After": date}, now=now.timestamp()) == 7.0
    past = format_datetime(now - timedelta(seconds=7), usegmt=True)
    assert parse_retry_after({"Retry-After": past}, now=now.timestamp()) == 0.0
    assert parse_retry_after({"Retry-After": "soon"}) is None
    assert parse_retry_after({}) is None
    assert parse_retry_after({"Retry-After": "-4"}) == 0.0


def test_fake_server_serves_both_paths_and_404s_others() -> None:
    import http.client

    with FakeChatServer() as server:
        for path, status in [
            ("/v1/chat/completions", 200),
            ("/chat/completions", 200),
            ("/v1/completions", 404),
        ]:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
            body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "ab"}]})
            conn.request("POST", path, body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            payload = json.loads(response.read())
            conn.close()
            assert response.status == status, path
            if status == 200:
                assert payload["choices"][0]["message"]["content"] == "ba"
                assert payload["usage"]["total_tokens"] == 2
        # the server logs an outcome after the last byte is sent, so the client can be first
        assert server.wait_until(lambda s: all(e.outcome != "pending" for e in s.log), 10)
        assert [e.outcome for e in server.log] == ["ok", "ok"]


def test_cancellation_stops_in_flight_requests_promptly(tmp_path: Path) -> None:
    with FakeChatServer(faults=lambda info: Fault.hold(10)) as server:
        config = fast_config(server, timeout_s=20, cache_dir=str(tmp_path))
        with LLMClient(config) as client:

            async def main() -> None:
                task = asyncio.ensure_future(
                    client.complete_many([request(str(i), f"第{i}条") for i in range(4)])
                )
                assert await asyncio.to_thread(server.wait_until, lambda s: len(s.log) == 4, 5.0)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task

            asyncio.run(main())
            # Promptly: the client gave up while the server still held every request (each is
            # held for 10 s), instead of waiting for the answers.
            assert [e.finished for e in server.log] == [0.0] * 4
            assert client.cache is not None and client.cache.integrity_ok()
            assert len(client.cache) == 0


# ---------------------------------------------------------------------------------------------
# A refused key stops the run instead of failing every item one by one
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [401, 403])
def test_repeated_auth_failures_stop_the_run(status: int) -> None:
    plan = (lambda info: Fault.http_error(403, "forbidden")) if status == 403 else None
    with FakeChatServer(api_key=None if plan else KEY, faults=plan) as server:
        config = fast_config(server, max_concurrency=1, max_auth_failures=3)
        with (
            LLMClient(config, api_key="sk-wrong-key-0000000000") as client,
            pytest.raises(LLMAuthError) as info,
        ):
            client.complete_many_sync([request(f"r{i}", f"第{i}句") for i in range(20)])
        assert len(server.log) == 3  # not 20: the run stopped at the third refusal
    message = str(info.value)
    assert f"refused authentication on 3 requests in a row (Error code: {status}" in message
    assert "llm.api_key_env" in message and "sk-wrong-key" not in message


def test_a_success_resets_the_auth_failure_count() -> None:
    # A flaky auth proxy that refuses now and then is not a wrong key: only a run of
    # consecutive refusals stops the run.
    def plan(info: RequestInfo) -> Fault | None:
        return Fault.http_error(401, "try again") if info.seq % 2 else None

    config_overrides = {"max_concurrency": 1, "max_auth_failures": 2}
    with FakeChatServer(faults=plan) as server, LLMClient(
        fast_config(server, **config_overrides)
    ) as client:
        results = client.complete_many_sync([request(f"r{i}", f"第{i}句") for i in range(6)])
        stats = client.stats
    assert len(results) == 6 and stats["failures"] == {"llm_auth_failed": 3}


def test_the_fake_server_ships_with_the_tests_not_the_package(repo_root: Path) -> None:
    # What setuptools packs into the wheel, from the project's own package selection.
    import tomllib
    from setuptools import find_packages

    pyproject = tomllib.loads((repo_root / "pyproject.toml").read_text(encoding="utf-8"))
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = find_packages(where=str(repo_root), include=include)
    assert "dataprep.llm" in packages
    assert not any(p.startswith("tests") for p in packages)
    shipped = [p.name for pkg in packages for p in (repo_root / pkg.replace(".", "/")).glob("*.py")]
    assert "fake_chat_server.py" not in shipped and "fake_server.py" not in shipped
