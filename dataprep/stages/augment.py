"""``augment``: named augmentation ops that ADD derived records next to their sources.

Runs after ``split`` and, by default, on the train split only. Every op reads an original record
and may derive one new record from it (``Conversation.derive``: new id ``<parent>~<op>``, the
parent id and the op in the lineage, the parent's group id and split); originals are never
modified or dropped, so the accounting is simply ``added`` per op. Ops never see each other's
output, which keeps every op's result a function of (seed, op, record) alone.

Ops (``ops:`` list of names or ``{name: ..., option: value}``; default: every offline op):

==================  ======  =========================================================  =====
op                  corpus  what it derives                                            share
==================  ======  =========================================================  =====
rewrite_rules       hotel   user turns rewritten with the phrase table                 0.5
rewrite_llm         hotel   user turns rewritten by an LLM (needs ``llm:``)            1.0
followup            hotel   prefix to the last recommendation + a question/db answer   0.3
closing             hotel   prefix to the last recommendation + "决定入住X" / "入住愉快"  0.2
name_query          hotel   new dialog: search by the name of a hotel the parent saw    0.1
price_upper_query   hotel   new dialog: search by a price upper bound                  0.1
docqa_contrastive   docqa   positive shuffled among k negatives within a budget        0.5
docqa_unanswerable  docqa   negatives only, refusal answer, label "unanswerable"       0.1
==================  ======  =========================================================  =====

A rewrite keeps a turn only if it passes the slot check (same numbers and bounds, names, types,
facilities, and the following tool call's stated values); for ``rewrite_llm`` the check is the LLM
client's answer validator, so a failing rewrite is first re-asked with the reason (``llm.max_reasks``
times, counted in the client's ``reasks``). Failing turns keep their original text, and a record
none of whose turns survives gets no derived twin. Per-record outcomes are
counted in ``stats["augment"]["ops"][op]`` (``added``, ``not_selected``, ``kept:<reason>``,
``skipped:<reason>``), per-turn ones in ``stats["augment"]["turns"][op]``; every discarded rewrite
is kept as evidence in ``augment_discarded.jsonl``; the LLM client's stats go to
``artifacts["llm"]``. LLM answers are cached (default ``<out>/llm_cache``), so a killed run
resumes without re-sending an answered request.

>>> Augment(ops=["followup", {"name": "closing", "share": 0.5}]).ops[1].options["share"]
0.5
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from dataprep import schema
from dataprep.augment import docqa_ops, hotel_ops
from dataprep.augment import phrases as ph
from dataprep.augment.rewrite import (
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
from dataprep.augment.slots import SlotExtractor
from dataprep.errors import ConfigError
from dataprep.io import AtomicWriter, dumps
from dataprep.readers.docqa import (
    DEFAULT_MAX_DOC_CHARS,
    DEFAULT_MAX_TOTAL_CHARS,
    RAG_PROMPT,
    UNANSWERABLE_ANSWER,
)
from dataprep.record import Conversation
from dataprep.stages.base import RunContext, Stage
from dataprep.stages.split import SPLITS

# op -> (corpus, default options). "share" is the fraction of applicable records the op runs on.
OPS: dict[str, tuple[str, dict[str, Any]]] = {
    "rewrite_rules": ("hotel", {"share": 0.5, "rule_prob": 0.8}),
    "rewrite_llm": ("hotel", {"share": 1.0, "llm": {}}),
    "followup": ("hotel", {"share": 0.3, "aspects": list(hotel_ops.ASPECTS)}),
    "closing": ("hotel", {"share": 0.2}),
    "name_query": ("hotel", {"share": 0.1, "max_results": 3}),
    "price_upper_query": ("hotel", {"share": 0.1, "max_results": 3, "type_share": 0.3}),
    "docqa_contrastive": ("docqa", {"share": 0.5, "k": 5, "max_doc_chars": DEFAULT_MAX_DOC_CHARS,
                                    "max_total_chars": DEFAULT_MAX_TOTAL_CHARS,
                                    "max_tokens": None, "prompt": RAG_PROMPT}),
    "docqa_unanswerable": ("docqa", {"share": 0.1, "k": 3, "refusal": UNANSWERABLE_ANSWER,
                                     "max_doc_chars": DEFAULT_MAX_DOC_CHARS,
                                     "max_total_chars": DEFAULT_MAX_TOTAL_CHARS,
                                     "max_tokens": None, "prompt": RAG_PROMPT}),
}
# The default needs no endpoint, so `make demo` augments offline.
DEFAULT_OPS = [op for op in OPS if op != "rewrite_llm"]
DISCARDED_FILE = "augment_discarded.jsonl"


@dataclass
class OpSpec:
    """One configured op: its name, corpus and resolved options."""

    name: str
    corpus: str
    options: dict[str, Any]


def parse_ops(specs: Iterable[Any] | None) -> list[OpSpec]:
    """Resolve the ``ops`` option; raises :class:`ConfigError` naming what is wrong.

    >>> [o.name for o in parse_ops(["closing", {"name": "followup", "share": 0.5}])]
    ['closing', 'followup']
    """
    out = []
    seen = set()
    for i, spec in enumerate(DEFAULT_OPS if specs is None else specs):
        if isinstance(spec, str):
            name, given = spec, {}
        elif isinstance(spec, dict) and isinstance(spec.get("name"), str):
            name, given = spec["name"], {k: v for k, v in spec.items() if k != "name"}
        elif isinstance(spec, dict) and len(spec) == 1:
            ((name, given),) = spec.items()
            given = dict(given or {})
        else:
            raise ConfigError(f"augment.ops[{i}]: expected an op name or {{name: ..., options}}, "
                              f"got {spec!r}")
        if name not in OPS:
            raise ConfigError(f"augment.ops[{i}]: unknown op {name!r}; available: "
                              f"{', '.join(OPS)}")
        if name in seen:
            raise ConfigError(f"augment.ops[{i}]: op {name!r} is listed twice")
        seen.add(name)
        corpus, defaults = OPS[name]
        unknown = sorted(set(given) - set(defaults))
        if unknown:
            raise ConfigError(f"augment op {name!r}: unknown options {unknown}; available: "
                              f"{', '.join(defaults)}")
        options = {**defaults, **given}
        share = options["share"]
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
            raise ConfigError(f"augment op {name!r}: share must be a number between 0 and 1, "
                              f"got {share!r}")
        for key in ("k", "max_results", "max_doc_chars", "max_total_chars"):
            if key in options and (not isinstance(options[key], int) or options[key] < 1):
                raise ConfigError(f"augment op {name!r}: {key} must be an integer >= 1, "
                                  f"got {options[key]!r}")
        if name == "followup":
            bad = sorted(set(options["aspects"]) - set(hotel_ops.ASPECTS))
            if bad or not options["aspects"]:
                raise ConfigError(f"augment op 'followup': aspects must be a non-empty subset "
                                  f"of {list(hotel_ops.ASPECTS)}, got {options['aspects']!r}")
        out.append(OpSpec(name, corpus, options))
    return out


def selected(seed: int, op: str, rec_id: str, share: float) -> bool:
    """Whether ``op`` runs on record ``rec_id``: a hash, so the choice depends on neither the
    record order nor the other ops (and is the same in a resumed run).

    >>> selected(42, "followup", "a", 1.0), selected(42, "followup", "a", 0.0)
    (True, False)
    """
    digest = hashlib.sha256(f"{seed}\x1f{op}\x1f{rec_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def _rng(seed: int, op: str, rec_id: str) -> random.Random:
    # String seeds are hashed with sha512 by random.seed, so they do not depend on
    # PYTHONHASHSEED: the same record gets the same choices in every process.
    return random.Random(f"{seed}\x1f{op}\x1f{rec_id}")


def _templates_hash() -> str:
    payload = json.dumps([ph.FOLLOWUP_QUESTIONS, ph.FOLLOWUP_ANSWERS, ph.CLOSING_USER,
                          ph.CLOSING_ASSISTANT, ph.NAME_QUERY_USER, ph.NAME_QUERY_REPLY,
                          ph.PRICE_UPPER_USER, ph.PRICE_UPPER_REPLY], ensure_ascii=False,
                         sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:12]


class Augment(Stage):
    """Options: ``ops`` (see the module docstring), ``splits`` (default ``[train]``), ``seed``
    (default: the run seed), ``evidence`` (write ``augment_discarded.jsonl``, default true)."""

    name = "augment"

    def __init__(self, ops: list[Any] | None = None,
                 splits: list[str] | tuple[str, ...] = ("train",), seed: int | None = None,
                 evidence: bool = True) -> None:
        self.ops = parse_ops(ops)
        bad = sorted(set(splits) - set(SPLITS))
        if bad or not splits:
            raise ConfigError(f"augment.splits must be a non-empty subset of {list(SPLITS)}, "
                              f"got {list(splits)}")
        self.splits = list(splits)
        self.seed = seed
        self.evidence = evidence

    def describe(self) -> dict[str, Any]:
        return {"ops": [{"name": o.name, **o.options} for o in self.ops], "splits": self.splits,
                "seed": self.seed, "evidence": self.evidence}

    # -- the stage ----------------------------------------------------------------------------
    def run(self, records: Iterable[Conversation], ctx: RunContext) -> Iterator[Conversation]:
        recs = list(records)
        seed = ctx.seed if self.seed is None else self.seed
        st = ctx.stats[self.name]
        st.update({"records": len(recs), "in_scope": 0, "out_of_scope": {},
                   "ops": {o.name: {} for o in self.ops}, "turns": {}})
        scope = []
        out_of_scope: Counter[str] = Counter()
        for rec in recs:
            if rec.split is None:
                raise ValueError(f"record {rec.id} reached 'augment' without a split; put "
                                 "'augment' after 'split' in the stages list")
            if rec.split in self.splits:
                scope.append(rec)
            else:
                out_of_scope[rec.split] += 1
        st["in_scope"] = len(scope)
        st["out_of_scope"] = dict(sorted(out_of_scope.items()))
        run = _Run(self, ctx, seed, scope)
        children = run.derive_all()
        for rec in recs:
            yield rec
            for op, child in children.get(id(rec), []):
                ctx.add(child, op)
                yield child
        if self.evidence:
            path = ctx.out_dir / DISCARDED_FILE
            with AtomicWriter(path) as fh:
                for item in run.discarded:
                    fh.write(dumps(item) + "\n")
            ctx.artifacts["augment"] = {"discarded": str(path),
                                        "discarded_count": len(run.discarded)}


class _Run:
    """State of one augment run: lazily built resources, outcome counters, evidence."""

    def __init__(self, stage: Augment, ctx: RunContext, seed: int,
                 scope: list[Conversation]) -> None:
        self.stage, self.ctx, self.seed, self.scope = stage, ctx, seed, scope
        self.discarded: list[dict[str, Any]] = []
        self._extractor: SlotExtractor | None = None
        self._templates = _templates_hash()
        self._rewriters: dict[float, RuleRewriter] = {}
        self._rules_hash = rules_hash()

    @property
    def extractor(self) -> SlotExtractor:
        if self._extractor is None:
            self._extractor = SlotExtractor.from_db(self.ctx.hotel_db)
        return self._extractor

    def count(self, op: str, outcome: str) -> None:
        ops = self.ctx.stats[self.stage.name]["ops"]
        ops[op][outcome] = ops[op].get(outcome, 0) + 1

    def count_turn(self, op: str, outcome: str) -> None:
        turns = self.ctx.stats[self.stage.name]["turns"].setdefault(op, {})
        turns[outcome] = turns.get(outcome, 0) + 1

    def derive_all(self) -> dict[int, list[tuple[str, Conversation]]]:
        children: dict[int, list[tuple[str, Conversation]]] = defaultdict(list)
        pool = docqa_ops.DocPool()
        for rec in self.scope:
            if rec.corpus == "docqa":
                pool.add(rec.id, docqa_ops.docs_of(rec))
        for op in self.stage.ops:
            applicable = [r for r in self.scope if r.corpus == op.corpus]
            chosen = []
            for rec in applicable:
                if selected(self.seed, op.name, rec.id, op.options["share"]):
                    chosen.append(rec)
                else:
                    self.count(op.name, "not_selected")
            if op.name == "rewrite_llm":
                made = self._rewrite_llm(op, chosen)
            else:
                made = {id(rec): self._one(op, rec, pool) for rec in chosen}
            for rec in chosen:
                child = made.get(id(rec))
                if child is not None:
                    children[id(rec)].append((op.name, child))
        return children

    def _accept(self, op: str, child: Conversation) -> Conversation | None:
        # The writer would reject a bad line anyway; checking here keeps the reason with the op
        # that caused it instead of turning an op bug into a write-stage reject.
        problems = schema.output_problems(child.to_chatglm3())
        if problems:
            self.count(op, f"skipped:invalid:{problems[0][0]}")
            return None
        self.count(op, "added")
        return child

    # -- ops without an endpoint -------------------------------------------------------------
    def _one(self, op: OpSpec, rec: Conversation, pool: docqa_ops.DocPool) -> Conversation | None:
        o = op.options
        rng = _rng(self.seed, op.name, rec.id)
        child: Conversation | None
        if op.name == "rewrite_rules":
            return self._rewrite_rules(op, rec, rng)
        if op.name == "followup":
            facilities = sorted(getattr(self.ctx.hotel_db, "facility_names", ()) or ())
            child, outcome = hotel_ops.followup(rec, self.ctx.hotel_db, rng, o["aspects"],
                                                facilities)
        elif op.name == "closing":
            child, outcome = hotel_ops.closing(rec, self.ctx.hotel_db, rng)
        elif op.name == "name_query":
            child, outcome = hotel_ops.name_query(rec, self.ctx.hotel_db, rng, o["max_results"])
        elif op.name == "price_upper_query":
            child, outcome = hotel_ops.price_upper_query(rec, self.ctx.hotel_db, rng,
                                                         o["max_results"], o["type_share"])
        elif op.name == "docqa_contrastive":
            child, outcome = docqa_ops.contrastive(
                rec, pool=pool, k=o["k"], budget=self._budget(op), seed=self.seed,
                prompt=o["prompt"], count_tokens=self._token_counter(op))
        elif op.name == "docqa_unanswerable":
            child, outcome = docqa_ops.unanswerable(
                rec, pool=pool, k=o["k"], budget=self._budget(op), seed=self.seed,
                refusal=o["refusal"], prompt=o["prompt"], count_tokens=self._token_counter(op))
        else:  # parse_ops only lets known ops through
            raise AssertionError(op.name)
        if child is None:
            self.count(op.name, outcome)
            return None
        if op.corpus == "hotel":
            child.lineage.extra["templates_hash"] = self._templates
        return self._accept(op.name, child)

    def _budget(self, op: OpSpec) -> docqa_ops.DocBudget:
        o = op.options
        return docqa_ops.DocBudget(o["max_doc_chars"], o["max_total_chars"], o["max_tokens"])

    def _token_counter(self, op: OpSpec) -> docqa_ops.TokenCounter | None:
        if op.options["max_tokens"] is None:
            return None
        tok = self.ctx.tokenizer
        if tok is None:
            raise ConfigError(f"augment op {op.name!r}: max_tokens needs a tokenizer; set "
                              "'tokenizer: PATH' in the config or drop max_tokens")
        return docqa_ops.token_counter(tok)

    # -- rewrites -----------------------------------------------------------------------------
    def _rewrite_rules(self, op: OpSpec, rec: Conversation,
                       rng: random.Random) -> Conversation | None:
        prob = float(op.options["rule_prob"])
        if prob not in self._rewriters:
            self._rewriters[prob] = RuleRewriter(rule_prob=prob)
        rewriter = self._rewriters[prob]
        candidates = {t.index: rewriter.rewrite(t.text, rng) for t in user_turns(rec.messages)}
        return self._apply_rewrites(op.name, rec, candidates, {}, rules_hash=self._rules_hash)

    def _rewrite_llm(self, op: OpSpec, chosen: list[Conversation]) -> dict[int, Conversation]:
        from dataprep.llm import LLMClient, LLMConfig, LLMRequest

        cfg = {**(self.ctx.artifacts.get("llm_config") or {}), **(op.options["llm"] or {})}
        if not cfg.get("model"):
            raise ConfigError("augment op 'rewrite_llm' needs an LLM: add a top-level 'llm:' "
                              "section with at least 'model' and 'base_url' (and 'api_key_env' "
                              "naming the variable that holds the key), or drop the op")
        # The cache is what makes a killed run resumable; keep it next to the outputs unless
        # the config puts it elsewhere.
        cfg.setdefault("cache_dir", str(self.ctx.out_dir / "llm_cache"))
        try:
            config = LLMConfig.from_mapping(cfg)
        except ValueError as e:
            raise ConfigError(f"llm: {e}") from e
        turns = {id(rec): user_turns(rec.messages) for rec in chosen}
        requests, where = [], {}
        for n, rec in enumerate(chosen):
            for t in turns[id(rec)]:
                # The position makes ids unique even if two records share an id; it does not go
                # into the cache key, which hashes only the messages and sampling parameters.
                rid = f"{n}:{rec.id}#{t.index}"
                where[rid] = (id(rec), t.index)
                # The slot check is the answer validator: a failing rewrite is re-asked.
                requests.append(LLMRequest(rid, rewrite_messages(t.text), schema=REWRITE_SCHEMA,
                                           validator=rewrite_validator(t.text, self.extractor,
                                                                       t.params)))
        try:
            client = LLMClient(config)
        except ValueError as e:
            raise ConfigError(f"llm: {e}") from e
        with client:
            results = client.complete_many_sync(requests) if requests else []
            self.ctx.artifacts["llm"] = client.stats
        by_rec: dict[int, dict[int, Any]] = defaultdict(dict)
        for r in results:
            key, idx = where[r.id]
            by_rec[key][idx] = r
        made = {}
        for rec in chosen:
            candidates: dict[int, str | None] = {}
            failures: dict[int, tuple[str, str, str | None]] = {}
            for idx, r in sorted(by_rec[id(rec)].items()):
                if r.ok and isinstance(r.parsed, dict) and isinstance(r.parsed.get("rewrite"), str):
                    candidates[idx] = r.parsed["rewrite"]
                else:
                    failures[idx] = (r.reason or "llm_failed", r.detail,
                                     rejected_rewrite(r.rejected_text))
            child = self._apply_rewrites(op.name, rec, candidates, failures, model=config.model,
                                         prompt_hash=prompt_hash())
            if child is not None:
                made[id(rec)] = child
        return made

    def _apply_rewrites(self, op: str, rec: Conversation, candidates: dict[int, str | None],
                        failures: dict[int, tuple[str, str, str | None]],
                        **extra: Any) -> Conversation | None:
        turns = {t.index: t for t in user_turns(rec.messages)}
        if not turns:
            self.count(op, "kept:no_user_turn")
            return None
        accepted: dict[int, str] = {}
        reasons: list[str] = []
        for idx, turn in turns.items():
            if idx in failures:
                reason, detail, cand = failures[idx]
                # A rewrite the slot check rejected until the re-asks ran out is judged again
                # below, so its evidence reads the same as a rule rewrite's.
                why = judge_rewrite(turn.text, cand, self.extractor, turn.params) if cand else []
                if not why:
                    self.count_turn(op, f"failed:{reason}")
                    reasons.append(reason)
                    self.discarded.append({"record_id": rec.id, "op": op, "turn": idx,
                                           "original": turn.text, "rewrite": cand,
                                           "reasons": [reason], "detail": detail})
                    continue
            else:
                cand = candidates.get(idx)
                why = judge_rewrite(turn.text, cand, self.extractor, turn.params)
            if why:
                self.count_turn(op, f"failed:{why[0]}")
                reasons.append(why[0])
                if why != ["rewrite_unchanged"]:
                    self.discarded.append({
                        "record_id": rec.id, "op": op, "turn": idx, "original": turn.text,
                        "rewrite": cand, "reasons": why, "params": turn.params,
                        "slots_original": self.extractor.extract(turn.text).to_dict(),
                        "slots_rewrite": self.extractor.extract(cand or "").to_dict()})
                continue
            self.count_turn(op, "ok")
            accepted[idx] = cand  # type: ignore[assignment]
        if not accepted:
            # The record is kept as it is; say why its rewrite did not happen (the most common
            # turn-level reason, ties broken by name so the count is reproducible).
            top = sorted(Counter(reasons).items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
            self.count(op, f"kept:{top}")
            return None
        child = rec.derive(hotel_ops.derived_id(rec.id, op), op,
                           rewritten_turns=sorted(accepted), **extra)
        for idx, text in accepted.items():
            child.messages[idx].content = text
        return self._accept(op, child)
