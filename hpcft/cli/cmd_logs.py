"""hpcft logs [RUN|JOBID] [-f] [--err] [--rank N]: print or follow a job's log."""

from __future__ import annotations

import sys

from .common import REF_HELP, settings


def register(sub) -> None:
    p = sub.add_parser("logs", help="print a run's log; -f follows it until the job ends (across requeues)")
    p.add_argument("ref", nargs="?", metavar="RUN|JOBID", help=REF_HELP + "; default: the latest")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    p.add_argument("--err", action="store_true", help="the stderr log (job.<id>.err)")
    p.add_argument("--rank", type=int, help="the log of one rank of a multi-rank job")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..runs.index import RunStore
    from ..runs.monitor import follow
    from ..runs.ref import resolve_run

    record = resolve_run(RunStore(settings().runs), args.ref)
    st = follow(record, err=args.err, rank=args.rank, follow=args.follow)
    if args.follow:
        extra = f": {st.error}" if st.error else ""
        print(f"hpcft: job {record.job_id} {st.state}{extra}", file=sys.stderr)
        if st.hint:
            print(f"hpcft: hint: {st.hint}", file=sys.stderr)
        return 0 if st.state == "COMPLETED" else 1
    if st.hint:  # a finished failed job: the cause and the fix after its log
        print(f"hpcft: job {record.job_id} {st.state}; hint: {st.hint}", file=sys.stderr)
    return 0
