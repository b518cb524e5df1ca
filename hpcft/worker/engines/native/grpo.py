"""Built-in task ``grpo``: online RL with verifiable rewards on TRL's ``GRPOTrainer``, with LoRA,
QLoRA or full weights, usually continuing an SFT (or DPO, or GRPO) run (``train.init_from``).

* The model, the reference and the save are the preference tasks'
  (:class:`hpcft.worker.engines.native.preference.Preference`): the SFT run's adapter loaded trainable (TRL
  keeps a frozen copy, ``"ref"``, as the reference when ``beta > 0``), or its weights.
* Rows: ``{prompt}`` (text or messages) or ``{messages}`` (up to the last user turn), plus the
  columns the rewards read. Each prompt is rendered by :class:`hpcft.worker.data.llm.Renderer`
  as SFT renders it (the chat template with the generation prompt), and tokenized as SFT
  tokenizes it; TRL generates ``num_generations`` completions of each and scores them with the
  rewards (:mod:`hpcft.worker.engines.native.grpo_rewards`).
* Per step TRL logs the reward, each reward's mean, the KL (``beta > 0``) and the completion
  length; the Trainer's log history (kept in each checkpoint, so a requeued run has it whole)
  becomes metrics.json's ``grpo``. Resume, hand-over on requeue, evaluation (the reward on the
  held-out prompts) and save are :class:`hpcft.worker.task.Task`'s.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from hpcft.core.grpo import reward_columns, row_problem
from hpcft.worker.console import log
from hpcft.worker.engines.native.preference import Preference
from hpcft.worker.errors import DataFormatError
from hpcft.worker.task import TrainedLeg
from hpcft.worker.trainer import trainer_class, training_args

PER_STEP = ("reward", "reward_std", "kl", "completions/mean_length", "entropy")


class Grpo(Preference):
    def setup(self) -> None:
        from hpcft.worker.data import llm as ld
        from hpcft.worker.data.mix import split_rows
        from hpcft.worker.data.staged import load_raw
        from hpcft.worker.engines.native.grpo_rewards import build

        ctx, t = self.ctx, self.cfg
        tokenizer = self.open_llm("grpo")
        self.renderer = ld.Renderer(tokenizer, enable_thinking=t.enable_thinking, train_on="last")
        columns = reward_columns(t)

        def check(rows, where: str) -> None:
            for i, row in enumerate(rows, 1):
                why = row_problem({k: v for k, v in row.items() if v is not None}, columns)
                if why:
                    raise DataFormatError(f"{where}, row {i}: {why}")

        raw_train, raw_eval, eval_name = split_rows(load_raw(ctx.assets[1]), t, t.dataset, check=check)
        train_ds, eval_ds = self._prompts(raw_train, "train"), self._prompts(raw_eval, "eval")
        self.funcs, self.weights = build(t)
        log(f"data: {len(train_ds)} train / {len(eval_ds)} eval ({eval_name}) prompts with {self.renderer.name}; "
            f"rewards {', '.join(f'{f.__name__} x{w:g}' for f, w in zip(self.funcs, self.weights))}")
        self.data_info = {"train_examples": len(train_ds), "eval_examples": len(eval_ds), "eval_split": eval_name,
                          "template": self.renderer.name}
        args = self._args()
        if args.deepspeed:   # as for DPO: TRL wraps a full reference (beta > 0) in its own DeepSpeed engine
            from hpcft.worker.engines.native.preference import _deepspeed_comm

            _deepspeed_comm(args)
        model = self._model(args)
        cls = grpo_trainer()
        self.build_trainer(cls, model=model, reward_funcs=self.funcs, args=args, train_dataset=train_ds,
                           eval_dataset=eval_ds, processing_class=tokenizer)
        self.trainer.hpcft_prompt = (not self.renderer.chat, t.max_seq_length - t.grpo.max_completion_length)

    def _prompts(self, ds, desc: str):
        """The rows with ``prompt`` rendered to the text the model answers; other columns kept."""
        t = self.cfg

        def render(row: dict) -> dict:
            msgs = row.get("prompt") if row.get("prompt") is not None else row.get("messages")
            msgs = [{"role": "user", "content": msgs}] if isinstance(msgs, str) else [dict(m) for m in msgs]
            last_user = max(i for i, m in enumerate(msgs) if m["role"] == "user")
            msgs = msgs[:last_user + 1]
            system = row.get("system") or t.system_prompt
            if system and not any(m["role"] == "system" for m in msgs):
                msgs = [{"role": "system", "content": str(system)}, *msgs]
            return {"prompt": self.renderer.prompt(msgs)}

        drop = [c for c in ("messages", "system") if c in ds.column_names]
        return ds.map(render, remove_columns=drop, desc=f"render {desc} prompts")

    def _args(self):
        from transformers import TrainingArguments
        from trl import GRPOConfig

        from hpcft.worker.engines.native.causal_lm import _checkpointing_args

        ctx, t = self.ctx, self.cfg
        g = t.grpo
        self.grad_ckpt = True if t.gradient_checkpointing is None else t.gradient_checkpointing
        base = training_args(ctx, self.device, **_checkpointing_args(TrainingArguments, self.grad_ckpt),
                             ddp_find_unused_parameters=False if ctx.task.world_size > 1 else None)
        own = {f.name for f in dataclasses.fields(GRPOConfig) if f.init}
        kw: dict[str, Any] = {f.name: getattr(base, f.name) for f in dataclasses.fields(TrainingArguments)
                              if f.init and f.name in own and hasattr(base, f.name)}
        kw.update(num_generations=g.num_generations, max_completion_length=g.max_completion_length, beta=g.beta,
                  loss_type=g.loss_type, temperature=g.temperature, use_vllm=g.use_vllm,
                  reward_weights=self.weights, model_init_kwargs=None, log_completions=False,
                  trust_remote_code=self.trust_remote_code, remove_unused_columns=False,
                  # the model's config says use_cache: False for training; generation keeps its KV cache
                  generation_kwargs={"use_cache": True})
        if g.use_vllm:
            kw.update(vllm_mode="colocate", vllm_max_model_length=t.max_seq_length)
        return GRPOConfig(**kw)

    # ------------------------------------------------------------------ what metrics.json says

    def headline(self, final: Optional[dict] = None) -> str:
        return "reward"

    def train_figures(self, leg: TrainedLeg, steps_this_leg: int, records: list[dict]) -> dict:
        state = self.trainer.state
        seen = int(state.num_input_tokens_seen or 0)
        start = self.trainer.hpcft_tokens_at_start or 0
        tokens = seen - start
        return {"tokens_per_second": round(tokens / leg.seconds, 1) if leg.seconds > 0 and tokens > 0 else None,
                "tokens_this_leg": tokens, "tokens_seen": seen,
                "first_loss": next((r.get("loss") for r in records if r.get("event") == "train"), None)}

    def results(self) -> dict:
        t, init = self.cfg, self.init
        g = t.grpo
        if g.beta == 0:
            reference = "none (beta 0: no KL term)"
        elif t.adapter_method:
            reference = ("the adapter it continues, a frozen copy (TRL's 'ref' adapter)" if init and init.adapter
                         else "the model with the adapter disabled")
        else:
            reference = "a frozen copy of the model"
        steps = per_step(self.trainer.state.log_history, [r.label for r in t.rewards])
        return {"task": "grpo", "method": self.method, "base_model": str(self.ctx.assets[0].path),
                "adapter": t.adapter_method, "init_from": str(init.run_dir) if init else None,
                "reference": reference, "data": self.data_info,
                "grpo": {**g.model_dump(), "vllm_mode": "colocate" if g.use_vllm else None,
                         "rewards": [{"label": r.label, "weight": r.weight,
                                      **({"function": r.function, "sha256": r.sha256} if r.function else {})}
                                     for r in t.rewards],
                         **steps},
                **({"quantization": self.quantization} if self.quantization else {})}


def per_step(history: list[dict], labels: list[str]) -> dict:
    """metrics.json's per-step lists from the Trainer's log history (training logs only; the
    last entry per step wins, as after a resume)."""
    by_step: dict[int, dict] = {}
    for h in history:
        if "reward" in h and "step" in h:
            by_step[h["step"]] = h
    steps = sorted(by_step)
    out: dict[str, Any] = {"steps": steps}
    for key in PER_STEP:
        out[key.replace("completions/mean_length", "completion_length")] = [by_step[s].get(key) for s in steps]
    out["reward_components"] = {label: [by_step[s].get(f"rewards/{label}/mean") for s in steps] for label in labels}
    return out


_CLS: Optional[type] = None


def grpo_trainer():
    """TRL's GRPOTrainer on hpcft's checkpoint-safe Trainer, its prompts tokenized as SFT's are."""
    global _CLS
    if _CLS is not None:
        return _CLS
    from trl import GRPOTrainer

    base = trainer_class()

    class HpcftGRPOTrainer(GRPOTrainer, base):
        hpcft_prompt: tuple = (False, 0)     # (add special tokens, the most prompt tokens kept)
        hpcft_tokens_at_start: Optional[int] = None

        def _tokenize_prompts(self, prompts: list):
            """Rendered prompts (text): BOS only where the template did not write one; the end kept."""
            if not prompts or not isinstance(prompts[0], str):
                return super()._tokenize_prompts(prompts)
            special, keep = self.hpcft_prompt
            ids = self.processing_class(text=prompts, add_special_tokens=special)["input_ids"]
            return [x[-keep:] if keep > 0 else x for x in ids], None, {}

        def training_step(self, *a, **kw):
            if self.hpcft_tokens_at_start is None:   # after a resume restored the count
                self.hpcft_tokens_at_start = int(self.state.num_input_tokens_seen or 0)
            return super().training_step(*a, **kw)

    _CLS = HpcftGRPOTrainer
    return HpcftGRPOTrainer
