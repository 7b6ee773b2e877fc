"""The hotel augment ops as objects (the dialog surgery is in :mod:`dataprep.corpora.hotel.ops`,
the rewriting in :mod:`dataprep.corpora.hotel.rewrite`).

==================  =========================================================  =====
op                  what it derives                                            share
==================  =========================================================  =====
rewrite_rules       user turns rewritten with the phrase table                 0.5
rewrite_llm         user turns rewritten by an LLM (needs ``llm:``)            1.0
followup            prefix to the last recommendation + a question/db answer   0.3
closing             prefix to the last recommendation + "决定入住X" / "入住愉快"  0.2
name_query          new dialog: search by the name of a hotel the parent saw    0.1
price_upper_query   new dialog: search by a price upper bound                  0.1
==================  =========================================================  =====

A rewrite keeps a turn only if it passes the slot check (same numbers and bounds, names, types,
facilities, and the following tool call's stated values); for ``rewrite_llm`` the check is the
LLM client's answer validator, so a failing rewrite is first re-asked with the reason
(``llm.max_reasks`` times, counted in the client's ``reasks``). Failing turns keep their original
text, and a record none of whose turns survives gets no derived twin (outcome ``kept:REASON``).
Every discarded rewrite is kept as evidence. LLM answers are cached (default
``<out>/llm_cache``), so a killed run resumes without re-sending an answered request.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dataprep.corpora.base import AugmentOp, OpOptions, OpRun
from dataprep.corpora.hotel import ops
from dataprep.corpora.hotel import phrases as ph
from dataprep.corpora.hotel.rewrite import (
    REWRITE_SCHEMA,
    RuleRewriter,
    judge_rewrite,
    prompt_hash,
    rejected_rewrite,
    rewrite_messages,
    rewrite_validator,
    rules_hash,
    user_turns,
)
from dataprep.corpora.hotel.slots import SlotExtractor
from dataprep.errors import ConfigError
from dataprep.record import Conversation


def templates_hash() -> str:
    """Short sha256 of the templates the template ops fill, recorded in their lineage."""
    payload = json.dumps([ph.FOLLOWUP_QUESTIONS, ph.FOLLOWUP_ANSWERS, ph.CLOSING_USER,
                          ph.CLOSING_ASSISTANT, ph.NAME_QUERY_USER, ph.NAME_QUERY_REPLY,
                          ph.PRICE_UPPER_USER, ph.PRICE_UPPER_REPLY], ensure_ascii=False,
                         sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:12]


# -- template ops --------------------------------------------------------------------------------
class _TemplateOp(AugmentOp):
    corpus = "hotel"

    def derive(self, rec: Conversation, rng: random.Random,
               run: OpRun) -> tuple[Conversation | None, str]:
        child, outcome = self.make(rec, run.resources.hotel_db, rng)
        if child is not None:
            child.lineage.extra["templates_hash"] = templates_hash()
        return child, outcome

    def make(self, rec: Conversation, db: Any,
             rng: random.Random) -> tuple[Conversation | None, str]:
        raise NotImplementedError


@dataclass
class FollowupOptions(OpOptions):
    """``aspects`` asked about: a non-empty subset of price, phone, address, subway, rating,
    facilities."""

    share: float = 0.3
    aspects: list[str] = field(default_factory=lambda: list(ops.ASPECTS))

    def __post_init__(self) -> None:
        super().__post_init__()
        bad = sorted(set(self.aspects) - set(ops.ASPECTS))
        if bad or not self.aspects:
            raise ConfigError(f"aspects must be a non-empty subset of {list(ops.ASPECTS)}, "
                              f"got {self.aspects!r}")


class Followup(_TemplateOp):
    """``followup``: a question about a recommended hotel, answered from the database."""

    name = "followup"
    Options = FollowupOptions
    options: FollowupOptions

    def make(self, rec: Conversation, db: Any,
             rng: random.Random) -> tuple[Conversation | None, str]:
        facilities = sorted(getattr(db, "facility_names", ()) or ())
        return ops.followup(rec, db, rng, self.options.aspects, facilities)


@dataclass
class ClosingOptions(OpOptions):
    share: float = 0.2


class Closing(_TemplateOp):
    """``closing``: "好的，我决定入住X了。" -> "好的，祝您入住愉快！"."""

    name = "closing"
    Options = ClosingOptions

    def make(self, rec: Conversation, db: Any,
             rng: random.Random) -> tuple[Conversation | None, str]:
        return ops.closing(rec, db, rng)


@dataclass
class NameQueryOptions(OpOptions):
    """``max_results`` hotels the new dialog's search returns."""

    share: float = 0.1
    max_results: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        self.positive_ints("max_results")


class NameQuery(_TemplateOp):
    """``name_query``: a new dialog searching by the name of a hotel the parent saw."""

    name = "name_query"
    Options = NameQueryOptions
    options: NameQueryOptions

    def make(self, rec: Conversation, db: Any,
             rng: random.Random) -> tuple[Conversation | None, str]:
        return ops.name_query(rec, db, rng, self.options.max_results)


@dataclass
class PriceUpperOptions(NameQueryOptions):
    """As :class:`NameQueryOptions`, plus ``type_share`` (how often a hotel type is asked too)."""

    type_share: float = 0.3


class PriceUpperQuery(_TemplateOp):
    """``price_upper_query``: a new dialog searching by a price upper bound."""

    name = "price_upper_query"
    Options = PriceUpperOptions
    options: PriceUpperOptions

    def make(self, rec: Conversation, db: Any,
             rng: random.Random) -> tuple[Conversation | None, str]:
        return ops.price_upper_query(rec, db, rng, self.options.max_results,
                                     self.options.type_share)


# -- rewrites ------------------------------------------------------------------------------------
class _RewriteOp(AugmentOp):
    corpus = "hotel"

    def prepare(self, scope: list[Conversation], run: OpRun) -> None:
        self._extractor: SlotExtractor | None = None

    def extractor(self, run: OpRun) -> SlotExtractor:
        if self._extractor is None:
            self._extractor = SlotExtractor.from_db(run.resources.hotel_db)
        return self._extractor

    def apply(self, rec: Conversation, candidates: dict[int, str | None],
              failures: dict[int, tuple[str, str, str | None]], run: OpRun,
              **extra: Any) -> tuple[Conversation | None, str]:
        """The derived record with the turns whose rewrite passes the slot check, or None and
        ``kept:REASON`` (the most common turn-level reason) when none does."""
        op = self.name
        turns = {t.index: t for t in user_turns(rec.messages)}
        if not turns:
            return None, "kept:no_user_turn"
        extractor = self.extractor(run)
        accepted: dict[int, str] = {}
        reasons: list[str] = []
        for idx, turn in turns.items():
            if idx in failures:
                reason, detail, cand = failures[idx]
                # A rewrite the slot check kept rejecting until the client's re-asks ran out is
                # judged again here, so its evidence reads the same as a rule rewrite's.
                why = judge_rewrite(turn.text, cand, extractor, turn.params) if cand else []
                if not why:
                    run.count_turn(op, f"failed:{reason}")
                    reasons.append(reason)
                    run.discard({"record_id": rec.id, "op": op, "turn": idx,
                                 "original": turn.text, "rewrite": cand,
                                 "reasons": [reason], "detail": detail})
                    continue
            else:
                cand = candidates.get(idx)
                why = judge_rewrite(turn.text, cand, extractor, turn.params)
            if why:
                run.count_turn(op, f"failed:{why[0]}")
                reasons.append(why[0])
                if why != ["rewrite_unchanged"]:
                    run.discard({
                        "record_id": rec.id, "op": op, "turn": idx, "original": turn.text,
                        "rewrite": cand, "reasons": why, "params": turn.params,
                        "slots_original": extractor.extract(turn.text).to_dict(),
                        "slots_rewrite": extractor.extract(cand or "").to_dict()})
                continue
            run.count_turn(op, "ok")
            accepted[idx] = cand  # type: ignore[assignment]
        if not accepted:
            # Ties broken by name so the count is reproducible.
            top = sorted(Counter(reasons).items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
            return None, f"kept:{top}"
        child = rec.derive(ops.derived_id(rec.id, op), op, rewritten_turns=sorted(accepted),
                           **extra)
        for idx, text in accepted.items():
            child.messages[idx].content = text
        return child, "added"


@dataclass
class RewriteRulesOptions(OpOptions):
    """``rule_prob``: the chance that each matching phrase-table rule is applied."""

    share: float = 0.5
    rule_prob: float = 0.8

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= float(self.rule_prob) <= 1.0:
            raise ConfigError(f"rule_prob must be between 0 and 1, got {self.rule_prob!r}")


class RewriteRules(_RewriteOp):
    """``rewrite_rules``: colloquial rewrites of the user turns from the phrase table."""

    name = "rewrite_rules"
    Options = RewriteRulesOptions
    options: RewriteRulesOptions

    def prepare(self, scope: list[Conversation], run: OpRun) -> None:
        super().prepare(scope, run)
        self.rewriter = RuleRewriter(rule_prob=float(self.options.rule_prob))
        self.rules_hash = rules_hash()

    def derive(self, rec: Conversation, rng: random.Random,
               run: OpRun) -> tuple[Conversation | None, str]:
        candidates = {t.index: self.rewriter.rewrite(t.text, rng) for t in user_turns(rec.messages)}
        return self.apply(rec, candidates, {}, run, rules_hash=self.rules_hash)


@dataclass
class RewriteLLMOptions(OpOptions):
    """``llm``: client settings merged over the run's ``llm:`` section."""

    share: float = 1.0
    llm: dict[str, Any] = field(default_factory=dict)


class RewriteLLM(_RewriteOp):
    """``rewrite_llm``: user turns rewritten by an LLM, every answer slot-checked."""

    name = "rewrite_llm"
    Options = RewriteLLMOptions
    options: RewriteLLMOptions

    def settings(self, run: OpRun) -> dict[str, Any]:
        """The ``llm:`` settings this op runs with: its own over the run's."""
        return {**(run.resources.llm or {}), **(self.options.llm or {})}

    def shardable(self, run: OpRun) -> bool:
        # Requests are independent and the cache is shared on disk, so batches of records can
        # be asked from several workers; a budget caps one client's spending, which split over
        # workers would cap each of them: with a budget the op runs in one process.
        cfg = self.settings(run)
        return not any(cfg.get(k) is not None for k in
                       ("budget_max_cost", "budget_max_tokens", "budget_max_requests"))

    def derive_many(self, chosen: list[Conversation], run: OpRun,
                    rng: Callable[[Conversation], random.Random],
                    ) -> list[tuple[Conversation, Conversation | None, str]]:
        from dataprep.llm import LLMClient, LLMConfig, LLMRequest

        cfg = self.settings(run)
        if not cfg.get("model"):
            raise ConfigError("augment op 'rewrite_llm' needs an LLM: add a top-level 'llm:' "
                              "section with at least 'model' and 'base_url' (and 'api_key_env' "
                              "naming the variable that holds the key), or drop the op")
        # The cache is what makes a killed run resumable; keep it next to the outputs unless
        # the config puts it elsewhere.
        # The cache outlives a generation (a killed run resumes from it): it lives in --out itself.
        cfg.setdefault("cache_dir", str((run.state_dir or run.out_dir) / "llm_cache"))
        try:
            config = LLMConfig.from_mapping(cfg)
        except ValueError as e:
            raise ConfigError(f"llm: {e}") from e
        extractor = self.extractor(run)
        requests, where = [], {}
        for n, rec in enumerate(chosen):
            for t in user_turns(rec.messages):
                # The position makes ids unique even if two records share an id; it does not go
                # into the cache key, which hashes only the messages and sampling parameters.
                rid = f"{n}:{rec.id}#{t.index}"
                where[rid] = (id(rec), t.index)
                # The slot check is the answer validator, so a failing rewrite is re-asked
                # with the reason instead of being thrown away after the client returns.
                requests.append(LLMRequest(rid, rewrite_messages(t.text), schema=REWRITE_SCHEMA,
                                           validator=rewrite_validator(t.text, extractor,
                                                                       t.params)))
        try:
            client = LLMClient(config)
        except ValueError as e:
            raise ConfigError(f"llm: {e}") from e
        with client:
            results = client.complete_many_sync(requests) if requests else []
            run.artifacts["llm"] = client.stats
        by_rec: dict[int, dict[int, Any]] = defaultdict(dict)
        for r in results:
            key, idx = where[r.id]
            by_rec[key][idx] = r
        out = []
        for rec in chosen:
            candidates: dict[int, str | None] = {}
            failures: dict[int, tuple[str, str, str | None]] = {}
            for idx, r in sorted(by_rec[id(rec)].items()):
                if r.ok and isinstance(r.parsed, dict) and isinstance(r.parsed.get("rewrite"), str):
                    candidates[idx] = r.parsed["rewrite"]
                else:
                    failures[idx] = (r.reason or "llm_failed", r.detail,
                                     rejected_rewrite(r.rejected_text))
            child, outcome = self.apply(rec, candidates, failures, run, model=config.model,
                                        prompt_hash=prompt_hash())
            out.append((rec, child, outcome))
        return out
