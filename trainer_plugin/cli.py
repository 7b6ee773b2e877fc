"""``dataprep-train``: the trainer plugin's command line (tokenize, train, merge, convert, eval, predict).

Every command is a thin wrapper over a library call. The library raises; only :func:`main` turns
an error into a one-line message and an exit code (2: bad arguments, missing file, invalid input;
1: any other failure). Set ``DATAPREP_TRAIN_TRACEBACK=1`` to see the full traceback instead.

    dataprep-train tokenize --tokenizer ../shared/corpora/chatglm3-6b-tokenizer \\
        --input train.jsonl --output train.tokens.jsonl --max-length 2048 --show 1
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

__all__ = ["SUBCOMMANDS", "Subcommand", "main", "render_token_table"]


@dataclass(frozen=True)
class Subcommand:
    """One ``dataprep-train`` subcommand, given as import paths ("module:function").

    ``add_arguments(parser)`` declares the options; ``run(args) -> int`` does the work and returns
    the exit code. Both are imported only when the parser is built, so modules behind them must
    keep heavy imports (torch, transformers, peft) inside their functions, not at module level,
    to keep ``--help`` fast.
    """

    name: str
    help: str
    add_arguments: str
    run: str


# ==== SUBCOMMAND TABLE: the one place where commands are registered ===========================
# HOOK for train | merge | eval | predict: add one line per command, e.g.
#   Subcommand("train", "QLoRA fine-tuning", "trainer_plugin.train:add_arguments",
#              "trainer_plugin.train:run"),
#   Subcommand("merge", "merge a LoRA adapter into the base model",
#              "trainer_plugin.merge:add_arguments", "trainer_plugin.merge:run"),
#   Subcommand("eval", "slot F1 and BLEU-4 on a test split",
#              "trainer_plugin.evaluate:add_eval_arguments", "trainer_plugin.evaluate:run_eval"),
#   Subcommand("predict", "answer each assistant turn of a split",
#              "trainer_plugin.evaluate:add_predict_arguments",
#              "trainer_plugin.evaluate:run_predict"),
SUBCOMMANDS: list[Subcommand] = [
    Subcommand(
        "tokenize",
        "encode a dataprep JSONL file into input_ids/labels (one output line per input sample)",
        "trainer_plugin.cli:add_tokenize_arguments",
        "trainer_plugin.cli:run_tokenize",
    ),
    Subcommand("train", "QLoRA (or --no-quant LoRA) fine-tuning through transformers.Trainer",
               "trainer_plugin.train:add_arguments", "trainer_plugin.train:run"),
    Subcommand("merge", "merge a LoRA adapter into its base model, verified against base+adapter",
               "trainer_plugin.merge:add_arguments", "trainer_plugin.merge:run"),
    Subcommand("convert", "convert a model or LoRA adapter between the official ChatGLM3 layout "
               "and native GLM", "trainer_plugin.convert:add_arguments", "trainer_plugin.convert:run"),
    Subcommand("eval", "generate turn by turn on a test split: slot F1, BLEU-4, ROUGE-L, triples",
               "trainer_plugin.evaluate:add_eval_arguments", "trainer_plugin.evaluate:run_eval"),
    Subcommand("predict", "generate the next assistant turn of each conversation",
               "trainer_plugin.evaluate:add_predict_arguments",
               "trainer_plugin.evaluate:run_predict"),
]
# ==== end of SUBCOMMAND TABLE =================================================================


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit status 2."""


def _resolve(target: str) -> Callable[..., Any]:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


class _Parser(argparse.ArgumentParser):
    # argparse prints the whole usage block and exits; we want the one-line contract.
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with one subparser per :data:`SUBCOMMANDS` entry."""
    parser = _Parser(
        prog="dataprep-train",
        description="ChatGLM3 fine-tuning on dataprep output: one subcommand per step.",
        epilog="Run 'dataprep-train COMMAND --help' for the options of a command.",
    )
    from trainer_plugin import __version__

    parser.add_argument("--version", action="version", version=f"dataprep-train {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for cmd in SUBCOMMANDS:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        _resolve(cmd.add_arguments)(p)
        p.set_defaults(_run=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dataprep-train`` console script; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        return int(_resolve(args._run)(args) or 0)
    except SystemExit as e:  # --help
        return int(e.code or 0)
    except KeyboardInterrupt:
        print("dataprep-train: interrupted", file=sys.stderr)
        return 130
    # DataError, EncodingError and TokenizerError are ValueErrors: catching the base class keeps
    # the heavy modules (datasets) out of --help.
    except (UsageError, FileNotFoundError, FileExistsError, ValueError) as e:
        if os.environ.get("DATAPREP_TRAIN_TRACEBACK"):
            raise
        print(f"dataprep-train: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the CLI contract is one line, never a traceback
        if os.environ.get("DATAPREP_TRAIN_TRACEBACK"):
            raise
        print(
            f"dataprep-train: error: {type(e).__name__}: {_one_line(e)} "
            "(set DATAPREP_TRAIN_TRACEBACK=1 for the traceback)",
            file=sys.stderr,
        )
        return 1


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    if isinstance(e, FileNotFoundError) and e.filename and text.startswith("[Errno"):
        text = f"file not found: {e.filename}"
    return " ".join(text.split()) or type(e).__name__


# ---------------------------------------------------------------------------------------------
# tokenize


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def add_tokenize_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``dataprep-train tokenize``."""
    p.add_argument(
        "--tokenizer",
        required=True,
        type=Path,
        metavar="PATH",
        help="tokenizer folder (or tokenizer.model file)",
    )
    p.add_argument(
        "--input",
        required=True,
        type=Path,
        metavar="FILE.jsonl",
        help="dataprep output: one {tools?, conversations} object per line",
    )
    p.add_argument(
        "--output",
        required=True,
        type=Path,
        metavar="TOKENS.jsonl",
        help='one line per input sample: {"input_ids", "labels"} or {"dropped": REASON}',
    )
    p.add_argument(
        "--max-length",
        type=_positive_int,
        default=None,
        metavar="N",
        help="token limit per sample (default: none)",
    )
    p.add_argument(
        "--truncation",
        choices=("drop", "cut"),
        default="cut",
        help="over-long samples: drop them, or cut at a message boundary (default: cut)",
    )
    p.add_argument(
        "--compat",
        choices=("official", "default"),
        default="default",
        help="official: reproduce ChatGLM3's code exactly (learns role=observation "
        "messages); default: mask them (default: default)",
    )
    p.add_argument(
        "--keep-tools-encoded",
        action="store_true",
        help="do not decode double-encoded tools (a list holding one JSON string)",
    )
    p.add_argument(
        "--on-error",
        choices=("raise", "drop"),
        default="raise",
        help="invalid sample: stop with its line number, or write it as dropped",
    )
    p.add_argument(
        "--num-proc",
        type=_positive_int,
        default=1,
        metavar="N",
        help="worker processes for datasets.map (default: 1, the fastest on a few cores: "
        "one process encodes in batches)",
    )
    p.add_argument(
        "--show",
        type=_non_negative_int,
        default=0,
        metavar="K",
        help="print the first K samples as token / id / label columns (long masked runs, "
        "such as the tool schema, as one line each)",
    )
    p.add_argument(
        "--show-all",
        action="store_true",
        help="with --show: print every token, masked runs included",
    )
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow a Hugging Face tokenizer folder to run its own Python code",
    )


def run_tokenize(args: argparse.Namespace) -> int:
    """``dataprep-train tokenize``: thin wrapper over :func:`trainer_plugin.data.encode_dataset`."""
    from dataprep.tokenizer import load_tokenizer
    from trainer_plugin.data import DataError, dataset_stats, encode_dataset, format_stats

    if not args.input.is_file():
        raise UsageError(f"--input: file not found: {args.input}")
    if not args.tokenizer.exists():
        raise UsageError(f"--tokenizer: path not found: {args.tokenizer}")
    if not args.output.parent.is_dir():
        raise UsageError(f"--output: folder does not exist: {args.output.parent}")
    tok = load_tokenizer(args.tokenizer, trust_remote_code=args.trust_remote_code)
    with _progress_bars(sys.stderr.isatty()):  # a log file or a pipe gets no bar fragments
        encoded = encode_dataset(
            args.input,
            tok,
            max_length=args.max_length,
            truncation=args.truncation,
            compat=args.compat,
            num_proc=args.num_proc,
            decode_tools=not args.keep_tools_encoded,
            use_cache=False,
        )
    stats = dataset_stats(encoded, args.max_length, str(args.input))
    if stats["errors"] and args.on_error == "raise":
        more = len(stats["errors"]) - 1
        raise DataError(
            stats["errors"][0]
            + (f" (and {more} more)" if more else "")
            + "; --on-error drop writes them as dropped lines"
        )

    shown = 0
    with args.output.open("w", encoding="utf-8") as out:
        for row, line in _token_lines(encoded):
            out.write(line)
            if shown < args.show:
                shown += 1
                cut = row["reason"] == "cut_at_message_boundary"
                note = ", cut at a message boundary" if cut else ""
                print(f"== sample {shown} (input line {row['line']}{note}) ==")
                if row["reason"] not in ("", "cut_at_message_boundary"):
                    print(f"dropped: {row['reason']} {row['error']}".rstrip())
                else:
                    ids = encoded[row["index"]]
                    render_token_table(tok, ids["input_ids"], ids["labels"], sys.stdout,
                                       show_all=args.show_all)
    print(format_stats(stats), file=sys.stderr)
    print(f"wrote {len(encoded)} lines to {args.output}", file=sys.stderr)
    return 0


def _token_lines(encoded: Any) -> Iterator[tuple[dict[str, Any], str]]:
    """(row fields, output line) per encoded row: ``{"input_ids", "labels"[, "cut"]}`` for a kept
    sample, ``{"dropped", "line", "n_tokens"[, "error"]}`` for a dropped one.

    The token lists are turned into text by Arrow (cast to strings, joined with ", "), which
    writes exactly what ``json.dumps`` writes for a list of ints, several times faster than
    making Python lists of them: writing the file had become slower than encoding it.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    index = 0
    for batch in encoded.with_format("arrow").iter(batch_size=1000):
        as_text = {
            name: pc.binary_join(pc.cast(batch[name], pa.list_(pa.string())), ", ").to_pylist()
            for name in ("input_ids", "labels")
        }
        small = batch.select(["line", "n_tokens", "reason", "error"]).to_pylist()
        for row, ids, labels in zip(small, as_text["input_ids"], as_text["labels"], strict=True):
            row["index"] = index
            index += 1
            reason = row["reason"]
            if reason in ("", "cut_at_message_boundary"):
                cut = f', "cut": {json.dumps(reason)}' if reason else ""
                line = f'{{"input_ids": [{ids}], "labels": [{labels}]{cut}}}\n'
            else:
                record = {"dropped": reason, "line": row["line"], "n_tokens": row["n_tokens"]}
                if row["error"]:
                    record["error"] = row["error"]
                line = json.dumps(record, ensure_ascii=False) + "\n"
            yield row, line


@contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    (datasets.enable_progress_bars if enabled else datasets.disable_progress_bars)()
    try:
        yield
    finally:
        (datasets.enable_progress_bars if was_enabled else datasets.disable_progress_bars)()


#: A run of masked tokens longer than this, inside one message, is shown as one line.
COLLAPSE_OVER = 10
#: Widest token column, in terminal cells.
TOKEN_COLUMN = 24
_ROLES = ("system", "user", "assistant", "observation")


def render_token_table(
    tok: Any, input_ids: Sequence[int], labels: Sequence[int], out: TextIO,
    show_all: bool = False,
) -> None:
    """Aligned ``index  token  id  label`` columns; trained rows are marked with ``*``.

    The token column is the piece's decoded text in Python repr, like the official
    ``sanity_check`` print-out, so "▁" and "\\n" stay visible. Columns are padded by terminal
    cells, so Chinese (two cells a character) stays aligned. Unless ``show_all``, a run of more
    than :data:`COLLAPSE_OVER` masked tokens inside one message (the tool schema, a user message,
    an observation) is one line: ``… 757 masked tokens (tool schema), rows 2-758: '…'``.
    """
    texts = [repr(tok.decode([i])) for i in input_ids]
    plan = _table_plan(tok, input_ids, labels, collapse=not show_all)
    shown = [texts[k] for k in plan if isinstance(k, int)]
    width = min(max((_cells(t) for t in shown), default=5), TOKEN_COLUMN)
    print(f"{'#':>5}  {_pad('token', width)}  {'id':>6}  {'label':>6}", file=out)
    for item in plan:
        if isinstance(item, tuple):
            start, end, what = item
            preview = _fit(repr(tok.decode(list(input_ids[start:min(end, start + 40)]))), 40)
            print(f"{'…':>5}  {end - start} masked tokens ({what}), rows {start}-{end - 1}: "
                  f"{preview}", file=out)
            continue
        lab = labels[item]
        mark = "*" if lab != -100 else " "
        print(f"{item:>5}  {_pad(_fit(texts[item], width), width)}  {input_ids[item]:>6}  "
              f"{lab:>6} {mark}", file=out)


def _table_plan(tok: Any, ids: Sequence[int], labels: Sequence[int],
                collapse: bool) -> list[int | tuple[int, int, str]]:
    """Row indices to print, with long masked runs replaced by ``(start, end, what)``."""
    if not collapse:
        return list(range(len(ids)))
    from dataprep.tokenizer import TokenizerError

    role_of: dict[int, str] = {}
    for role in _ROLES:
        with contextlib.suppress(TokenizerError):  # a tokenizer without that role token
            role_of[tok.token_id(f"<|{role}|>")] = role
    # Messages start at role tokens: special ids never come from text (content that spells
    # "<|user|>" is encoded as ordinary pieces), so they mark message boundaries reliably.
    starts = [k for k, i in enumerate(ids) if i in role_of]
    bounds = list(zip([0, *starts], [*starts, len(ids)], strict=True))
    plan: list[int | tuple[int, int, str]] = []
    for start, end in bounds:
        k = start
        while k < end:
            if labels[k] != -100:
                plan.append(k)
                k += 1
                continue
            run_end = k
            while run_end < end and labels[run_end] == -100:
                run_end += 1
            if run_end - k > COLLAPSE_OVER:
                plan.append((k, run_end, _what(tok, ids, start, role_of.get(ids[start]))))
            else:
                plan.extend(range(k, run_end))
            k = run_end
    return plan


def _what(tok: Any, ids: Sequence[int], start: int, role: str | None) -> str:
    if role == "system":
        head = tok.decode(list(ids[start + 1 : start + 12]))
        return "tool schema" if "Answer the following questions" in head else "system prompt"
    return {"user": "user message", "observation": "observation",
            "assistant": "assistant message, not trained"}.get(role or "", "prefix")


def _cells(text: str) -> int:
    """Terminal cells of ``text``: wide and full-width characters (CJK) take two, combining
    marks none. (wcwidth would also know emoji sequences; it is not a dependency.)"""
    return sum(0 if unicodedata.combining(c) else
               2 if unicodedata.east_asian_width(c) in ("W", "F") else 1 for c in text)


def _fit(text: str, width: int) -> str:
    if _cells(text) <= width:
        return text
    while _cells(text) > width - 1:
        text = text[:-1]
    return text + "…"


def _pad(text: str, width: int) -> str:
    return text + " " * max(0, width - _cells(text))


if __name__ == "__main__":
    sys.exit(main())
