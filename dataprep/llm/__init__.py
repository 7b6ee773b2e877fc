"""LLM client layer: any OpenAI-compatible endpoint, with retries, re-asks, cache and budget.

Augmentation stages build :class:`LLMRequest` items, run them with
:meth:`LLMClient.complete_many` (or ``complete_many_sync``), keep every ``ok`` result and send
the others to the exclusion writer with ``result.reason``; ``client.stats`` goes into the run
manifest. :mod:`dataprep.llm.fake_server` is a local server for tests, benches and rehearsals.

Example:
    >>> from dataprep.llm import LLMClient, LLMConfig, LLMRequest
    >>> config = LLMConfig(model="deepseek-chat", base_url="https://api.deepseek.com/v1",
    ...                    api_key_env="DEEPSEEK_API_KEY", cache_dir="work/llm_cache",
    ...                    price_per_1k_prompt=0.002, price_per_1k_completion=0.008,
    ...                    budget_max_cost=5.0)
    >>> with LLMClient(config) as client:  # doctest: +SKIP
    ...     results = client.complete_many_sync(
    ...         [LLMRequest("r1", [{"role": "user", "content": "改写得更口语化：今天天气很好"}])]
    ...     )
"""

from dataprep.llm.budget import BudgetMeter, DryRunEstimate, Usage, estimate_tokens
from dataprep.llm.cache import CachedAnswer, ResponseCache, cache_key
from dataprep.llm.client import (
    REASONS,
    LLMClient,
    LLMConfig,
    LLMRequest,
    LLMResult,
    MissingAPIKeyError,
    OutputRejected,
    RedactingFilter,
    extract_json,
    redact,
)

__all__ = [
    "REASONS",
    "BudgetMeter",
    "CachedAnswer",
    "DryRunEstimate",
    "LLMClient",
    "LLMConfig",
    "LLMRequest",
    "LLMResult",
    "MissingAPIKeyError",
    "OutputRejected",
    "RedactingFilter",
    "ResponseCache",
    "Usage",
    "cache_key",
    "estimate_tokens",
    "extract_json",
    "redact",
]
