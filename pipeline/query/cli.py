"""``plantmix``: query a build's manifest with DuckDB SQL and print its summary.

    plantmix sql "SELECT * FROM by_source" --build builds/demo
    plantmix sql --build builds/demo            # interactive: one query per line, Ctrl-D to quit
    plantmix summary --build builds/demo
    plantmix mixing-law fit results.csv --reference 0.42   # pipeline/mixing/cli.py

Views: samples, kept, by_source, by_status, licenses, failures, taxa (pipeline/query/views.sql).
The build itself runs through Prefect: ``python -m flows.build_plantmix --recipe ...``.
"""

from __future__ import annotations

import argparse
import json
import sys

import duckdb

from pipeline.mixing.cli import add_parser as add_mixing_law_parser
from pipeline.query import sql
from pipeline.query.summary import render, summarize


def _print(rel: duckdb.DuckDBPyRelation, fmt: str) -> None:
    if fmt == "table":
        print(rel.to_table_string() if hasattr(rel, "to_table_string") else rel)
    elif fmt == "csv":
        print(",".join(rel.columns))
        for row in rel.fetchall():
            print(",".join("" if v is None else str(v) for v in row))
    else:
        for row in rel.fetchall():
            print(json.dumps(dict(zip(rel.columns, row, strict=True)), default=str))


def cmd_sql(args: argparse.Namespace) -> int:
    con = sql.connect(args.build)
    queries = [args.query] if args.query else (line for line in sys.stdin if line.strip())
    for query in queries:
        try:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="plantmix", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_sql = sub.add_parser("sql", help="run DuckDB SQL over a build's manifest (views predefined)")
    p_sql.add_argument("query", nargs="?", help="SQL; omitted: read queries from stdin, one per line")
    p_sql.add_argument("--build", required=True, help="build folder, or a manifest Parquet file/glob/URL")
    p_sql.add_argument("--format", choices=("table", "csv", "jsonl"), default="table")
    p_sql.set_defaults(func=cmd_sql)
    p_sum = sub.add_parser("summary", help="candidates per source, status and license")
    p_sum.add_argument("--build", required=True, help="build folder, or a manifest Parquet file")
    p_sum.add_argument("--json", action="store_true", help="print JSON instead of text")
    p_sum.set_defaults(func=cmd_summary)
    add_mixing_law_parser(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
