"""Helpers shared by the command modules (output formatting, settings, job loading)."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any, Iterable, Sequence

if TYPE_CHECKING:
    from ..core.config import Settings

# what a RUN argument may be (resolved by hpcft.runs.ref); status, show and cancel also take a sweep
REF_HELP = "run id (or a unique prefix), job name, Slurm job id (1234, or 1234_5 for an array task), or run folder"
SWEEP_REF_HELP = REF_HELP + "; or a sweep: its id, array job id or folder"


def settings() -> "Settings":
    from ..core.config import load_settings  # pydantic loads only when a command runs, not for --help

    return load_settings()


def add_job_args(parser) -> None:
    parser.add_argument("job", metavar="JOB.yaml", help="job file")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override a job field, e.g. --set resources.time=02:00:00 (repeatable)")


def load(args):
    from ..core.job_load import load_job
    from ..core.yamlfile import parse_set_options

    s = settings()
    return load_job(args.job, s, parse_set_options(args.sets)), s


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def table(rows: Iterable[Sequence[Any]], headers: Sequence[str]) -> str:
    rows = [["" if v is None else str(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(v)) for w, v in zip(widths, row)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*headers)] + [fmt.format(*row) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def print_dry_run(result, as_json: bool) -> int:
    """What ``submit --dry-run`` prints, for a job or a sweep: the script and every check."""
    if as_json:
        print_json({"dry_run": True, "script": result.script, "checks": [c.__dict__ for c in result.checks]})
    else:
        sys.stdout.write(result.script)
        for check in result.checks:
            print(f"# {check.line()}", file=sys.stderr)
        print("# dry run: nothing submitted", file=sys.stderr)
    return 0
