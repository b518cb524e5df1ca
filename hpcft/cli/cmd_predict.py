"""hpcft predict RUN TEXT... | --file in.jsonl: use a trained run's model, offline."""

from __future__ import annotations

import argparse
import datetime as _dt
import shutil
import subprocess
from pathlib import Path

from .common import REF_HELP, settings


def register(sub) -> None:
    p = sub.add_parser(
        "predict", help="label (or generate for) texts with a run's model, offline",
        description="Load the run's saved model (final, or --best) offline and print, per input, the "
                    "label and its score (a classifier; label names from the dataset) or the generation "
                    "(a generative model). Small models run here on the login node's CPU; --submit runs "
                    "it as a Slurm job on the run's partition and writes the outputs into the run folder.",
        epilog="examples:\n"
               "  hpcft predict mrpc-bert 'The bank said profit rose ||| Profit rose, the bank said'\n"
               "  hpcft predict 20261129-1512 --file reviews.jsonl --out labels.jsonl\n"
               "  hpcft predict mrpc-bert --best --file big.jsonl --submit --wait\n"
               "a sentence pair is 'first ||| second'; a JSONL line is {\"text\": ...} or uses the dataset's "
               "column names",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ref", metavar="RUN", help=REF_HELP)
    p.add_argument("texts", nargs="*", metavar="TEXT")
    p.add_argument("--file", metavar="IN.jsonl", help="one input per line")
    p.add_argument("--out", metavar="OUT.jsonl", help="also write the results as JSON lines")
    p.add_argument("--best", action="store_true", help="the best checkpoint (train.save_best) instead of the final model")
    p.add_argument("--submit", action="store_true", help="run as a Slurm job on the run's partition")
    p.add_argument("--wait", action="store_true", help="with --submit: wait for the job and print the results")
    p.add_argument("--time", default="00:30:00", help="with --submit: the job's time limit (default 30 min)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads on the login node (default: torch's)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="generative models: tokens to generate")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..core.errors import ConfigError
    from ..runs.index import RunStore
    from ..runs.ref import resolve_run
    from ..use.launch import local_env, require_local_torch, run_model, worker_argv

    if not args.texts and not args.file:
        raise ConfigError(["hpcft predict: give one or more TEXTs or --file IN.jsonl"])
    if args.file and not Path(args.file).is_file():
        raise ConfigError([f"hpcft predict: --file {args.file}: no such file"])
    s = settings()
    model = run_model(resolve_run(RunStore(s.runs), args.ref), best=args.best)
    wargs = ["--model", str(model.model_dir), "--columns", ",".join(model.text_columns),
             "--max-new-tokens", str(args.max_new_tokens), *args.texts]
    if args.submit:
        return _submit(args, s, model, wargs)
    require_local_torch("predict")
    if args.file:
        wargs += ["--file", str(Path(args.file).resolve())]
    if args.out:
        wargs += ["--out", str(Path(args.out).resolve())]
    if args.threads:
        wargs += ["--threads", str(args.threads)]
    return subprocess.run(worker_argv("after_training.predict", wargs), env=local_env(s, args.threads or None), check=False).returncode


def _submit(args, s, model, wargs: list[str]) -> int:
    from ..cluster import slurm
    from ..use.launch import submit_aux

    folder = model.paths.predictions
    folder.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    if args.file:  # the compute node reads it from the run folder (a shared filesystem)
        inp = folder / f"input-{stamp}.jsonl"
        shutil.copyfile(args.file, inp)
        wargs += ["--file", str(inp)]
    out = folder / f"predictions-{stamp}.jsonl"
    wargs += ["--out", str(out), "--device", model.device]
    job = submit_aux(model, s, "predict", "after_training.predict", wargs, args.time, folder)
    print(f"submitted predict job {job.job_id} on partition {model.record.partition or '(default)'}")
    print(f"  results: {out}\n  log:     {job.log}")
    if args.out:
        print(f"  (--out: the results stay in the run folder; copy {out.name} once the job ends)")
    if not args.wait:
        return 0
    info = slurm.wait_job(job.job_id)
    state = info.state if info else "UNKNOWN"
    if out.is_file():
        if args.out:
            shutil.copyfile(out, args.out)
        print(job.log.read_text(encoding="utf-8", errors="replace") if job.log.is_file() else "", end="")
        return 0
    from ..core.errors import HpcftError

    err = job.err.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:] if job.err.is_file() else []
    raise HpcftError(f"predict job {job.job_id} ended {state} without results (log {job.err}): "
                     + " | ".join(err))
