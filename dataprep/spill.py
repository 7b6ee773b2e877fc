"""A disk-backed record store for the stages that need every record (dedup, split, balance).

Such a stage appends each record as it streams past and keeps in memory only what its decisions
need (ids, sample keys, labels, group ids; the record's number in the store is its position in
those lists); once the stream has ended it reads the records back, in input order or by number,
to yield them or to keep them as evidence. So a run holds at most a few small fields per record,
never the corpus of :class:`~dataprep.record.Conversation` objects.

The store is one SQLite file (the standard library's ``sqlite3``): record number -> blob. SQLite
is the well-kept library that gives appends, random reads by number and ordered scans with its
own B-tree, so nothing about the layout is written by hand and no offsets are held in memory.
The file is scratch data of one run: no journal, no fsync.

Each record is stored as a pickle. Pickle, not JSON: the store holds our own dataclasses, written
and read back by the same process within one run, in the run's own folder, so nothing untrusted
is ever unpickled; and it restores the record exactly (``meta`` holds whatever the reader parsed:
tuples, integer keys, the ``MISSING`` observation sentinel, all of which a JSON round trip would
change), and faster than ``to_chatglm3``/``from_chatglm3``, which also drop ``meta`` and ``split``.

Where it lives: :meth:`dataprep.stages.base.RunContext.record_store` puts each store under the
generation folder's hidden :data:`SPILL_DIR`; a stage closes (deletes) its store when its stream
ends, and the pipeline removes the folder before the generation is swapped in, so a finished run
never contains it. A killed run leaves it inside its ``OUT.tmp-<pid>`` generation, which the next
run removes (:mod:`dataprep.run_folder`).

>>> with RecordStore(tmp / "s.sqlite") as store:  # doctest: +SKIP
...     n = store.append(rec)
...     store.get(n) == rec, [r.id for r in store]
(True, ['spo:1'])
"""

from __future__ import annotations

import contextlib
import pickle
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dataprep.record import Conversation

SPILL_DIR = ".spill"
"""The hidden folder of a generation that holds its record stores while the run streams."""

_BATCH = 2048  # appends buffered per INSERT transaction
_SCAN = 4096  # rows fetched per read of an ordered scan


class RecordStore:
    """Records appended in order, read back by number (0, 1, ...) or all in order.

    The file is created on construction and deleted by :meth:`close` (also on ``with`` exit)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        self._db: sqlite3.Connection | None = sqlite3.connect(self.path, isolation_level=None)
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "temp_store=MEMORY",
                       "cache_size=-8192"):  # an 8 MB page cache: the rest stays on disk
            self._db.execute(f"PRAGMA {pragma}")
        self._db.execute("CREATE TABLE records (n INTEGER PRIMARY KEY, data BLOB NOT NULL)")
        self._pending: list[tuple[int, bytes]] = []
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def append(self, rec: Conversation) -> int:
        """Store ``rec``; returns its number."""
        n = self._n
        self._pending.append((n, pickle.dumps(rec, protocol=pickle.HIGHEST_PROTOCOL)))
        self._n += 1
        if len(self._pending) >= _BATCH:
            self._flush()
        return n

    def get(self, n: int) -> Conversation:
        """The record number ``n``, as a fresh object."""
        row = self._conn().execute("SELECT data FROM records WHERE n = ?", (n,)).fetchone()
        if row is None:
            raise IndexError(f"record store {self.path.name}: no record {n} (holds {self._n})")
        return pickle.loads(row[0])

    def __iter__(self) -> Iterator[Conversation]:
        """Every record in the order appended, read in chunks (never all at once)."""
        db, last = self._conn(), -1
        while True:
            rows = db.execute("SELECT n, data FROM records WHERE n > ? ORDER BY n LIMIT ?",
                              (last, _SCAN)).fetchall()
            if not rows:
                return
            for _, data in rows:
                yield pickle.loads(data)
            last = rows[-1][0]

    def close(self) -> None:
        """Delete the store (safe to call twice)."""
        if self._db is not None:
            self._db.close()
            self._db = None
        self._pending.clear()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def __enter__(self) -> RecordStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _conn(self) -> sqlite3.Connection:
        self._flush()
        assert self._db is not None, "the record store is closed"
        return self._db

    def _flush(self) -> None:
        if self._pending and self._db is not None:
            self._db.execute("BEGIN")  # one transaction per batch of appends
            self._db.executemany("INSERT INTO records VALUES (?, ?)", self._pending)
            self._db.execute("COMMIT")
            self._pending.clear()
