"""The ``dataprep`` command. Each subcommand is a thin wrapper over a library call; library errors
become one line on stderr and an exit code, never a traceback.

Exit codes: 0 success, 1 the data had problems (rejects, invalid lines, every LLM request of a
run failed), 2 unusable arguments, a missing file or a bad config (a refused API key, an
unusable LLM cache).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from dataprep.errors import DataprepError

EXIT_OK, EXIT_DATA, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse prints the whole usage block; a one-line message is easier to act on.
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _err(msg: str) -> None:
    print(msg, file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    from dataprep.config import load_config
    from dataprep.pipeline import Pipeline
    from dataprep.progress import make_progress

    if args.engine != "ray" and (args.ray_address or args.ray_cpus):
        _err("dataprep run: --ray-address and --ray-cpus need --engine ray")
        return EXIT_USAGE
    overrides = list(args.set or [])
    if args.strict:
        overrides.append("strict=true")
    if args.dry_run:
        overrides.append("llm.dry_run=true")
    cfg = load_config(args.config, overrides=overrides, out=args.out)
    if args.engine == "ray":
        try:
            from dataprep.ray_engine import RayPipeline
        except ImportError as e:
            _err(f"dataprep run: --engine ray needs Ray: pip install 'chatglm-dataprep[ray]' ({e})")
            return EXIT_USAGE
        pipeline: Pipeline = RayPipeline(cfg, address=args.ray_address, num_cpus=args.ray_cpus)
    else:
        pipeline = Pipeline(cfg)
    verbosity = 0 if args.quiet else 1 + args.verbose
    manifest = pipeline.run(progress=make_progress(verbosity=verbosity))
    counts = manifest["counts"]
    out = Path(manifest["outputs"]["train"]).parent
    print(f"{cfg.name}: {counts['input']} input, {sum(counts['rejected'].values())} rejected, "
          f"{sum(counts['removed'].values())} removed, {counts['added']} added -> "
          f"train {counts['train']} / dev {counts['dev']} / test {counts['test']}")
    print(f"  splits:   {out}/{{train,dev,test}}.jsonl")
    print(f"  rejects:  {manifest['outputs']['rejects']}")
    print(f"  manifest: {out / 'manifest.json'}")
    leakage = manifest.get("artifacts", {}).get("leakage") or {}
    if leakage:
        inp, outp = leakage.get("input") or {}, leakage.get("output") or {}
        line = f"  leakage:  output {outp.get('leaked', 0)} of {outp.get('dev_test', 0)} dev/test"
        if outp.get("moved_records"):
            line += f" ({outp['moved_records']} records moved to keep clusters in one split)"
        if inp.get("dev_test"):
            line += (f"; input {inp.get('leaked', 0)} of {inp['dev_test']} "
                     f"({100 * inp.get('rate', 0):.1f}%) as shipped")
        print(line)
    checks = manifest.get("artifacts", {}).get("expectations")
    if checks:
        failed = checks.get("failed") or []
        if not failed:
            line = "all expectations passed"
        else:
            names = ", ".join(f"{f['corpus']}:{f['name']}" for f in failed[:4])
            more = f" (+{len(failed) - 4} more)" if len(failed) > 4 else ""
            verdict = "passed with warnings" if checks.get("critical_success") else "FAILED"
            line = f"{verdict}: {names}{more}"
        if checks.get("data_docs"):
            line += f"; Data Docs {out / checks['data_docs']}"
        print(f"  checks:   {line}")
    report = manifest.get("artifacts", {}).get("report")
    if report:
        print(f"  report:   {report}")
    llm = manifest.get("artifacts", {}).get("llm") or {}
    if args.dry_run and llm.get("dry_run"):
        print(f"  LLM dry run (nothing was sent): {llm['dry_run']}")
    if llm.get("all_failed"):
        # The splits are complete and consistent, but the LLM ops added nothing: a run that
        # was asked for rewrites and made none must not look like a success.
        failures = ", ".join(f"{k} {v}" for k, v in llm.get("failures", {}).items())
        _err(f"dataprep run: all {llm['items']} LLM requests failed ({failures}); the outputs "
             f"hold no LLM rewrites; see manifest.json artifacts.llm and fix the endpoint")
        return EXIT_DATA
    return EXIT_OK


def cmd_convert(args: argparse.Namespace) -> int:
    from dataprep.convert import convert

    options: dict[str, Any] = {}
    for item in args.option or []:
        from dataprep.config import parse_override

        key, value = parse_override(item)
        options[key] = value
    result = convert(args.fmt, args.input, args.out, hotel_db=args.hotel_db, strict=args.strict,
                     options=options)
    rejected = [r for r in result.rejects if r.kind == "rejected"]
    removed = [r for r in result.rejects if r.kind != "rejected"]
    for rej in result.rejects:
        tag = "" if rej.kind == "rejected" else " (removed by design)"
        _err(f"{rej.location()}: {rej.message} [{rej.reason}]{tag}")
    print(f"{args.input}: {result.input} records, {result.written} written to {args.out}, "
          f"{len(rejected)} rejected, {len(removed)} removed"
          + (f" (kept in {result.rejects_path})" if result.rejects else ""))
    # Removals (a CrossWOZ dialogue with no hotel) are the reader doing its job, not bad input.
    return EXIT_DATA if rejected else EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    from dataprep.convert import validate_file

    n, problems = validate_file(args.file, args.schema)
    for line, pointer, message, reason in problems:
        print(f"{args.file}:{line}: {pointer}: {message} [{reason}]")
    bad_lines = len({p[0] for p in problems})
    _err(f"{args.file}: {n} lines, {n - bad_lines} valid, {bad_lines} invalid")
    return EXIT_DATA if problems else EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from dataprep.config import parse_override
    from dataprep.export import export_run

    options = dict(parse_override(item) for item in args.option or [])
    report = export_run(args.run_dir, args.to, args.out, **options)
    print(report.summary())
    print(f"  report:   {report.out_dir}/export_report.json")
    for note in report.notes:
        print(f"  note:     {note}")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    try:
        from dataprep.stages.report import rebuild_report
    except ImportError as e:
        raise DataprepError(f"the report stage is not available: {e}") from e
    path = rebuild_report(args.out_dir)
    print(f"report: {path}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    import dataprep
    from dataprep.registry import readers

    READERS = readers()

    p = _Parser(prog="dataprep", description="Turn raw Chinese corpora into clean, leak-free "
                "ChatGLM3 tools/conversations splits.")
    p.add_argument("--version", action="version",
                   version=f"%(prog)s {dataprep.__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="run a pipeline from a YAML config",
                       description="Run readers and stages from CONFIG; write train/dev/test.jsonl, "
                       "rejects.jsonl and manifest.json to the output folder.")
    r.add_argument("config", help="YAML config file")
    r.add_argument("--out", help="output folder (default: the config's 'out', else out/NAME)")
    r.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. --set seed=7 "
                   "--set stages.split.ratios=[0.7,0.2,0.1] (repeatable)")
    r.add_argument("--strict", action="store_true", help="stop at the first rejected record")
    r.add_argument("-q", "--quiet", action="store_true",
                   help="no progress display or log lines on stderr (errors and the summary only)")
    r.add_argument("-v", "--verbose", action="count", default=0,
                   help="also one line per finished stage (records in/out, seconds) and per "
                   "post-run step")
    r.add_argument("--dry-run", action="store_true",
                   help="make no LLM request: estimate requests, tokens and cost of the LLM ops "
                   "instead (the rest of the pipeline runs as usual)")
    r.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this process (default); ray: per-record stages and the duplicate "
                   "search on Ray, same outputs")
    r.add_argument("--ray-address", metavar="ADDR",
                   help="a running Ray cluster (e.g. ray://head:10001 or auto); default: start a "
                   "local Ray")
    r.add_argument("--ray-cpus", type=int, metavar="N",
                   help="CPUs of the local Ray (default: all of this machine)")
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("convert", help="one corpus layout in, ChatGLM3 JSONL out",
                       description="Read INPUT with one reader and write ChatGLM3 JSONL, no other "
                       "stage. Rejects are printed as INPUT:LINE: reason and kept in "
                       "OUT.rejects.jsonl (with records removed by design, e.g. CrossWOZ "
                       "dialogues without a hotel). Exit 0 when nothing was rejected, 1 otherwise.")
    c.add_argument("--from", dest="fmt", required=True, choices=sorted(READERS), metavar="FORMAT",
                   help=f"input layout: {', '.join(sorted(READERS))}")
    c.add_argument("input", help="input file")
    c.add_argument("--out", required=True, help="output JSONL file")
    c.add_argument("--hotel-db", help="CrossWOZ hotel_db.json (for crosswoz and lab layouts)")
    c.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="reader option, e.g. --option prompt=... (repeatable)")
    c.add_argument("--strict", action="store_true", help="stop at the first rejected record")
    c.set_defaults(func=cmd_convert)

    v = sub.add_parser("validate", help="check a JSONL file against a schema",
                       description="Exit 0 when every line is valid, 1 otherwise; each problem is "
                       "printed as FILE:LINE: <json pointer>: <expected, found>.")
    v.add_argument("file", help="JSONL file")
    v.add_argument("--schema", default="chatglm3",
                   help="schema name in schemas/ (default chatglm3: the output format, plus the "
                   "semantic rules)")
    v.set_defaults(func=cmd_validate)

    from dataprep.export import EXPORTERS

    e = sub.add_parser("export", help="write a finished run's splits in another training format",
                       description="Read RUN_DIR/{train,dev,test}.jsonl and write them as FORMAT; "
                       "what the target cannot express is counted and named in "
                       "OUT/export_report.json (and printed).")
    e.add_argument("run_dir", help="the run's output folder")
    e.add_argument("--to", required=True, choices=sorted(EXPORTERS), metavar="FORMAT",
                   help=f"target format: {', '.join(sorted(EXPORTERS))}")
    e.add_argument("--out", help="output folder (default RUN_DIR/export/FORMAT)")
    e.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="format option, e.g. --option call_style=official (repeatable)")
    e.set_defaults(func=cmd_export)

    rp = sub.add_parser("report", help="rebuild the HTML report of a finished run",
                        description="Rebuild OUT/report/index.html from a finished run folder.")
    rp.add_argument("out_dir", help="the run's output folder")
    rp.set_defaults(func=cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except DataprepError as e:
        _err(f"dataprep {args.command}: {e}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        _err(f"dataprep {args.command}: interrupted; no split file was half-written")
        return 130


if __name__ == "__main__":
    sys.exit(main())
