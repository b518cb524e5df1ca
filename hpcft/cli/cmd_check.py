"""hpcft check JOB.yaml: validate and pre-flight a job, ✓/✗ per step; submits nothing."""

from __future__ import annotations

from .common import add_job_args, load, print_json


def register(sub) -> None:
    p = sub.add_parser("check", help="validate a job and check it against the live cluster (submits nothing)")
    add_job_args(p)
    p.add_argument("--executor", choices=["slurm", "local"], help="override the job's executor")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..core.errors import ConfigError
    from ..submit.pipeline import submit

    try:
        loaded, settings = load(args)
    except ConfigError as exc:
        if args.json:
            print_json({"ok": False, "problems": exc.lines()})
            return exc.exit_code
        print(f"✗ job file: {len(exc.lines())} problem(s)")
        raise
    if loaded.job.sweep is not None:  # every point validated, plus the array's own limits
        from ..submit.sweep import submit_sweep

        result = submit_sweep(loaded, settings, dry_run=True, executor=args.executor)
    else:
        result = submit(loaded, settings, dry_run=True, executor=args.executor, raise_on_failure=False)
    ok = all(c.ok for c in result.checks)
    if args.json:  # the shape: docs/memory.md, tests/schemas/check.schema.json
        print_json({"ok": ok, "checks": [c.__dict__ for c in result.checks],
                    "estimate": getattr(result, "estimate", None), "placement": getattr(result, "placement", None)})
    else:
        print("✓ job file")
        for check in result.checks:
            print(check.line())
    return 0 if ok else 2
