"""Feed a `dataprep export --to llamafactory` folder through LLaMA-Factory's own data code.

For every entry of DIR/dataset_info.json this runs, from an isolated LLaMA-Factory install
(`pip install --no-deps --target PATH llamafactory==0.9.5`; `make test` puts it in
.venv/llamafactory):

1. `llamafactory.data.parser.get_dataset_list` on the folder (our dataset_info.json entry);
2. `datasets.load_dataset` on the entry's file, as LLaMA-Factory's loader does for `file` entries;
3. `llamafactory.data.converter.align_dataset` (the real conversion step): a sample is usable
   when it keeps a prompt and a response. For each skipped sample the converter's own warning
   is captured as the reason;
4. for usable samples with tools, the `function_call` turns and the `tools` column go through
   LLaMA-Factory's `FunctionFormatter`/`ToolFormatter` with the tool format of its `chatglm3`
   and `glm4` templates (`glm4`), which is where a malformed call or a parallel call fails.

    python bench/interop_check.py out/hotel/export/llamafactory [--lf .venv/llamafactory]

Only the package `__init__` files that pull in training code (torchaudio, model loaders) are
bypassed: `llamafactory.data` and `llamafactory.hparams` are registered as bare namespace
modules so that `converter.py`, `parser.py`, `formatter.py` and `data_args.py` import alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import types
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LF = ROOT / ".venv" / "llamafactory"
LF_VERSION = "0.9.5"


def find_llamafactory(path: str | Path | None = None) -> Path | None:
    """The isolated install to use: ``path``, $DATAPREP_LLAMAFACTORY, or .venv/llamafactory."""
    for cand in (path, os.environ.get("DATAPREP_LLAMAFACTORY"), DEFAULT_LF):
        if cand and (Path(cand) / "llamafactory" / "data" / "converter.py").is_file():
            return Path(cand)
    return None


def load_llamafactory(target: Path) -> types.SimpleNamespace:
    """LLaMA-Factory's parser, converter, formatter modules and DataArguments from ``target``."""
    if str(target) not in sys.path:
        sys.path.insert(0, str(target))
    os.environ.setdefault("DISABLE_VERSION_CHECK", "1")
    import llamafactory

    pkg_root = Path(llamafactory.__file__).parent
    for sub in ("data", "hparams"):
        name = f"llamafactory.{sub}"
        if name not in sys.modules:
            mod = types.ModuleType(name)
            mod.__path__ = [str(pkg_root / sub)]
            sys.modules[name] = mod
    import llamafactory.data.converter as converter
    import llamafactory.data.formatter as formatter
    import llamafactory.data.parser as parser
    from llamafactory.extras.constants import FILEEXT2TYPE
    from llamafactory.hparams.data_args import DataArguments

    return types.SimpleNamespace(version=getattr(llamafactory, "__version__", "?"),
                                 converter=converter, parser=parser, formatter=formatter,
                                 DataArguments=DataArguments, FILEEXT2TYPE=FILEEXT2TYPE)


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _why(messages: list[str]) -> str:
    for m in messages:
        if m.startswith("Invalid role tag"):
            return "Invalid role tag"
        if m.startswith("Invalid message count"):
            return "Invalid message count"
    return messages[0][:80] if messages else "empty prompt or response"


def check_export(export_dir: str | Path, lf: types.SimpleNamespace,
                 tool_format: str = "glm4") -> dict[str, Any]:
    """Per dataset entry: total, usable, skipped (id and why), call-format failures."""
    import datasets

    export_dir = Path(export_dir)
    info = json.loads((export_dir / "dataset_info.json").read_text(encoding="utf-8"))
    attrs = lf.parser.get_dataset_list(list(info), str(export_dir))
    data_args = lf.DataArguments(dataset_dir=str(export_dir))
    training_args = types.SimpleNamespace(local_process_index=0)
    func_fmt = lf.formatter.FunctionFormatter(slots=["{{content}}"], tool_format=tool_format)
    tool_fmt = lf.formatter.ToolFormatter(tool_format=tool_format)
    lf_logger = logging.getLogger("llamafactory")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as cache:
        # get_dataset_list returns one DatasetAttr per name, in the order given.
        for name, attr in zip(info, attrs, strict=True):
            path = os.path.join(data_args.dataset_dir, attr.dataset_name)
            kind = lf.FILEEXT2TYPE[os.path.splitext(path)[-1][1:]]
            ds = datasets.load_dataset(kind, data_files=[path], split=attr.split, cache_dir=cache)
            converter = lf.converter.get_dataset_converter(attr.formatting, attr, data_args)
            res: dict[str, Any] = {"total": len(ds), "usable": 0, "skipped": [],
                                   "call_format_errors": [], "calls_formatted": 0}
            handler = _Capture()
            lf_logger.addHandler(handler)
            try:
                for i, example in enumerate(ds):
                    handler.messages.clear()
                    out = converter(example)
                    if out["_prompt"] and out["_response"]:
                        res["usable"] += 1
                    else:
                        res["skipped"].append({"index": i, "id": example.get("id"),
                                               "why": _why(handler.messages)})
                        continue
                    try:
                        if out["_tools"]:
                            tool_fmt.apply(content=out["_tools"])
                        for turn in out["_prompt"] + out["_response"]:
                            if turn["role"] == "function":
                                func_fmt.apply(content=turn["content"])
                                res["calls_formatted"] += 1
                    except (RuntimeError, ValueError, KeyError, TypeError) as e:
                        res["call_format_errors"].append({"index": i, "id": example.get("id"),
                                                          "why": str(e)[:120]})
            finally:
                lf_logger.removeHandler(handler)
            # The real batch step as well, so that the column handling of align_dataset is covered.
            aligned = lf.converter.align_dataset(ds, attr, data_args, training_args)
            res["aligned_usable"] = sum(1 for p, r in zip(aligned["_prompt"], aligned["_response"],
                                                          strict=True) if p and r)
            res["why_counts"] = dict(Counter(s["why"] for s in res["skipped"]))
            results[name] = res
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("export_dir", nargs="+", help="folder(s) written by --to llamafactory")
    ap.add_argument("--lf", help=f"isolated llamafactory=={LF_VERSION} install "
                    "(default: $DATAPREP_LLAMAFACTORY or .venv/llamafactory)")
    args = ap.parse_args()
    target = find_llamafactory(args.lf)
    if target is None:
        raise SystemExit("no isolated LLaMA-Factory found; install it with: pip install "
                         f"--no-deps --target .venv/llamafactory llamafactory=={LF_VERSION}")
    lf = load_llamafactory(target)
    import datasets

    datasets.disable_progress_bars()
    logging.getLogger("llamafactory").setLevel(logging.WARNING)
    print(f"LLaMA-Factory {lf.version} from {target}; anchor: >= 99% usable per corpus "
          "(issue 12; before it, hotel was 0/4,904)")
    print(f"{'dataset':24} {'total':>7} {'usable':>7} {'share':>7} {'aligned':>8} "
          f"{'calls ok':>9} {'call errors':>12}")
    for d in args.export_dir:
        for name, r in check_export(d, lf).items():
            share = r["usable"] / r["total"] if r["total"] else 1.0
            print(f"{name:24} {r['total']:>7} {r['usable']:>7} {share:>7.1%} "
                  f"{r['aligned_usable']:>8} {r['calls_formatted']:>9} "
                  f"{len(r['call_format_errors']):>12}")
            for s in r["skipped"][:10]:
                print(f"    skipped #{s['index']} {s['id']}: {s['why']}")
            for s in r["call_format_errors"][:10]:
                print(f"    call format error #{s['index']} {s['id']}: {s['why']}")


if __name__ == "__main__":
    main()
