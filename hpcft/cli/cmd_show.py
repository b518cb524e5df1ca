"""hpcft show [RUN|JOBID]: a run's config, results and where its files are."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from .common import SWEEP_REF_HELP, print_json, settings

SKIP_EVAL = {"runtime", "samples_per_second", "steps_per_second", "epoch", "step"}


def register(sub) -> None:
    p = sub.add_parser("show", help="a run's config, metrics and paths (default: the latest run)",
                       epilog="examples:\n  hpcft show                 # the latest run\n"
                              "  hpcft show 20261123-1512   # by run id prefix, or a Slurm job id\n"
                              "  hpcft show --json | jq .metrics.eval",
                       formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("ref", nargs="?", metavar="RUN|JOBID", help=SWEEP_REF_HELP)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def collect(record) -> dict:
    """Everything `show` prints, as data (no Slurm calls: works for old runs too)."""
    import yaml

    from ..core.eval_tasks import read_scores
    from ..core.preprocess import read_record as read_preprocess
    from ..core.progress_log import last_progress, read_jsonl
    from ..core.rundir import LaunchSpec, RunPaths
    from ..runs.index import RERUNS
    from ..runs.memory import memory_vs_estimate, read_estimate

    paths = RunPaths(record.run_dir)
    try:
        job = yaml.safe_load(paths.job_yaml.read_text(encoding="utf-8"))
    except (FileNotFoundError, yaml.YAMLError):
        job = None
    try:
        out_dir = Path(LaunchSpec.read(paths.dir).output_dir)
    except (OSError, ValueError, TypeError):  # a run folder from before the launch spec, or a torn one
        out_dir = paths.output
    files = {
        "run_dir": str(paths.dir), "job_yaml": str(paths.job_yaml), "script": str(paths.script),
        "log": str(paths.stdout(record.job_id)) if record.job_id else None,
        "metrics": str(paths.metrics) if paths.metrics.is_file() else None,
        "progress": str(paths.progress) if paths.progress.is_file() else None,
        "curves": str(paths.curves) if paths.curves.is_file() else None,
        "output_dir": str(out_dir),
        "best_model": str(out_dir / "best") if (out_dir / "best").is_dir() else None,
        "tensorboard": str(paths.tensorboard) if paths.tensorboard.is_dir() else None,
        "swanlog": str(paths.swanlog) if paths.swanlog.is_dir() else None,
        "serve": str(paths.serve_info) if paths.serve_info.is_file() else None,
        "eval": str(paths.dir / "eval") if (paths.dir / "eval").is_dir() else None,
        "memory_estimate": str(paths.memory_estimate) if paths.memory_estimate.is_file() else None,
        "samples": str(paths.dir / "samples.jsonl") if (paths.dir / "samples.jsonl").is_file() else None,
    }
    metrics = _read_json(paths.metrics)
    return {"run_id": record.run_id, "name": record.name, "job_id": record.job_id, "executor": record.executor,
            "state": record.state, "submitted_at": record.submitted_at, "partition": record.partition,
            "job": job, "metrics": metrics, "progress": last_progress(paths.progress),
            # the pre-flight's memory estimate against the run's measured peaks (LLM jobs)
            "memory": memory_vs_estimate(read_estimate(paths.dir), metrics),
            "files": files,
            "benchmarks": read_scores(paths.dir),  # hpcft eval / train.eval_tasks: eval/<task>.json
            # SCOW portal reruns, both ways: the run this one reruns, and this run's own reruns
            "rerun_of": record.rerun_of, "reruns": [r.get("run_id") for r in read_jsonl(paths.dir / RERUNS)
                                                    if isinstance(r, dict)],
            "preprocess": read_preprocess(paths.dir),  # train.preprocess: cpu-job's record
            "samples": read_jsonl(paths.dir / "samples.jsonl", limit=2)}  # a causal-lm run's first answers


def _dataset_text(value) -> str:
    """``train.dataset`` in one line: a name, or a mix ``a.jsonl + b.jsonl (weight 2)``."""
    if not isinstance(value, list):
        return str(value)
    parts = [x if isinstance(x, str) else f"{x.get('name')}" + (f" (weight {x['weight']:g})"
             if isinstance(x.get("weight"), (int, float)) else "") for x in value]
    return " + ".join(parts)


def _fmt(v) -> str:
    """Metric values: 4 decimals."""
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _num(v) -> str:
    """Times, rates, losses: a few significant digits."""
    return f"{v:.4g}" if isinstance(v, float) else ("-" if v is None else str(v))


def run(args) -> int:
    from ..cluster.slurm import TERMINAL_STATES
    from ..runs.index import RunStore
    from ..runs.monitor import status
    from ..runs.ref import resolve
    from ..runs.sweep_record import Sweep
    from . import sweep_views

    store = RunStore(settings().runs)
    record = resolve(store, args.ref)
    if isinstance(record, Sweep):  # its points ranked by their metric
        return sweep_views.show(args, store, record)
    if record.state not in TERMINAL_STATES:
        record.state = status(record).state
    info = collect(record)
    if args.json:
        print_json(info)
        return 0
    print(f"run:       {info['run_id']}  ({info['name']})")
    print(f"job:       {info['job_id']} ({info['executor']}{', ' + info['partition'] if info['partition'] else ''})"
          f"  {info['state']}")
    if info["rerun_of"]:
        print(f"rerun of:  {info['rerun_of']} (from the SCOW portal's saved job)")
    if info["reruns"]:
        print(f"reruns:    {', '.join(map(str, info['reruns']))}")
    job = info["job"] or {}
    train = job.get("train")
    if train:
        print("config:")
        keys = ["task", "method", "model", "dataset", "dataset_config", "metric", "epochs", "max_steps", "learning_rate",
                "batch_size", "gradient_accumulation", "max_seq_length", "precision", "seed", "train_subset",
                "init_from"]
        for k in keys:
            if train.get(k) is not None:
                print(f"  {k + ':':<22} {_dataset_text(train[k]) if k == 'dataset' else train[k]}")
    elif job.get("script"):
        print(f"script:    {job['script']} {' '.join(job.get('args') or [])}")
    res = job.get("resources") or {}
    if res:
        print(f"resources: {res.get('nodes', 1)} node(s), partition {res.get('partition') or '-'}, "
              f"gpus {res.get('gpus_per_node') or 0}, npus {res.get('npus_per_node') or 0}, time {res.get('time')}")
    from ..core.preprocess import describe as describe_preprocess

    pre = describe_preprocess(info["preprocess"], run_ended=info["state"] in TERMINAL_STATES)
    if pre:   # train.preprocess: cpu-job: where and how long its data were tokenized
        print(f"preprocess: {pre}")
    m = info["metrics"]
    q = (m or {}).get("quantization")
    if isinstance(q, dict):   # method: qlora: the frozen base as bitsandbytes packed it
        kind = f"{q.get('bits')}-bit" + (f" {q['type']}{' double-quantized' if q.get('double_quant') else ''}, "
                                         f"compute {q.get('compute_dtype')}" if q.get("type") else " LLM.int8")
        print(f"quantized: {kind}; {q.get('quantized_layers')} linear layers, {q.get('quantized_params', 0):,} weights "
              f"in {q.get('quantized_weights_mb')} MiB ({q.get('bytes_per_quantized_param')} B each)")
    if m:
        ev = m.get("eval") or {}
        head = m.get("headline")
        shown = ", ".join(f"{k} {_fmt(v)}" for k, v in ev.items() if k not in SKIP_EVAL)
        print(f"result:    {head} {_fmt(ev.get(head))}" if head in ev else "result:    -")
        print(f"eval:      {shown}")
        _preference(m)
        _grpo(m)
        _data_cache(m.get("data"))
        tr = m.get("train") or {}
        rate = (f"{_num(tr.get('tokens_per_second'))} tokens/s" if "tokens_per_second" in tr
                else f"{_num(tr.get('samples_per_second'))} samples/s")
        ckpt = m.get("gradient_checkpointing") or {}
        print(f"train:     {tr.get('global_step')} steps, {_num(tr.get('runtime_s'))} s this leg, "
              f"{rate}, loss {_num(tr.get('loss'))}"
              + (f"; gradient checkpointing {ckpt['why'].split(' (')[0]}" if ckpt.get("why") else ""))
        mem = m.get("peak_memory_mb") or {}
        print(f"device:    {m.get('device_name') or m.get('device')}, {m.get('precision')}, peak host "
              f"{mem.get('host_rss_mb')} MiB" + (f", device {mem['device_mb']} MiB" if 'device_mb' in mem else ""))
        print(f"restarts:  {m.get('restarts', 0)} (resumed {m.get('resumes', 0)}x), first step after "
              f"{_num(m.get('first_step_s'))} s")
        _telemetry(m)
    elif info["progress"]:
        p = info["progress"]
        print(f"progress:  step {p.get('step')}/{p.get('max_steps')} epoch {_num(p.get('epoch'))} "
              f"loss {_num(p.get('loss'))} eta {p.get('eta')}")
    if info["memory"]:
        from ..runs.memory import describe

        for i, line in enumerate(describe(info["memory"])):
            print(f"{'memory:' if i == 0 else '':<10} {line}")
    for task, b in info["benchmarks"].items():
        limit = f", limit {b['limit']} per task" if b.get("limit") else ""
        print(f"benchmark: {task} {b.get('metric')} {_fmt(b.get('score'))} ({b.get('samples')} questions{limit}"
              f"{', with adapter' if b.get('adapter') else ''}; lm-eval {b.get('lm_eval')})")
    for i, sample in enumerate(info["samples"], 1):
        prompt = " ".join(str(sample.get("prompt", "")).split())
        print(f"sample {i}:  prompt:    {prompt[-160:]}")
        print(f"           generated: {' '.join(str(sample.get('generated', '')).split())[:300]}")
        print(f"           reference: {' '.join(str(sample.get('reference', '')).split())[:300]}")
    print("files:")
    for k, v in info["files"].items():
        if v:
            print(f"  {k + ':':<12} {v}")
    _trackers(info["files"], record.run_dir)
    return 0


def _data_cache(d) -> None:
    """causal-lm: how long tokenizing took this run, and whether the cache had the data."""
    if not isinstance(d, dict) or "cache" not in d:
        return
    how = {"hit": f"from cache {d.get('cache_key')} (built in {_num(d.get('cache_built_s'))} s)",
           "built": f"cache {d.get('cache_key')} built", "off": "no cache (train.data_cache: false)"}
    print(f"data:      {d.get('train_examples')} examples, {d.get('tokens')} tokens, {_num(d.get('tokenize_s'))} s; "
          f"{how.get(d['cache'], d['cache'])}")


def _preference(m: dict) -> None:
    """A preference run (dpo, orpo, simpo, kto): its reference and the rewards per evaluation."""
    pref = m.get("preference")
    if not isinstance(pref, dict):
        return
    steps, margins, accs = pref.get("steps") or [], pref.get("margins") or [], pref.get("accuracies") or []
    per_eval = ", ".join(f"step {s}: margin {_fmt(mg)}" + (f" acc {_fmt(a)}" if a is not None else "")
                         for s, mg, a in zip(steps, margins, accs))
    print(f"reference: {m.get('reference') or '-'} (beta {_num(pref.get('beta'))})")
    print(f"rewards:   {per_eval or '-'}")


def _grpo(m: dict) -> None:
    """A GRPO run: its reference and each reward from its first logged step to its last."""
    g = m.get("grpo")
    if not isinstance(g, dict):
        return
    steps = g.get("steps") or []
    print(f"reference: {m.get('reference') or '-'}")
    print(f"grpo:      {g.get('num_generations')} generations of up to {g.get('max_completion_length')} tokens, "
          f"beta {_num(g.get('beta'))}, loss {g.get('loss_type')}, temperature {_num(g.get('temperature'))}"
          + (f", {g['vllm_mode']} vLLM" if g.get("vllm_mode") else ""))

    def span(values) -> str:
        values = values or []
        return f"{_fmt(values[0])} -> {_fmt(values[-1])}" if values else "-"

    first_last = f"step {steps[0]} -> {steps[-1]}" if steps else "no step logged"
    parts = [f"reward {span(g.get('reward'))}"]
    parts += [f"{r.get('label')} x{_num(r.get('weight'))} {span((g.get('reward_components') or {}).get(r.get('label')))}"
              for r in g.get("rewards") or []]
    if any(k is not None for k in g.get("kl") or []):
        parts.append(f"kl {span(g.get('kl'))}")
    parts.append(f"completion length {span(g.get('completion_length'))}")
    print(f"rewards:   {first_last}: {', '.join(parts)}")


def _telemetry(m: dict) -> None:
    """The hardware/throughput/time record of runs since issue 10 (older runs have none)."""
    hw, thr, wall = m.get("hardware"), m.get("throughput") or {}, m.get("wall") or {}
    if not hw:
        return
    tok = f", {_num(thr.get('tokens_per_s'))} tokens/s" if thr.get("tokens_per_s") else ""
    print(f"hardware:  {hw.get('device_count')}x {hw.get('device_name')} on {hw.get('nodes')} node(s), "
          f"world size {hw.get('world_size')}, {hw.get('precision')}; {_num(thr.get('samples_per_s'))} samples/s{tok}")
    print(f"time:      queue {_num(wall.get('queue_wait_s'))} s, setup {_num(wall.get('setup_s'))} s, "
          f"train {_num(wall.get('train_s'))} s, eval {_num(wall.get('eval_s'))} s, save {_num(wall.get('save_s'))} s;"
          f" {_num(m.get('device_hours'))} device-hours")


def _trackers(files: dict, run_dir: str) -> None:
    """How to look at the offline trackers from the login node."""
    if files.get("tensorboard"):
        print("tensorboard (this run; use the runs folder to compare all runs):")
        print(f"  tensorboard --logdir {shlex.quote(files['tensorboard'])} --host 127.0.0.1")
        print(f"  tensorboard --logdir {shlex.quote(str(Path(run_dir).parent))} --host 127.0.0.1")
    if files.get("swanlog"):
        logs = sorted(Path(files["swanlog"]).glob("run-*"))
        print("swanlab (offline log; sync needs the same swanlab version, watch needs swanlab[dashboard]):")
        for d in logs:
            print(f"  swanlab sync {shlex.quote(str(d))}")
        print(f"  swanlab watch {shlex.quote(files['swanlog'])}")
