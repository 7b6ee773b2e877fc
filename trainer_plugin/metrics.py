"""Pure scoring functions for evaluate: no model, no tokenizer, no files.

Definitions follow the hotel-dialog reference evaluation (format doc, section 5), so numbers are
comparable with its published results:

- text turns: character-level BLEU-4 (nltk ``sentence_bleu`` with smoothing method 3 on the
  stripped strings split into characters), averaged over turns; ROUGE-L F on characters too;
- tool-call turns: (parameter, value) pairs of the predicted call against the reference call,
  counted over the whole split (micro average); a list value counts one pair per element;
- a text answer where a tool call was expected scores no slot (its reference slots still count),
  a tool call where text was expected scores BLEU 0;
- triple extraction: one ``subject_relation_object`` per line, set-matched, micro-averaged.

>>> round(char_bleu4("我想订一家经济型酒店", "我想订一家经济型酒店"), 4)
1.0
>>> slot_counts({"type": "经济型", "facilities": ["wifi"]}, {"type": "经济型", "facilities": ["wifi", "停车场"]})
Counts(correct=2, predicted=2, reference=3)
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

TASKS = ("dialog", "triple", "docqa")


@dataclass(frozen=True)
class Reply:
    """One assistant turn, reference or generated: a text answer or a tool call.

    ``parameters`` is None for a tool call whose arguments could not be parsed.
    """

    kind: str
    text: str = ""
    name: str | None = None
    parameters: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("text", "tool"):
            raise ValueError(f"reply kind must be 'text' or 'tool', got {self.kind!r}")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "text": self.text}
        if self.kind == "tool":
            d["name"] = self.name
            d["parameters"] = self.parameters
        return d


@dataclass(frozen=True)
class Counts:
    """Matches between a predicted and a reference set; add them up over a split."""

    correct: int = 0
    predicted: int = 0
    reference: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.correct + other.correct, self.predicted + other.predicted,
                      self.reference + other.reference)

    def prf(self) -> dict[str, float]:
        """Precision, recall, F1 as fractions; 0 where a denominator is 0."""
        p = self.correct / self.predicted if self.predicted else 0.0
        r = self.correct / self.reference if self.reference else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        return {"precision": p, "recall": r, "f1": f}


def char_bleu4(hypothesis: str, reference: str) -> float:
    """Sentence BLEU-4 over characters, in [0, 1]; 0 when either side is empty."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    hyp, ref = list(hypothesis.strip()), list(reference.strip())
    if not hyp or not ref:
        return 0.0
    return float(sentence_bleu([ref], hyp, smoothing_function=SmoothingFunction().method3))


class _CharTokenizer:
    # rouge_score's default tokenizer keeps only [a-z0-9] and would drop every Chinese character.
    def tokenize(self, text: str) -> list[str]:
        return [c for c in text if not c.isspace()]


def char_rouge_l(hypothesis: str, reference: str) -> float:
    """ROUGE-L F-measure over characters (whitespace ignored), in [0, 1]."""
    from rouge_score.rouge_scorer import RougeScorer

    if not hypothesis.strip() or not reference.strip():
        return 0.0
    scorer = RougeScorer(["rougeL"], tokenizer=_CharTokenizer())
    return float(scorer.score(reference, hypothesis)["rougeL"].fmeasure)


def _canonical(value: Any) -> Any:
    # Dicts and lists are unhashable; 3 and 3.0 must stay equal (a model may write either).
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return value


def slot_pairs(parameters: Mapping[str, Any] | None) -> Counter:
    """The (parameter, value) pairs of a call; a list value gives one pair per element and a
    None value none (an unset slot)."""
    pairs: Counter = Counter()
    for key, value in (parameters or {}).items():
        values = value if isinstance(value, list) else [value]
        for v in values:
            if v is not None:
                pairs[(key, _canonical(v))] += 1
    return pairs


def slot_counts(predicted: Mapping[str, Any] | None, reference: Mapping[str, Any]) -> Counts:
    """Matching (parameter, value) pairs of one predicted call against its reference."""
    pred, ref = slot_pairs(predicted), slot_pairs(reference)
    return Counts(sum((pred & ref).values()), sum(pred.values()), sum(ref.values()))


def parse_triples(text: str) -> set[tuple[str, str, str]]:
    """``subject_relation_object`` lines to a set of triples; other lines are ignored.

    >>> sorted(parse_triples("发动机_部件故障_水温高\\n无关的话"))
    [('发动机', '部件故障', '水温高')]
    """
    triples = set()
    for line in text.splitlines():
        parts = [p.strip() for p in line.strip().split("_", 2)]
        if len(parts) == 3 and all(parts):
            triples.add((parts[0], parts[1], parts[2]))
    return triples


def triple_counts(predicted: str, reference: str) -> Counts:
    pred, ref = parse_triples(predicted), parse_triples(reference)
    return Counts(len(pred & ref), len(pred), len(ref))


@dataclass
class TurnScore:
    """Scores of one assistant turn; None where a metric does not apply to it."""

    task: str
    reference_kind: str
    predicted_kind: str
    bleu4: float | None = None
    rouge_l: float | None = None
    slots: Counts | None = None
    tool_name_correct: bool | None = None
    triples: Counts | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"predicted_kind": self.predicted_kind}
        for key in ("bleu4", "rouge_l", "tool_name_correct"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        for key in ("slots", "triples"):
            counts = getattr(self, key)
            if counts is not None:
                d[key] = {"correct": counts.correct, "predicted": counts.predicted,
                          "reference": counts.reference}
        return d


def score_turn(prediction: Reply, reference: Reply, task: str = "dialog") -> TurnScore:
    """Score one generated turn against its reference (section 5 of the format doc)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    score = TurnScore(task=task, reference_kind=reference.kind, predicted_kind=prediction.kind)
    if reference.kind == "tool":
        name_ok = prediction.kind == "tool" and prediction.name == reference.name
        score.tool_name_correct = name_ok
        counts = slot_counts(prediction.parameters if prediction.kind == "tool" else None,
                             reference.parameters or {})
        # Slots of a different tool do not fill this tool's slots (they still count as predicted).
        score.slots = counts if name_ok else Counts(0, counts.predicted, counts.reference)
        return score
    if prediction.kind == "tool":
        score.bleu4, score.rouge_l = 0.0, 0.0
    else:
        score.bleu4 = char_bleu4(prediction.text, reference.text)
        score.rouge_l = char_rouge_l(prediction.text, reference.text)
    if task == "triple":
        pred_text = prediction.text if prediction.kind == "text" else ""
        score.triples = triple_counts(pred_text, reference.text)
    return score


def _pct(x: float) -> float:
    return round(100.0 * x, 4)


@dataclass
class _Totals:
    turns: int = 0
    tool_turns: int = 0
    text_turns: int = 0
    tool_as_text: int = 0
    text_as_tool: int = 0
    names_correct: int = 0
    slots: Counts = field(default_factory=Counts)
    triples: Counts = field(default_factory=Counts)
    triple_turns: int = 0
    bleu: list[float] = field(default_factory=list)
    rouge: list[float] = field(default_factory=list)

    def add(self, s: TurnScore) -> None:
        self.turns += 1
        if s.reference_kind == "tool":
            self.tool_turns += 1
            self.tool_as_text += s.predicted_kind == "text"
            self.names_correct += bool(s.tool_name_correct)
            self.slots += s.slots or Counts()
        else:
            self.text_turns += 1
            self.text_as_tool += s.predicted_kind == "tool"
            self.bleu.append(s.bleu4 or 0.0)
            self.rouge.append(s.rouge_l or 0.0)
        if s.triples is not None:
            self.triple_turns += 1
            self.triples += s.triples

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {"turns": self.turns, "tool_turns": self.tool_turns,
                               "text_turns": self.text_turns}
        if self.tool_turns:
            prf = self.slots.prf()
            out.update(
                slot_precision=_pct(prf["precision"]), slot_recall=_pct(prf["recall"]),
                slot_f1=_pct(prf["f1"]),
                tool_name_accuracy=_pct(self.names_correct / self.tool_turns),
                tool_answered_as_text=self.tool_as_text,
                slots_correct=self.slots.correct, slots_predicted=self.slots.predicted,
                slots_reference=self.slots.reference,
            )
        if self.text_turns:
            out.update(bleu4=_pct(sum(self.bleu) / len(self.bleu)),
                       rouge_l=_pct(sum(self.rouge) / len(self.rouge)),
                       text_answered_as_tool=self.text_as_tool)
        if self.triple_turns:
            prf = self.triples.prf()
            out.update(triple_precision=_pct(prf["precision"]), triple_recall=_pct(prf["recall"]),
                       triple_f1=_pct(prf["f1"]))
        return out


def aggregate(scores: Iterable[TurnScore]) -> dict[str, Any]:
    """Split-level metrics in percent: overall, and per task when more than one is present.

    >>> s = score_turn(Reply("tool", name="f", parameters={"a": 1}), Reply("tool", name="f", parameters={"a": 1, "b": 2}))
    >>> aggregate([s])["slot_recall"]
    50.0
    """
    overall, by_task = _Totals(), {}
    for s in scores:
        overall.add(s)
        by_task.setdefault(s.task, _Totals()).add(s)
    out = {"scale": "percent", **overall.report()}
    if len(by_task) > 1:
        out["by_task"] = {task: t.report() for task, t in sorted(by_task.items())}
    elif by_task:
        out["task"] = next(iter(by_task))
    return out
