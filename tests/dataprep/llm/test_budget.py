"""Usage and cost accounting, the budget cap, and dry-run estimates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dataprep.llm import LLMClient, LLMConfig, LLMRequest
from dataprep.llm.budget import (
    BudgetMeter,
    Usage,
    estimate_dry_run,
    estimate_prompt_tokens,
    estimate_tokens,
)
from tests.support.fake_chat_server import FakeChatServer

# With these prices one token costs exactly 1, and the fake server charges every "第i句" request
# 2 prompt tokens (3 characters) + 2 completion tokens (the 3 characters reversed): 4 per request.
UNIT_PRICES = {"price_per_1k_prompt": 1000.0, "price_per_1k_completion": 1000.0}


def config(server: FakeChatServer | None, **overrides: Any) -> LLMConfig:
    values: dict[str, Any] = {
        "model": "fake-model",
        "base_url": server.base_url if server else "https://api.example.invalid/v1",
        "timeout_s": 2,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.02,
        "max_concurrency": 1,
    }
    values.update(overrides)
    return LLMConfig(**values)


def requests(n: int, start: int = 0) -> list[LLMRequest]:
    return [LLMRequest(f"r{i}", [{"role": "user", "content": f"第{i}句"}]) for i in range(start, n)]


def test_token_estimates_follow_the_documented_rule() -> None:
    assert estimate_tokens("今天天气很好") == 4  # ceil(6 / 1.5)
    assert estimate_tokens("今天天气很好啊") == 5  # ceil(7 / 1.5)
    assert estimate_tokens("abcd", chars_per_token=4) == 1
    messages = [{"role": "system", "content": "改写"}, {"role": "user", "content": "今天天气很好"}]
    assert estimate_prompt_tokens(messages) == (2 + 4) + (4 + 4)
    with pytest.raises(ValueError, match="chars_per_token"):
        estimate_tokens("x", chars_per_token=0)


def test_meter_costs_and_caps() -> None:
    meter = BudgetMeter(price_per_1k_prompt=0.5, price_per_1k_completion=1.5, max_tokens=3000)
    assert meter.try_start()
    meter.record(Usage(1000, 1000))
    assert meter.cost == 2.0 and meter.total_tokens == 2000 and meter.exhausted() is None
    assert meter.try_start()
    meter.record(Usage(500, 500, estimated=True))
    assert meter.exhausted() == "tokens" and not meter.try_start()
    snapshot = meter.snapshot()
    assert snapshot["requests_started"] == 2 and snapshot["cost"] == 3.0
    assert snapshot["responses_with_estimated_usage"] == 1
    assert snapshot["exhausted"] == "tokens"
    assert Usage(1, 2) + Usage(3, 4, estimated=True) == Usage(4, 6, estimated=True)


def test_request_cap_is_exact_and_the_rest_is_kept_with_a_reason() -> None:
    with FakeChatServer() as server:
        with LLMClient(config(server, budget_max_requests=5, max_concurrency=4)) as client:
            results = client.complete_many_sync(requests(12))
            stats = client.stats
        assert len(server.log) == 5
    assert sum(r.ok for r in results) == 5
    assert [r.reason for r in results if not r.ok] == ["llm_budget_exhausted"] * 7
    assert stats["failures"] == {"llm_budget_exhausted": 7}
    assert stats["items_ok"] + stats["items_failed"] == 12
    assert stats["budget"]["exhausted"] == "requests"


@pytest.mark.parametrize(
    "cap", [{"budget_max_cost": 10.0}, {"budget_max_tokens": 10}], ids=["cost", "tokens"]
)
def test_cost_and_token_caps_stop_new_requests(cap: dict[str, Any]) -> None:
    with FakeChatServer() as server:
        with LLMClient(config(server, **UNIT_PRICES, **cap)) as client:
            results = client.complete_many_sync(requests(6))
            stats = client.stats
        # 4 per request: after 2 requests 8 < 10 so a 3rd starts; after it 12 >= 10, stop.
        assert len(server.log) == 3
    assert [r.ok for r in results] == [True] * 3 + [False] * 3
    assert stats["cost"] == 12.0 and stats["total_tokens"] == 12
    assert {r.reason for r in results[3:]} == {"llm_budget_exhausted"}
    assert "budget cap on" in results[3].detail


def test_requests_in_flight_when_the_cap_is_hit_still_finish() -> None:
    with FakeChatServer(latency_s=0.1) as server:
        cfg = config(server, **UNIT_PRICES, budget_max_cost=10.0, max_concurrency=4)
        with LLMClient(cfg) as client:
            results = client.complete_many_sync(requests(8))
            stats = client.stats
        sent = len(server.log)
    # The first 4 start together, before any cost is known. Each finished one (4 each) lets
    # another start while the total is below 10; none is cut off. So the cap (reached after 3
    # requests) is overshot by at most the max_concurrency - 1 requests still in flight.
    assert 4 <= sent <= 3 + (4 - 1)
    assert sum(r.ok for r in results) == sent
    assert [r.reason for r in results if not r.ok] == ["llm_budget_exhausted"] * (8 - sent)
    assert stats["cost"] == 4.0 * sent and stats["budget"]["exhausted"] == "cost"


def test_cost_is_priced_from_reported_usage() -> None:
    with FakeChatServer() as server:
        cfg = config(server, price_per_1k_prompt=0.3, price_per_1k_completion=0.9)
        with LLMClient(cfg) as client:
            results = client.complete_many_sync(requests(3))
            stats = client.stats
    assert [r.usage for r in results] == [Usage(2, 2)] * 3
    assert stats["prompt_tokens"] == 6 and stats["completion_tokens"] == 6
    assert stats["cost"] == pytest.approx((6 * 0.3 + 6 * 0.9) / 1000)


def test_dry_run_estimates_without_any_request_and_counts_cache_hits(tmp_path: Path) -> None:
    with FakeChatServer() as server:
        with LLMClient(config(server, cache_dir=str(tmp_path))) as client:
            client.complete_many_sync(requests(4))  # r0..r3 are now cached
        assert len(server.log) == 4
        dry = config(
            server,
            cache_dir=str(tmp_path),
            dry_run=True,
            expected_completion_tokens=50,
            price_per_1k_prompt=1.0,
            price_per_1k_completion=2.0,
        )
        with LLMClient(dry) as client:
            results = client.complete_many_sync(requests(8))
            stats = client.stats
        assert len(server.log) == 4  # nothing sent
    assert {r.reason for r in results} == {"llm_dry_run"} and len(results) == 8
    estimate = stats["dry_run"]
    # 4 uncached requests, each (ceil(3 / 1.5) + 4 overhead) prompt tokens and 50 completion
    assert estimate["items"] == 8 and estimate["cached"] == 4 and estimate["requests"] == 4
    assert estimate["prompt_tokens"] == 4 * 6 and estimate["completion_tokens"] == 4 * 50
    assert estimate["cost"] == pytest.approx((24 * 1.0 + 200 * 2.0) / 1000)
    assert estimate["within_budget"] is True
    assert stats["requests_sent"] == 0 and stats["cost"] == 0


def test_dry_run_needs_no_key_uses_max_tokens_and_flags_an_exceeded_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cfg = config(
        None,  # a remote endpoint that does not exist: any connection attempt would fail
        dry_run=True,
        max_tokens=100,
        price_per_1k_prompt=1.0,
        price_per_1k_completion=1.0,
        budget_max_cost=0.5,
    )
    with LLMClient(cfg) as client:
        estimate = client.estimate(requests(10))
        results = client.complete_many_sync(requests(10))
    assert estimate.requests == 10 and estimate.completion_tokens == 1000
    assert estimate.max_requests == 10 * 3  # default max_reasks=2
    assert estimate.cost == pytest.approx((60 + 1000) / 1000)
    assert estimate.within_budget is False
    assert all(r.reason == "llm_dry_run" for r in results)


def test_estimate_dry_run_function() -> None:
    meter = BudgetMeter(price_per_1k_prompt=2.0, max_requests=1)
    messages = [{"role": "user", "content": "你好"}]
    est = estimate_dry_run([(messages, False, 10), (messages, True, 10)], meter=meter)
    assert (est.items, est.cached, est.requests) == (2, 1, 1)
    assert est.total_tokens == 6 + 10 and est.cost == pytest.approx(6 * 2.0 / 1000)
    assert est.within_budget and est.to_dict()["total_tokens"] == 16
