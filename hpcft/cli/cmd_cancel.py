"""hpcft cancel RUN|JOBID: cancel a queued or running job."""

from __future__ import annotations

from .common import settings


def register(sub) -> None:
    p = sub.add_parser("cancel", help="cancel a run's job")
    p.add_argument("ref", metavar="RUN|JOBID")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..runs.index import RunStore
    from ..runs.monitor import cancel
    from ..runs.sweeps import find as find_sweep

    store = RunStore(settings().runs)
    sweep = find_sweep(store, args.ref)
    if sweep is not None:  # a sweep: its tasks by state / cancel the array / ranked points
        from .sweep_views import cancel

        return cancel(args, store, sweep)
    record = store.find(args.ref)
    cancel(record)
    print(f"cancelled job {record.job_id} (run {record.run_id})")
    return 0
