"""hpcft eval RUN|MODEL --tasks ceval,cmmlu,mmlu,gsm8k: benchmark scores, offline (lm-evaluation-harness)."""

from __future__ import annotations

import argparse
import os
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
               "  hpcft eval my-chat-run --tasks gsm8k --chat-template --backend hf   # in the chat template, on HFLM\n"
               "  hpcft eval my-run --tasks mmlu --backend vllm --venv ~/envs/vllm --devices 2 --submit   # vLLM, TP 2\n"
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
    env = p.add_mutually_exclusive_group()
    env.add_argument("--venv", metavar="DIR", help="with --submit: score from this virtualenv instead of the run's "
                                                  "(e.g. one with vLLM, whose pins rarely fit the training env)")
    env.add_argument("--conda", metavar="ENV", help="with --submit: score from this conda env")
    p.add_argument("--devices", type=int, default=1, metavar="N",
                   help="with --submit: the GPUs/NPUs of the run's kind the eval job asks for (default 1); "
                        "the vllm backend runs tensor parallel over them, for a model larger than one device")
    p.add_argument("--threads", type=int, default=0, help="CPU threads on the login node (default: torch's)")
    p.add_argument("--backend", choices=("auto", "vllm", "hf"), default="auto",
                   help="the harness's model: vllm (lm-eval's vLLM model, the adapter unmerged) or hf "
                        "(transformers + peft); default auto: vllm where the job's environment has it, else hf")
    p.add_argument("--chat-template", action="store_true",
                   help="wrap each prompt, and the few-shot examples as turns, in the model's chat template "
                        "(the harness's apply_chat_template and fewshot_as_multiturn); default: plain prompts, "
                        "as the harness and published scores use them")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="the weights' dtype for scoring (default: the model's own)")
    p.add_argument("--max-model-len", type=int, metavar="N",
                   help="the context length in tokens (default: the model's own)")
    p.add_argument("--gpu-memory-utilization", type=float, metavar="F",
                   help="vllm: the fraction of each device's memory it takes (default 0.9; on a CPU partition "
                        "it is a fraction of host memory, default 0.1)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..core.errors import ConfigError
    from ..core.eval_tasks import resolve_tasks
    from ..use import evaluate as ev

    if args.limit is not None and args.limit < 1:
        raise ConfigError(["hpcft eval: --limit must be at least 1"])
    if args.fewshot is not None and args.fewshot < 0:
        raise ConfigError(["hpcft eval: --fewshot must be 0 or more"])
    if args.max_model_len is not None and args.max_model_len < 8:
        raise ConfigError(["hpcft eval: --max-model-len must be at least 8"])
    if args.gpu_memory_utilization is not None and not 0 < args.gpu_memory_utilization <= 1:
        raise ConfigError(["hpcft eval: --gpu-memory-utilization must be above 0 and at most 1"])
    if args.devices < 1 or (args.devices != 1 and not args.submit):
        raise ConfigError([f"hpcft eval: --devices {args.devices}: give 1 or more, with --submit (the eval job's "
                           "devices)"])
    if (args.venv or args.conda) and not args.submit:
        raise ConfigError(["hpcft eval: --venv and --conda choose the eval job's environment; add --submit"])
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

    device = "cpu" if not args.submit else (like or target).device
    if args.backend == "vllm" and target.adapter and device == "cpu" and any(not t.benchmark.generative for t in tasks):
        raise ConfigError([f"hpcft eval --backend vllm: vLLM's CPU build cannot score multiple-choice tasks "
                           f"({', '.join(t.name for t in tasks if not t.benchmark.generative)}) with a LoRA "
                           "adapter (its prompt log-probabilities fail under LoRA, vllm#29955); use --backend hf, "
                           "or merge the adapter (hpcft export RUN --merge) and score that"])
    if not args.submit:
        require_local_torch("eval")
    if target.record is None:
        target = ev.new_eval_run(target, s)
    if args.submit:
        return _submit(args, s, target, tasks, like)
    wargs = ev.worker_args(target, tasks, limit=args.limit, fewshot=args.fewshot, batch_size=args.batch_size,
                           device="cpu") + _engine(args, target)
    if args.threads:
        wargs += ["--threads", str(args.threads)]
    rc = subprocess.run(worker_argv("after_training.evaluate", wargs), env=local_env(s, args.threads or None), check=False).returncode
    ev.finish(target, s, rc == 0)
    if rc == 0:
        print(f"scores in {target.out}")
    return rc


def _engine(args, target) -> list[str]:
    from ..use import evaluate as ev

    return ev.engine_args(target, backend=args.backend, chat_template=args.chat_template, dtype=args.dtype,
                          max_model_len=args.max_model_len, gpu_memory_utilization=args.gpu_memory_utilization)


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
                           device=host.device) + _engine(args, target)
    env = {"venv": os.path.abspath(args.venv)} if args.venv else {"conda": args.conda} if args.conda else None
    job = submit_aux(model, s, "eval", "after_training.evaluate", wargs, args.time, target.out, devices=args.devices, env=env)
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
