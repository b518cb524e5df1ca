"""hpcft submit JOB.yaml: validate, pre-flight, render and queue a job."""

from __future__ import annotations

import sys

from .common import add_job_args, load, print_dry_run, print_json


def register(sub) -> None:
    p = sub.add_parser("submit", help="submit a job file to Slurm (or run it locally)",
                       description="Validate JOB.yaml, check it against the live cluster, render the sbatch "
                                   "script and queue it through submitit.",
                       epilog="examples:\n  hpcft submit jobs/mrpc-bert-gpu.yaml\n"
                              "  hpcft submit job.yaml --set resources.time=04:00:00 --dry-run\n"
                              "  hpcft submit job.yaml --wait      # follow the log until the job ends",
                       formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    add_job_args(p)
    p.add_argument("--dry-run", action="store_true", help="print the script and the checks; submit nothing")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--executor", choices=["slurm", "local"], help="override the job's executor")
    p.add_argument("--wait", action="store_true", help="follow the log until the job ends; exit 0 only if it completed")
    p.add_argument("--save-template", action="store_true", default=None,
                   help="also save the job in the SCOW portal's saved-jobs list (resubmit it from the web form)")
    p.set_defaults(func=run)


def run(args) -> int:
    loaded, settings = load(args)
    if loaded.job.sweep is not None:
        from .sweep_views import submit_sweep_command

        return submit_sweep_command(args, loaded, settings)
    from ..submit.pipeline import submit

    result = submit(loaded, settings, dry_run=args.dry_run, executor=args.executor,
                    save_template=args.save_template)
    if args.dry_run:
        return print_dry_run(result, args.json)
    rec = result.record
    notes: list[str] = []
    if result.template:
        from ..submit.scow import template_notes

        notes = template_notes(loaded.job, settings)
    if args.json:
        print_json({"run_id": rec.run_id, "job_id": rec.job_id, "executor": rec.executor,
                    "run_dir": rec.run_dir, "log": str(result.log), "partition": rec.partition,
                    "template": str(result.template) if result.template else None,
                    "template_notes": notes, "preprocess": result.preprocess})
    else:
        for check in result.checks:
            print(check.line())
        print(f"run:    {rec.run_id}")
        print(f"job:    {rec.job_id} ({rec.executor}{', partition ' + rec.partition if rec.partition else ''})")
        print(f"folder: {rec.run_dir}")
        print(f"log:    {result.log}")
        if result.preprocess:   # train.preprocess: cpu-job
            print(f"data:   {result.preprocess['line']}")
        if result.template:
            print(f"portal: saved job {result.template.name} (SCOW: job templates)")
            for note in notes:
                print(f"        {note}")
        print(f"watch:  hpcft logs -f {rec.run_id}")
    if args.wait:
        from ..runs.monitor import follow

        st = follow(rec, follow=True, out=sys.stdout if not args.json else sys.stderr)
        why = st.error or (st.reason if st.state == "CANCELLED" and st.reason not in ("", "None") else "")
        print(f"hpcft: job {rec.job_id} {st.state}" + (f": {why}" if why else ""), file=sys.stderr)
        return 0 if st.state == "COMPLETED" else 1
    return 0
