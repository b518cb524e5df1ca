"""hpcft export RUN [--merge] [--to DIR]: a fine-tuned LLM as a standalone model folder.

The work (peft merge, save) runs in ``python -m hpcft.worker.export`` in a subprocess with
the offline environment: the CLI itself never imports torch.
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
                              "  hpcft export RUN --to DIR            # the adapter (or full model) as trained",
                       formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("ref", nargs="?", metavar="RUN|JOBID", help=REF_HELP)
    p.add_argument("--merge", action="store_true", help="fold a LoRA adapter into the base model")
    p.add_argument("--to", metavar="DIR", help="destination folder (default: export/ in the run folder)")
    p.add_argument("--python", metavar="PATH", default=sys.executable,
                   help="interpreter with torch+transformers+peft (default: this one)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..core.errors import ConfigError, HpcftError
    from ..core.offline import OFFLINE_FLAGS
    from ..core.rundir import RunPaths
    from ..runs.index import RunStore
    from ..runs.ref import resolve_run

    s = settings()
    record = resolve_run(RunStore(s.runs), args.ref)
    paths = RunPaths(record.run_dir)
    try:
        metrics = json.loads(paths.metrics.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise ConfigError([f"run {record.run_id} has no results yet ({paths.metrics}); "
                           "export a run that finished (hpcft status)"]) from None
    if metrics.get("task") != "causal-lm":
        raise ConfigError([f"run {record.run_id} is not a causal-lm run; its model is already a plain folder: "
                           f"{metrics.get('output_dir')}"])
    out_dir, base = Path(metrics["output_dir"]), Path(metrics["base_model"])
    for what, p in (("trained model", out_dir), ("base model", base)):
        if not p.is_dir():
            raise ConfigError([f"the run's {what} folder {p} is gone; nothing to export"])
    dest = Path(args.to).expanduser().resolve() if args.to else paths.dir / "export"
    env = {**os.environ, **OFFLINE_FLAGS, "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[2]),
                                                   env.get("PYTHONPATH")) if p)
    cmd = [args.python, "-m", "hpcft.worker.export", str(out_dir), str(base), str(dest)]
    if args.merge:
        cmd.append("--merge")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise HpcftError(f"export failed ({args.python} -m hpcft.worker.export): {tail}")
    merged = bool(args.merge and metrics.get("adapter"))
    if args.json:
        print_json({"run_id": record.run_id, "dest": str(dest), "merged": merged, "base_model": str(base)})
    else:
        what = "merged model" if merged else ("LoRA adapter" if metrics.get("adapter") else "model")
        print(f"{what} written to {dest}")
        print(f"load it with: AutoModelForCausalLM.from_pretrained({str(dest)!r})" if merged or
              not metrics.get("adapter") else f"(base model: {base}; use --merge for a standalone model)")
    return 0
