"""Built-in task ``sequence-classification``: fine-tune an encoder classifier with the HF
Trainer, offline, on the staged model/dataset/metric; evaluate every epoch; save the final
(and best) model with its tokenizer; write ``metrics.json`` and ``curves.png``.

The shared steps (environment, assets, signal hand-off, checkpoint-safe Trainer, final save)
are :mod:`hpcft.worker.runtime`'s; this module holds only what is specific to the task.
"""

from __future__ import annotations

from typing import Any, Optional

from . import runtime as rt
from .console import log
from .trainer import BestSaver, callbacks, trainer_class, training_args


def run(ctx: rt.Context) -> dict:
    t = ctx.job.train
    import transformers
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
    )

    from . import telemetry as tele
    from .compat import installed_out_of_range, training_args_kwargs
    from .data import prepare
    from .device import detect, dist_backend, peak_memory_mb
    from .metrics import builtin_names, headline_of, load_staged, make_compute_metrics
    from .presets import preset_for
    from .results import eval_history, plot_curves, read_progress, write_metrics

    transformers.logging.set_verbosity_warning()
    transformers.utils.logging.disable_progress_bar()
    import datasets

    datasets.disable_progress_bars()
    task, paths = ctx.task, ctx.paths
    model_ref, data_ref = ctx.assets[0], ctx.assets[1]
    metric_ref = ctx.assets[2] if t.metric else None
    log(f"model {t.model} -> {model_ref.path}")
    log(f"dataset {t.dataset}{' ' + data_ref.config if data_ref.config else ''} -> {data_ref.path}")
    device = detect(ctx.device, t.precision)
    log(f"device {device.name}, precision {device.precision}, rank {task.rank}/{task.world_size}")
    for problem in (installed_out_of_range() if task.is_main else []):
        log(f"warning: {problem}")
    if task.world_size > 1 and task.is_main:
        log(f"rendezvous {task.master_addr}:{task.master_port}, {task.world_size} ranks, "
            f"backend {dist_backend(device.kind)}")
    transformers.set_seed(t.seed)

    preset = preset_for(data_ref.name, data_ref.config)
    tokenizer = AutoTokenizer.from_pretrained(str(model_ref.path))
    data = prepare(t, data_ref, preset, tokenizer, is_main=task.is_main)
    log(f"data: {data.info['train_examples']} train / {data.info['eval_examples']} eval ({data.eval_split}), "
        f"text {data.text_columns}, label {data.label_column!r}, {data.num_labels} labels")

    names = builtin_names(data.num_labels, data.regression, preset.metrics if preset else None)
    module = None
    if metric_ref is not None:
        config = (preset.glue_config if preset else None) or (data_ref.config if metric_ref.name in
                                                                ("glue", "super_glue", "evaluate-metric/glue") else None)
        module = load_staged(metric_ref.path, config)
    compute_metrics = make_compute_metrics(regression=data.regression, names=names, module=module)
    if not task.is_main:  # the Trainer gathers predictions on every rank; score them once, on rank 0
        compute_metrics = _no_metrics
    preset_headline = preset.headline if preset else None

    kw: dict[str, Any] = {}
    if data.label_names and not data.regression:
        kw = {"id2label": dict(enumerate(data.label_names)),
              "label2id": {n: i for i, n in enumerate(data.label_names)}}
    model = AutoModelForSequenceClassification.from_pretrained(
        str(model_ref.path), num_labels=data.num_labels,
        problem_type="regression" if data.regression else "single_label_classification", **kw)

    args = training_args(
        ctx, device,
        per_device_eval_batch_size=t.eval_batch_size or t.batch_size * 2,
        **tele.TRAINING_ARGS,  # count real (non-padding) tokens for tokens/s
        # warmup and average_tokens_across_devices: their names and meanings differ across releases
        # (a sequence classifier's loss is a per-batch mean: never scale it by the rank count)
        **training_args_kwargs(warmup_ratio=t.warmup_ratio, transformers_version=transformers.__version__),
    )
    best = BestSaver(ctx.output_dir / "best", tokenizer,
                     lambda m: headline_of(names, preset_headline, m)) if t.save_best and task.is_main else None
    plot = (lambda: _plot(plot_curves, ctx, names, preset_headline)) if task.is_main else None
    trainer = trainer_class()(model=model, args=args, train_dataset=data.train, eval_dataset=data.eval,
                              processing_class=tokenizer, compute_metrics=compute_metrics,
                              data_collator=DataCollatorWithPadding(
                                  tokenizer, pad_to_multiple_of=8 if device.kind != "cpu" else None),
                              callbacks=callbacks(ctx, save_best=best.maybe_save if best else None,
                                                  on_eval=plot))
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)  # our own log lines instead

    leg = rt.train_leg(ctx, trainer, tokenizer)
    if leg is None:  # stopped for the time limit: the job is being requeued
        return {}
    result, leg_s, final, output_dir = leg
    records = read_progress(paths.progress)
    headline = headline_of(names, preset_headline, final)
    telemetry = tele.finish(ctx, device)  # every rank records its memory; rank 0 gets the run's figures
    if not task.is_main:
        return {}
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
        "trainer": dict(result.metrics or {}),
    }
    metrics = write_metrics(
        paths.metrics, headline=headline, eval_metrics=final, train_metrics=train_metrics,
        history=eval_history(records), device=device.as_dict(),
        extra={"completed": True, "restarts": ctx.restart, "resumes": max(0, len(legs) - 1),
               "first_step_s": round(first["seconds_since_start"], 3) if first else None,
               "peak_memory_mb": peak_memory_mb(device.kind), "model": t.model,
               "dataset": t.dataset, "dataset_config": data_ref.config, "data": data.info,
               "output_dir": str(output_dir), "best_dir": str(best.dir) if best and best.saved else None,
               "metric_source": str(metric_ref.path) if metric_ref else "builtin",
               "label_names": data.label_names if not data.regression else None,
               "text_columns": list(data.text_columns), "report_to": list(t.report_to), **telemetry},
    )
    log(tele.summary_line(telemetry))
    ctx.writer.write("done", step=trainer.state.global_step, epoch=trainer.state.epoch, headline=headline,
                     value=final.get(headline))
    _plot(plot_curves, ctx, names, preset_headline, headline)
    rt.finish(ctx, headline, final.get(headline))
    return metrics


def _plot(plot_curves, ctx: rt.Context, names, preset_headline: Optional[str], headline: Optional[str] = None) -> None:
    try:
        plot_curves(ctx.paths.progress, ctx.paths.curves, headline or preset_headline or names[0])
    except Exception as exc:  # noqa: BLE001 - a plotting problem must never fail training
        log(f"warning: could not draw curves.png: {exc}")


def _no_metrics(eval_pred) -> dict:
    return {}

