"""Colloquial rewrites of user turns: offline rules from the phrase table, or an LLM.

Both produce candidate texts only; whether a candidate is kept is decided by the slot check in
:mod:`dataprep.corpora.hotel.slots`, so the two sources are judged by the same rule. For LLM
rewrites the check runs inside the LLM client as the answer validator (:func:`rewrite_validator`),
so a rewrite that fails it is sent back to the model with the reason instead of being thrown away.

>>> import random
>>> RuleRewriter().rewrite("你好，帮我找一家有国际长途电话的酒店。", random.Random(0))
'嗨，帮忙找一家可以打国际电话的酒店。'
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dataprep.corpora.hotel.phrases import (
    FACILITY_NOUN_REWRITES,
    FACILITY_VERB_REWRITES,
    FACILITY_VERBS,
    NUMBER_REWRITES,
    OPENER_REWRITES,
    TYPE_REWRITES,
)

Replacement = Callable[[re.Match[str], random.Random], str]

_CN = "零一二三四五六七八九"


def to_chinese_number(value: int) -> str | None:
    """Spoken Chinese for a whole number below 10000, or None when it has no short spoken form.

    Only round forms are produced (``500`` -> ``五百``, ``1100`` -> ``一千一``, ``250`` ->
    ``二百五``) because those are what people say for prices.

    >>> [to_chinese_number(n) for n in (500, 1100, 250, 1000, 1234, 30)]
    ['五百', '一千一', '二百五', '一千', None, None]
    """
    if value <= 0 or value >= 10000:
        return None
    thousands, rest = divmod(value, 1000)
    hundreds, rest2 = divmod(rest, 100)
    tens, ones = divmod(rest2, 10)
    if ones or (thousands and tens):
        return None
    if thousands:
        return _CN[thousands] + "千" + (_CN[hundreds] if hundreds else "")
    if hundreds:
        return _CN[hundreds] + "百" + (_CN[tens] if tens else "")
    return None


@dataclass(frozen=True)
class Rule:
    """One pattern with its alternatives; ``apply`` rewrites each match with a chosen one."""

    pattern: re.Pattern[str]
    alternatives: tuple[str, ...]

    def apply(self, text: str, rng: random.Random) -> str:
        def repl(m: re.Match[str]) -> str:
            alt = rng.choice(self.alternatives)
            for k, group in enumerate(m.groups(), start=1):
                if f"{{cn{k}}}" in alt:
                    cn = to_chinese_number(int(group)) if group and group.isdigit() else None
                    # No spoken form: keep the digits rather than skip the rule, so the RNG
                    # stream (and every later choice) does not depend on the number.
                    alt = alt.replace(f"{{cn{k}}}", cn or group or "")
            return m.expand(alt)

        return self.pattern.sub(repl, text)


def _facility_rules() -> list[Rule]:
    verbs = "|".join(sorted(FACILITY_VERBS, key=len, reverse=True))
    rules = []
    # Longest canonical first, with a look-ahead against a longer canonical that starts the same
    # (早餐服务 must not eat the front of 早餐服务免费).
    for canon in sorted(FACILITY_VERB_REWRITES, key=len, reverse=True):
        # A modal before the verb is consumed too: "能提供行李寄存" must not become "能能存行李".
        pat = re.compile(f"(?:能|可以)?(?:{verbs}){re.escape(canon)}(?!免费|服务|设施|处)")
        rules.append(Rule(pat, tuple(FACILITY_VERB_REWRITES[canon])))
    for canon in sorted(FACILITY_NOUN_REWRITES, key=len, reverse=True):
        # Sorted: a set's order depends on PYTHONHASHSEED, and the pattern text goes into
        # rules_hash (the lineage of every rule rewrite), which must not change between runs.
        pat = re.compile(f"(?<![{''.join(sorted(set(''.join(FACILITY_VERBS))))}]){re.escape(canon)}"
                         "(?!免费|服务|设施|处)")
        rules.append(Rule(pat, tuple(FACILITY_NOUN_REWRITES[canon])))
    return rules


def default_rules() -> list[Rule]:
    """The phrase-table rules in the order they run: facilities, types, numbers, openers."""
    table: list[tuple[str, list[str]]] = [*TYPE_REWRITES, *NUMBER_REWRITES, *OPENER_REWRITES]
    return [*_facility_rules(), *(Rule(re.compile(p), tuple(a)) for p, a in table)]


class RuleRewriter:
    """Offline colloquial rewriter: applies each matching phrase-table rule with probability
    ``rule_prob`` and picks one alternative per match; needs no endpoint.

    >>> RuleRewriter(rule_prob=0.0).rewrite("帮我找一家经济型酒店", random.Random(1))
    '帮我找一家经济型酒店'
    """

    def __init__(self, rules: Sequence[Rule] | None = None, rule_prob: float = 0.8) -> None:
        if not 0.0 <= rule_prob <= 1.0:
            raise ValueError(f"rule_prob must be between 0 and 1, got {rule_prob}")
        self.rules = list(default_rules() if rules is None else rules)
        self.rule_prob = rule_prob

    def rewrite(self, text: str, rng: random.Random) -> str:
        out = text
        for rule in self.rules:
            # Draw for every rule, matching or not, so that editing one rule's alternatives does
            # not reshuffle the choices of all later rules.
            take = rng.random() < self.rule_prob
            if take and rule.pattern.search(out):
                out = rule.apply(out, rng)
        return out


# -- LLM rewrites ---------------------------------------------------------------------------------

REWRITE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"rewrite": {"type": "string", "minLength": 1}},
    "required": ["rewrite"],
}

REWRITE_SYSTEM_PROMPT = (
    "你是中文口语改写助手。用户会给你酒店预订对话中顾客说的一句话，请把它改写成更口语化、更自然的说法。\n"
    "要求：\n"
    "1. 必须保留原句中的所有条件：数字（价格、评分）及其含义（以上/以下/之间）、酒店名称（一字不改）、"
    "酒店类型（经济型/舒适型/高档型/豪华型）和每一项设施要求；不得增加或删除任何条件。\n"
    "2. 只改说法，不改意思；不要回答问题，不要添加解释。\n"
    '3. 只输出一个 JSON 对象：{"rewrite": "改写后的句子"}。\n'
    "示例：\n"
    '原句：找一家有国际长途电话的酒店\n输出：{"rewrite": "找一家能打国际长途的酒店"}\n'
    '原句：帮我推荐一个价格在300-400元之间的经济型酒店，谢谢。\n'
    '输出：{"rewrite": "给我推荐个三四百块钱的经济型酒店呗，300到400之间的就行，谢啦。"}'
)


def rewrite_messages(utterance: str) -> list[dict[str, str]]:
    """The chat request for one user turn: the instruction as system message, the utterance
    alone as user message (so a cached answer is reused for every identical utterance).

    >>> rewrite_messages("你好")[1]
    {'role': 'user', 'content': '你好'}
    """
    return [{"role": "system", "content": REWRITE_SYSTEM_PROMPT},
            {"role": "user", "content": utterance}]


def prompt_hash(system_prompt: str = REWRITE_SYSTEM_PROMPT,
                schema: dict[str, Any] | None = None) -> str:
    """Short sha256 of the prompt template and the answer schema, recorded in the lineage of
    every LLM-derived record so that a changed prompt is visible in the data.

    >>> len(prompt_hash())
    12
    """
    payload = json.dumps({"system": system_prompt, "schema": schema or REWRITE_SCHEMA},
                         sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:12]


# -- judging a rewrite ----------------------------------------------------------------------------

MIN_LENGTH_RATIO = 0.3
MAX_LENGTH_RATIO = 3.0


@dataclass(frozen=True)
class UserTurn:
    """A user message of a dialog and the tool call that answers it, if any."""

    index: int
    text: str
    params: dict[str, Any] | None


def user_turns(messages: Sequence[Any]) -> list[UserTurn]:
    """The user turns of a message list, each with the parameters of the first tool call
    before the next user turn (None when the turn is answered without a call).

    >>> from dataprep.record import Message
    >>> user_turns([Message("user", "找经济型"), Message("assistant", "我需要使用search_hotels工具来查询酒店"),
    ...             Message("tool", name="search_hotels", parameters={"type": "经济型"}),
    ...             Message("assistant", "推荐如家。")])[0].params
    {'type': '经济型'}
    """
    out = []
    for i, m in enumerate(messages):
        if m.role != "user" or not isinstance(m.content, str) or not m.content.strip():
            continue
        params = None
        for nxt in messages[i + 1:]:
            if nxt.role == "user":
                break
            if nxt.role == "tool":
                params = nxt.parameters if isinstance(nxt.parameters, dict) else None
                break
        out.append(UserTurn(i, m.content, params))
    return out


def judge_rewrite(original: str, rewrite: str | None, extractor: Any,
                  params: dict[str, Any] | None = None) -> list[str]:
    """Why a candidate rewrite of a user turn must be discarded; empty when it is usable.

    Reasons: ``rewrite_unchanged`` (empty or identical), ``rewrite_length_ratio`` (under 0.3x or
    over 3x the original: a summary or an answer, not a rewrite), then the slot reasons of
    :meth:`SlotExtractor.check`.

    >>> from dataprep.corpora.hotel.slots import SlotExtractor
    >>> judge_rewrite("500元以内的酒店", "五百块以内的酒店", SlotExtractor())
    []
    >>> judge_rewrite("500元以内的酒店", "便宜点的酒店", SlotExtractor())
    ['slot_number_changed']
    """
    if rewrite is None or not rewrite.strip() or rewrite.strip() == original.strip():
        return ["rewrite_unchanged"]
    ratio = len(rewrite.strip()) / max(1, len(original.strip()))
    if not MIN_LENGTH_RATIO <= ratio <= MAX_LENGTH_RATIO:
        return ["rewrite_length_ratio"]
    return extractor.check(original, rewrite, params)


# What the model is told when its rewrite fails a check; the reason code is added for the log.
REWRITE_FEEDBACK: dict[str, str] = {
    "rewrite_unchanged": "改写为空或与原句完全相同，请换一种更口语化的说法",
    "rewrite_length_ratio": "改写比原句长太多或短太多；只改说法，不要增删内容，也不要回答问题",
}
SLOT_FEEDBACK = ("改写改变或遗漏了原句中的条件；数字（价格、评分）及其含义、酒店名称、酒店类型和每一项设施"
                 "都必须与原句一致，不得增加或删除")


def rewrite_validator(original: str, extractor: Any,
                      params: dict[str, Any] | None = None) -> Callable[[Any], None]:
    """The LLM client's answer validator for a rewrite of ``original``: the same
    :func:`judge_rewrite` as for rule rewrites, raised as ``OutputRejected`` whose reason is the
    first failing reason (so the client counts re-asks and failures by slot reason).

    >>> from dataprep.corpora.hotel.slots import SlotExtractor
    >>> check = rewrite_validator("500元以内的酒店", SlotExtractor())
    >>> check({"rewrite": "五百块以内的酒店"})
    >>> check({"rewrite": "便宜点的酒店"})
    Traceback (most recent call last):
    ...
    dataprep.llm.answers.OutputRejected: 改写改变或遗漏了原句中的条件；数字（价格、评分）及其含义、酒店名称、酒店类型和每一项设施都必须与原句一致，不得增加或删除 (slot_number_changed)
    """
    from dataprep.llm.answers import OutputRejected  # the LLM layer loads only when it is used

    def check(answer: Any) -> None:
        why = judge_rewrite(original, answer["rewrite"], extractor, params)
        if why:
            feedback = REWRITE_FEEDBACK.get(why[0], SLOT_FEEDBACK)
            raise OutputRejected(f"{feedback} ({', '.join(why)})", reason=why[0])

    return check


def rejected_rewrite(answer: str | None) -> str | None:
    """The ``rewrite`` string of an answer the checks rejected (evidence), or None.

    >>> rejected_rewrite('{"rewrite": "便宜点的酒店"}'), rejected_rewrite("没有 JSON")
    ('便宜点的酒店', None)
    """
    from dataprep.llm.answers import extract_json

    try:
        value = extract_json(answer or "")
    except ValueError:
        return None
    rewrite = value.get("rewrite") if isinstance(value, dict) else None
    return rewrite if isinstance(rewrite, str) else None


def rules_hash(rules: Sequence[Rule] | None = None) -> str:
    """Short sha256 of the phrase-table rules, recorded in the lineage of rule rewrites.

    >>> len(rules_hash())
    12
    """
    payload = json.dumps([[r.pattern.pattern, list(r.alternatives)]
                          for r in (default_rules() if rules is None else rules)],
                         ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:12]
