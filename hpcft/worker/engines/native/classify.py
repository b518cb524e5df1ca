"""Built-in task ``sequence-classification``: fine-tune an encoder classifier with the HF
Trainer, offline, on the staged model/dataset/metric; evaluate every epoch; save the final
(and best) model with its tokenizer; write ``metrics.json`` and ``curves.png``.

The phases and what every task shares (resume, hand-over on requeue, final evaluation, save,
metrics) are :class:`hpcft.worker.task.Task`'s; this module fills in :meth:`setup` and what
its metrics.json adds.
"""

from __future__ import annotations

from typing import Any, Optional

from hpcft.worker.console import log
from hpcft.worker.task import Task, TrainedLeg
from hpcft.worker.trainer import BestSaver, trainer_class, training_args


class SequenceClassification(Task):
    def setup(self) -> None:
        import transformers
        from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

        from hpcft.worker import telemetry as tele
        from hpcft.worker.compat import installed_out_of_range, training_args_kwargs
        from hpcft.worker.data.staged import prepare
        from hpcft.worker.engines.native.metrics import builtin_names, load_staged, make_compute_metrics
        from hpcft.worker.engines.native.presets import preset_for

        ctx, t, task = self.ctx, self.cfg, self.ctx.task
        self.begin()
        for problem in (installed_out_of_range() if task.is_main else []):
            log(f"warning: {problem}")
        model_ref, data_ref = ctx.assets[0], ctx.assets[1]
        self.metric_ref = ctx.assets[2] if t.metric else None
        self.preset = preset = preset_for(data_ref.name, data_ref.config)
        self.tokenizer = tokenizer = AutoTokenizer.from_pretrained(str(model_ref.path))
        self.data = data = prepare(t, data_ref, preset, tokenizer, is_main=task.is_main)
        log(f"data: {data.info['train_examples']} train / {data.info['eval_examples']} eval ({data.eval_split}), "
            f"text {data.text_columns}, label {data.label_column!r}, {data.num_labels} labels")

        self.names = builtin_names(data.num_labels, data.regression, preset.metrics if preset else None)
        module = None
        if self.metric_ref is not None:
            config = (preset.glue_config if preset else None) or (
                data_ref.config if self.metric_ref.name in ("glue", "super_glue", "evaluate-metric/glue") else None)
            module = load_staged(self.metric_ref.path, config)
        compute_metrics = make_compute_metrics(regression=data.regression, names=self.names, module=module)
        if not task.is_main:  # the Trainer gathers predictions on every rank; score them once, on rank 0
            compute_metrics = _no_metrics

        kw: dict[str, Any] = {}
        if data.label_names and not data.regression:
            kw = {"id2label": dict(enumerate(data.label_names)),
                  "label2id": {n: i for i, n in enumerate(data.label_names)}}
        model = AutoModelForSequenceClassification.from_pretrained(
            str(model_ref.path), num_labels=data.num_labels,
            problem_type="regression" if data.regression else "single_label_classification", **kw)

        args = training_args(
            ctx, self.device,
            per_device_eval_batch_size=t.eval_batch_size or t.batch_size * 2,
            **tele.TRAINING_ARGS,  # count real (non-padding) tokens for tokens/s
            # warmup and average_tokens_across_devices: their names and meanings differ across releases
            # (a sequence classifier's loss is a per-batch mean: never scale it by the rank count)
            **training_args_kwargs(warmup_ratio=t.warmup_ratio, transformers_version=transformers.__version__),
        )
        self.best = BestSaver(ctx.output_dir / "best", tokenizer, self.headline) \
            if t.save_best and task.is_main else None
        self.build_trainer(
            trainer_class(), save_best=self.best.maybe_save if self.best else None,
            model=model, args=args, train_dataset=data.train, eval_dataset=data.eval,
            processing_class=tokenizer, compute_metrics=compute_metrics,
            data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if self.device.kind != "cpu" else None))

    def headline(self, final: Optional[dict] = None) -> str:
        from hpcft.worker.engines.native.metrics import headline_of

        preset_headline = self.preset.headline if self.preset else None
        if final is None:
            return preset_headline or self.names[0]
        return headline_of(self.names, preset_headline, final)

    def train_figures(self, leg: TrainedLeg, steps_this_leg: int, records: list[dict]) -> dict:
        args = self.trainer.args
        return {"samples_per_second": round(steps_this_leg * args.train_batch_size * args.gradient_accumulation_steps
                                            * max(1, args.world_size) / leg.seconds, 3) if leg.seconds > 0 else None}

    def results(self) -> dict:
        data = self.data
        return {"dataset_config": self.ctx.assets[1].config, "data": data.info,
                "best_dir": str(self.best.dir) if self.best and self.best.saved else None,
                "metric_source": str(self.metric_ref.path) if self.metric_ref else "builtin",
                "label_names": data.label_names if not data.regression else None,
                "text_columns": list(data.text_columns)}


def _no_metrics(eval_pred) -> dict:
    return {}
