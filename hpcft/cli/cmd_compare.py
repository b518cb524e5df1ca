"""hpcft compare RUN RUN... : the same fine-tune on different hardware, one row per run."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import REF_HELP, print_json, settings, table


def register(sub) -> None:
    p = sub.add_parser(
        "compare", help="compare runs: hardware, throughput (ratio to the first), memory, time, loss, metric",
        epilog="examples:\n"
               "  hpcft submit job.yaml --set resources.partition=npu\n"
               "  hpcft submit job.yaml --set resources.partition=gpu\n"
               "  hpcft compare --last 2 --png compare.png   # loss curves, eval metric, throughput and memory bars\n"
               "  hpcft compare mrpc-bert 20261129-1512 ~/hpcft/runs/20261129-1530-mrpc-bert-ab12 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("refs", nargs="*", metavar="RUN", help=REF_HELP)
    p.add_argument("--last", type=int, metavar="N", help="also the N most recent runs")
    p.add_argument("--json", action="store_true", help="the table's numbers as JSON")
    p.add_argument("--png", metavar="FILE", help="write loss/metric curves and throughput/memory bars")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..runs.compare import as_json, compare, headers, select, table_rows, write_png
    from ..runs.index import RunStore

    rows = compare(select(RunStore(settings().runs), args.refs, args.last))
    png = write_png(rows, Path(args.png)) if args.png else None
    if args.json:
        print_json({"runs": as_json(rows), "png": str(png) if png else None})
        return 0
    print(table(table_rows(rows), headers(rows)))
    if png:
        print(f"\nplot: {png}")
    return 0
