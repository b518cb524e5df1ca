"""hpcft cancel RUN|JOBID: cancel a queued or running job."""

from __future__ import annotations

from .common import SWEEP_REF_HELP, settings


def register(sub) -> None:
    p = sub.add_parser("cancel", help="cancel a run's job")
    p.add_argument("ref", metavar="RUN|JOBID", help=SWEEP_REF_HELP)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..runs.index import RunStore
    from ..runs.monitor import cancel
    from ..runs.ref import resolve
    from ..runs.sweep_record import Sweep
    from . import sweep_views

    store = RunStore(settings().runs)
    record = resolve(store, args.ref)
    if isinstance(record, Sweep):  # the whole job array
        return sweep_views.cancel(args, store, record)
    cancel(record)
    print(f"cancelled job {record.job_id} (run {record.run_id})")
    return 0
