"""Triple extraction from car-repair records (``{"text","answer"}`` and the re-keyed
``{"instruction","input","output"}`` variant).

The answer holds one triple per line, ``subject_relation_object``. Subjects and objects may contain
underscores themselves (part numbers, "左_前轮"), so a triple is split around the *relation*, which
must be one of the configured relations, not on the first underscore.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from dataprep.readers.base import Item, Reader
from dataprep.record import Conversation, Lineage, Message

RELATIONS = ("性能故障", "部件故障", "组成", "检测工具")
# Rarest first, as counted on the public spo_0 records (检测工具 17, 组成 155, 性能故障 337,
# 部件故障 4423 triples): a record is labelled by its rarest relation for stratification.
RARITY = ("检测工具", "组成", "性能故障", "部件故障")

DEFAULT_PROMPT = (
    "你现在是一个信息抽取模型，请你帮我抽取出关系内容为\"性能故障\", \"部件故障\", \"组成\"和"
    "\"检测工具\"的相关三元组，三元组内部用\"_\"连接，三元组之间用\\n分割。文本："
)

Triple = tuple[str, str, str]


def parse_triples(answer: str, relations: tuple[str, ...] = RELATIONS) -> tuple[list[Triple], list[str]]:
    """Split an answer into triples; returns (triples, lines that are not a triple).

    >>> parse_triples("发动机_部件故障_水温高\\n风扇_部件故障_低速转动")[0]
    [('发动机', '部件故障', '水温高'), ('风扇', '部件故障', '低速转动')]
    """
    triples: list[Triple] = []
    bad: list[str] = []
    for line in answer.replace("\\n", "\n").split("\n"):
        line = line.strip()
        if not line:
            continue
        found = None
        for rel in relations:
            marker = f"_{rel}_"
            idx = line.find(marker)
            if idx > 0 and idx + len(marker) < len(line):
                found = (line[:idx], rel, line[idx + len(marker):])
                break
        if found is None:
            parts = line.split("_")
            if len(parts) == 3 and all(parts):
                found = (parts[0], parts[1], parts[2])  # unknown relation: kept for validate
        if found is None:
            bad.append(line)
        else:
            triples.append(found)
    return triples, bad


def render_triples(triples: list[Triple]) -> str:
    return "\n".join("_".join(t) for t in triples)


class SpoReader(Reader):
    """Reads ``spo_*.json`` (JSON Lines despite the suffix).

    Options: ``prompt`` (the instruction put before the text), ``relations`` (the relation set;
    triples with other relations are kept here and judged by the validate stage),
    ``use_record_instruction`` (for the re-keyed layout, use each record's own instruction).
    """

    name = "spo"
    corpus = "spo"
    input_schema = "spo"

    def configure(self, prompt: str = DEFAULT_PROMPT, relations: list[str] | None = None,
                  use_record_instruction: bool = False) -> None:
        self.prompt = prompt
        self.relations = tuple(relations) if relations else RELATIONS
        self.use_record_instruction = use_record_instruction

    def read(self) -> Iterator[Item]:
        for line, value, text, rej in self.iter_json_lines():
            if rej is not None:
                yield rej
                continue
            yield self.convert(value, line, text)

    def convert(self, value: dict[str, Any], line: int, text: str | None) -> Item:
        if "text" in value:
            source_text, answer, prompt = value["text"], value["answer"], self.prompt
        else:
            source_text, answer = value["input"], value["output"]
            prompt = value.get("instruction") if self.use_record_instruction else self.prompt
            prompt = prompt or self.prompt
        if not source_text.strip():
            return self.make_reject("empty_text", "/text: expected non-empty text, found blanks",
                                    line, text=text)
        triples, bad = parse_triples(answer, self.relations)
        if bad:
            return self.make_reject(
                "malformed_triple",
                f"/answer: expected subject_relation_object per line, found {bad[0]!r}",
                line, text=text)
        if not triples:
            return self.make_reject("no_triples", "/answer: expected at least one triple, found none",
                                    line, text=text)
        rid = self.make_id(line)
        relations = sorted({t[1] for t in triples})
        return Conversation(
            id=rid,
            messages=[Message("user", prompt + source_text),
                      Message("assistant", render_triples(triples))],
            lineage=Lineage(source=self.source, line=line, group_id=rid),
            corpus=self.corpus,
            # Stratify on the rarest relation present so that scarce relations reach every split.
            label=min(relations, key=lambda r: (RARITY.index(r) if r in RARITY else -1, r)),
            meta={"text": source_text, "triples": [list(t) for t in triples],
                  "relations": relations},
        )
