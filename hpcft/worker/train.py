"""The built-in fine-tuning job: sequence classification with the HF Trainer, offline.

Order matters and is the point of this module:

1. offline environment (before any HF import), read the resolved job from the run folder;
2. every asset checked in the cache (no torch yet: a missing one fails in about a second
   with the exact ``hpcft stage ...`` command);
3. the USR2 handler installed (see :mod:`hpcft.worker.progress`);
4. torch/transformers imported, device and precision chosen, data tokenized, Trainer built;
5. resume from the latest *complete* checkpoint, train, evaluate every epoch;
6. final model + tokenizer into the output dir, ``metrics.json``, ``curves.png``.

Run by :class:`hpcft.launch.Worker` on the compute node, or standalone for debugging:
``python -m hpcft.worker.train RUN_DIR`` (exit 75 = stopped on USR2, run again to resume).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional

from ..runs import RunPaths
from . import progress as prog
from .progress import ProgressWriter, SignalState, log

_PROCESS_START: Optional[float] = None


def process_start_time() -> float:
    """When this process started (Linux /proc), so 'time to first step' includes interpreter start."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        btime = next(int(ln.split()[1]) for ln in Path("/proc/stat").read_text().splitlines()
                     if ln.startswith("btime"))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


def ensure_offline(spec: dict) -> None:
    """The batch script exports these; a local or standalone run gets them here, before HF imports."""
    from ..offline import offline_env

    env = dict(spec.get("env") or {})
    cache = env.get("HPCFT_CACHE") or os.environ.get("HPCFT_CACHE")
    if cache:
        for key, value in offline_env(Path(cache)).items():
            os.environ.setdefault(key, value)
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_EVALUATE_OFFLINE"):
        os.environ[key] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # transformers/accelerate probe deepspeed; tell it the device instead of letting it guess (and warn)
    os.environ.setdefault("DS_ACCELERATOR", {"gpu": "cuda", "npu": "npu"}.get(spec.get("device", "cpu"), "cpu"))
    if any(m in sys.modules for m in ("transformers", "datasets", "evaluate", "huggingface_hub.constants")):
        # huggingface_hub reads HF_HUB_OFFLINE at import; flip its constant too
        try:
            import huggingface_hub.constants as hc

            hc.HF_HUB_OFFLINE = True
        except (ImportError, AttributeError):
            pass


def load_job(paths: RunPaths):
    import yaml

    from ..job import Job

    data = yaml.safe_load(paths.job_yaml.read_text(encoding="utf-8"))
    return Job.model_validate(data)


def base_dir_of(spec: dict, paths: RunPaths) -> Path:
    """Where relative paths in the job file resolve (the job file's folder)."""
    if spec.get("base_dir"):
        return Path(spec["base_dir"])
    from ..atomic import read_json

    record = read_json(paths.record) or {}
    if record.get("job_file"):
        return Path(record["job_file"]).parent
    return Path(spec.get("workdir") or paths.dir)


def _fail_early(paths: RunPaths, writer: ProgressWriter, exc: BaseException) -> None:
    for line in str(exc).splitlines():
        print(f"hpcft: error: {line}", file=sys.stderr, flush=True)
    writer.write("failed", error=str(exc))
    _status(paths, "FAILED", error=str(exc))


def _settle_device(spec: dict, rank) -> dict:
    """The device kind this task really uses, decided before anything reads ``DS_ACCELERATOR``.

    An NPU job imports torch_npu here, first thing (before transformers, datasets or any
    model): a missing torch_npu stops the job in about a second, naming the environment."""
    from .device import FALLBACK_VAR, ds_accelerator, effective_kind, require_npu

    requested = spec.get("device", "cpu")
    if requested == "npu":
        os.environ.setdefault("DS_ACCELERATOR", "npu")
        require_npu()
    kind = effective_kind(requested)
    if kind != requested:
        if rank.is_main:
            log(f"warning: a {requested} job but torch sees no CUDA device; {FALLBACK_VAR}=1 is set, so "
                "training runs on CPU with gloo")
        os.environ["DS_ACCELERATOR"] = ds_accelerator(kind)
        spec = {**spec, "device": kind}
    return spec


def _status(paths: RunPaths, state: str, **extra: Any) -> None:
    from ..atomic import atomic_write_json

    try:
        atomic_write_json(paths.status, {"state": state, "time": time.time(), **extra})
    except OSError as exc:  # status.json is a convenience; training goes on, but say so
        print(f"hpcft: warning: cannot write {paths.status}: {exc}", file=sys.stderr, flush=True)


def main(run_dir: str | Path) -> dict:
    """Train the job in ``run_dir``; returns the metrics dict (also in metrics.json)."""
    global _PROCESS_START
    _PROCESS_START = _PROCESS_START or process_start_time()
    from ..launch import read_spec
    from .device import rank_from_env

    paths = RunPaths(Path(run_dir))
    spec = read_spec(paths.dir)
    rank = rank_from_env()
    writer = ProgressWriter(paths.progress, enabled=rank.is_main)
    try:
        spec = _settle_device(spec, rank)
    except Exception as exc:
        _fail_early(paths, writer, exc)
        raise
    ensure_offline(spec)
    restart = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)

    from ..atomic import read_json

    done = read_json(paths.metrics)
    if isinstance(done, dict) and done.get("completed"):
        log(f"this run already finished ({paths.metrics}); nothing to do")
        return done

    job = load_job(paths)
    t = job.train
    if t is None:
        raise ValueError(f"{paths.job_yaml}: not a train: job")

    # -- 2. assets, before anything heavy
    from ..stage.store import Cache
    from .assets import cache_root, require, resolve_train_assets

    refs = resolve_train_assets(t, Cache(cache_root()), base_dir_of(spec, paths))
    try:
        require(refs)
    except Exception as exc:
        _fail_early(paths, writer, exc)
        raise
    model_ref, data_ref = refs[0], refs[1]
    metric_ref = refs[2] if len(refs) > 2 else None
    log(f"model {t.model} -> {model_ref.path}")
    log(f"dataset {t.dataset}{' ' + data_ref.config if data_ref.config else ''} -> {data_ref.path}")

    prog.install_signal_handler()
    _status(paths, "RUNNING", restart=restart)
    try:
        return _train(job, spec, paths, rank, writer, restart, model_ref, data_ref, metric_ref,
                      base_dir_of(spec, paths))
    except BaseException as exc:
        if not isinstance(exc, SystemExit):
            msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            print(f"hpcft: error: training failed: {type(exc).__name__}: {msg}", file=sys.stderr, flush=True)
            writer.write("failed", error=f"{type(exc).__name__}: {exc}")
            _status(paths, "FAILED", error=f"{type(exc).__name__}: {exc}")
        raise


def _train(job, spec, paths, rank, writer, restart, model_ref, data_ref, metric_ref, base_dir) -> dict:
    t = job.train
    import transformers
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                              TrainingArguments)

    from . import checkpoints as ck
    from .compat import installed_out_of_range, training_args_kwargs
    from .data import prepare
    from .device import detect, dist_backend, export_dist_env, peak_memory_mb
    from .metrics import builtin_names, headline_of, load_staged, make_compute_metrics
    from .presets import preset_for
    from .results import eval_history, plot_curves, read_progress, write_metrics

    transformers.logging.set_verbosity_warning()
    transformers.utils.logging.disable_progress_bar()
    import datasets

    datasets.disable_progress_bars()
    if rank.world_size > 1:
        export_dist_env(rank)
    device = detect(spec.get("device", "cpu"), t.precision)
    log(f"device {device.name}, precision {device.precision}, rank {rank.rank}/{rank.world_size}")
    for problem in (installed_out_of_range() if rank.is_main else []):
        log(f"warning: {problem}")
    if rank.world_size > 1 and rank.is_main:
        log(f"rendezvous {os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}, "
            f"{rank.world_size} ranks, backend {dist_backend(device.kind)}")
    transformers.set_seed(t.seed)

    preset = preset_for(data_ref.name, data_ref.config)
    tokenizer = AutoTokenizer.from_pretrained(str(model_ref.path))
    data = prepare(t, data_ref, preset, tokenizer, is_main=rank.is_main)
    log(f"data: {data.info['train_examples']} train / {data.info['eval_examples']} eval ({data.eval_split}), "
        f"text {data.text_columns}, label {data.label_column!r}, {data.num_labels} labels")

    names = builtin_names(data.num_labels, data.regression, preset.metrics if preset else None)
    module = None
    if metric_ref is not None:
        config = (preset.glue_config if preset else None) or (data_ref.config if metric_ref.name in
                                                                ("glue", "super_glue", "evaluate-metric/glue") else None)
        module = load_staged(metric_ref.path, config)
    compute_metrics = make_compute_metrics(regression=data.regression, names=names, module=module)
    if not rank.is_main:  # the Trainer gathers predictions on every rank; score them once, on rank 0
        compute_metrics = _no_metrics

    kw: dict[str, Any] = {}
    if data.label_names and not data.regression:
        kw = {"id2label": dict(enumerate(data.label_names)),
              "label2id": {n: i for i, n in enumerate(data.label_names)}}
    model = AutoModelForSequenceClassification.from_pretrained(
        str(model_ref.path), num_labels=data.num_labels,
        problem_type="regression" if data.regression else "single_label_classification", **kw)

    ds_config = _deepspeed_config(t, rank.world_size, spec.get("device", "cpu"), base_dir)
    ckpt_dir = paths.dir / "checkpoints"
    output_dir = Path(spec.get("output_dir") or paths.output)
    args = TrainingArguments(
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size or t.batch_size * 2,
        gradient_accumulation_steps=t.gradient_accumulation,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        lr_scheduler_type="linear",
        optim=_optimizer(device.kind),
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=2,          # the newest and the one before: a failed write never leaves none
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        logging_nan_inf_filter=False,  # a NaN must reach the guard, not be averaged away
        report_to="none",
        disable_tqdm=True,
        seed=t.seed,
        bf16=device.precision == "bf16",
        fp16=device.precision == "fp16",
        use_cpu=device.kind == "cpu",
        dataloader_num_workers=0,
        dataloader_pin_memory=device.kind != "cpu",
        remove_unused_columns=False,
        deepspeed=ds_config,
        # warmup and average_tokens_across_devices: their names and meanings differ across releases
        **training_args_kwargs(warmup_ratio=t.warmup_ratio, transformers_version=transformers.__version__),
        ddp_backend=dist_backend(device.kind) if rank.world_size > 1 else None,
    )
    best = _BestSaver(output_dir / "best", tokenizer, names, preset.headline if preset else None) \
        if t.save_best and rank.is_main else None
    callback = prog.make_callback(progress=writer, is_main=rank.is_main, process_start=_PROCESS_START,
                                  checkpoint_steps=t.checkpoint_steps, restart=restart,
                                  save_best=best.maybe_save if best else None,
                                  on_eval=(lambda: _plot(plot_curves, paths, names, preset)) if rank.is_main else None,
                                  step_sleep=prog.step_sleep_from_env(),
                                  fail_at=prog.fail_step_from_env(rank.rank))
    trainer = _trainer_class()(model=model, args=args, train_dataset=data.train, eval_dataset=data.eval,
                               processing_class=tokenizer, compute_metrics=compute_metrics,
                               data_collator=DataCollatorWithPadding(
                                   tokenizer, pad_to_multiple_of=8 if device.kind != "cpu" else None),
                               callbacks=[callback])
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)  # our own log lines instead

    removed = ck.remove_incomplete(ckpt_dir) if rank.is_main else []
    for p in removed:
        log(f"removed incomplete checkpoint {p.name} (a write that never finished)")
    resume = ck.latest_complete(ckpt_dir)
    if resume:
        log(f"resuming from {resume.name} (restart {restart})")
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    leg_s = time.time() - t0

    if SignalState.requested and trainer.state.global_step < trainer.state.max_steps:
        writer.write("requeue", step=trainer.state.global_step, saved=SignalState.saved, restart=restart)
        log(f"checkpoint at step {trainer.state.global_step} saved; handing over for requeue")
        prog.handoff()
        if not rank.is_main:
            prog.await_requeue()  # rank 0 requeues the job; Slurm ends this task with it
        return {}

    SignalState.phase = "finish"
    # decide from the Trainer's own log (restored on resume, the same on every rank): evaluate is collective
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    if not evals or evals[-1].get("step") != trainer.state.global_step:
        trainer.evaluate()
        evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    final = {k.removeprefix("eval_"): v for k, v in evals[-1].items()} if evals else {}
    records = read_progress(paths.progress)
    history = eval_history(records)
    headline = headline_of(names, preset.headline if preset else None, final)

    # every rank: under ZeRO-3 the weights are gathered from all of them; only rank 0 writes
    trainer.save_model(str(output_dir))
    if rank.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(str(output_dir))
        for p in output_dir.iterdir():  # safetensors writes 0600; outputs are shared with the group
            if p.is_file():
                p.chmod(0o644)
    first = next((r for r in records if r.get("event") == "first_step"), None)
    legs = [r for r in records if r.get("event") in ("start", "resume")]
    steps_this_leg = trainer.state.global_step - (legs[-1].get("step", 0) if legs else 0)
    train_metrics = {
        "runtime_s": round(leg_s, 3),
        "samples_per_second": round(steps_this_leg * args.train_batch_size * args.gradient_accumulation_steps
                                    * max(1, args.world_size) / leg_s, 3) if leg_s > 0 else None,
        "global_step": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "loss": result.training_loss,
        "trainer": {k: v for k, v in (result.metrics or {}).items()},
    }
    metrics = write_metrics(
        paths.metrics, headline=headline, eval_metrics=final, train_metrics=train_metrics, history=history,
        device=device.as_dict(),
        extra={"completed": True, "restarts": restart, "resumes": max(0, len(legs) - 1),
               "first_step_s": round(first["seconds_since_start"], 3) if first else None,
               "peak_memory_mb": peak_memory_mb(device.kind), "model": job.train.model,
               "dataset": job.train.dataset, "dataset_config": data_ref.config, "data": data.info,
               "output_dir": str(output_dir), "best_dir": str(best.dir) if best and best.saved else None,
               "metric_source": str(metric_ref.path) if metric_ref else "builtin"},
    ) if rank.is_main else {}
    if rank.is_main:
        writer.write("done", step=trainer.state.global_step, epoch=trainer.state.epoch, headline=headline,
                     value=final.get(headline))
        _plot(plot_curves, paths, names, preset, headline)
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # metrics.json says completed: a requeue will not retrain
        _status(paths, "COMPLETED")
        value = final.get(headline)
        shown = f"{value:.4f}" if isinstance(value, float) else value
        log(f"done: {headline} {shown}; model saved to {output_dir}; metrics in {paths.metrics}")
    return metrics


def _plot(plot_curves, paths: RunPaths, names, preset, headline: Optional[str] = None) -> None:
    try:
        plot_curves(paths.progress, paths.dir / "curves.png", headline or (preset.headline if preset else names[0]))
    except Exception as exc:  # noqa: BLE001 - a plotting problem must never fail training
        log(f"warning: could not draw curves.png: {exc}")


def _deepspeed_config(t, world_size: int, device: str, base_dir: Path):
    """DeepSpeed config for the Trainer (None: plain DDP or one process); see hpcft.dsconfig."""
    if world_size <= 1:
        if t.deepspeed not in (None, False):
            log("train.deepspeed applies to jobs with several devices; this one runs in one process without it")
        return None
    try:
        from ..dsconfig import resolve
    except ImportError:
        return None
    cfg = resolve(t, world_size, device, base_dir)
    if cfg is not None:
        log(f"DeepSpeed ZeRO stage {cfg.get('zero_optimization', {}).get('stage')} on {world_size} ranks")
    return cfg


def _no_metrics(eval_pred) -> dict:
    return {}


def _optimizer(kind: str) -> str:
    """Fused AdamW (one kernel over all parameters) where torch has it, else the foreach one."""
    import torch

    if kind == "cuda":
        return "adamw_torch_fused"
    if kind == "cpu" and tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 4):
        return "adamw_torch_fused"
    return "adamw_torch"


_TRAINER_CLS = None


def _trainer_class():
    """Trainer whose checkpoint writes fail cleanly: partial folder removed, previous one named."""
    global _TRAINER_CLS
    if _TRAINER_CLS is not None:
        return _TRAINER_CLS
    from transformers import Trainer

    from . import checkpoints as ck

    class HpcftTrainer(Trainer):
        def _save_checkpoint(self, model, trial):
            folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
            try:
                return super()._save_checkpoint(model, trial)
            except OSError as exc:
                raise ck.describe_failure(exc, folder, Path(self.args.output_dir)) from exc

    _TRAINER_CLS = HpcftTrainer
    return HpcftTrainer


class _BestSaver:
    """Keep the model with the best headline metric in ``output/best`` (survives requeues)."""

    def __init__(self, folder: Path, tokenizer, names, preset_headline):
        self.dir = Path(folder)
        self.tokenizer = tokenizer
        self.names = names
        self.preset_headline = preset_headline
        from ..atomic import read_json

        info = read_json(self.dir / "hpcft-best.json") or {}
        self.value = info.get("value")
        self.saved = bool(info)

    def maybe_save(self, metrics: dict, state, model) -> None:
        from ..atomic import atomic_write_json
        from .metrics import headline_of

        name = headline_of(self.names, self.preset_headline, metrics)
        value = metrics.get(name)
        if model is None or not isinstance(value, (int, float)):
            return
        better = self.value is None or (value < self.value if name == "loss" else value > self.value)
        if not better:
            return
        tmp = self.dir.with_name(".best.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(str(tmp))
        self.tokenizer.save_pretrained(str(tmp))
        atomic_write_json(tmp / "hpcft-best.json", {"metric": name, "value": value, "step": state.global_step,
                                                    "epoch": state.epoch})
        shutil.rmtree(self.dir, ignore_errors=True)
        os.replace(tmp, self.dir)
        self.value, self.saved = value, True
        log(f"new best {name} {value:.4f} at step {state.global_step}: saved to {self.dir}")


def on_signal(run_dir: str | Path) -> None:
    """Called by :meth:`hpcft.launch.Worker.checkpoint` (submitit's USR2 handler) before requeue.

    The consistent checkpoint was already written at a step boundary by the callback (or
    training had not started: the previous checkpoint is the resume point); record it."""
    paths = RunPaths(Path(run_dir))
    state = "checkpoint saved" if SignalState.saved else "no new checkpoint (training not running)"
    log(f"requeueing: {state}")
    try:
        ProgressWriter(paths.progress).write("requeue_handoff", saved=SignalState.saved)
    except OSError as exc:
        print(f"hpcft: warning: cannot record the requeue in {paths.progress}: {exc}", file=sys.stderr, flush=True)


if __name__ == "__main__":  # python -m hpcft.worker.train RUN_DIR
    if len(sys.argv) != 2:
        print("usage: python -m hpcft.worker.train RUN_DIR", file=sys.stderr)
        sys.exit(2)
    from ..launch import apply_env, prepare_task, read_spec

    _spec = read_spec(sys.argv[1])
    apply_env(_spec)
    prepare_task(sys.argv[1], _spec)
    main(sys.argv[1])
