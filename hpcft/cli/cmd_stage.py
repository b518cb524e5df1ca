"""hpcft stage: fetch models, datasets and metrics into the shared cache (login node)."""

from __future__ import annotations

import sys

EPILOG = """examples:
  hpcft stage bert-base-uncased glue/mrpc          # model + dataset config + its glue metric
  hpcft stage bert-base-cased yelp_review_full --metric accuracy
  hpcft stage bert-base-cased glue/cola --source modelscope
  hpcft stage PyTorch-NPU/bert_base_cased AI_Connect/glue:cola --source modelers   # the openMind tutorial
  hpcft stage Qwen/Qwen2.5-0.5B --revision main --json
  hpcft stage --job jobs/mrpc-bert-gpu.yaml         # whatever the job file references
  hpcft stage --dataset ./my_data                   # a local folder, copied into the cache
  hpcft stage --eval ceval cmmlu mmlu gsm8k         # exactly what these lm-eval benchmarks load
  hpcft stage --eval mmlu cmmlu --source modelscope # from modelscope/mmlu, modelscope/cmmlu, converted

sources: HF_ENDPOINT / MODELSCOPE_ENDPOINT / OPENMIND_HUB_ENDPOINT, else sources.hf_endpoint /
sources.modelscope_endpoint / sources.modelers_endpoint in the hpcft config; --source auto tries
sources.order and reports what each said. Modelers tokens: OPENMIND_HUB_TOKEN or
sources.modelers_token_file (sent as a header, never written anywhere).
"""


def register(sub) -> None:
    import argparse

    p = sub.add_parser("stage", help="fetch models/datasets/metrics into the shared cache (login node)",
                       description="Fetch only what a job needs into the shared cache, verified, so compute "
                                   "nodes need no network.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", metavar="MODEL [DATASET ...]",
                   help="a model, then datasets (glue/mrpc, org/name[:config], ./path)")
    p.add_argument("--model", action="append", default=[], metavar="NAME", help="another model (repeatable)")
    p.add_argument("--dataset", action="append", default=[], metavar="NAME", help="another dataset (repeatable)")
    p.add_argument("--metric", action="append", default=[], metavar="NAME", help="an evaluate metric (repeatable)")
    p.add_argument("--no-metric", action="store_true", help="do not stage the metric a dataset preset brings")
    p.add_argument("--source", choices=["auto", "hf", "modelscope", "modelers"], default="auto",
                   help="where to fetch from (default auto: sources.order of the config)")
    p.add_argument("--revision", metavar="REV", help="branch, tag or commit (default: main / master)")
    p.add_argument("--cache", metavar="DIR", help="cache dir (default: HPCFT_CACHE or cache_dir of the config)")
    p.add_argument("--job", metavar="JOB.yaml", help="stage what this job file references")
    p.add_argument("--eval", nargs="+", default=[], metavar="TASK",
                   help="the datasets these benchmark tasks load (ceval cmmlu mmlu gsm8k, or a subject such as "
                        "mmlu_anatomy), for hpcft eval and train.eval_tasks; with --source modelscope, converted "
                        "from ModelScope's own copies (modelscope/mmlu, ... are accepted as names too)")
    p.add_argument("--token-file", metavar="FILE",
                   help="a file holding an HF access token for gated repos (Llama); default: $HF_TOKEN. "
                        "Sent to the HF endpoint only, never written to the cache, logs or output")
    p.add_argument("--allow-unverified", action="store_true",
                   help="accept files the mirror lists without a hash (refused by default; the manifest "
                        "records which)")
    p.add_argument("--cross-check", action="store_true",
                   help="check every file's bytes against the hashes a second configured source "
                        "(sources.order) lists for the same repo, so one hostile mirror cannot poison it")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress, only errors")
    p.set_defaults(func=run)


def _job_assets(path: str, s):
    from ..core.job_load import load_job

    loaded = load_job(path, s, {})
    assets = loaded.job.all_assets()
    datasets = list(assets.datasets)
    train = loaded.job.train
    if train is not None and train.dataset_config and datasets and ":" not in datasets[0] \
            and "/" + train.dataset_config not in datasets[0]:
        datasets[0] = f"{datasets[0]}:{train.dataset_config}"
    evals = []
    if train is not None and train.eval_tasks:  # the benchmarks it scores after training
        from ..core.eval_tasks import resolve_tasks

        evals = resolve_tasks(train.eval_tasks, "train.eval_tasks")
    media = {}
    if train is not None and train.llamafactory:  # the media its rows name: local ones checked now, before staging
        from ..stage.lf_media import plan as media_plan

        media = media_plan(train.llamafactory, loaded.base_dir).hub
    return list(assets.models), datasets, list(assets.metrics), evals, media


def _is_dataset_name(name: str, table) -> bool:
    from ..core.resolve import is_local

    base = name.split(":", 1)[0]
    head = base.split("/", 1)[0]
    datasets = table.section("dataset")
    if base in table.section("model"):
        return False
    if ":" in name and not is_local(name):  # org/name:config (AI_Connect/glue:cola): model ids have no ":"
        return True
    return base in datasets or (head in datasets and bool(datasets[head].configs)) or \
        any(e.id == base for e in datasets.values())


def run(args) -> int:
    from pathlib import Path

    from ..core.errors import ConfigError
    from ..core.resolve import load_table, plan
    from ..stage.progress import human
    from ..stage.stage import StageOptions, stage
    from .common import print_json, settings

    s = settings()
    table = load_table(s)
    models, datasets, metrics = [], [], list(args.metric)
    if args.names:
        first = args.names[0]
        # "hpcft stage glue/mrpc" (no model): a name the table knows as a dataset is one
        (datasets if _is_dataset_name(first, table) else models).append(first)
        datasets += args.names[1:]
    models += args.model
    datasets += args.dataset
    eval_tasks = []  # --source modelscope: converted from ModelScope's own copies (stage/eval_convert.py)
    media = {}
    if args.job:
        jm, jd, jmet, jev, media = _job_assets(args.job, s)
        models += jm
        datasets += jd
        metrics += jmet
        if args.source == "modelscope":
            eval_tasks += [t for t in jev if t not in eval_tasks]
        else:
            datasets += [d for t in jev for d in t.datasets]
    if args.eval:
        from ..core.eval_tasks import resolve_tasks

        if args.source == "modelscope":
            from ..stage.eval_convert import eval_names

            eval_tasks += [t for t in resolve_tasks(eval_names(args.eval), "--eval") if t not in eval_tasks]
        else:
            datasets += [d for t in resolve_tasks(args.eval, "--eval") for d in t.datasets]
    if not (models or datasets or metrics or eval_tasks):
        raise ConfigError(["hpcft stage: nothing to stage; give a model (and datasets), --metric, or --job "
                           "JOB.yaml (see hpcft stage --help)"])
    refs = plan(models, datasets, metrics, table, with_metrics=not args.no_metric) if (models or datasets or metrics) \
        else []
    cache = Path(args.cache).expanduser() if args.cache else s.cache
    token = None
    if args.token_file:
        try:
            token = Path(args.token_file).expanduser().read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError([f"--token-file {args.token_file}: cannot read it ({exc.strerror})"]) from None
        if not token or any(c.isspace() for c in token):
            raise ConfigError([f"--token-file {args.token_file}: expected one token on one line"])
    opts = StageOptions(source=args.source, revision=args.revision, quiet=args.quiet, token=token,
                        allow_unverified=args.allow_unverified, cross_check=args.cross_check, media=media)
    if eval_tasks:
        from ..stage.eval_convert import check_options

        check_options(opts)
    try:
        results = stage(refs, s, cache, table, opts) if refs else []
        if eval_tasks:
            from ..stage.eval_convert import stage_eval

            results += stage_eval(eval_tasks, s, cache, table, opts)
    except KeyboardInterrupt:
        print(f"hpcft: interrupted; partial downloads are kept in {cache / 'tmp'} and nothing was marked "
              "staged. Run the same command again to resume.", file=sys.stderr)
        return 130
    fetched = sum(r.fetched for r in results)
    secs = sum(r.seconds for r in results)
    saved = sum(r.saved for r in results if r.status == "staged")
    if args.json:
        print_json({"cache": str(cache), "assets": [r.to_json() for r in results],
                    "fetched_bytes": fetched, "seconds": round(secs, 3), "saved_bytes": saved})
    elif not args.quiet:
        n = sum(r.files for r in results if r.status == "staged")
        rate = f", {human(fetched / secs)}/s" if secs > 0 and fetched else ""
        print(f"staged {len(results)} asset(s) in {cache}: {n} files fetched, {human(fetched)} in {secs:.1f} s"
              f"{rate}; skipped {human(saved)}", file=sys.stderr)
        print(f"jobs get: HF_HOME={cache / 'hf'} with HF_HUB_OFFLINE=1 (see `hpcft cache ls`)", file=sys.stderr)
    return 0
