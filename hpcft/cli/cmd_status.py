"""hpcft status [RUN|JOBID]: state, reason, elapsed, node, restarts, progress."""

from __future__ import annotations

from .common import SWEEP_REF_HELP, print_json, settings


def register(sub) -> None:
    p = sub.add_parser("status", help="state of a run (default: the latest)")
    p.add_argument("ref", nargs="?", metavar="RUN|JOBID", help=SWEEP_REF_HELP)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def describe_progress(progress: dict | None) -> str:
    if not progress:
        return ""
    parts = []
    if progress.get("step") is not None and progress.get("max_steps"):
        parts.append(f"step {progress['step']}/{progress['max_steps']}")
    for key in ("epoch", "loss", "eta") if parts else ("step", "epoch", "loss", "eta"):
        if progress.get(key) is not None:
            value = progress[key]
            parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    return ", ".join(parts)


def run(args) -> int:
    from ..core.slurm_time import format_duration
    from ..runs.index import RunStore
    from ..runs.monitor import status
    from ..runs.ref import resolve
    from ..runs.sweep_record import Sweep
    from . import sweep_views

    store = RunStore(settings().runs)
    record = resolve(store, args.ref)
    if isinstance(record, Sweep):  # its tasks by state
        return sweep_views.status(args, store, record)
    st = status(record)
    if args.json:
        print_json({**st.as_dict(), "run_dir": record.run_dir, "name": record.name, "executor": record.executor})
        return 0
    print(f"run:      {record.run_id}  ({record.name})")
    print(f"job:      {st.job_id} ({record.executor})")
    reason = f" ({st.reason})" if st.reason and st.reason not in ("None", "") else ""
    print(f"state:    {st.state}{reason}")
    print(f"elapsed:  {format_duration(st.elapsed_s)}")
    print(f"nodes:    {st.nodes or '-'}")
    print(f"restarts: {st.restarts}")
    if st.exit_code:
        print(f"exit:     {st.exit_code}")
    if st.progress:
        print(f"progress: {describe_progress(st.progress)}")
    if st.error:
        print(f"error:    {st.error}")
    if st.hint:
        print(f"hint:     {st.hint}")
    print(f"log:      {st.log}")
    return 0
