"""What each hostile upload costs: a naive server's path against the handler's, per item.

  .venv/bin/python scripts/hostile_bench.py --out docs/benchmarks/hostile-<machine>-<date>

Exit 1 when any item is over the goal (100 ms of CPU, 64 MB of memory in the handler).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gameart.cli.common import command_parser
from gameart.measure.hostile_bench import run, write_report


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(__doc__)
    parser.add_argument("--out", type=Path, required=True, help="folder for report.json/.md")
    parser.add_argument("--naive-cpu-limit", type=int, default=30, help="seconds per naive item")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = run(args.naive_cpu_limit)
    write_report(report, args.out)
    print(f"wrote {args.out / 'report.json'} and report.md")
    return 0 if report["all_within_goal"] else 1
