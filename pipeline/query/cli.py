"""``plantmix``: query a build's manifest with DuckDB SQL and print its summary.

    plantmix sql "SELECT * FROM by_source" --build builds/demo
    plantmix sql --build builds/demo            # interactive: one query per line, Ctrl-D to quit
    plantmix sql "COPY kept TO 'kept.parquet'" --build builds/demo --allow-writes   # read-only unless asked
    plantmix summary --build builds/demo
    plantmix sources                                  # the source adapters (pipeline/sources/sources.yaml)
    plantmix sources inaturalist                      # one adapter: format, where to get it, fields, options
    plantmix mixing-law fit results.csv --reference 0.42   # pipeline/mixing/cli.py

Views: samples, kept, by_source, by_status, licenses, failures, taxa (pipeline/query/views.sql).
The build itself runs through Prefect: ``python -m flows.build_plantmix --recipe ...``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import textwrap

import duckdb

from pipeline.mixing.cli import add_parser as add_mixing_law_parser
from pipeline.query import sql
from pipeline.query.summary import render, summarize
from pipeline.sources import registry
from pipeline.sources.base import ConfigError

WIDTH = 110  # columns the sources tables wrap at (URLs and other words are never split)


def _print(rel: duckdb.DuckDBPyRelation, fmt: str) -> None:
    if fmt == "table":
        print(rel.to_table_string() if hasattr(rel, "to_table_string") else rel)
    elif fmt == "csv":
        # The csv module quotes commas, quotes and line breaks inside values (captions have all three).
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(rel.columns)
        writer.writerows(rel.fetchall())  # None is written as an empty field
    else:
        for row in rel.fetchall():
            print(json.dumps(dict(zip(rel.columns, row, strict=True)), default=str))


def cmd_sql(args: argparse.Namespace) -> int:
    con = sql.connect(args.build, read_only=not args.allow_writes)
    queries = [args.query] if args.query else (line for line in sys.stdin if line.strip())
    for query in queries:
        try:
            if not args.allow_writes:
                sql.refuse_writes(query)
            rel = con.sql(query)
        except duckdb.Error as err:
            print(f"error: {err}", file=sys.stderr)
            if args.query:
                return 1
            continue
        if rel is not None:
            _print(rel, args.format)
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    summary = summarize(sql.manifest_path(args.build))
    print(json.dumps(summary, indent=2) if args.json else render(summary))
    return 0


def _table(rows: list[tuple[str, ...]], indent: str = "") -> str:
    """Rows as aligned columns; the last column wraps under itself."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        head = indent + "".join(cell.ljust(width + 2) for cell, width in zip(row, widths, strict=False))
        wrapped = textwrap.wrap(row[-1], WIDTH - len(head), break_long_words=False, break_on_hyphens=False)
        lines += [(head if i == 0 else " " * len(head)) + text for i, text in enumerate(wrapped or [""])]
    return "\n".join(lines)


def _value(default: object) -> str:
    """An option's default as a recipe writes it (JSON is YAML): "medium", ["research"], null."""
    return json.dumps(list(default) if isinstance(default, tuple) else default, ensure_ascii=False, default=str)


def cmd_sources(args: argparse.Namespace) -> int:
    try:
        table = registry.load_registry()
        if args.name is None:
            print(_table([(info.name, info.description) for info in table.values()]))
            print("\nplantmix sources NAME: its format, where to get the data, field mapping, licenses and options")
            return 0
        options = registry.adapter_options(args.name)  # an unknown name raises, listing the known ones
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    info = table[args.name]
    print(_table([(f"{info.name}:", info.description)]))
    print()
    print(_table([(key, getattr(info, key)) for key in ("format", "get", "licenses", "module")]))
    print("\nfields (manifest column <- source):")
    print(_table([("column", "from"), *info.fields.items()], indent="  "))
    print(f"\noptions (a recipe source's options; {info.module}.Config):")
    rows = [(o.name, o.type, "(required)" if o.required else _value(o.default)) for o in options]
    print(_table([("option", "type", "default"), *rows], indent="  "))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="plantmix", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_sql = sub.add_parser("sql", help="run DuckDB SQL over a build's manifest (views predefined)")
    p_sql.add_argument("query", nargs="?", help="SQL; omitted: read queries from stdin, one per line")
    p_sql.add_argument("--build", required=True, help="build folder, or a manifest Parquet file/glob/URL")
    p_sql.add_argument("--format", choices=("table", "csv", "jsonl"), default="table")
    access = p_sql.add_mutually_exclusive_group()
    access.add_argument(
        "--read-only",
        dest="allow_writes",
        action="store_false",
        help="the default: the SQL may read the manifest and nothing else, and write no file",
    )
    access.add_argument(
        "--allow-writes", action="store_true", help="let the SQL write files (COPY, EXPORT) and read any file or URL"
    )
    p_sql.set_defaults(func=cmd_sql, allow_writes=False)  # read-only unless --allow-writes
    p_sum = sub.add_parser("summary", help="candidates per source, status and license")
    p_sum.add_argument("--build", required=True, help="build folder, or a manifest Parquet file")
    p_sum.add_argument("--json", action="store_true", help="print JSON instead of text")
    p_sum.set_defaults(func=cmd_summary)
    p_src = sub.add_parser("sources", help="list the source adapters, or document one (format, fields, options)")
    p_src.add_argument("name", nargs="?", help="adapter name; omitted: list every adapter")
    p_src.set_defaults(func=cmd_sources)
    add_mixing_law_parser(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
