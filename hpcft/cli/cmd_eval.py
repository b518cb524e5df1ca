"""hpcft eval RUN|MODEL --tasks ceval,cmmlu,mmlu,gsm8k: benchmark scores, offline (lm-evaluation-harness)."""

from __future__ import annotations

import argparse
import subprocess

from .common import settings


def register(sub) -> None:
    p = sub.add_parser(
        "eval", help="score a run's model (or a base model) on C-Eval, CMMLU, MMLU, GSM8K, offline",
        description="Run lm-evaluation-harness on a run's model (a LoRA run with its adapter, no merge) or on a "
                    "staged base model, offline, on the datasets `hpcft stage --eval` staged. Scores go into the "
                    "run folder (eval/<task>.json and the harness's own results in eval/harness/); a base model "
                    "gets a run folder of its own, so `hpcft compare BASE RUN` shows both. Small models run here "
                    "on the login node's CPU; --submit runs it as a Slurm job on the run's partition.",
        epilog="examples:\n"
               "  hpcft stage --eval ceval cmmlu mmlu gsm8k         # once, on the login node\n"
               "  hpcft eval my-lora-run --tasks ceval,cmmlu,mmlu,gsm8k --submit --wait\n"
               "  hpcft eval qwen2.5-7b-instruct --tasks mmlu --like my-lora-run --submit   # the base model\n"
               "  hpcft eval my-lora-run --tasks mmlu_anatomy,gsm8k --limit 50    # a quick look, here on CPU\n"
               "  hpcft compare BASE_EVAL_RUN my-lora-run                          # a column per task\n"
               "tasks: ceval cmmlu mmlu gsm8k (each the harness's whole group), or one subject, e.g. mmlu_anatomy, "
               "ceval-valid_law, cmmlu_arts",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ref", metavar="RUN|MODEL", help="a run (id, prefix, job name, folder, Slurm id), or a staged "
                                                   "model name/alias or model folder (scores the base model)")
    p.add_argument("--tasks", required=True, action="append", metavar="T1,T2", help="benchmark tasks, comma-separated")
    p.add_argument("--limit", type=int, metavar="N", help="at most N questions per (sub)task: a quick look, not a score")
    p.add_argument("--fewshot", type=int, metavar="K", help="few-shot examples (default: each task's own)")
    p.add_argument("--batch-size", type=int, default=8, help="the harness's batch size (default 8)")
    p.add_argument("--submit", action="store_true", help="run as a Slurm job on the run's partition")
    p.add_argument("--like", metavar="RUN", help="with a MODEL and --submit: the run whose partition, devices and "
                                                 "environment the job uses")
    p.add_argument("--wait", action="store_true", help="with --submit: wait for the job and print the scores")
    p.add_argument("--time", default="02:00:00", help="with --submit: the job's time limit (default 2 h)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads on the login node (default: torch's)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..core.errors import ConfigError
    from ..core.eval_tasks import resolve_tasks
    from ..use import evaluate as ev

    if args.limit is not None and args.limit < 1:
        raise ConfigError(["hpcft eval: --limit must be at least 1"])
    if args.fewshot is not None and args.fewshot < 0:
        raise ConfigError(["hpcft eval: --fewshot must be 0 or more"])
    tasks = resolve_tasks(args.tasks)
    s = settings()
    ev.require_staged(tasks, s)            # before anything runs or is queued
    target = ev.target(args.ref, s)
    like = None
    if args.submit and target.record is None:
        if not args.like:
            raise ConfigError([f"hpcft eval {args.ref} --submit: a model has no job of its own; add --like RUN "
                               "(the run whose partition and environment to use)"])
        like = ev.target(args.like, s)
        if like.record is None:
            raise ConfigError([f"hpcft eval --like {args.like}: not a run"])
    elif args.like:
        raise ConfigError(["hpcft eval: --like is for a MODEL with --submit"])
    from ..use.launch import local_env, require_local_torch, worker_argv

    if not args.submit:
        require_local_torch("eval")
    if target.record is None:
        target = ev.new_eval_run(target, s)
    if args.submit:
        return _submit(args, s, target, tasks, like)
    wargs = ev.worker_args(target, tasks, limit=args.limit, fewshot=args.fewshot, batch_size=args.batch_size,
                           device="cpu")
    if args.threads:
        wargs += ["--threads", str(args.threads)]
    rc = subprocess.run(worker_argv("evaluate", wargs), env=local_env(s, args.threads or None), check=False).returncode
    ev.finish(target, s, rc == 0)
    if rc == 0:
        print(f"scores in {target.out}")
    return rc


def _submit(args, s, target, tasks, like) -> int:
    from ..cluster import slurm
    from ..core.errors import HpcftError
    from ..core.rundir import RunPaths
    from ..runs.index import RunStore
    from ..use import evaluate as ev
    from ..use.launch import RunModel, submit_aux

    host = like or target                   # whose job (partition, env, devices) the eval job copies
    rec = host.record
    model = RunModel(rec, RunPaths(rec.run_dir), target.adapter or target.model, rec.kind, [], host.device)
    wargs = ev.worker_args(target, tasks, limit=args.limit, fewshot=args.fewshot, batch_size=args.batch_size,
                           device=host.device)
    job = submit_aux(model, s, "eval", "evaluate", wargs, args.time, target.out)
    if target.record.kind == "eval":        # a base model's own run folder: where it went
        target.record.executor, target.record.partition, target.record.job_id = "slurm", rec.partition, job.job_id
        RunStore(s.runs).save(target.record)
    print(f"submitted eval job {job.job_id} on partition {rec.partition or '(default)'}")
    print(f"  scores: {target.out}\n  log:    {job.log}")
    if not args.wait:
        return 0
    info = slurm.wait_job(job.job_id)
    done = all((target.out / f"{t.name}.json").is_file() for t in tasks)
    ev.finish(target, s, done)
    if done:
        print(job.log.read_text(encoding="utf-8", errors="replace") if job.log.is_file() else "", end="")
        return 0
    err = job.err.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:] if job.err.is_file() else []
    raise HpcftError(f"eval job {job.job_id} ended {info.state if info else 'UNKNOWN'} without scores "
                     f"(log {job.err}): " + " | ".join(err))
