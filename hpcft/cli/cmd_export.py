"""hpcft export RUN [--merge] [--to DIR] [--dtype D] [--submit]: a fine-tuned LLM as a
standalone model folder, in the base model's dtype unless ``--dtype`` says otherwise.

The work (peft merge, save) runs in ``python -m hpcft.worker.after_training.export``: in a subprocess here with
the offline environment, or with ``--submit`` as a one-task Slurm job on the run's partition and
environment (:func:`hpcft.use.launch.submit_aux`, as ``predict``/``serve --submit``) when the
model is too big for the login node. The CLI itself never imports torch. A run whose job said
``train.trust_remote_code: true`` is loaded with it again; no other run is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .common import REF_HELP, print_json, settings


def register(sub) -> None:
    p = sub.add_parser("export", help="write a fine-tuned model (LoRA merged with --merge) to a folder",
                       epilog="examples:\n  hpcft export --merge                 # the latest run -> RUN/export\n"
                              "  hpcft export 20261129-1512 --merge --to ~/models/my-qwen\n"
                              "  hpcft export RUN --to DIR            # the adapter (or full model) as trained\n"
                              "  hpcft export RUN --merge --submit --wait   # merge on a compute node (big models)\n"
                              "  hpcft export RUN --merge --dtype fp32  # another dtype than the base model's",
                       formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("ref", nargs="?", metavar="RUN|JOBID", help=REF_HELP)
    p.add_argument("--merge", action="store_true", help="fold a LoRA adapter into the base model")
    p.add_argument("--to", metavar="DIR", help="destination folder (default: export/ in the run folder)")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp16", "fp32"], default="auto",
                   help="dtype of the written model (default auto: the base model's own, e.g. bf16)")
    p.add_argument("--submit", action="store_true",
                   help="run the export as a Slurm job on the run's partition (models too big for this node)")
    p.add_argument("--wait", action="store_true", help="with --submit: wait for the job to end")
    p.add_argument("--time", default="01:00:00", help="with --submit: the job's time limit (default 1 h)")
    p.add_argument("--python", metavar="PATH", default=sys.executable,
                   help="interpreter with torch+transformers+peft (default: this one; not with --submit)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..core.errors import ConfigError, HpcftError
    from ..core.offline import OFFLINE_FLAGS
    from ..core.pref_rows import PREFERENCE_TASKS
    from ..core.rundir import RunPaths
    from ..runs.index import RunStore
    from ..runs.ref import resolve_run
    from ..use.delegated import refusal

    s = settings()
    record = resolve_run(RunStore(s.runs), args.ref)
    paths = RunPaths(record.run_dir)
    try:
        metrics = json.loads(paths.metrics.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise ConfigError([f"run {record.run_id} has no results yet ({paths.metrics}); "
                           "export a run that finished (hpcft status)"]) from None
    why = refusal(metrics, record.run_id)   # a delegated run whose LLaMA-Factory output is no causal LM
    if why:
        raise ConfigError([why])
    if metrics.get("task") not in ("causal-lm", *PREFERENCE_TASKS, "grpo"):
        raise ConfigError([f"run {record.run_id} is not an LLM run; its model is already a plain folder: "
                           f"{metrics.get('output_dir')}"])
    out_dir, base = Path(metrics["output_dir"]), Path(metrics["base_model"])
    for what, p in (("trained model", out_dir), ("base model", base)):
        if not p.is_dir():
            raise ConfigError([f"the run's {what} folder {p} is gone; nothing to export"])
    dest = Path(args.to).expanduser().resolve() if args.to else paths.dir / "export"
    wargs = [str(out_dir), str(base), str(dest), "--dtype", args.dtype]
    if args.merge:
        wargs.append("--merge")
    if _trusts_remote_code(paths):
        wargs.append("--trust-remote-code")
    merged = bool(args.merge and metrics.get("adapter"))
    if args.submit:
        return _submit(args, s, record, paths, out_dir, wargs, dest, merged)
    env = {**os.environ, **OFFLINE_FLAGS, "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[2]),
                                                   env.get("PYTHONPATH")) if p)
    proc = subprocess.run([args.python, "-m", "hpcft.worker.after_training.export", *wargs], env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise HpcftError(f"export failed ({args.python} -m hpcft.worker.after_training.export): {tail}")
    if args.json:
        print_json({"run_id": record.run_id, "dest": str(dest), "merged": merged, "base_model": str(base)})
    else:
        what = "merged model" if merged else ("LoRA adapter" if metrics.get("adapter") else "model")
        print(f"{what} written to {dest}")
        print(f"load it with: AutoModelForCausalLM.from_pretrained({str(dest)!r})" if merged or
              not metrics.get("adapter") else f"(base model: {base}; use --merge for a standalone model)")
    return 0


def _trusts_remote_code(paths) -> bool:
    """The run's own job said ``train.trust_remote_code: true`` (never implied)."""
    import yaml

    try:
        job = yaml.safe_load(paths.job_yaml.read_text(encoding="utf-8")) or {}
    except (OSError, ValueError):
        return False
    return bool(isinstance(job, dict) and (job.get("train") or {}).get("trust_remote_code") is True)


def _submit(args, s, record, paths, out_dir: Path, wargs: list[str], dest: Path, merged: bool) -> int:
    """The export as a one-task Slurm job from the run's own job (environment, partition,
    modules, offline variables); its log goes into RUN/export-logs/."""

    from ..cluster import slurm
    from ..core.errors import HpcftError
    from ..core.rundir import LaunchSpec
    from ..use.launch import RunModel, submit_aux

    try:
        device = LaunchSpec.read(paths.dir).device
    except (OSError, ValueError, TypeError):
        device = "cpu"
    model = RunModel(record, paths, out_dir, record.kind, [], device)
    job = submit_aux(model, s, "export", "after_training.export", wargs, args.time, paths.dir / "export-logs")
    if args.json and not args.wait:
        print_json({"run_id": record.run_id, "dest": str(dest), "merged": merged, "job_id": job.job_id,
                    "log": str(job.log)})
        return 0
    if not args.json:
        print(f"submitted export job {job.job_id} on partition {record.partition or '(default)'}")
        print(f"  writes: {dest}\n  log:    {job.log}")
    if not args.wait:
        return 0
    info = slurm.wait_job(job.job_id)
    state = info.state if info else "UNKNOWN"
    if state != "COMPLETED" or not (dest / "config.json").is_file() and not (dest / "adapter_config.json").is_file():
        err = job.err.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:] \
            if job.err.is_file() else []
        raise HpcftError(f"export job {job.job_id} ended {state} without a model in {dest} (log {job.err}): "
                         + " | ".join(err))
    if args.json:
        print_json({"run_id": record.run_id, "dest": str(dest), "merged": merged, "job_id": job.job_id,
                    "log": str(job.log)})
    else:
        print(f"{'merged model' if merged else 'model'} written to {dest}")
    return 0
