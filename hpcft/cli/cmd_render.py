"""hpcft render JOB.yaml: print the sbatch script hpcft would submit."""

from __future__ import annotations

import sys

from .common import add_job_args, load


def register(sub) -> None:
    p = sub.add_parser("render", help="print the sbatch script for a job (no cluster needed)")
    add_job_args(p)
    p.add_argument("--partition", help="partition to assume when the job names none")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..render import make_plan, render_script

    loaded, settings = load(args)
    partition = loaded.job.resources.partition or args.partition or \
        settings.default_partition.get(loaded.job.resources.device)
    plan = make_plan(loaded, settings, settings.runs / "<run-id>", partition)
    sys.stdout.write(render_script(plan))
    return 0
