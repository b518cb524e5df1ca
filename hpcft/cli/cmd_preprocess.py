"""hpcft preprocess JOB.yaml: tokenize a causal-lm job's data in a CPU Slurm job, into the
tokenize-once cache, so that the job's submit (and every rerun, requeue or sweep point with the
same data) starts training at once. Thin: :func:`hpcft.submit.preprocess.preprocess` does it."""

from __future__ import annotations

from .common import add_job_args, load, print_json

EPILOG = """examples:
  hpcft preprocess jobs/qwen2.5-7b-lora.yaml      # queue the CPU job; prints its id
  hpcft submit jobs/qwen2.5-7b-lora.yaml          # later: trains from the cache at once
  (train.preprocess: cpu-job in the job does both in one submit: training waits on it)
"""


def register(sub) -> None:
    import argparse

    p = sub.add_parser("preprocess", help="tokenize a causal-lm job's data in a CPU job, into the data cache",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_job_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..submit.preprocess import preprocess

    loaded, settings = load(args)
    done = preprocess(loaded, settings)
    if args.json:
        print_json(done.as_dict())
        return 0
    print(done.line())
    if done.job_id:
        print(done.job_id)
    return 0
