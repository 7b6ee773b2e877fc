"""The fine-tuning-lab readers on the whole real files, the duplicate/leak groups, broken lines,
strict mode, and the hotel config on the invented samples."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from dataprep import schema
from dataprep.config import load_config
from dataprep.convert import convert
from dataprep.corpora.hotel.hotel_db import SCENARIO_LABELS, HotelDB
from dataprep.corpora.hotel.lab import LabChatGLM3Reader, LabDialogReader
from dataprep.corpora.hotel.tools import HOTEL_TOOLS, LAB_SEARCH_HOTELS_TOOL, check_parameters
from dataprep.errors import StrictModeError
from dataprep.pipeline import Pipeline
from dataprep.record import MISSING, Conversation, Reject

REPO = Path(__file__).resolve().parents[4]
DATA = REPO / "data"
SAMPLE_DB = DATA / "hotel_db_sample.json"


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def lab_dir(corpora: Path) -> Path:
    return corpora / "crosswoz-hotel-finetune-lab"


@pytest.fixture(scope="module")
def raw_items(lab_dir: Path, hotel_db_path: Path) -> list:
    return list(LabDialogReader(lab_dir / "raw_dialogs.jsonl", hotel_db=str(hotel_db_path)).read())


@pytest.fixture(scope="module")
def train_items(lab_dir: Path, hotel_db_path: Path) -> list:
    return list(LabChatGLM3Reader(lab_dir / "train.chatglm3.jsonl",
                                  hotel_db=str(hotel_db_path)).read())


@pytest.fixture(scope="module")
def dev_items(lab_dir: Path, hotel_db_path: Path) -> list:
    return list(LabChatGLM3Reader(lab_dir / "dev.chatglm3.jsonl",
                                  hotel_db=str(hotel_db_path)).read())


def _convs(items: list) -> list[Conversation]:
    return [i for i in items if isinstance(i, Conversation)]


def _outcomes(items: list) -> Counter:
    return Counter("conversation" if isinstance(i, Conversation) else f"{i.kind}:{i.reason}"
                   for i in items)


# -- whole files: every record accounted for --------------------------------------------------

def test_raw_dialogs_counts(raw_items: list, lab_dir: Path) -> None:
    assert len(raw_items) == len(_lines(lab_dir / "raw_dialogs.jsonl")) == 3752
    # Nothing is lost: calls ending a dialogue are kept (they train the call), facility words the
    # synonym table cannot map stay as the user said them (the lab's tool allows free strings).
    assert _outcomes(raw_items) == {"conversation": 3752}
    assert [i.lineage.line if isinstance(i, Conversation) else i.line
            for i in raw_items] == list(range(1, 3753))


@pytest.mark.parametrize("name, expected", [
    ("train", {"conversation": 1602}),
    ("dev", {"conversation": 201}),
])
def test_chatglm3_counts(name: str, expected: dict, request: pytest.FixtureRequest,
                         lab_dir: Path) -> None:
    items = request.getfixturevalue(f"{name}_items")
    assert len(items) == len(_lines(lab_dir / f"{name}.chatglm3.jsonl"))
    assert _outcomes(items) == expected


@pytest.mark.parametrize("name", ["raw", "train", "dev"])
def test_every_output_line_is_valid(name: str, request: pytest.FixtureRequest) -> None:
    for c in _convs(request.getfixturevalue(f"{name}_items")):
        line = c.to_chatglm3()
        assert schema.output_problems(line) == [], c.id
        # The lab's own tool, declared by the record: its calls are judged against it.
        assert line["tools"] == [LAB_SEARCH_HOTELS_TOOL] and c.corpus == "hotel"
        assert c.lineage.extra["tool_origin"] == "dataset"
        assert c.label in SCENARIO_LABELS
        calls = [m.parameters for m in c.messages if m.role == "tool"]
        assert c.meta["calls"] == calls
        assert all(check_parameters(p, LAB_SEARCH_HOTELS_TOOL) == [] for p in calls)
        assert "hotel_tools" not in c.lineage.ops
        for m in c.messages:  # one shape per field
            for rec in m.observation if m.role == "tool" and isinstance(m.observation, list) \
                    else []:
                assert isinstance(rec["facilities"], list)
                assert rec["price"] is None or (isinstance(rec["price"], float)
                                                and rec["price"] >= 0)
        if name != "raw":
            assert "decode_tools" in c.lineage.ops


def test_labels_on_the_raw_dialogs(raw_items: list) -> None:
    assert Counter(c.label for c in _convs(raw_items)) == {
        "followup": 1219, "closing": 715, "facility": 677, "price": 533, "rating": 422,
        "name": 107, "type": 79}


def test_thoughts_are_kept_only_where_the_source_has_them(raw_items: list,
                                                          train_items: list) -> None:
    thought = "我需要使用search_hotels工具来查询酒店"
    assert not any(m.content == thought for c in _convs(raw_items) for m in c.messages)
    for c in _convs(train_items):
        for i, m in enumerate(c.messages):
            if m.role == "tool":
                assert c.messages[i - 1].content == thought


# -- repairs ------------------------------------------------------------------------------------

def test_trailing_tool_calls_are_kept(train_items: list, lab_dir: Path,
                                      hotel_db_path: Path) -> None:
    lines = _lines(lab_dir / "train.chatglm3.jsonl")
    ending = [i for i, line in enumerate(lines)
              if json.loads(line)["conversations"][-1]["role"] == "tool"]
    assert len(ending) == 330
    for i in ending:
        item = train_items[i]
        # The sample trains its last call: kept whole, the call without an observation.
        assert isinstance(item, Conversation) and item.messages[-1].role == "tool"
        assert item.messages[-1].observation is MISSING
        assert len(item.messages) == len(json.loads(lines[i])["conversations"])
    assert not any("cut_unanswered_tool_call" in c.lineage.ops for c in _convs(train_items))
    # The 24 mid-dialogue calls without a result keep MISSING too.
    missing = [m for c in _convs(train_items) for m in c.messages[:-1]
               if m.role == "tool" and m.observation is MISSING]
    assert len(missing) == 24
    # The old policies stay available.
    cut = Counter(i.reason if isinstance(i, Reject) else "kept" for i in LabChatGLM3Reader(
        lab_dir / "train.chatglm3.jsonl", hotel_db=str(hotel_db_path),
        unanswered_tool_call="cut").read())
    assert cut == {"kept": 1602 - 316, "unanswered_tool_call": 316}


def test_facility_paraphrases_are_normalised(raw_items: list, hotel_db_path: Path) -> None:
    db = HotelDB.load(hotel_db_path)
    rewritten = [c for c in _convs(raw_items) if "normalise_facilities" in c.lineage.ops]
    assert len(rewritten) == 823
    total = present = 0
    for c in rewritten:
        originals = c.lineage.extra["facilities_original"]
        assert originals and all(db.canonical_facility(k) == v for k, v in originals.items())
        for m in c.messages:
            if m.role != "tool" or not isinstance(m.observation, list):
                continue
            for fac in set(m.parameters.get("facilities", [])) & set(originals.values()):
                for rec in m.observation:
                    total += 1
                    present += fac in db.hotel(rec["hotel_id"]).facilities
    # The lab's own (embedding) search returned hotels having the mapped facility 96% of the time:
    # the mapping agrees with what the lab meant.
    assert total == 1172 and present / total > 0.95
    # Words with no unambiguous database name stay as said: the lab's tool allows free strings.
    kept = [c for c in _convs(raw_items) if "facilities_unmapped" in c.lineage.extra]
    assert len(kept) == 100
    unknown = Counter(f for c in kept for f in c.lineage.extra["facilities_unmapped"])
    assert {"wifi", "泳池", "停车场", "电风扇", "按摩"} <= set(unknown)
    assert all(db.canonical_facility(f) is None for f in unknown)
    for c in kept:
        calls = [f for m in c.messages if m.role == "tool" for f in m.parameters.get("facilities", [])]
        assert set(c.lineage.extra["facilities_unmapped"]) <= set(calls)


def test_unmapped_facilities_are_rejected_when_the_tool_forbids_them(lab_dir: Path,
                                                                     hotel_db_path: Path) -> None:
    items = list(LabDialogReader(lab_dir / "raw_dialogs.jsonl", hotel_db=str(hotel_db_path),
                                 tool_schema="ours").read())
    rejects = [r for r in items if isinstance(r, Reject)]
    assert Counter(r.reason for r in rejects) == {"unknown_facility": 100}
    assert all("does not allow free strings" in r.message and r.raw for r in rejects)
    assert all(c.tools == HOTEL_TOOLS for c in _convs(items))


def test_observation_mismatches_are_counted(raw_items: list, train_items: list) -> None:
    # The lab searched by embedding similarity; the validate stage rejects these records.
    assert sum(c.meta["observation_mismatches"] > 0 for c in _convs(raw_items)) == 492
    assert sum(c.meta["observation_mismatches"] > 0 for c in _convs(train_items)) == 230


def test_raw_dialogs_carry_their_source_file(raw_items: list, lab_dir: Path) -> None:
    first = raw_items[0]
    assert first.lineage.extra["source_path"] == "data/enhanced_hotel_data/0001.json"
    named = next(c for c in _convs(raw_items) if c.lineage.line == 3284)
    assert named.meta["dialogue_id"] == "data/enhanced_more/named.json#0"
    assert named.lineage.extra["item_index"] == 0


# -- duplicate and leak groups ------------------------------------------------------------------

def test_identical_records_share_a_group(train_items: list, raw_items: list,
                                         lab_dir: Path) -> None:
    for items, name in ((train_items, "train.chatglm3.jsonl"), (raw_items, "raw_dialogs.jsonl")):
        by_text: dict[str, set[str]] = {}
        for line, item in zip(_lines(lab_dir / name), items, strict=True):
            if isinstance(item, Conversation):
                by_text.setdefault(line, set()).add(item.lineage.group_id)
        assert all(len(groups) == 1 for groups in by_text.values())
    groups = Counter(c.lineage.group_id for c in _convs(train_items))
    # 4 identical pairs, and samples ending with a call share the group of the longer sample
    # they are a prefix of (same first user turn and first call).
    assert sum(n > 1 for n in groups.values()) == 21


def test_train_and_dev_copies_have_the_same_fate(train_items: list, dev_items: list,
                                                 lab_dir: Path) -> None:
    train = _lines(lab_dir / "train.chatglm3.jsonl")
    where = {line: i for i, line in enumerate(train)}
    pairs = [(where[line], j) for j, line in enumerate(_lines(lab_dir / "dev.chatglm3.jsonl"))
             if line in where]
    assert len(pairs) == 4
    for i, j in pairs:
        a, b = train_items[i], dev_items[j]
        assert type(a) is type(b)
        if isinstance(a, Conversation):
            assert a.lineage.group_id == b.lineage.group_id
        else:
            assert (a.kind, a.reason) == (b.kind, b.reason)


def test_the_same_dialogue_in_both_layouts_shares_a_group(raw_items: list, train_items: list,
                                                          dev_items: list) -> None:
    raw_groups = {c.lineage.group_id for c in _convs(raw_items)}
    assert sum(c.lineage.group_id in raw_groups for c in _convs(train_items)) == 1193
    assert sum(c.lineage.group_id in raw_groups for c in _convs(dev_items)) == 152


def test_sample_groups_across_layouts_and_duplicates() -> None:
    raw = list(LabDialogReader(DATA / "lab_dialogs_sample.jsonl", hotel_db=str(SAMPLE_DB)).read())
    glm = list(LabChatGLM3Reader(DATA / "lab_chatglm3_sample.jsonl",
                                 hotel_db=str(SAMPLE_DB)).read())
    assert raw[0].lineage.group_id == glm[0].lineage.group_id == glm[4].lineage.group_id
    assert glm[0].id != glm[4].id
    assert _outcomes(raw) == {"conversation": 9, "rejected:wrong_type": 1}
    assert _outcomes(glm) == {"conversation": 8, "rejected:malformed_json": 1,
                              "rejected:unexpected_tools": 1}
    assert glm[7].lineage.ops == []  # proper tool objects: nothing to decode


# -- broken lines and strict mode --------------------------------------------------------------

GOOD_DIALOG = [{"role": "user", "content": "找一家经济型酒店"},
               {"role": "search", "arguments": {"type": "经济型"}},
               {"role": "return", "records": []},
               {"role": "assistant", "content": "抱歉，没有找到。"}]

DIALOG_CASES: list[tuple[bytes, str | None]] = [
    (json.dumps(GOOD_DIALOG, ensure_ascii=False).encode(), None),
    (b'[{"role": "user", "content": "x"', "malformed_json"),
    (json.dumps({"role": "user"}).encode(), "wrong_type"),
    (json.dumps([{"role": "user", "content": 5}]).encode(), "wrong_type"),
    (json.dumps([{"role": "search"}]).encode(), "missing_field"),
    (json.dumps([{"role": "user", "content": None}]).encode(), "null_value"),
    (json.dumps([{"role": "system", "content": "x"}]).encode(), "invalid_value"),
    (json.dumps(GOOD_DIALOG, ensure_ascii=False).encode("gbk"), "undecodable_bytes"),
    (b"", "empty_line"),
    (json.dumps([GOOD_DIALOG[0], GOOD_DIALOG[2], GOOD_DIALOG[3]], ensure_ascii=False).encode(),
     "orphan_return"),
    (json.dumps([GOOD_DIALOG[0], {"role": "search", "arguments": {"type": "快捷型"}},
                 GOOD_DIALOG[3]], ensure_ascii=False).encode(), "invalid_tool_call"),
    (json.dumps([GOOD_DIALOG[3]], ensure_ascii=False).encode(), "no_user_turn"),
    (json.dumps(GOOD_DIALOG, ensure_ascii=False).encode(), None),
]

GLM_GOOD = {"tools": [json.dumps(HOTEL_TOOLS, ensure_ascii=False)],
            "conversations": [{"role": "user", "content": "找一家经济型酒店"},
                              {"role": "tool", "name": "search_hotels",
                               "parameters": {"type": "经济型"}, "observation": []},
                              {"role": "assistant", "content": "抱歉，没有找到。"}]}

GLM_CASES: list[tuple[bytes, str | None]] = [
    (json.dumps(GLM_GOOD, ensure_ascii=False).encode(), None),
    (b'{"tools": [], "conversations": [', "malformed_json"),
    (json.dumps({"tools": GLM_GOOD["tools"]}).encode(), "missing_field"),
    (json.dumps({**GLM_GOOD, "conversations": "hi"}).encode(), "wrong_type"),
    (json.dumps({**GLM_GOOD, "tools": ["[{not json"]}).encode(), "malformed_tools"),
    (json.dumps({**GLM_GOOD, "conversations": [{"role": "tool", "name": "search_hotels"}]}
                ).encode(), "missing_field"),
    (json.dumps(GLM_GOOD, ensure_ascii=False).encode("gbk"), "undecodable_bytes"),
    (json.dumps({**GLM_GOOD, "conversations": [
        GLM_GOOD["conversations"][0],
        {**GLM_GOOD["conversations"][1], "name": "book_hotel"}]}).encode(), "unknown_tool"),
    (json.dumps([GLM_GOOD]).encode(), "wrong_type"),
    (json.dumps(GLM_GOOD, ensure_ascii=False).encode(), None),
]


@pytest.mark.parametrize("reader, cases", [(LabDialogReader, DIALOG_CASES),
                                           (LabChatGLM3Reader, GLM_CASES)])
def test_broken_lines_become_rejects_and_reading_goes_on(reader: type, cases: list,
                                                         tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_bytes(b"\n".join(line for line, _ in cases) + b"\n")
    items = list(reader(path, hotel_db=str(SAMPLE_DB)).read())
    assert len(items) == len(cases)
    for n, (item, (_, reason)) in enumerate(zip(items, cases, strict=True), start=1):
        if reason is None:
            assert isinstance(item, Conversation) and item.lineage.line == n
        else:
            assert isinstance(item, Reject), n
            assert (item.reason, item.line, item.source) == (reason, n, str(path))
            assert item.message and (item.raw is not None or item.raw_base64)
    gbk = next(i for i in items if isinstance(i, Reject) and i.reason == "undecodable_bytes")
    assert "GBK" in gbk.message


def test_strict_mode_stops_at_the_first_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_bytes(b"\n".join(line for line, _ in DIALOG_CASES) + b"\n")
    with pytest.raises(StrictModeError,
                       match=r"broken\.jsonl:2: malformed JSON.*\[malformed_json\]"):
        convert("lab_dialog", path, tmp_path / "o.jsonl", hotel_db=str(SAMPLE_DB), strict=True)
    assert not (tmp_path / "o.jsonl").exists()  # nothing half-written
    result = convert("lab_chatglm3", DATA / "lab_chatglm3_sample.jsonl", tmp_path / "s.jsonl",
                     hotel_db=str(SAMPLE_DB))
    assert result.written == 8
    with pytest.raises(StrictModeError, match=r"lab_chatglm3_sample\.jsonl:7: "):
        convert("lab_chatglm3", DATA / "lab_chatglm3_sample.jsonl", tmp_path / "s.jsonl",
                hotel_db=str(SAMPLE_DB), strict=True)


# -- the hotel config on the samples --------------------------------------------------------

def test_hotel_config_runs_on_the_samples(tmp_path: Path) -> None:
    cfg = load_config(REPO / "configs" / "hotel.yaml")
    assert [s.reader for s in cfg.inputs] == ["crosswoz", "lab_dialog", "lab_chatglm3"]
    manifest = Pipeline(cfg).run(tmp_path / "out", progress=False)
    counts = manifest["counts"]
    assert counts["input"] == 13 + 10 + 10
    rejects = [json.loads(x) for x in _lines(tmp_path / "out" / "rejects.jsonl")]
    read = Counter(r["reason"] for r in rejects if r["stage"] == "read")
    assert read == {"wrong_type": 2, "malformed_json": 1, "unexpected_tools": 1,
                    "no_hotel_domain": 1, "hotel_not_separable": 1}
    assert counts["input"] - sum(counts["rejected"].values()) - sum(counts["removed"].values()) \
        + counts["added"] == counts["train"] + counts["dev"] + counts["test"] > 0
    written = []
    for split in ("train", "dev", "test"):
        written += [json.loads(x) for x in _lines(tmp_path / "out" / f"{split}.jsonl")]
    assert all(schema.output_problems(r) == [] for r in written)
    assert {r["corpus"] for r in written} == {"hotel"}


def test_facility_enum_option_shortens_the_tool_prompt_but_not_the_checks(
        repo_root: Path, tokenizer_dir: Path) -> None:
    from dataprep.corpora.hotel.crosswoz import CrossWOZReader
    from dataprep.corpora.hotel.lab import LabDialogReader
    from dataprep.corpora.hotel.tools import check_parameters
    from dataprep.tokenizer import load_tokenizer
    from trainer_plugin.encoding import tool_system_prompt

    db = str(repo_root / "data" / "hotel_db_sample.json")
    tok = load_tokenizer(tokenizer_dir)
    for cls, sample in ((LabDialogReader, "lab_dialogs_sample.jsonl"),
                        (CrossWOZReader, "crosswoz_sample.json")):
        # The lab reader writes our tool (and its enum) only when asked: tool_schema: ours.
        ours = {"tool_schema": "ours"} if cls is LabDialogReader else {}
        full = [c for c in cls(repo_root / "data" / sample, hotel_db=db, **ours).read()
                if isinstance(c, Conversation)]
        lean = [c for c in cls(repo_root / "data" / sample, hotel_db=db, facility_enum=False,
                               **ours).read() if isinstance(c, Conversation)]
        assert [c.messages for c in full] == [c.messages for c in lean]
        items = lean[0].tools[0]["parameters"]["properties"]["facilities"]["items"]
        assert "enum" not in items and "enum" in full[0].tools[0]["parameters"]["properties"][
            "facilities"]["items"]
        saved = (len(tok.encode(tool_system_prompt(full[0].tools)))
                 - len(tok.encode(tool_system_prompt(lean[0].tools))))
        assert saved > 300
    # Reading still checks calls against the full vocabulary.
    assert check_parameters({"facilities": ["会飞的床"]})
