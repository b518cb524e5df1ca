"""hpcft tensorboard [RUN...]: TensorBoard over runs' event files, behind a password."""

from __future__ import annotations

import argparse
import os
import sys

from .common import REF_HELP, settings


def register(sub) -> None:
    p = sub.add_parser(
        "tensorboard", help="TensorBoard over runs' event files (train.report_to: [tensorboard]), with a password",
        description="Start TensorBoard over the named runs (default: every run with event files), side by side. "
                    "TensorBoard has no login of its own, so it runs inside a small server that asks for a "
                    "password first (its only port; no second, open one on the node's loopback), made per "
                    "server, printed once and kept only in the server's 0600 tensorboard.json. Here it binds to 127.0.0.1 (reach it with the ssh line "
                    "printed); with --submit it runs as a Slurm job (no GPU) in the first run's environment. With "
                    "scow: {portal_url, cluster} in the cluster config, a submitted TensorBoard binds where the "
                    "SCOW portal reaches it and the portal's proxy URL is printed.",
        epilog="examples:\n"
               "  hpcft tensorboard                          # every run with event files, here\n"
               "  hpcft tensorboard sft-a sft-b --submit     # two runs, on a compute node\n"
               "needs tensorboard where it runs: pip install 'hpcft[tensorboard]'",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("refs", nargs="*", metavar="RUN", help=REF_HELP)
    p.add_argument("--host", default=None, help="address to bind (default 127.0.0.1; 0.0.0.0 with a SCOW "
                                                "portal configured and --submit)")
    p.add_argument("--port", type=int, default=None, help="port (default 6006 here, a free one with --submit)")
    p.add_argument("--submit", action="store_true", help="run on a compute node as a Slurm job")
    p.add_argument("--time", default="04:00:00", help="with --submit: how long it may run (default 4 h)")
    p.add_argument("--timeout", type=float, default=600, help="with --submit: seconds to wait for it")
    p.add_argument("--scow-app", action="store_true",
                   help="inside a SCOW interactive app (contrib/scow/apps/hpcft-tensorboard.yml): on its $PORT with "
                        "its $PASSWORD, links under its $PROXY_BASE_PATH")
    p.set_defaults(func=run)


def run(args) -> int:
    import importlib.util

    from ..core.errors import ConfigError, HpcftError
    from ..runs.index import RunStore
    from ..runs.ref import resolve_run
    from ..use.reach import EVERYWHERE, how_to_reach, port_in_use, portal, proxy_prefix, scow_app_args
    from ..use.tensorboard import board, worker_args

    s = settings()
    store = RunStore(s.runs)
    records = [resolve_run(store, ref) for ref in args.refs] if args.refs else store.records()
    via_portal = args.submit and portal(s.scow)
    host = args.host or (EVERYWHERE if via_portal else "127.0.0.1")
    port = args.port or (0 if args.submit else 6006)
    if not args.submit and not args.scow_app and port_in_use(host, port):
        raise ConfigError([f"hpcft tensorboard: port {port} on {host} is in use; pick another with --port"])
    if args.scow_app:
        if args.submit:
            raise ConfigError(["hpcft tensorboard --scow-app: the SCOW app runs it on its own node; leave out --submit"])
        extra = scow_app_args("tensorboard", dict(os.environ))
        b = board(s, records, named=bool(args.refs))
        return _exec(s, ["--logdir-spec", b.spec, "--info-file", str(b.info_path), *extra])
    b = board(s, records, named=bool(args.refs))
    wargs = worker_args(b, host, port, proxy_prefix(s.scow) if via_portal else "")
    if args.submit:
        return _submit(args, s, b, wargs)
    if importlib.util.find_spec("tensorboard") is None:
        raise HpcftError("hpcft tensorboard needs tensorboard in this Python: pip install 'hpcft[tensorboard]'")
    print(f"hpcft: starting TensorBoard over {len(b.records)} run(s) on {host}:{port} (Ctrl-C stops it)")
    for line in how_to_reach(None, host, port, port):
        print(f"  {line}")
    return _exec(s, [*wargs, "--print-secret"])


def _exec(s, wargs: list[str]) -> int:
    from ..use.launch import local_env, worker_argv

    argv = worker_argv("serving.tensorboard", wargs)
    sys.stdout.flush()
    os.execve(argv[0], argv, local_env(s))


def _submit(args, s, b, wargs: list[str]) -> int:
    from ..use.launch import run_home, submit_aux
    from ..use.reach import basic_auth, print_served, wait_for_serve

    home = run_home(b.records[0])
    job = submit_aux(home, s, "tensorboard", "serving.tensorboard", wargs, args.time, b.folder, devices=False)
    print(f"submitted tensorboard job {job.job_id} over {len(b.records)} run(s); log {job.log}")
    served = wait_for_serve(b.info_path, job.job_id, job.log, job.err, args.timeout, "/", basic_auth)
    print_served(served, s.scow, b.info_path, job.job_id)
    return 0
