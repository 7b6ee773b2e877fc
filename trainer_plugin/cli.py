"""``dataprep-train``: the trainer plugin's command line (tokenize, train, merge, eval, predict).

Every command is a thin wrapper over a library call. The library raises; only :func:`main` turns
an error into a one-line message and an exit code (2: bad arguments, missing file, invalid input;
1: any other failure). Set ``DATAPREP_TRAIN_TRACEBACK=1`` to see the full traceback instead.

    dataprep-train tokenize --tokenizer ../shared/corpora/chatglm3-6b-tokenizer \\
        --input train.jsonl --output train.tokens.jsonl --max-length 2048 --show 1
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
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
    except (UsageError, FileNotFoundError, ValueError) as e:
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
        help="worker processes for datasets.map (default: 1)",
    )
    p.add_argument(
        "--show",
        type=_non_negative_int,
        default=0,
        metavar="K",
        help="print the first K samples as token / id / label columns",
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
        for row in encoded:
            if row["reason"] in ("", "cut_at_message_boundary"):
                record: dict[str, Any] = {"input_ids": row["input_ids"], "labels": row["labels"]}
                if row["reason"]:
                    record["cut"] = row["reason"]
            else:
                record = {
                    "dropped": row["reason"],
                    "line": row["line"],
                    "n_tokens": row["n_tokens"],
                }
                if row["error"]:
                    record["error"] = row["error"]
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            if shown < args.show:
                shown += 1
                note = ", cut at a message boundary" if "cut" in record else ""
                print(f"== sample {shown} (input line {row['line']}{note}) ==")
                if "dropped" in record:
                    print(f"dropped: {record['dropped']} {record.get('error', '')}".rstrip())
                else:
                    render_token_table(tok, record["input_ids"], record["labels"], sys.stdout)
    print(format_stats(stats), file=sys.stderr)
    print(f"wrote {len(encoded)} lines to {args.output}", file=sys.stderr)
    return 0


@contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    (datasets.enable_progress_bars if enabled else datasets.disable_progress_bars)()
    try:
        yield
    finally:
        (datasets.enable_progress_bars if was_enabled else datasets.disable_progress_bars)()


def render_token_table(
    tok: Any, input_ids: Sequence[int], labels: Sequence[int], out: TextIO
) -> None:
    """Aligned ``index  token  id  label`` columns; trained rows are marked with ``*``.

    The token column is the piece's decoded text in Python repr, like the official
    ``sanity_check`` print-out, so "▁" and "\\n" stay visible.
    """
    texts = [repr(tok.decode([i])) for i in input_ids]
    width = min(max((len(t) for t in texts), default=5), 24)
    print(f"{'#':>5}  {'token':<{width}}  {'id':>6}  {'label':>6}", file=out)
    for k, (text, i, lab) in enumerate(zip(texts, input_ids, labels, strict=True)):
        mark = "*" if lab != -100 else " "
        print(f"{k:>5}  {text:<{width}}  {i:>6}  {lab:>6} {mark}", file=out)


if __name__ == "__main__":
    sys.exit(main())
