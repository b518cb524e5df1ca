"""hpcft runs: recent runs as a table (or --json)."""

from __future__ import annotations

import json

from .common import print_json, settings, table


def register(sub) -> None:
    p = sub.add_parser("runs", help="recent runs with state and headline metric")
    p.add_argument("-n", "--limit", type=int, default=20, help="how many (default 20)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def headline(run_dir: str) -> str:
    """The headline eval metric from metrics.json, e.g. 'accuracy 0.861'."""
    from ..core.rundir import RunPaths  # not on the --help path

    try:
        metrics = json.loads(RunPaths(run_dir).metrics.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return ""
    name = metrics.get("headline")
    value = metrics.get("eval", {}).get(name) if name else None
    return f"{name} {value:.4f}" if isinstance(value, (int, float)) else ""


def run(args) -> int:
    from ..cluster.slurm import TERMINAL_STATES
    from ..runs.index import RunStore
    from ..runs.monitor import status
    from .sweep_views import recent, sweep_row

    store = RunStore(settings().runs)
    rows = []
    for rec, sweep in recent(store, args.limit):  # newest first; a sweep is one row, all its tasks
        if sweep is not None:
            rows.append(sweep_row(store, sweep))
            continue
        state = rec.state if rec.state in TERMINAL_STATES else status(rec).state
        rows.append({"run_id": rec.run_id, "name": rec.name, "job_id": rec.job_id, "executor": rec.executor,
                     "state": state, "submitted_at": rec.submitted_at, "metric": headline(rec.run_dir),
                     "run_dir": rec.run_dir, "rerun_of": rec.rerun_of})
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("no runs yet; submit one with: hpcft submit JOB.yaml")
        return 0
    print(table([[r["run_id"], r["job_id"], r["state"], r["metric"], r["submitted_at"][:19].replace("T", " "),
                  f"rerun of {r['rerun_of']}" if r.get("rerun_of") else ""]
                 for r in rows], ["RUN", "JOB", "STATE", "METRIC", "SUBMITTED", ""]))
    return 0
