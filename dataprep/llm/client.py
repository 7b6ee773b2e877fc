"""Async chat-completions client for augmentation stages: runs many requests, each through the
cache, the transport (retries) and the re-ask loop (validation), within a budget.

Any OpenAI-compatible endpoint (OpenAI, DeepSeek, GLM, vLLM, Ollama), through the official
``openai`` package. A failed request never raises: it comes back ``ok=False`` with a snake_case
``reason``. Two things stop a call: ``LLMAuthError`` (the key is refused again and again) and
``CacheError`` (the cache cannot be read or written).

Example:
    >>> config = LLMConfig(model="glm-4-flash", base_url="https://open.bigmodel.cn/api/paas/v4",
    ...                    api_key_env="ZHIPUAI_API_KEY", cache_dir="work/llm_cache")
    >>> schema = {"type": "object", "required": ["text"],
    ...           "properties": {"text": {"type": "string"}}}
    >>> requests = [LLMRequest("r1", [{"role": "user", "content": "改写：今天天气很好"}],
    ...                        schema=schema)]
    >>> with LLMClient(config) as client:  # doctest: +SKIP
    ...     [result] = client.complete_many_sync(requests)
    ...     result.ok, result.parsed["text"], client.stats["cost"]
"""

from __future__ import annotations

import asyncio
import copy
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import openai

from dataprep.llm.answers import OutputRejected, ReasksExhausted, Validator, ask_until_valid
from dataprep.llm.budget import BudgetMeter, DryRunEstimate, Usage, estimate_dry_run
from dataprep.llm.cache import CachedAnswer, ResponseCache, cache_key
from dataprep.llm.config import NON_OUTPUT_PARAMS, LLMConfig, resolve_api_key
from dataprep.llm.items import LLMRequest, LLMResult, wire_request
from dataprep.llm.redaction import MASK, get_logger, redact, register_secret, unregister_secret
from dataprep.llm.transport import ItemFailed, Transport

__all__ = ["LLMClient", "combine_stats"]

log = get_logger(__name__)

# The SDK's own default, spelled out so that the cache key names the endpoint in every case.
DEFAULT_BASE_URL = "https://api.openai.com/v1"


@dataclass
class _ItemState:
    attempts: int = 0
    reasks: int = 0
    replayed: int = 0
    usage: Usage = field(default_factory=Usage)


@dataclass(frozen=True)
class _Prepared:
    request: LLMRequest
    messages: list[dict[str, Any]]
    params: dict[str, Any]
    key: str


class LLMClient:
    """Runs chat requests with bounded concurrency, retries, re-asks, a cache and a budget.

    The API key is read from ``os.environ[config.api_key_env]`` here (or passed as ``api_key``),
    kept private, masked in ``repr``, in errors and in this package's log records, and never
    written anywhere. For a loopback ``base_url`` (local vLLM, Ollama, a test server) a missing
    key is fine.

    The cache holds every chat completion received, keyed by the exact request (endpoint, model,
    messages with any re-ask turns, output parameters, schema). An item is replayed from it
    answer by answer, so a rerun sends no request that was already answered, and an item whose
    answers were all cached (accepted, or rejected until the re-asks ran out) sends nothing.

    One client may run several ``complete_many`` calls one after another (stats accumulate);
    run concurrent calls from one event loop only, not from several threads at once.

    Example:
        >>> with LLMClient(LLMConfig(model="m", base_url="http://127.0.0.1:8000/v1")) as client:
        ...     client.stats["requests_sent"]  # doctest: +SKIP
        0
    """

    def __init__(self, config: LLMConfig, *, api_key: str | None = None) -> None:
        self.config = config
        self.base_url = config.base_url or os.environ.get("OPENAI_BASE_URL") or None
        api_key = resolve_api_key(config, self.base_url, api_key)
        self._api_key = api_key
        register_secret(api_key)
        self._closed = False
        try:
            self.cache: ResponseCache | None = (
                ResponseCache(config.cache_dir) if config.cache_dir else None
            )
        except BaseException:
            self.close()
            raise
        self.meter = BudgetMeter(
            price_per_1k_prompt=config.price_per_1k_prompt,
            price_per_1k_completion=config.price_per_1k_completion,
            max_cost=config.budget_max_cost,
            max_tokens=config.budget_max_tokens,
            max_requests=config.budget_max_requests,
        )
        self.transport = Transport(config, self.meter)
        self._endpoint = (self.base_url or DEFAULT_BASE_URL).rstrip("/")
        self._items = 0
        self._items_ok = 0
        self._cache_hits = 0
        self._cache_replays = 0
        self._cache_writes = 0
        self._reasks: Counter[str] = Counter()
        self._failures: Counter[str] = Counter()
        self._dry_run: DryRunEstimate | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def close(self) -> None:
        """Close the cache and forget the key (idempotent)."""
        if self._closed:
            return
        self._closed = True
        cache = getattr(self, "cache", None)
        if cache is not None:
            cache.close()
        unregister_secret(self._api_key)

    def __enter__(self) -> LLMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> LLMClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        key = "unset" if self._api_key is None else MASK
        return f"LLMClient(model={self.config.model!r}, base_url={self.base_url!r}, api_key={key})"

    # -- stats ---------------------------------------------------------------------------------
    @property
    def stats(self) -> dict[str, Any]:
        """JSON-ready counters for the run manifest; cumulative over calls.

        ``items == items_ok + items_failed``; ``requests_sent`` counts every HTTP request (first
        tries, retries and re-asks); ``cache_hits`` counts items answered without a request,
        ``cache_replays`` every answer taken from the cache. Tokens and cost cover sent
        requests only.
        """
        budget = self.meter.snapshot()
        return {
            "model": self.config.model,
            "base_url": redact(self.base_url) if self.base_url else None,
            "items": self._items,
            "items_ok": self._items_ok,
            "items_failed": sum(self._failures.values()),
            # True when the run asked for answers and got none (every request 500, a budget of
            # zero...): the CLI makes it the exit status instead of a quiet run with no rewrites.
            "all_failed": self._items > 0 and self._items_ok == 0 and self._dry_run is None,
            "cache_hits": self._cache_hits,
            "cache_replays": self._cache_replays,
            "cache_writes": self._cache_writes,
            **self.transport.stats(),
            "reasks": dict(sorted(self._reasks.items())),
            "reasks_total": sum(self._reasks.values()),
            "failures": dict(sorted(self._failures.items())),
            "prompt_tokens": budget["prompt_tokens"],
            "completion_tokens": budget["completion_tokens"],
            "total_tokens": budget["total_tokens"],
            "responses_with_estimated_usage": budget["responses_with_estimated_usage"],
            "cost": budget["cost"],
            "budget": {"limits": budget["limits"], "exhausted": budget["exhausted"]},
            "dry_run": None if self._dry_run is None else self._dry_run.to_dict(),
        }

    # -- preparing requests --------------------------------------------------------------------
    def _key(self, messages: Sequence[Mapping[str, Any]], schema: Mapping[str, Any] | None,
             params: Mapping[str, Any]) -> str:
        output_params = {k: v for k, v in params.items() if k not in NON_OUTPUT_PARAMS}
        return cache_key(self.config.model, messages, output_params, schema,
                         endpoint=self._endpoint)

    def _prepare(self, request: LLMRequest | Mapping[str, Any]) -> _Prepared:
        if isinstance(request, Mapping):
            request = LLMRequest(**dict(request))
        elif not isinstance(request, LLMRequest):
            raise TypeError(f"expected LLMRequest or dict, got {type(request).__name__}")
        messages, params = wire_request(self.config, request)
        return _Prepared(request, messages, params, self._key(messages, request.schema, params))

    def _prepare_all(self, requests: Iterable[LLMRequest | Mapping[str, Any]]) -> list[_Prepared]:
        prepared = [self._prepare(r) for r in requests]
        seen: set[str] = set()
        for item in prepared:
            if item.request.id in seen:
                raise ValueError(
                    f"duplicate request id {item.request.id!r}; ids must be unique within one "
                    "call (use the record id, plus a suffix per variant)"
                )
            seen.add(item.request.id)
        return prepared

    # -- dry run -------------------------------------------------------------------------------
    def estimate(self, requests: Iterable[LLMRequest | Mapping[str, Any]]) -> DryRunEstimate:
        """Estimate requests, tokens and cost without any HTTP call; cached items are free.

        Example:
            >>> client.estimate(requests).cost  # doctest: +SKIP
            0.42
        """
        config = self.config
        prepared = self._prepare_all(requests)

        def completion_tokens(item: _Prepared) -> int:
            if config.expected_completion_tokens is not None:
                return config.expected_completion_tokens
            return int(item.params.get("max_tokens") or 0)

        return estimate_dry_run(
            (
                (p.messages, self.cache is not None and p.key in self.cache, completion_tokens(p))
                for p in prepared
            ),
            meter=self.meter,
            max_reasks=config.max_reasks,
            chars_per_token=config.chars_per_token,
        )

    # -- running -------------------------------------------------------------------------------
    def complete_many_sync(
        self,
        requests: Iterable[LLMRequest | Mapping[str, Any]],
        *,
        validator: Validator | None = None,
        on_result: Callable[[LLMResult], None] | None = None,
    ) -> list[LLMResult]:
        """:meth:`complete_many` for synchronous pipeline stages (runs its own event loop).

        Example:
            >>> results = client.complete_many_sync(requests)  # doctest: +SKIP
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(
                self.complete_many(requests, validator=validator, on_result=on_result)
            )
        raise RuntimeError(
            "complete_many_sync() was called inside a running event loop; "
            "use 'await client.complete_many(...)' there instead"
        )

    async def complete_many(
        self,
        requests: Iterable[LLMRequest | Mapping[str, Any]],
        *,
        validator: Validator | None = None,
        on_result: Callable[[LLMResult], None] | None = None,
    ) -> list[LLMResult]:
        """Run every request; one :class:`LLMResult` per request, in input order.

        At most ``config.max_concurrency`` requests are in flight. Each finished item is passed
        to ``on_result`` as soon as it is done (to stream results out); every answer is in the
        cache before it is judged, so an interrupted run loses nothing already answered.
        Cancelling (Ctrl-C) stops the in-flight requests and leaves the cache consistent. An
        exception raised by ``on_result``, or by ``validator`` other than ValueError, LookupError
        or TypeError (which count as rejections), is a bug in the caller: it stops the run.

        Example:
            >>> results = await client.complete_many(requests, validator=check)  # doctest: +SKIP
            >>> [r.reason for r in results if not r.ok]  # doctest: +SKIP
            ['llm_off_schema']
        """
        if self._closed:
            raise RuntimeError("this LLMClient is closed; create a new one")
        prepared = self._prepare_all(requests)
        self._items += len(prepared)
        if self.config.dry_run:
            return self._dry_run_results(prepared, on_result)
        results: list[LLMResult | None] = [None] * len(prepared)
        key_locks: dict[str, asyncio.Lock] = {}
        queue = iter(enumerate(prepared))

        async def worker(oa: openai.AsyncOpenAI) -> None:
            # A fixed pool of workers pulling from one iterator bounds concurrency like a
            # semaphore would, without creating one task per item for million-item runs.
            for index, item in queue:
                # Identical requests in one call (same cache key) are answered once: the second
                # waits for the first and then replays its answers from the cache.
                lock = key_locks.setdefault(item.key, asyncio.Lock())
                async with lock:
                    result = await self._run_item(oa, item, validator)
                results[index] = result
                if result.ok:
                    self._items_ok += 1
                else:
                    self._failures[result.reason or "unknown"] += 1
                if on_result is not None:
                    on_result(result)

        async with self.transport.open(self._api_key, self.base_url) as oa:
            workers = [
                asyncio.ensure_future(worker(oa))
                for _ in range(min(self.config.max_concurrency, len(prepared)))
            ]
            try:
                await asyncio.gather(*workers)
            except BaseException:
                for task in workers:
                    task.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
                raise
        self._log_summary()
        return [r for r in results if r is not None]

    def _dry_run_results(
        self, prepared: list[_Prepared], on_result: Callable[[LLMResult], None] | None
    ) -> list[LLMResult]:
        estimate = self.estimate([p.request for p in prepared])
        self._dry_run = estimate
        log.info(
            "dry run: %d items, %d cached, %d requests, ~%d tokens, ~%.4f cost",
            estimate.items,
            estimate.cached,
            estimate.requests,
            estimate.total_tokens,
            estimate.cost,
        )
        results = []
        for item in prepared:
            result = LLMResult(
                item.request.id, False, reason="llm_dry_run", detail="dry run: nothing was sent"
            )
            self._failures["llm_dry_run"] += 1
            if on_result is not None:
                on_result(result)
            results.append(result)
        return results

    def _log_summary(self) -> None:
        stats = self.stats
        if stats["all_failed"]:
            log.warning("llm: all %d items failed: %s", stats["items"], stats["failures"])
        summary = ("items", "items_ok", "cache_hits", "requests_sent", "retries_total",
                   "reasks_total", "total_tokens", "cost", "failures")
        log.info("llm: %s", ", ".join(f"{name} {stats[name]}" for name in summary))

    async def _answer(
        self, oa: openai.AsyncOpenAI, item: _Prepared, conversation: list[dict[str, Any]],
        state: _ItemState,
    ) -> str:
        """The answer to ``conversation``: replayed from the cache, else asked and stored."""
        key = self._key(conversation, item.request.schema, item.params)
        cached = self.cache.get(key) if self.cache is not None else None
        if cached is not None:
            state.replayed += 1
            self._cache_replays += 1
            state.usage = state.usage + Usage(cached.prompt_tokens, cached.completion_tokens)
            return cached.text
        text, usage = await self.transport.send(
            oa, item.request.id, conversation, item.params, state
        )
        state.usage = state.usage + usage
        if self.cache is not None:
            # Stored before it is judged: whatever the server answered is on disk if the run
            # dies right after, and a rerun replays it instead of paying for it again.
            # The first answer stored wins: another process sharing the cache may have asked
            # the same request meanwhile (see ResponseCache.add).
            text = self.cache.add(
                key,
                CachedAnswer(text, usage.prompt_tokens, usage.completion_tokens, self.config.model),
            ).text
            self._cache_writes += 1
        return text

    def _served_from_cache(self, state: _ItemState) -> bool:
        if state.attempts == 0 and state.replayed > 0:
            self._cache_hits += 1
            return True
        return False

    async def _run_item(
        self, oa: openai.AsyncOpenAI, item: _Prepared, validator: Validator | None
    ) -> LLMResult:
        request = item.request
        state = _ItemState()

        async def ask(conversation: list[dict[str, Any]]) -> str:
            return await self._answer(oa, item, conversation, state)

        def reasked(rejected: OutputRejected) -> None:
            state.reasks += 1
            self._reasks[rejected.reason] += 1
            log.debug("request %s: re-ask %d (%s)", request.id, state.reasks, rejected.reason)

        try:
            try:
                text, parsed, _ = await ask_until_valid(
                    item.messages, request.schema, request.validator or validator,
                    self.config.max_reasks, ask, reasked,
                )
            except ReasksExhausted as exhausted:
                raise ItemFailed(exhausted.rejected.reason, str(exhausted),
                                 rejected_text=exhausted.answer) from None
        except ItemFailed as failed:
            detail = redact(failed.detail)
            log.info("request %s failed: %s (%s)", request.id, failed.reason, detail)
            return LLMResult(
                request.id,
                False,
                reason=failed.reason,
                detail=detail,
                rejected_text=failed.rejected_text,
                usage=state.usage,
                from_cache=self._served_from_cache(state),
                attempts=state.attempts,
                reasks=state.reasks,
            )
        return LLMResult(
            request.id,
            True,
            text=text,
            parsed=parsed,
            usage=state.usage,
            from_cache=self._served_from_cache(state),
            attempts=state.attempts,
            reasks=state.reasks,
        )


def combine_stats(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One :attr:`LLMClient.stats` for the items several clients ran between them (the Ray
    engine runs an op's items in batches on several workers): counts, tokens and cost add up,
    mappings add key by key, the shared settings are kept, the flags are recomputed.

    >>> a = {"items": 2, "items_ok": 1, "cost": 0.1, "failures": {"x": 1}, "model": "m"}
    >>> b = {"items": 1, "items_ok": 0, "cost": 0.2, "failures": {"x": 1, "y": 1}, "model": "m"}
    >>> c = combine_stats([a, b])
    >>> c["items"], c["cost"], c["failures"]
    (3, 0.3, {'x': 2, 'y': 1})
    """
    out = copy.deepcopy(dict(parts[0]))
    for part in parts[1:]:
        _add_stats(out, part)
    if "cost" in out:
        out["cost"] = round(out["cost"], 9)
    for key in ("reasks", "failures", "retries"):
        if isinstance(out.get(key), dict):
            out[key] = dict(sorted(out[key].items()))
    if "all_failed" in out:
        out["all_failed"] = out["items"] > 0 and out["items_ok"] == 0 and out["dry_run"] is None
    if isinstance(out.get("budget"), dict):
        out["budget"]["exhausted"] = next(
            (p["budget"]["exhausted"] for p in parts if p["budget"]["exhausted"]), None)
    return out


def _add_stats(into: dict[str, Any], part: Mapping[str, Any]) -> None:
    for key, value in part.items():
        old = into.get(key)
        if isinstance(value, Mapping) and isinstance(old, dict):
            _add_stats(old, value)
        elif isinstance(value, bool) or isinstance(old, bool):
            into[key] = bool(old) and bool(value) if key == "within_budget" else old
        elif isinstance(value, (int, float)) and isinstance(old, (int, float)):
            into[key] = old + value
        elif old is None:
            into[key] = copy.deepcopy(value)
