"""Built-in tasks ``dpo``, ``orpo``, ``simpo`` and ``kto``: preference tuning of an LLM on TRL's
trainers (``DPOTrainer``, ``KTOTrainer``; ``ORPOTrainer`` and ``CPOTrainer`` with
``loss_type="simpo"``, which TRL keeps under ``trl.experimental``), with LoRA, QLoRA (the base
quantized by bitsandbytes, :mod:`hpcft.worker.engines.native.qlora`) or full weights, usually continuing an SFT
run (``train.init_from``).

* The model: the SFT run's adapter, loaded trainable, on the base model (LoRA); or its saved
  weights (full); without ``init_from``, the staged model (a fresh adapter for LoRA).
* The reference (dpo, kto): with LoRA no second model: TRL scores the reference with a frozen
  copy of the adapter it continues (``"ref"``, the SFT policy), or with the adapter disabled
  when the adapter is new; with full weights TRL loads a frozen copy of the model (sharded like
  the model under ZeRO-3). orpo and simpo need no reference.
* Rows, rendering and tokenization are :mod:`hpcft.worker.data.preference`'s; hpcft hands TRL
  token ids (its ``_prepare_dataset`` / ``tokenize_row`` take them as they are) so a DPO run
  reads its prompts exactly as its SFT run did.
* Everything else (resume, the hand-over on requeue, the final evaluation, save, metrics.json
  with the rewards, accuracies and margins of every evaluation) is :class:`hpcft.worker.task.Task`'s.
  The TrainingArguments are the ones every task shares (:func:`hpcft.worker.trainer.training_args`),
  made before the model loads so that ZeRO-3 shards it while it loads.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any, Optional

from hpcft.worker.console import log
from hpcft.worker.task import Task, TrainedLeg
from hpcft.worker.trainer import trainer_class, training_args

# TRL's defaults where hpcft does not set one (beta: TRL's; simpo: the SimPO paper's)
BETA = {"dpo": 0.1, "kto": 0.1, "orpo": 0.1, "simpo": 2.0}
REFERENCE_FREE = ("orpo", "simpo")


class Preference(Task):
    def open_llm(self, what: str):
        """The set-up's start, shared with GRPO: the phase's first line, the run it continues
        (``init_from``) and the tokenizer (the continued run's own, else the staged model's)."""
        from hpcft.worker.data import preference as pd
        from hpcft.worker.engines.native.llm_model import load_tokenizer

        t = self.cfg
        self.method = t.llm_method
        self.begin(device_note=f", method {self.method}, {what}")
        self.init = pd.InitRun.read(t.init_from) if t.init_from else None
        if self.init:
            log(f"continuing run {self.init.run_dir.name}: its {'adapter' if self.init.adapter else 'weights'} "
                f"in {self.init.model_dir}")
        tok_dir = (self.init.tokenizer_dir if self.init else None) or self.ctx.assets[0].path
        self.tokenizer = load_tokenizer(tok_dir, trust_remote_code=self.trust_remote_code)
        return self.tokenizer

    def setup(self) -> None:
        from hpcft.worker.data import llm as ld
        from hpcft.worker.data import preference as pd

        ctx, t = self.ctx, self.cfg
        tokenizer = self.open_llm(t.task)
        renderer = ld.Renderer(tokenizer, enable_thinking=t.enable_thinking, train_on="last")
        pref = t.preference
        encoder = pd.Encoder(tokenizer, renderer, t.max_seq_length, pref.max_prompt_length if pref else None,
                             t.system_prompt)
        raw_train, raw_eval, eval_name = pd.split(t, ctx.assets[1])
        train_ds, eval_ds = pd.tokenized(t, encoder, raw_train, "train"), pd.tokenized(t, encoder, raw_eval, "eval")
        self.tokens = pd.tokens_per_epoch(train_ds)
        log(f"data: {len(train_ds)} train / {len(eval_ds)} eval ({eval_name}) {t.task} rows, prompts with "
            f"{renderer.name}, {self.tokens} tokens per epoch")
        self.data_info = {"train_examples": len(train_ds), "eval_examples": len(eval_ds), "eval_split": eval_name,
                          "template": renderer.name}

        args = self._args()  # before the model: under ZeRO-3, zero.Init shards it while it loads
        if args.deepspeed:
            _deepspeed_comm(args)
        model = self._model(args)
        self.build_trainer(trainer_for(t.task), model=model, args=args, train_dataset=train_ds,
                           eval_dataset=eval_ds if len(eval_ds) else None, processing_class=tokenizer)   # eval_split: none

    def _args(self):
        """The shared TrainingArguments as the TRL trainer's config, with its own settings."""
        from transformers import TrainingArguments

        from hpcft.worker.engines.native.causal_lm import _checkpointing_args

        ctx, t = self.ctx, self.cfg
        self.grad_ckpt = self.decide_checkpointing()
        base = training_args(ctx, self.device, **_checkpointing_args(TrainingArguments, self.grad_ckpt),
                             ddp_find_unused_parameters=False if ctx.task.world_size > 1 else None)
        cls = config_class(t.task)
        own = {f.name for f in dataclasses.fields(cls) if f.init}
        kw: dict[str, Any] = {f.name: getattr(base, f.name) for f in dataclasses.fields(TrainingArguments)
                              if f.init and f.name in own and hasattr(base, f.name)}
        p = t.preference
        kw.update(beta=(p.beta if p and p.beta else BETA[t.task]), max_length=t.max_seq_length,
                  dataset_num_proc=None, model_init_kwargs=None,
                  trust_remote_code=self.trust_remote_code)  # TRL loads full DPO/KTO's reference itself
        if t.task == "dpo":
            kw["loss_type"] = [p.loss_type if p and p.loss_type else "sigmoid"]
        elif t.task == "kto":
            kw.update(loss_type=(p.loss_type if p and p.loss_type else "kto"), train_sampling_strategy="sequential")
        elif t.task == "simpo":
            kw.update(loss_type="simpo", cpo_alpha=0.0, simpo_gamma=(p.simpo_gamma if p and p.simpo_gamma is not None
                                                                     else 0.5))
        return cls(**kw)

    @property
    def trust_remote_code(self) -> bool:
        return bool(self.cfg.trust_remote_code)  # never implied (see hpcft.preflight.remote_code)

    def _model(self, args):
        """The policy: the SFT run's adapter (trainable) or weights, else the staged model."""
        from hpcft.worker.engines.native.causal_lm import _count, _with_lora, quantized_load, quantized_summary
        from hpcft.worker.engines.native.llm_model import load_model, train_dtype

        t, init = self.cfg, self.init
        src = init.model_dir if init and not init.adapter else self.ctx.assets[0].path
        model = load_model(src, dtype=train_dtype(self.method, self.device.precision),
                           trust_remote_code=self.trust_remote_code,
                           ds_config=getattr(args, "hf_deepspeed_config", None),
                           **quantized_load(t, self.device, args))
        model.config.use_cache = False
        self.quantization = quantized_summary(t, model, self.device, self.ctx.task.is_main)
        if self.method == "qlora":
            from hpcft.worker.engines.native.qlora import prepare

            model = prepare(model, self.grad_ckpt)
        if t.adapter_method:
            if init and init.adapter:
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, str(init.model_dir), is_trainable=True)
            else:
                model = _with_lora(model, t)
            if self.grad_ckpt:
                model.enable_input_require_grads()  # the frozen embeddings' output needs a grad for checkpointing
            if self.ctx.task.is_main:
                trainable, total = _count(model)
                log(f"{'QLoRA' if self.method == 'qlora' else 'LoRA'}: {trainable:,} trainable of {total:,} parameters ({100 * trainable / max(total, 1):.2f}%)")
        return model

    def save(self) -> Path:
        """The common save; without the frozen reference copy of the adapter TRL keeps beside it."""
        out = super().save()
        ref = out / "ref"
        if self.ctx.task.is_main and (ref / "adapter_config.json").is_file():
            shutil.rmtree(ref)
        return out

    # ------------------------------------------------------------------ what metrics.json says

    def headline(self, final: Optional[dict] = None) -> str:
        return "rewards/margins" if self.cfg.task == "kto" else "rewards/accuracies"

    def train_figures(self, leg: TrainedLeg, steps_this_leg: int, records: list[dict]) -> dict:
        state = self.trainer.state
        epochs_this_leg = steps_this_leg / max(state.max_steps, 1) * (state.num_train_epochs or 1)
        return {"tokens_per_second": round(self.tokens * epochs_this_leg / leg.seconds, 1) if leg.seconds > 0 else None,
                "tokens_per_epoch": self.tokens,
                "first_loss": next((r.get("loss") for r in records if r.get("event") == "train"), None)}

    def results(self) -> dict:
        t, init = self.cfg, self.init
        if t.task in REFERENCE_FREE:
            reference = "none (reference-free)"
        elif t.adapter_method:
            reference = ("the adapter it continues, a frozen copy (TRL's 'ref' adapter)" if init and init.adapter
                         else "the model with the adapter disabled")
        else:
            reference = "a frozen copy of the model"
        history = [h for h in _history(self.ctx) if "rewards/margins" in h]
        return {"task": t.task, "method": self.method, "base_model": str(self.ctx.assets[0].path),
                "adapter": t.adapter_method, "init_from": str(init.run_dir) if init else None,
                "reference": reference, "data": self.data_info,
                "preference": {"beta": self.trainer.args.beta,
                               "margins": [h["rewards/margins"] for h in history],
                               "accuracies": [h.get("rewards/accuracies") for h in history],
                               "steps": [h["step"] for h in history]},
                **({"quantization": self.quantization} if self.quantization else {})}


def _deepspeed_comm(args) -> None:
    """DeepSpeed's own view of the process group the ranks already share. TRL wraps the frozen
    reference in a DeepSpeed engine while the trainer is built, before the Trainer's first
    ``deepspeed.initialize``; an engine made while ``deepspeed.comm`` is uninitialised counts
    one rank and refuses the batch size."""
    import deepspeed.comm as dscomm

    if not dscomm.is_initialized():
        dscomm.init_distributed(dist_backend=args.ddp_backend, auto_mpi_discovery=False)


def _history(ctx) -> list[dict]:
    from hpcft.worker.results import eval_history, read_progress

    return eval_history(read_progress(ctx.paths.progress))


# --------------------------------------------------------------------------- TRL's trainers, fed token ids

def _trl(task: str):
    """(trainer, config) classes of TRL for ``task``."""
    if task in ("dpo", "kto"):
        import trl

        return (trl.DPOTrainer, trl.DPOConfig) if task == "dpo" else (trl.KTOTrainer, trl.KTOConfig)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # ORPO and CPO live there in TRL 1.x, by design
    if task == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOTrainer, ORPOConfig
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    return CPOTrainer, CPOConfig


def config_class(task: str):
    return _trl(task)[1]


_CLASSES: dict[str, Any] = {}


def trainer_for(task: str):
    """TRL's trainer for ``task`` on hpcft's checkpoint-safe Trainer, taking hpcft's token ids."""
    if task in _CLASSES:
        return _CLASSES[task]
    trl_cls, _ = _trl(task)
    base = trainer_class()

    class PreferenceTrainer(trl_cls, base):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            """DPO/KTO: the rows are tokenized already (kto: add the KL completions TRL pairs)."""
            if getattr(self, "calculate_KL", False):
                def kl(batch):
                    batch["KL_completion_ids"] = [batch["completion_ids"][-1]] + batch["completion_ids"][:-1]
                    return batch

                dataset = dataset.map(kl, batched=True, batch_size=args.per_device_train_batch_size,
                                      desc=f"KL completions of {dataset_name}")
            return dataset

        def tokenize_row(self, feature, model=None):
            """ORPO/CPO: the tokenized row in their layout (prompt masked in the labels)."""
            p, c, r = feature["prompt_ids"], feature["chosen_ids"], feature["rejected_ids"]
            return {"prompt_input_ids": p, "prompt_attention_mask": [1] * len(p),
                    "chosen_input_ids": p + c, "chosen_attention_mask": [1] * (len(p) + len(c)),
                    "chosen_labels": [-100] * len(p) + c,
                    "rejected_input_ids": p + r, "rejected_attention_mask": [1] * (len(p) + len(r)),
                    "rejected_labels": [-100] * len(p) + r}

    PreferenceTrainer.__name__ = PreferenceTrainer.__qualname__ = f"Hpcft{trl_cls.__name__}"
    _CLASSES[task] = PreferenceTrainer
    return PreferenceTrainer
