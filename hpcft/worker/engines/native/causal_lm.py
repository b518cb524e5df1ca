"""Built-in task ``causal-lm``: supervised fine-tuning of a chat/base LLM (Llama, Qwen, ...)
with LoRA (peft) or full weights, offline, on the staged model and an instruction dataset.

Data formats, prompts and loss masking are :mod:`hpcft.worker.data.llm`'s. Gradient
checkpointing is on by default; precision is bf16 where the device has it, fp16 on other
accelerators, fp32 on CPU. LoRA trains adapters on every linear layer (``lora.target_modules``)
over frozen weights loaded in the training precision; ``method: full`` trains every weight in
fp32 master copies (mixed precision), with ZeRO-3 across ranks when asked; ``method: qlora``
loads the frozen base quantized by bitsandbytes (:mod:`hpcft.worker.engines.native.qlora`) under the same
adapter. After training
the adapter (or model) is saved with the tokenizer, eval loss and perplexity are in
``metrics.json``, and a few held-out prompts are answered into ``samples.jsonl``.

The phases and what every task shares (resume, hand-over on requeue, final evaluation, save,
metrics) are :class:`hpcft.worker.task.Task`'s; this module fills in :meth:`setup`, answers
the prompts at the start of :meth:`conclude`, and says what its metrics.json adds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

from hpcft.worker.console import log
from hpcft.worker.engines.native.lora_switches import summary as lora_summary
from hpcft.worker.task import Task, TrainedLeg
from hpcft.worker.trainer import trainer_class, training_args

SAMPLES = "samples.jsonl"


class CausalLM(Task):
    def setup(self) -> None:
        from transformers import TrainingArguments

        from hpcft.worker.data import llm as ld
        from hpcft.worker.engines.native.llm_model import load_model, load_tokenizer, record_load, rss_mb, train_dtype

        ctx, t, task = self.ctx, self.cfg, self.ctx.task
        self.method = method = t.llm_method
        self.begin(device_note=f", method {method}")
        model_ref = ctx.assets[0]
        remote = bool(t.trust_remote_code)  # never implied: the job says so (pre-flight lists the code)
        tokenizer = load_tokenizer(model_ref.path, trust_remote_code=remote)
        self.tokenizer = tokenizer
        self.renderer = ld.Renderer(tokenizer, t.enable_thinking, t.train_on or "all")
        train_ds, eval_ds = self._datasets()

        grad_ckpt = self.decide_checkpointing()
        # TrainingArguments (and with them the DeepSpeed config) before the model: under ZeRO-3
        # from_pretrained then builds it inside zero.Init and each rank only ever holds its shard
        args = training_args(
            ctx, self.device,
            **_checkpointing_args(TrainingArguments, grad_ckpt),
            **_sampling_args(TrainingArguments, packed=bool(t.packing) or bool(t.streaming)),
            **(_streaming_args() if t.streaming else {}),
            ddp_find_unused_parameters=False if task.world_size > 1 else None,
            **({"neftune_noise_alpha": t.neftune_alpha} if t.neftune_alpha else {}),
        )
        before = rss_mb()
        model = load_model(model_ref.path, dtype=train_dtype(method, self.device.precision),
                           trust_remote_code=remote, args=args, **quantized_load(t, self.device, args))
        record_load(ctx.paths.dir, task.rank, before, _zero3_args(args), model)
        self.quantization = quantized_summary(t, model, self.device, task.is_main)
        if self.renderer.chat:  # generation stops at the template's end of turn (a base model's EOS does not)
            from hpcft.core.chat import set_end_of_turn

            note = set_end_of_turn(tokenizer, model.generation_config)
            if note and task.is_main:
                log(note)
        self.generation_config = model.generation_config
        if t.packing:
            from hpcft.worker.data.packing import check_model

            check_model(model)
        model.config.use_cache = False
        if method == "qlora":
            from hpcft.worker.engines.native.qlora import prepare

            model = prepare(model, grad_ckpt)
        if t.adapter_method:
            model = _with_lora(model, t)
            if task.is_main:
                trainable, total = _count(model)
                log(f"{'QLoRA' if method == 'qlora' else 'LoRA'} r={(t.lora.r if t.lora else 8)}: {trainable:,} trainable of {total:,} parameters "
                    f"({100 * trainable / max(total, 1):.2f}%)")

        # the length-grouped sampler's lengths (the cache has them; a stream is read in order)
        if self.stream is None and not t.packing and "length" not in train_ds.column_names:
            train_ds = train_ds.add_column("length", [len(x) for x in train_ds["input_ids"]])
        self.build_trainer(_trainer_class(), model=model, args=args, train_dataset=train_ds,
                           eval_dataset=eval_ds if eval_ds is not None and len(eval_ds) else None,
                           processing_class=tokenizer,
                           data_collator=ld.Collator(tokenizer.pad_token_id, 8 if self.device.kind != "cpu" else None))
        if self.stream is not None and task.is_main:  # its position goes into every checkpoint
            from hpcft.worker.data.stream import save_position

            per_step = t.batch_size * t.gradient_accumulation * task.world_size

            def position(folder: Path, state) -> None:
                save_position(self.stream, folder, per_step, state.global_step)

            self.trainer.hpcft_checkpoint_extra = position

    def _datasets(self) -> tuple[Any, Any]:
        """The tokenized train and eval sets (mixed and packed when asked; :mod:`.data_mix`); keeps
        the held-out (row, format) pairs (the prompts for samples.jsonl) and what metrics.json says
        about the data."""
        self.stream = None
        if self.cfg.streaming:
            return self._stream(), None
        from hpcft.worker.data.cache import sft_data  # tokenized once, then from the user's own cache

        data = sft_data(self.cfg, self.ctx.assets[1:1 + len(self.cfg.dataset_entries)], self.tokenizer,
                        self.renderer, self.ctx.assets[0].path, self.ctx.task.rank)
        self.n_real, self.prompts, self.data_info = data.real_tokens, data.prompts, data.info
        return data.train, data.eval

    def _stream(self):
        """``train.streaming``: the corpus as a :class:`~hpcft.worker.data.stream.TextStream`, from
        the position the checkpoint being resumed recorded."""
        from hpcft.worker import checkpoints as ck
        from hpcft.worker.data import llm as ld
        from hpcft.worker.data.stream import TextStream, open_rows, read_position

        t, ref, tok = self.cfg, self.ctx.assets[1], self.tokenizer
        root = self.ctx.paths.checkpoints

        def encode(row: dict) -> list[int]:
            return ld.encode(tok, self.renderer, row, "text", t.max_seq_length)[0]["input_ids"]

        per_step = t.batch_size * t.gradient_accumulation * self.ctx.task.world_size
        self.stream = TextStream(lambda: open_rows(ref, t.train_split), encode, t.max_seq_length,
                                 keep_last=(t.text_last_block or "keep") == "keep", isolate=bool(t.packing),
                                 resume=lambda: read_position(ck.latest_complete(root)), keep=max(4096, 4 * per_step))
        self.n_real, self.prompts = 0, []
        self.data_info = {"dataset": t.dataset_label, "format": "text", "streaming": True,
                          "max_seq_length": t.max_seq_length, "packing": bool(t.packing)}
        return self.stream

    def save(self) -> Path:
        """The common save; beside an adapter too, the generation config (its end-of-turn token as
        EOS), which a full model saves itself: ``hpcft export --merge`` carries it over."""
        out = super().save()
        if self.ctx.task.is_main and not (out / "generation_config.json").exists():
            self.generation_config.save_pretrained(str(out))
        return out

    def conclude(self, leg: TrainedLeg, final: dict, output_dir: Path) -> dict:
        """First a few held-out prompts answered (every rank under ZeRO-3, else rank 0), then the
        common wrap-up; :meth:`results` writes them into samples.jsonl."""
        self.samples = self._answer_prompts()
        return super().conclude(leg, final, output_dir)

    def headline(self, final: Optional[dict] = None) -> str:
        return "perplexity"

    def train_figures(self, leg: TrainedLeg, steps_this_leg: int, records: list[dict]) -> dict:
        state = self.trainer.state
        if self.stream is not None:   # the tokens of the blocks this leg trained on, counted as they streamed
            t = self.cfg
            per_step = t.batch_size * t.gradient_accumulation * self.ctx.task.world_size
            end = self.stream.positions.get(state.global_step * per_step, self.stream.last)
            tokens = end["tokens"] - (self.stream.start or end)["tokens"]
            self.n_real = end["tokens"]
            self.data_info.update(blocks=end["blocks"], tokens=end["tokens"], passes=end["pass"] + 1)
            return {"tokens_per_second": round(tokens / leg.seconds, 1) if leg.seconds > 0 else None,
                    "real_tokens": end["tokens"],
                    "first_loss": next((r.get("loss") for r in records if r.get("event") == "train"), None)}
        epochs_this_leg = steps_this_leg / max(state.max_steps, 1) * (state.num_train_epochs or 1)
        return {"tokens_per_second": round(self.n_real * epochs_this_leg / leg.seconds, 1) if leg.seconds > 0 else None,
                "real_tokens": self.n_real,
                "first_loss": next((r.get("loss") for r in records if r.get("event") == "train"), None)}

    def results(self) -> dict:
        path = self.ctx.paths.dir / SAMPLES
        if self.samples is not None:
            _write_samples(path, self.samples)
        return {"task": "causal-lm", "method": self.method, "base_model": str(self.ctx.assets[0].path),
                "data": self.data_info, "adapter": self.cfg.adapter_method,
                "samples": str(path) if self.samples else None,
                **({"quantization": self.quantization} if self.quantization else {}),
                **({"peft": peft} if (peft := lora_summary(self.trainer.model, self.trainer.args)) else {})}

    def _answer_prompts(self) -> list[dict] | None:
        """Greedy answers to the first held-out prompts. Under ZeRO-3 every rank takes part
        (the weights are sharded), else rank 0 alone."""
        import torch

        from hpcft.worker.data import llm as ld

        t, trainer, tokenizer, renderer = self.cfg, self.trainer, self.tokenizer, self.renderer
        n = 3 if t.sample_prompts is None else t.sample_prompts
        if n == 0:
            return None
        zero3 = _zero3(trainer)
        if not self.ctx.task.is_main and not zero3:
            return None
        model = trainer.model_wrapped if zero3 else trainer.model
        model = getattr(model, "module", model)
        model.eval()
        model.config.use_cache = True
        out = []
        dev = next(model.parameters()).device
        for row, fmt in self.prompts[:n]:
            pr = ld.prompt_and_reference(renderer, row, fmt, t.system_prompt)
            if pr is None:
                continue
            prompt, reference = pr
            enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=not renderer.chat,
                            return_token_type_ids=False)  # generate() refuses them on Llama-like models
            enc = {k: v.to(dev) for k, v in enc.items()}
            with torch.no_grad():
                gen = model.generate(**enc, max_new_tokens=t.max_new_tokens or 64, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id, synced_gpus=zero3)
            answer = tokenizer.decode(gen[0][enc["input_ids"].shape[1]:], skip_special_tokens=True)
            out.append({"prompt": prompt, "reference": reference, "generated": answer})
        log(f"answered {len(out)} held-out prompt(s) into {SAMPLES}")
        return out


def _sampling_args(args_cls, packed: bool) -> dict:
    """Unpacked batches of similar lengths (transformers' length-grouped sampler: random
    mega-batches of 50 batches, each sorted by length), so a batch is padded to little more
    than its examples: with instruction data, where most answers are short and a few long, a
    random batch nearly always pads to a long one (see docs/llm.md, Throughput). Packed
    sequences are all about max_seq_length: plain random order."""
    if packed:
        return {}
    if "train_sampling_strategy" in args_cls.__dataclass_fields__:  # transformers >= 5.x
        return {"train_sampling_strategy": "group_by_length"}
    return {"group_by_length": True}


def _streaming_args() -> dict:
    """A stream: no evaluation (no held-out set), and no Trainer skip on resume (it would re-read
    every consumed batch; the stream starts at its checkpointed position instead)."""
    return {"eval_strategy": "no", "ignore_data_skip": True}


def _checkpointing_args(args_cls, on: bool) -> dict:
    """Gradient checkpointing under the name this transformers uses (5.24 renamed it
    ``activation_checkpointing``; older releases only know ``gradient_checkpointing``)."""
    name = "activation_checkpointing" if "activation_checkpointing" in args_cls.__dataclass_fields__ \
        else "gradient_checkpointing"
    return {name: on, f"{name}_kwargs": {"use_reentrant": False} if on else None}


def quantized_load(t, device, args) -> dict:
    """``load_model``'s quantization and device map for ``method: qlora`` (else nothing)."""
    if t.llm_method != "qlora":
        return {}
    from hpcft.worker.engines.native.qlora import bnb_config, device_map, require

    require()
    return {"quantization": bnb_config(t.quant, device.precision), "device_map": device_map(args)}


def quantized_summary(t, model, device, main: bool) -> Optional[dict]:
    """metrics.json's ``quantization`` of a QLoRA run (logged by rank 0), else None."""
    if t.llm_method != "qlora":
        return None
    from hpcft.worker.engines.native.qlora import summary

    s = summary(model, t.quant, device.precision)
    if main:
        log(f"QLoRA base: {s['quantized_layers']} linear layers in {s['bits']}-bit "
            f"({s['quantized_params']:,} weights in {s['quantized_weights_mb']:.2f} MiB, "
            f"{s['bytes_per_quantized_param']:.2f} B each); model footprint {s['model_footprint_mb']:.2f} MiB")
    return s


def _with_lora(model, t):
    from peft import LoraConfig, get_peft_model

    spec = t.lora
    cfg = LoraConfig(task_type="CAUSAL_LM", r=spec.r if spec else 8, lora_alpha=spec.alpha if spec else 16,
                     lora_dropout=spec.dropout if spec else 0.0,
                     target_modules=(spec.target_modules if spec else "all-linear"),
                     use_dora=bool(spec and spec.use_dora), use_rslora=bool(spec and spec.use_rslora),
                     init_lora_weights=(spec.init if spec and spec.init else True))
    model = get_peft_model(model, cfg)
    if spec and spec.init == "pissa":
        from hpcft.worker.engines.native.lora_switches import remember_init

        remember_init(model)
    return model


def _count(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


_CLS = None


def _trainer_class():
    """hpcft's checkpoint-safe Trainer plus perplexity next to every eval loss."""
    global _CLS
    if _CLS is None:
        base = trainer_class()

        class CausalLMTrainer(base):
            def log(self, logs, *a, **kw):
                if isinstance(logs.get("eval_loss"), (int, float)):
                    logs["eval_perplexity"] = math.exp(min(logs["eval_loss"], 50.0))
                return super().log(logs, *a, **kw)

        _CLS = CausalLMTrainer
    return _CLS


def _zero3(trainer) -> bool:
    return _zero3_args(trainer.args)


def _zero3_args(args) -> bool:
    ds = getattr(args, "hf_deepspeed_config", None)
    return bool(ds is not None and ds.is_zero3())


def _write_samples(path: Path, samples: list[dict]) -> None:
    from hpcft.core.atomic import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))

