"""``validate``: the output JSON Schema and semantic rules, the role order, then each corpus's rules.

A record that fails the schema or a semantic rule (:func:`dataprep.schema.output_problems`) is
rejected with the reason code of its first problem and a message that names the JSON pointer,
what was expected and what was found. The rules come after, each with its own reason code and a
mode, ``reject`` (the record goes to rejects.jsonl), ``flag`` (it is kept, and the code is added
to ``lineage.extra["flags"]``) or ``off``. The role-order rules apply to every record:

- ``first_turn_not_user`` (reject): the first message after an optional system one is a user's;
- ``consecutive_user`` (reject): no two user messages in a row (the first is never answered);
- ``tool_out_of_order`` (reject): a tool message follows a user, assistant or tool message;
- ``tool_not_followed_by_assistant`` (reject): what follows a tool message is an assistant one
  or another call (the lab data has 24 calls whose result nobody answers: the next turn is the
  user's correction);
- ``observation_out_of_order`` (reject): a bare observation follows an assistant or tool message.

Then the rules of the record's corpus (:class:`dataprep.corpora.base.Rule` classes declared by
each corpus package; their docstrings give the measured rates behind each default): SPO
``unknown_relation``, ``triple_not_in_text``; doc-QA ``answer_not_grounded``; hotel
``observation_violates_call`` (needs the hotel database), ``reply_mentions_no_result`` (flag).
A rule's options are given flat to this stage (``relations``, ``grounding_threshold``,
``grounding_ngram``, ``hotel_tool``).

Whose tool: a record that brings its own tool (``lineage.extra["tool_origin"] == "dataset"``, set by
the lab readers and the ChatGLM3 reader) is held to *its* tool's schema (the schema check above:
rejects), while the rules that judge it against our hotel_db (``semantic`` rules:
``observation_violates_call``, ``unknown_facility``) and ``tool_not_followed_by_assistant`` (still
learnable up to that point) use the ``dataset_tools`` mode instead of ``reject``: ``flag`` (default,
kept and counted per reason) or ``reject``. Records of our own tool (``ours``) keep every rule's
mode. ``observation_violates_call: repair`` re-runs the call on hotel_db (see
:mod:`dataprep.corpora.hotel.rules`); an ungrounded repair is rejected as ``repair_ungrounded``.

``Validate.stats``: ``valid``, ``flagged``, ``flags`` (reason -> count), ``repaired``, per rule ``{mode, checked, failed, rate}``, and each
rule's own detail rates (``relations``, ``triples``, ``grounding`` overall and by source file,
``reply_mentions``).

>>> Validate(grounding_threshold=0.6, rules={"triple_not_in_text": "flag"}).rules["consecutive_user"]
'reject'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dataprep import schema
from dataprep.corpora import rule_classes
from dataprep.corpora.base import NotApplicable, Problem, Rule
from dataprep.errors import ConfigError
from dataprep.record import Conversation
from dataprep.stages.base import RunContext, Stage, StageOptions

MODES = ("reject", "flag", "off")
REPAIR = "repair"
REPAIR_UNGROUNDED = "repair_ungrounded"
DATASET_TOOL_MODES = ("flag", "reject")
# Role-order rules that a dataset's own tool data may break and still be learnable.
DATASET_LENIENT_ROLE_RULES = ("tool_not_followed_by_assistant",)
ROLE_ORDER_RULES = ("first_turn_not_user", "consecutive_user", "tool_out_of_order",
                    "tool_not_followed_by_assistant", "observation_out_of_order")


def default_rules() -> dict[str, str]:
    """Rule -> default mode: the role-order rules, then every corpus's."""
    return {**dict.fromkeys(ROLE_ORDER_RULES, "reject"),
            **{cls.reason: cls.default_mode for cls in rule_classes()}}


def role_order_problems(roles: list[str]) -> list[tuple[str, str]]:
    """Ordering rules that the schema cannot express, as (reason, message).

    >>> role_order_problems(["user", "tool", "user", "assistant"])[0][0]
    'tool_not_followed_by_assistant'
    """
    out: list[tuple[str, str]] = []
    body = roles[1:] if roles[:1] == ["system"] else roles
    offset = len(roles) - len(body)
    if body and body[0] != "user":
        out.append(("first_turn_not_user",
                    f"/conversations/{offset}: expected the first turn to be a user message, "
                    f"found {body[0]!r}"))
    for i, role in enumerate(roles):
        prev = roles[i - 1] if i > 0 else None
        nxt = roles[i + 1] if i + 1 < len(roles) else None
        if role == "user" and prev == "user":
            out.append(("consecutive_user", f"/conversations/{i}: two user messages in a row; "
                        "the first one is never answered"))
        if role == "tool":
            # Back-to-back calls are valid ChatGLM3 (a second search after the first one's
            # result, e.g. CrossWOZ's relaxed constraints); a call answered by the user is not.
            if prev not in ("user", "assistant", "tool"):
                out.append(("tool_out_of_order", f"/conversations/{i}: a tool call must follow a "
                            f"user, assistant or tool message, found {prev or 'nothing'!r}"))
            if nxt is not None and nxt not in ("assistant", "tool"):
                out.append(("tool_not_followed_by_assistant",
                            f"/conversations/{i + 1}: expected an assistant message (or another "
                            f"call) after the tool call, found {nxt!r}"))
        if role == "observation" and prev not in ("assistant", "tool"):
            out.append(("observation_out_of_order", f"/conversations/{i}: an observation must "
                        f"follow an assistant or tool message, found {prev or 'nothing'!r}"))
    return out


def _rule_option_fields() -> list[tuple[str, Any, dataclasses.Field]]:
    """Every corpus rule's options, offered flat by this stage (a name declared by two rules,
    such as ``hotel_tool``, is one option for both)."""
    seen: dict[str, tuple[str, Any, dataclasses.Field]] = {}
    for cls in rule_classes():
        for f in dataclasses.fields(cls.Options):
            seen.setdefault(f.name, (f.name, Any, dataclasses.field(default=None)))
    return list(seen.values())


@dataclass
class _ValidateBase(StageOptions):
    rules: dict[str, str] | None = None
    dataset_tools: str = "flag"

    def __post_init__(self) -> None:
        defaults = default_rules()
        unknown = set(self.rules or {}) - set(defaults)
        if unknown:
            raise ConfigError(f"validate.rules: unknown rules {sorted(unknown)}; available: "
                              f"{', '.join(defaults)}")
        self.rules = {**defaults, **(self.rules or {})}
        repairable = {cls.reason for cls in rule_classes() if cls.repairable}
        for rule, mode in self.rules.items():
            allowed = MODES + ((REPAIR,) if rule in repairable else ())
            if mode not in allowed:
                raise ConfigError(f"validate.rules.{rule} must be one of {', '.join(allowed)}, "
                                  f"got {mode!r}")
        if self.dataset_tools not in DATASET_TOOL_MODES:
            raise ConfigError(f"validate.dataset_tools must be one of "
                              f"{', '.join(DATASET_TOOL_MODES)}, got {self.dataset_tools!r}")


# ``rules`` (rule -> reject|flag|off, merged over the defaults) plus the corpus rules' options,
# None meaning "the rule's default".
ValidateOptions = dataclasses.make_dataclass(
    "ValidateOptions", _rule_option_fields(), bases=(_ValidateBase,))


class Validate(Stage):
    """Options: ``rules`` and the corpus rules' options (see the module docstring). Resources:
    the hotel database (hotel records only)."""

    name = "validate"
    Options = ValidateOptions
    uses = ("hotel_db",)

    def setup(self) -> None:
        self.rules: dict[str, str] = dict(self.options.rules)  # type: ignore[attr-defined]
        given = {k: v for k, v in dataclasses.asdict(self.options).items()
                 if k != "rules" and v is not None}
        # The rules of each corpus, in declared order, without the ones switched off.
        self.corpus_rules: dict[str, list[Rule]] = {}
        for cls in rule_classes():
            if self.rules[cls.reason] == "off":
                continue
            names = {f.name for f in dataclasses.fields(cls.Options)}
            rule = cls(cls.Options(**{k: v for k, v in given.items() if k in names}),
                       self.resources)
            self.corpus_rules.setdefault(cls.corpus, []).append(rule)
        self.lenient = {*DATASET_LENIENT_ROLE_RULES,
                        *(cls.reason for cls in rule_classes() if cls.semantic)}
        self.by_reason = {r.reason: r for rules in self.corpus_rules.values() for r in rules}

    def mode(self, reason: str, rec: Conversation) -> str:
        """The mode of a rule for this record: a dataset's own tool turns a lenient rule's
        ``reject`` into ``dataset_tools``."""
        if reason == REPAIR_UNGROUNDED:
            return "reject"
        mode = self.rules[reason]
        if mode == "reject" and reason in self.lenient \
                and rec.lineage.extra.get("tool_origin") == "dataset":
            return self.options.dataset_tools  # type: ignore[attr-defined]
        return mode

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"rules": self.rules,
                             "dataset_tools": self.options.dataset_tools}  # type: ignore[attr-defined]
        for rules in self.corpus_rules.values():
            for rule in rules:
                d.update(dataclasses.asdict(rule.options))
        return d

    # -- bookkeeping --------------------------------------------------------------------------
    def _stats(self) -> dict[str, Any]:
        st = self.stats
        if "rules" not in st:
            st.update({"valid": 0, "flagged": 0, "flags": {}, "repaired": 0,
                       "rules": {r: {"mode": m, "checked": 0, "failed": 0, "rate": 0.0}
                                 for r, m in self.rules.items()}})
            for rules in self.corpus_rules.values():
                for rule in rules:
                    if rule.stats_key:
                        st[rule.stats_key] = rule.new_detail()
        return st

    def _count(self, st: dict[str, Any], rule: str, failed: bool) -> None:
        r = st["rules"][rule]
        r["checked"] += 1
        r["failed"] += int(failed)
        r["rate"] = round(r["failed"] / r["checked"], 6)

    # -- the stage ----------------------------------------------------------------------------
    def process(self, rec: Conversation, ctx: RunContext) -> Iterator[Conversation]:
        st = self._stats()
        problems = schema.output_problems(rec.to_chatglm3())
        if problems:
            reason, pointer, message = problems[0]
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            ctx.reject_record(rec, reason, f"{pointer}: {message}{more}", stage=self.name)
            return
        found = self._role_order(rec, st) + self._corpus(rec, st)
        found = self._repair(rec, found, st)
        rejects = [p for p in found if self.mode(p[0], rec) == "reject"]
        if rejects:
            reason, message = rejects[0]
            more = f" (+{len(rejects) - 1} more)" if len(rejects) > 1 else ""
            ctx.reject_record(rec, reason, message + more, stage=self.name)
            return
        flags = sorted({p[0] for p in found if self.mode(p[0], rec) == "flag"})
        if flags:
            st["flagged"] += 1
            for f in flags:
                st["flags"][f] = st["flags"].get(f, 0) + 1
            rec.lineage.extra["flags"] = sorted({*rec.lineage.extra.get("flags", []), *flags})
            # The first message per flag, for the report's examples.
            rec.lineage.extra["flag_messages"] = {
                **rec.lineage.extra.get("flag_messages", {}),
                **{r: m for r, m in reversed(found) if r in flags}}
        st["valid"] += 1
        yield rec

    def _repair(self, rec: Conversation, found: list[tuple[str, str]],
                st: dict[str, Any]) -> list[tuple[str, str]]:
        """Problems whose mode is ``repair`` are repaired, or become ``repair_ungrounded``."""
        out = []
        for reason, message in found:
            if self.mode(reason, rec) != REPAIR:
                out.append((reason, message))
                continue
            why = self.by_reason[reason].repair(rec)
            if why is None:
                st["repaired"] += 1
            else:
                out.append((REPAIR_UNGROUNDED, f"{why} (after repairing: {message})"))
        return out

    def _role_order(self, rec: Conversation, st: dict[str, Any]) -> list[tuple[str, str]]:
        if all(self.rules[r] == "off" for r in ROLE_ORDER_RULES):
            return []
        found = [p for p in role_order_problems([m.role for m in rec.messages])
                 if self.rules[p[0]] != "off"]
        failed = {p[0] for p in found}
        for rule in ROLE_ORDER_RULES:
            if self.rules[rule] != "off":
                self._count(st, rule, rule in failed)
        return found

    def _corpus(self, rec: Conversation, st: dict[str, Any]) -> list[tuple[str, str]]:
        found: list[tuple[tuple[int, ...], int, Problem]] = []
        for order, rule in enumerate(self.corpus_rules.get(rec.corpus or "", [])):
            detail = st.get(rule.stats_key) if rule.stats_key else {}
            verdict = rule.check(rec, detail if detail is not None else {})
            if isinstance(verdict, NotApplicable):
                continue
            self._count(st, rule.reason, verdict is not None)
            if verdict is not None:
                found.append((verdict.position, order, verdict))
        # In record order (where each problem is), ties in the rules' declared order.
        return [(p.reason, p.message) for _, _, p in sorted(found, key=lambda x: (x[0], x[1]))]
