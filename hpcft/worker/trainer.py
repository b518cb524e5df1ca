"""The HF Trainer as every built-in task configures it: the shared TrainingArguments, the
callbacks, a Trainer whose checkpoint writes fail cleanly, and the best-model saver. A task
builds its model and data and passes them in (see :meth:`hpcft.worker.task.Task.build_trainer`).
transformers and torch are imported inside the functions.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

from hpcft.core.atomic import atomic_write_json, read_json
from hpcft.worker import device as dev
from hpcft.worker import runtime
from hpcft.worker.callback import make_callback
from hpcft.worker.console import log
from hpcft.worker.runtime import Context


def deepspeed_config(ctx: Context):
    """DeepSpeed config for the Trainer (None: plain DDP or one process); see hpcft.core.dsconfig."""
    t = ctx.job.train
    from hpcft.core.dsconfig import resolve

    # One process runs DeepSpeed only when the job names a stage or a config (ZeRO-Offload
    # on one GPU is how a model that does not fit one card trains there); resolve() leaves
    # the default (unset or `true`) without it on one device, as the pre-flight counts it.

    cfg = resolve(t, ctx.task.world_size, ctx.spec.device, ctx.base_dir)
    if cfg is not None and ctx.task.world_size <= 1:
        # DeepSpeed's engine needs torch.distributed even for one rank; without the env://
        # variables it falls back to MPI discovery (mpi4py). prepare_task leaves one-process
        # train jobs out of them, so they are set here, only when DeepSpeed runs.
        for key, value in ctx.task.dist_env().items():
            os.environ.setdefault(key, value)
    if cfg is not None:
        log(f"DeepSpeed ZeRO stage {cfg.get('zero_optimization', {}).get('stage')} on {ctx.task.world_size} ranks")
    return cfg


def training_args(ctx: Context, device, **task_args):
    """The TrainingArguments every built-in task shares (schedule, checkpoints every epoch,
    logging that reaches the NaN guard, offline trackers, precision, DeepSpeed, backend); a task
    adds or overrides its own in ``task_args``."""
    import transformers
    from transformers import TrainingArguments

    from hpcft.worker.compat import warmup_kwargs
    from hpcft.worker.tracking import training_args as tracking_args

    t, task = ctx.job.train, ctx.task
    common: dict[str, Any] = dict(
        output_dir=str(ctx.paths.checkpoints),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size or t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        **warmup_kwargs(t.warmup_ratio, transformers.__version__),  # a ratio means different args in 4.x/5.x
        lr_scheduler_type=t.lr_scheduler,
        optim=optimizer_name(device.kind),
        eval_strategy="no" if t.eval_split == "none" else "epoch",   # eval_split: none holds nothing out
        save_strategy="epoch",
        save_total_limit=2,            # the newest and the one before: a failed write never leaves none
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        logging_nan_inf_filter=False,  # a NaN must reach the guard, not be averaged away
        **tracking_args(ctx.paths, t.report_to, task.is_main),  # offline trackers, logs in the run folder
        disable_tqdm=True,
        seed=t.seed,
        bf16=device.precision == "bf16",
        fp16=device.precision == "fp16",
        use_cpu=device.kind == "cpu",
        dataloader_num_workers=0,
        dataloader_pin_memory=device.kind != "cpu",
        remove_unused_columns=False,
        deepspeed=deepspeed_config(ctx),
        ddp_backend=dev.dist_backend(device.kind) if task.world_size > 1 else None,
    )
    return TrainingArguments(**{**common, **task_args})


def optimizer_name(kind: str) -> str:
    """Fused AdamW (one kernel over all parameters) where torch has it, else the foreach one."""
    import torch

    if kind == "cuda":
        return "adamw_torch_fused"
    if kind == "cpu" and tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 4):
        return "adamw_torch_fused"
    return "adamw_torch"


def callbacks(ctx: Context, **kw) -> list:
    """hpcft's progress/signal/NaN callback, the telemetry one, and any registered extra ones
    (:data:`hpcft.worker.runtime.EXTRA_CALLBACKS`)."""
    main = make_callback(progress=ctx.writer, is_main=ctx.task.is_main, process_start=ctx.process_start,
                         checkpoint_steps=ctx.job.train.checkpoint_steps, restart=ctx.restart, **kw)
    from hpcft.worker import telemetry

    return [main, telemetry.callback(ctx.process_start), *(factory(ctx) for factory in runtime.EXTRA_CALLBACKS)]


_TRAINER_CLS = None


def trainer_class():
    """Trainer whose checkpoint writes fail cleanly: partial folder removed, previous one named."""
    global _TRAINER_CLS
    if _TRAINER_CLS is not None:
        return _TRAINER_CLS
    from transformers import Trainer

    from hpcft.worker import checkpoints as ck
    from hpcft.worker.telemetry import timed

    class HpcftTrainer(Trainer):
        def _save_checkpoint(self, model, trial):
            folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
            try:
                with timed("save"):
                    out = super()._save_checkpoint(model, trial)
                    extra = getattr(self, "hpcft_checkpoint_extra", None)
                    if extra is not None and folder.is_dir():   # before the callbacks mark it complete
                        extra(folder, self.state)
                    return out
            except OSError as exc:
                raise ck.describe_failure(exc, folder, Path(self.args.output_dir)) from exc

    _TRAINER_CLS = HpcftTrainer
    return HpcftTrainer


class BestSaver:
    """Keep the model with the best headline metric in ``output/best`` (survives requeues)."""

    def __init__(self, folder: Path, tokenizer, headline_of: Callable[[dict], str]):
        self.dir = Path(folder)
        self.tokenizer = tokenizer
        self.headline_of = headline_of
        info = read_json(self.dir / "hpcft-best.json") or {}
        self.value = info.get("value")
        self.saved = bool(info)

    def maybe_save(self, metrics: dict, state, model) -> None:
        name = self.headline_of(metrics)
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
