"""What ``submit``, ``status``, ``cancel``, ``show`` and ``runs`` print for a sweep (not a
command of its own: the commands call these when their argument names a sweep)."""

from __future__ import annotations

import sys
from dataclasses import asdict

from .common import print_dry_run, print_json, table


def submit_sweep_command(args, loaded, settings) -> int:
    from ..core.errors import ConfigError
    from ..submit.sweep import submit_sweep

    if args.save_template:
        raise ConfigError([f"{loaded.source or '<job>'}: --save-template: a sweep is a job array, which the "
                           "SCOW portal's saved jobs cannot express; save one point as its own job"])
    result = submit_sweep(loaded, settings, dry_run=args.dry_run, executor=args.executor)
    if args.dry_run:
        return print_dry_run(result, args.json)
    sw = result.sweep
    if args.json:
        print_json({"sweep_id": sw.sweep_id, "job_id": sw.array_job_id, "size": sw.size, "run_dir": sw.run_dir,
                    "tasks": sw.tasks, "points": sw.points, "executor": "slurm"})
    else:
        for check in result.checks:
            print(check.line())
        print(f"sweep:  {sw.sweep_id}  ({sw.size} points, one job array)")
        print(f"job:    {sw.array_job_id} (array 0-{sw.size - 1}"
              f"{'%' + str(sw.max_parallel) if sw.max_parallel else ''})")
        print(f"folder: {sw.run_dir}")
        print(f"watch:  hpcft status {sw.sweep_id}")
    if args.wait:
        print("hpcft: --wait follows one run; watch a sweep with: hpcft status " + sw.sweep_id, file=sys.stderr)
    return 0


def _view(store, sweep):
    from ..runs.sweeps import records, task_states

    recs = records(store, sweep)
    return recs, task_states(sweep, recs)


def status(args, store, sweep) -> int:
    from ..runs.sweeps import counts
    from ..submit.sweep import describe

    recs, states = _view(store, sweep)
    if args.json:
        print_json({"sweep_id": sweep.sweep_id, "name": sweep.name, "job_id": sweep.array_job_id,
                    "size": sweep.size, "states": dict(sorted(_tally(states).items())),
                    "tasks": [{"index": i, "run_id": r.run_id, "job_id": r.job_id, "state": s, "point": p}
                              for i, (r, s, p) in enumerate(zip(recs, states, sweep.points))]})
        return 0
    print(f"sweep:    {sweep.sweep_id}  ({sweep.name})")
    print(f"job:      {sweep.array_job_id} (array of {sweep.size})")
    print(f"tasks:    {counts(states)}")
    print(table([[i, r.job_id, s, describe(p)] for i, (r, s, p) in enumerate(zip(recs, states, sweep.points))],
                ["TASK", "JOB", "STATE", "POINT"]))
    return 0


def _tally(states: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in states:
        out[s] = out.get(s, 0) + 1
    return out


def cancel(args, store, sweep) -> int:
    from ..runs.sweeps import cancel as cancel_sweep
    from ..runs.sweeps import records

    n = cancel_sweep(sweep, records(store, sweep))
    print(f"cancelled job array {sweep.array_job_id} (sweep {sweep.sweep_id}: {n} of {sweep.size} tasks "
          "were not done)")
    return 0


def show(args, store, sweep) -> int:
    from ..runs.sweeps import counts, rank
    from ..submit.sweep import describe

    recs, states = _view(store, sweep)
    ranked = rank(sweep, recs, states)
    best = ranked[0] if ranked and ranked[0].value is not None else None
    if args.json:
        print_json({"sweep_id": sweep.sweep_id, "name": sweep.name, "job_id": sweep.array_job_id,
                    "goal": sweep.goal, "ranking": [asdict(r) for r in ranked],
                    "best": asdict(best) if best else None, "run_dir": sweep.run_dir})
        return 0
    print(f"sweep:     {sweep.sweep_id}  ({sweep.name})")
    print(f"job:       {sweep.array_job_id}, {sweep.size} points: {counts(states)}")
    print(table([[n + 1, r.index, r.state, f"{r.metric} {r.value:.4f}" if r.value is not None else "-",
                  describe(r.point)] for n, r in enumerate(ranked)], ["RANK", "TASK", "STATE", "METRIC", "POINT"]))
    if best:
        print(f"best:      task {best.index} ({describe(best.point)}): {best.metric} {best.value:.4f}")
        print(f"           hpcft show {best.run_id}")
    else:
        print("best:      - (no point has a result yet)")
    print(f"folder:    {sweep.run_dir}")
    return 0


def recent(store, limit: int) -> list[tuple]:
    """The newest ``limit`` entries of ``hpcft runs``, newest first, as (record, None) for a run
    and (None, sweep) for a sweep (however many tasks it has)."""
    from pathlib import Path

    from ..core.errors import NotFoundError
    from ..runs.sweep_record import Sweep

    out: list[tuple] = []
    seen: set[str] = set()
    for entry in reversed(store.entries()):
        if len(out) >= limit:
            break
        sid = entry.get("sweep")
        if sid:
            if sid not in seen:
                seen.add(sid)
                sweep = Sweep.load(Path(entry["run_dir"]).parent)
                if sweep is not None:
                    out.append((None, sweep))
            continue
        try:
            out.append((store.load(Path(entry["run_dir"])), None))
        except NotFoundError:
            continue  # run folder deleted by the user
    return out


def sweep_row(store, sweep) -> dict:
    """A sweep as one ``hpcft runs`` row: every task's state counted, the best point's metric."""
    from ..runs.sweeps import counts, rank

    recs, states = _view(store, sweep)
    ranked = rank(sweep, recs, states)
    best = ranked[0] if ranked and ranked[0].value is not None else None
    return {"run_id": sweep.sweep_id, "name": sweep.name, "job_id": sweep.array_job_id, "executor": "slurm",
            "state": f"sweep of {sweep.size}: {counts(states)}", "submitted_at": sweep.submitted_at,
            "metric": f"best {best.metric} {best.value:.4f}" if best else "", "run_dir": sweep.run_dir,
            "sweep": sweep.sweep_id}
