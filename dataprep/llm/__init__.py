"""LLM client layer: any OpenAI-compatible endpoint, with retries, re-asks, cache and budget.

Augmentation stages build :class:`LLMRequest` items (with a validator when the answer must
agree with the record, e.g. the slot check of a rewrite), run them with
:meth:`LLMClient.complete_many` (or ``complete_many_sync``), keep every ``ok`` result and send
the others to the exclusion writer with ``result.reason``; ``client.stats`` goes into the run
manifest. One module per concern: ``config``, ``transport`` (HTTP and retries), ``answers``
(JSON extraction, validation, re-ask text), ``cache``, ``budget``, ``redaction``, ``items``
(request/result types), ``client`` (the loop that ties them together). The fake server the
tests and benches use is ``tests/support/fake_chat_server.py``, outside the package.

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

from dataprep.llm.answers import OutputRejected, Validator, extract_json
from dataprep.llm.budget import BudgetMeter, DryRunEstimate, Usage, estimate_tokens
from dataprep.llm.cache import CachedAnswer, CacheError, ResponseCache, cache_key
from dataprep.llm.client import LLMClient
from dataprep.llm.config import LLMConfig, MissingAPIKeyError
from dataprep.llm.items import REASONS, LLMRequest, LLMResult
from dataprep.llm.redaction import RedactingFilter, redact, sdk_debug_logging
from dataprep.llm.transport import LLMAuthError

__all__ = [
    "REASONS",
    "BudgetMeter",
    "CacheError",
    "CachedAnswer",
    "DryRunEstimate",
    "LLMAuthError",
    "LLMClient",
    "LLMConfig",
    "LLMRequest",
    "LLMResult",
    "MissingAPIKeyError",
    "OutputRejected",
    "RedactingFilter",
    "ResponseCache",
    "Usage",
    "Validator",
    "cache_key",
    "estimate_tokens",
    "extract_json",
    "redact",
    "sdk_debug_logging",
]
