"""hpcft serve RUN: a Gradio demo of the run's model (gradio: an optional extra, imported only by the app)."""

from __future__ import annotations

import argparse
import os
import sys

from .common import REF_HELP, settings


def register(sub) -> None:
    p = sub.add_parser(
        "serve", help="a Gradio demo of a run's model: text in, labels with scores out (or a chat box)",
        description="Start a small web demo of the run's model, offline (no analytics, no share link). It "
                    "binds to 127.0.0.1 and prints the ssh line that reaches it from a laptop. With --submit it "
                    "runs on a compute node of the run's partition, writes serve.json (node, port, pid) into the "
                    "run folder and prints the node and port once the app answers; scancel the job to stop it.",
        epilog="examples:\n"
               "  hpcft serve mrpc-bert                    # here, on http://127.0.0.1:7860\n"
               "  hpcft serve mrpc-bert --submit --time 2h # on a compute node\n"
               "needs gradio where it runs: pip install 'hpcft[serve]'",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ref", metavar="RUN", help=REF_HELP)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: only through ssh)")
    p.add_argument("--port", type=int, default=None, help="port (default 7860 here, a free one with --submit)")
    p.add_argument("--best", action="store_true", help="the best checkpoint instead of the final model")
    p.add_argument("--submit", action="store_true", help="run on a compute node as a Slurm job")
    p.add_argument("--time", default="02:00:00", help="with --submit: how long the demo may run (default 2 h)")
    p.add_argument("--timeout", type=float, default=600, help="with --submit: seconds to wait for the app")
    p.set_defaults(func=run)


def run(args) -> int:
    import importlib.util

    from ..core.errors import HpcftError
    from ..runs.index import RunStore
    from ..runs.ref import resolve_run
    from ..use.launch import local_env, require_local_torch, run_model, worker_argv
    from ..use.reach import how_to_reach

    s = settings()
    model = run_model(resolve_run(RunStore(s.runs), args.ref), best=args.best)
    wargs = ["--model", str(model.model_dir), "--run-dir", str(model.paths.dir), "--host", args.host,
             "--columns", ",".join(model.text_columns)]
    if args.submit:
        return _submit(args, s, model, wargs)
    require_local_torch("serve")
    if importlib.util.find_spec("gradio") is None:
        raise HpcftError("hpcft serve needs gradio in this Python: pip install 'hpcft[serve]'")
    port = args.port or 7860
    print(f"hpcft: starting the demo of {model.model_dir} on {args.host}:{port} (Ctrl-C stops it)")
    for line in how_to_reach(None, args.host, port, port):
        print(f"  {line}")
    argv = worker_argv("serve", [*wargs, "--port", str(port)])
    sys.stdout.flush()
    # become the app: Ctrl-C, SIGTERM and a closed session reach it directly, nothing is orphaned
    os.execve(argv[0], argv, local_env(s))


def _submit(args, s, model, wargs: list[str]) -> int:
    from ..use.launch import submit_aux
    from ..use.reach import how_to_reach, wait_for_serve

    wargs += ["--port", str(args.port or 0), "--device", model.device]
    folder = model.paths.dir / "serve"
    job = submit_aux(model, s, "serve", "serve", wargs, args.time, folder)
    print(f"submitted serve job {job.job_id} on partition {model.record.partition or '(default)'}; log {job.log}")
    served = wait_for_serve(model.paths.serve_info, job.job_id, job.log, job.err, args.timeout)
    seen = "answers here" if served.answered_here else "answered on its node"
    print(f"serving on node {served.node} port {served.port} (pid {served.pid}; the app {seen})")
    print(f"  {model.paths.serve_info}")
    for line in how_to_reach(served.node, served.host, served.port):
        print(f"  {line}")
    print(f"  stop it with: scancel {job.job_id}")
    return 0
