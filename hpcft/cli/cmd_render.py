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
    from ..submit import scow
    from ..submit.render import make_plan, render_script

    loaded, settings = load(args)
    from ..preflight.placement import wants_placement

    if wants_placement(loaded.job):  # chosen against the live queue, not here
        from ..core.errors import ConfigError

        raise ConfigError([f"{loaded.source or '<job>'}: resources: 'auto' is chosen against the live cluster "
                           "(sbatch --test-only): run hpcft check to see the choice, or name the values "
                           "(--set resources.partition=... --set resources.gpus_per_node=...)"])
    partition = loaded.job.resources.partition or args.partition or \
        settings.default_partition.get(loaded.job.resources.device)
    scow_dir = scow.job_folder(settings, loaded.job.name) if scow.enabled(settings) else None
    if loaded.job.sweep is not None:  # the one array script (every point validated first)
        from ..submit.sweep import SweepSubmission

        sweep = SweepSubmission(loaded, settings, "slurm")
        plan = sweep.plan(settings.runs / sweep.placeholder, partition, scow_dir)
    else:
        plan = make_plan(loaded, settings, settings.runs / "<run-id>", partition, scow_dir=scow_dir)
    sys.stdout.write(render_script(plan))
    return 0
