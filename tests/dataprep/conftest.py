"""Fixtures of the augmentation tests: the real hotel database, real lab dialogs read by the lab
readers, and real doc-QA records read by the doc-QA readers."""

from __future__ import annotations

from pathlib import Path

import pytest

from dataprep.corpora.hotel.hotel_db import HotelDB
from dataprep.corpora.hotel.lab import LabChatGLM3Reader, LabDialogReader
from dataprep.corpora.hotel.slots import SlotExtractor
from dataprep.record import Conversation


def conversations(items: list) -> list[Conversation]:
    return [i for i in items if isinstance(i, Conversation)]


@pytest.fixture(scope="session")
def hotel_db(hotel_db_path: Path) -> HotelDB:
    return HotelDB.load(hotel_db_path)


@pytest.fixture(scope="session")
def extractor(hotel_db: HotelDB) -> SlotExtractor:
    return SlotExtractor.from_db(hotel_db)


@pytest.fixture(scope="session")
def lab_train_path(corpora: Path) -> Path:
    return corpora / "crosswoz-hotel-finetune-lab" / "train.chatglm3.jsonl"


@pytest.fixture(scope="session")
def lab_records(lab_train_path: Path, hotel_db_path: Path) -> list[Conversation]:
    """Every conversation the lab_chatglm3 reader makes of the lab's train file (1262)."""
    reader = LabChatGLM3Reader(lab_train_path, hotel_db=str(hotel_db_path))
    return conversations(list(reader.read()))


@pytest.fixture(scope="session")
def raw_records(corpora: Path, hotel_db_path: Path) -> list[Conversation]:
    """The first 400 dialogs of the lab's raw dialogs (no assistant "thought" turns)."""
    reader = LabDialogReader(corpora / "crosswoz-hotel-finetune-lab" / "raw_dialogs.jsonl",
                             hotel_db=str(hotel_db_path))
    out = []
    for item in reader.read():
        if isinstance(item, Conversation):
            out.append(item)
            if len(out) == 400:
                break
    return out
