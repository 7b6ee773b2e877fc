"""The report's "Flags" section: records a validate rule flagged instead of rejecting (kept; e.g. a
dataset's own tool disagreeing with hotel_db), per reason, with a few examples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dataprep.record import lineage_extra

SPLITS = ("train", "dev", "test")


def flag_rows(out: Path, validate: dict[str, Any] | None,
              examples: int = 3) -> list[dict[str, Any]]:
    """Per flag reason: validate's count (``flags`` in its stats), the flagged lines written to
    the splits, and up to ``examples`` written examples with the rule's message. Most frequent
    first."""
    counts = (validate or {}).get("flags") or {}
    rows = {r: {"reason": r, "count": n, "written": 0, "examples": []}
            for r, n in counts.items()}
    for split in SPLITS:
        path = Path(out) / f"{split}.jsonl"
        if not path.is_file():
            continue
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                d = json.loads(line)
                try:
                    extra = lineage_extra(d.get("lineage"))
                except ValueError:
                    extra = {}
                for reason in extra.get("flags") or []:
                    row = rows.setdefault(reason, {"reason": reason, "count": 0, "written": 0,
                                                   "examples": []})
                    row["written"] += 1
                    if len(row["examples"]) < examples:
                        row["examples"].append({
                            "id": d.get("id"), "split": split,
                            "message": (extra.get("flag_messages") or {}).get(reason, "")})
    return sorted(rows.values(), key=lambda r: (-r["count"], r["reason"]))
