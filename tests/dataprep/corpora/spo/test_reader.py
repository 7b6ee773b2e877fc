from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from dataprep import schema
from dataprep.corpora.spo.reader import SpoReader, parse_triples, render_triples
from dataprep.record import Conversation, Reject


def test_whole_real_file(corpora: Path) -> None:
    items = list(SpoReader(corpora / "spo-repair-records" / "spo_0.subset.json").read())
    assert len(items) == 1141
    convs = [i for i in items if isinstance(i, Conversation)]
    rejects = [i for i in items if isinstance(i, Reject)]
    assert Counter(r.reason for r in rejects) == {"no_triples": 16}
    assert all(r.line is not None and r.raw for r in rejects)
    relations = Counter(t[1] for c in convs for t in c.meta["triples"])
    assert set(relations) == {"性能故障", "部件故障", "组成", "检测工具"}
    for c in convs:
        assert schema.output_problems(c.to_chatglm3()) == []
        assert c.messages[0].content.endswith(c.meta["text"])
        # The assistant target renders the parsed triples back exactly.
        assert parse_triples(c.messages[1].content)[0] == [tuple(t) for t in c.meta["triples"]]


@pytest.mark.parametrize("answer, triples, bad", [
    ("发动机_部件故障_水温高\n风扇_部件故障_低速转动",
     [("发动机", "部件故障", "水温高"), ("风扇", "部件故障", "低速转动")], []),
    ("左_前轮_部件故障_异响", [("左_前轮", "部件故障", "异响")], []),  # underscore in subject
    ("A_组成_B\\nC_检测工具_D", [("A", "组成", "B"), ("C", "检测工具", "D")], []),  # literal \n
    ("没有分隔", [], ["没有分隔"]),
    ("A_部件故障_", [], ["A_部件故障_"]),
])
def test_parse_triples(answer: str, triples: list, bad: list) -> None:
    assert parse_triples(answer) == (triples, bad)


def test_rekeyed_layout_and_prompt_option(tmp_path: Path) -> None:
    p = tmp_path / "r.jsonl"
    p.write_text('{"instruction": "抽取：", "input": "水泵漏水。", "output": "水泵_部件故障_漏水"}\n',
                 encoding="utf-8")
    (conv,) = SpoReader(p, prompt="P:").read()
    assert conv.messages[0].content == "P:水泵漏水。"
    (conv,) = SpoReader(p, use_record_instruction=True).read()
    assert conv.messages[0].content == "抽取：水泵漏水。"
    assert render_triples([("水泵", "部件故障", "漏水")]) == conv.messages[1].content
