"""A LLaMA-Factory training YAML (and its ``dataset_info.json``) read as an hpcft job.

Login side, pure: no torch/transformers. Every LLaMA-Factory key is in ``KEYS``: mapped onto an
hpcft field (native), ignored with the reason (hpcft owns the run folder), or one that needs
LLaMA-Factory's own engine. A key in none of them, or a value hpcft's worker cannot run the same
way, is one ``file:line: key: message`` problem; nothing is dropped silently.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from .errors import ConfigError
from .llamafactory_data import ENGINE, dataset_entry, split_names
from .llamafactory_delegate import delegated_train, lf_key_problem
from .llamafactory_keys import TRAIN_KEYS
from .yamlfile import YamlDoc, load_yaml_file, sorted_problems

# keys of an hpcft job file that may stand beside ``llamafactory:``
WRAPPER_KEYS = ("name", "resources", "env", "sweep", "scow", "executor", "max_requeues", "output_dir", "engine")

ENGINES = ("auto", "native", "llamafactory")   # engine: auto (the default) delegates what native cannot run
IGNORED = "ignored"
NATIVE = "native"
NEEDS_ENGINE = "engine"


@dataclass
class Mapping:
    """What one LLaMA-Factory document became."""

    train: dict[str, Any] = field(default_factory=dict)
    problems: list[tuple[Optional[int], str]] = field(default_factory=list)   # native can't run these
    refused: list[tuple[Optional[int], str]] = field(default_factory=list)    # neither engine runs these
    notes: list[str] = field(default_factory=list)       # check lines: what hpcft cannot confirm
    handled: dict[str, str] = field(default_factory=dict)  # key -> native | ignored | engine


@dataclass
class LfSource:
    """Kept on the loaded job: the original LLaMA-Factory text (copied into the run folder)."""

    path: Optional[Path]
    text: str
    notes: list[str]


def _set(train: dict, dotted: str, value: Any) -> None:
    node = train
    *parents, last = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value


def _direct(target: str, convert: Callable[[Any], Any] = lambda v: v) -> Callable:
    def apply(value: Any, ctx: "_Ctx") -> Optional[str]:
        _set(ctx.m.train, target, convert(value))
        return None
    return apply


def _stage(value: Any, ctx: "_Ctx") -> Optional[str]:
    if value == "sft":
        ctx.m.train["task"] = "causal-lm"
    elif value in ("dpo", "kto"):
        ctx.m.train["task"] = value
    else:
        return f"stage {value!r} needs {ENGINE}; hpcft runs sft, dpo (with orpo, simpo) and kto natively"
    return None


def _finetuning(value: Any, ctx: "_Ctx") -> Optional[str]:
    if value not in ("lora", "full"):
        return f"finetuning_type {value!r} needs {ENGINE}; hpcft runs lora and full natively"
    ctx.m.train.setdefault("method", value)  # quantization_bit turns lora into qlora
    return None


def _pref_loss(value: Any, ctx: "_Ctx") -> Optional[str]:
    if ctx.lf.get("stage") != "dpo":
        return f"only for stage: dpo in hpcft's mapping (this file's stage is {ctx.lf.get('stage')!r})"
    if value in ("orpo", "simpo"):
        ctx.m.train["task"] = value
    elif value == "sigmoid":
        _set(ctx.m.train, "preference.loss_type", "sigmoid")
    else:
        return f"pref_loss {value!r} needs {ENGINE}; hpcft maps sigmoid (dpo), orpo and simpo"
    return None


def _quant_bits(value: Any, ctx: "_Ctx") -> Optional[str]:
    method = ctx.lf.get("quantization_method", "bnb")
    if value not in (4, 8) or method != "bnb":
        return (f"quantization_bit {value!r} with quantization_method {method!r} needs {ENGINE}; "
                "hpcft's QLoRA is bitsandbytes 4 or 8 bit")
    if ctx.lf.get("finetuning_type", "lora") != "lora":
        return f"quantization_bit with finetuning_type {ctx.lf.get('finetuning_type')!r} needs {ENGINE}"
    ctx.m.train["method"] = "qlora"
    _set(ctx.m.train, "quantization.bits", value)
    return None


def _quant_method(value: Any, ctx: "_Ctx") -> Optional[str]:
    if value != "bnb":
        return f"quantization_method {value!r} needs {ENGINE}; hpcft's QLoRA is bitsandbytes (bnb)"
    return None  # read with quantization_bit


def _four_bit(target: str, allowed: tuple) -> Callable:
    """quantization_type / double_quantization: read, as LLaMA-Factory reads them, only with
    quantization_bit: 4 (without it, or with 8 bits, LLaMA-Factory ignores them too)."""
    def apply(value: Any, ctx: "_Ctx") -> Optional[str]:
        if value not in allowed:
            return f"{value!r}: hpcft's QLoRA takes {' or '.join(map(str, allowed))}"
        if ctx.lf.get("quantization_bit") == 4:
            _set(ctx.m.train, target, value)
        return None
    return apply


def _lora_target(value: Any, ctx: "_Ctx") -> Optional[str]:
    names = [x.strip() for x in value.split(",")] if isinstance(value, str) else value
    _set(ctx.m.train, "lora.target_modules", "all-linear" if names == ["all"] else names)
    return None


def _precision(name: str) -> Callable:
    def apply(value: Any, ctx: "_Ctx") -> Optional[str]:
        if value:
            ctx.m.train["precision"] = name
        return None
    return apply


def _warmup_steps(value: Any, ctx: "_Ctx") -> Optional[str]:
    if value in (0, None):
        return None
    return f"warmup_steps {value} needs {ENGINE}; hpcft takes warmup_ratio (a fraction of the steps)"


def _scheduler(value: Any, ctx: "_Ctx") -> Optional[str]:
    if value not in ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial"):
        return f"lr_scheduler_type {value!r} needs {ENGINE}"
    ctx.m.train["lr_scheduler"] = value
    return None


def _report_to(value: Any, ctx: "_Ctx") -> Optional[str]:
    names = [value] if isinstance(value, str) else list(value or [])
    names = [n for n in names if n != "none"]
    bad = [n for n in names if n not in ("tensorboard", "swanlab")]
    if bad:
        return f"{', '.join(bad)}: hpcft's compute nodes are offline; it logs to tensorboard and swanlab (offline)"
    ctx.m.train["report_to"] = names
    return None


def _deepspeed(value: Any, ctx: "_Ctx") -> Optional[str]:
    path = Path(str(value)).expanduser()
    ctx.m.train["deepspeed"] = str(path if path.is_absolute() else ctx.base_dir / path)
    return None


def _val_size(value: Any, ctx: "_Ctx") -> Optional[str]:
    return (f"val_size {value} needs {ENGINE}; hpcft evaluates on the dataset's validation split, "
            "else a held-out slice it sizes itself")


def _template(value: Any, ctx: "_Ctx") -> Optional[str]:
    ctx.m.notes.append(f"template: {value}: hpcft renders with the model's own chat template; it cannot tell "
                       f"whether LLaMA-Factory's {value!r} template renders the same text")
    return None


def _pissa(value: Any, ctx: "_Ctx") -> Optional[str]:
    if value:
        _set(ctx.m.train, "lora.init", "pissa")
    return None


def _pissa_convert(value: Any, ctx: "_Ctx") -> Optional[str]:
    return f"pissa_convert needs {ENGINE}; hpcft saves the PiSSA adapter as trained" if value else None


def _dora(value: Any, ctx: "_Ctx") -> Optional[str]:
    if value:
        _set(ctx.m.train, "lora.use_dora", True)
    return None


def _dataset_key(value: Any, ctx: "_Ctx") -> Optional[str]:
    return None  # read with all the dataset keys in _datasets


def _default_only(default: Any, why: str) -> Callable:
    def apply(value: Any, ctx: "_Ctx") -> Optional[str]:
        return None if value == default else f"{value!r} needs {ENGINE}; {why}"
    return apply


def _true_only(why: str) -> Callable:
    def apply(value: Any, ctx: "_Ctx") -> Optional[str]:
        return None if value in (True, None) else f"{value!r}: {why}"
    return apply


_RUN_FOLDER = "hpcft owns the run folder (checkpoints, logs, plots)"
_MULTIMODAL = "multimodal training"
# key -> (kind, hpcft field or reason, how it is applied); one table: the docs and the tests read it
KEYS: dict[str, tuple[str, str, Optional[Callable]]] = {
    "model_name_or_path": (NATIVE, "train.model", _direct("model")),
    "trust_remote_code": (NATIVE, "train.trust_remote_code", _direct("trust_remote_code", bool)),
    "stage": (NATIVE, "train.task (sft: causal-lm, dpo, kto)", _stage),
    "do_train": (NATIVE, "a job trains", _true_only("hpcft jobs train (do_predict/do_eval runs are planned)")),
    "finetuning_type": (NATIVE, "train.method (lora, full)", _finetuning),
    "quantization_bit": (NATIVE, "train.method: qlora, train.quantization.bits", _quant_bits),
    "quantization_method": (NATIVE, "bnb only (with quantization_bit)", _quant_method),
    "quantization_type": (NATIVE, "train.quantization.type (4-bit only)", _four_bit("quantization.type", ("nf4", "fp4"))),
    "double_quantization": (NATIVE, "train.quantization.double_quant (4-bit only)",
                            _four_bit("quantization.double_quant", (True, False))),
    "lora_rank": (NATIVE, "train.lora.r", _direct("lora.r")),
    "lora_alpha": (NATIVE, "train.lora.alpha", _direct("lora.alpha")),
    "lora_dropout": (NATIVE, "train.lora.dropout", _direct("lora.dropout")),
    "lora_target": (NATIVE, "train.lora.target_modules (all: all-linear)", _lora_target),
    "use_dora": (NATIVE, "train.lora.use_dora", _dora),
    "use_rslora": (NATIVE, "train.lora.use_rslora", _direct("lora.use_rslora", bool)),
    "pissa_init": (NATIVE, "train.lora.init: pissa", _pissa),
    "pissa_iter": (IGNORED, "peft's PiSSA init is exact (SVD), no iterations", None),
    "pissa_convert": (NATIVE, "false only", _pissa_convert),
    "pref_beta": (NATIVE, "train.preference.beta", _direct("preference.beta")),
    "pref_loss": (NATIVE, "train.task orpo/simpo, or preference.loss_type sigmoid", _pref_loss),
    "simpo_gamma": (NATIVE, "train.preference.simpo_gamma", _direct("preference.simpo_gamma")),
    "neftune_noise_alpha": (NATIVE, "train.neftune_alpha", _direct("neftune_alpha")),
    "dataset": (NATIVE, "train.dataset (through dataset_info.json)", _dataset_key),
    "dataset_dir": (NATIVE, "where dataset_info.json is", _dataset_key),
    "eval_dataset": (NATIVE, "needs the engine for now (hpcft evaluates on each dataset's held-out part)",
                     _dataset_key),
    "template": (NATIVE, "the model's own chat template (a check line says hpcft cannot compare)", _template),
    "cutoff_len": (NATIVE, "train.max_seq_length", _direct("max_seq_length")),
    "packing": (NATIVE, "train.packing", _direct("packing", bool)),
    "neat_packing": (NATIVE, "train.packing (hpcft's packing never attends across examples)",
                     lambda v, ctx: _direct("packing", bool)(v, ctx) if v else None),
    "max_samples": (NATIVE, "train.train_subset", _direct("train_subset")),
    "per_device_train_batch_size": (NATIVE, "train.batch_size", _direct("batch_size")),
    "per_device_eval_batch_size": (NATIVE, "train.eval_batch_size", _direct("eval_batch_size")),
    "gradient_accumulation_steps": (NATIVE, "train.gradient_accumulation", _direct("gradient_accumulation")),
    "learning_rate": (NATIVE, "train.learning_rate", _direct("learning_rate", float)),
    "num_train_epochs": (NATIVE, "train.epochs", _direct("epochs", float)),
    "max_steps": (NATIVE, "train.max_steps", _direct("max_steps")),
    "lr_scheduler_type": (NATIVE, "train.lr_scheduler", _scheduler),
    "warmup_ratio": (NATIVE, "train.warmup_ratio", _direct("warmup_ratio", float)),
    "warmup_steps": (NATIVE, "0 only (hpcft takes warmup_ratio)", _warmup_steps),
    "weight_decay": (NATIVE, "train.weight_decay", _direct("weight_decay", float)),
    "bf16": (NATIVE, "train.precision: bf16", _precision("bf16")),
    "fp16": (NATIVE, "train.precision: fp16", _precision("fp16")),
    "logging_steps": (NATIVE, "train.logging_steps", _direct("logging_steps")),
    "save_steps": (NATIVE, "train.checkpoint_steps", _direct("checkpoint_steps")),
    "val_size": (NATIVE, "needs the engine unless 0", lambda v, ctx: None if not v else _val_size(v, ctx)),
    "seed": (NATIVE, "train.seed", _direct("seed")),
    "deepspeed": (NATIVE, "train.deepspeed (the JSON, relative to the YAML's folder)", _deepspeed),
    "report_to": (NATIVE, "train.report_to (tensorboard, swanlab; none)", _report_to),
    "gradient_checkpointing": (NATIVE, "train.gradient_checkpointing", _direct("gradient_checkpointing", bool)),
    "enable_thinking": (NATIVE, "train.enable_thinking", _direct("enable_thinking", bool)),
    "output_dir": (IGNORED, _RUN_FOLDER, None),
    "overwrite_output_dir": (IGNORED, _RUN_FOLDER, None),
    "plot_loss": (IGNORED, _RUN_FOLDER + "; hpcft show plots every run", None),
    "save_only_model": (IGNORED, "hpcft checkpoints the optimizer too, for requeue", None),
    "resume_from_checkpoint": (IGNORED, "hpcft resumes a requeued run from its last checkpoint itself", None),
    "overwrite_cache": (IGNORED, "hpcft's tokenize cache is keyed by the data, tokenizer and settings", None),
    "preprocessing_num_workers": (IGNORED, "hpcft tokenizes in the job's own processes", None),
    "dataloader_num_workers": (IGNORED, "hpcft's worker loads batches in the training process", None),
    "ddp_timeout": (IGNORED, "hpcft tokenizes before the collectives start", None),
    # keys only LLaMA-Factory's engine runs
    **{k: (NEEDS_ENGINE, why, None) for k, why in {
        "freeze_trainable_layers": "freeze tuning", "freeze_trainable_modules": "freeze tuning",
        "freeze_extra_modules": "freeze tuning", "use_galore": "GaLore", "galore_layerwise": "GaLore",
        "galore_target": "GaLore", "galore_rank": "GaLore", "galore_scale": "GaLore",
        "galore_update_interval": "GaLore", "use_apollo": "APOLLO", "apollo_target": "APOLLO",
        "apollo_rank": "APOLLO", "apollo_scale": "APOLLO", "apollo_layerwise": "APOLLO",
        "apollo_proj": "APOLLO", "apollo_dim": "APOLLO", "apollo_scale_type": "APOLLO",
        "apollo_update_interval": "APOLLO",
        "use_badam": "BAdam", "badam_mode": "BAdam", "badam_switch_mode": "BAdam",
        "badam_switch_interval": "BAdam", "badam_update_ratio": "BAdam", "badam_mask_mode": "BAdam",
        "badam_verbose": "BAdam", "badam_start_block": "BAdam", "pure_bf16": "pure bf16 training",
        "image_max_pixels": _MULTIMODAL, "image_min_pixels": _MULTIMODAL, "video_max_pixels": _MULTIMODAL,
        "video_fps": _MULTIMODAL, "video_maxlen": _MULTIMODAL, "freeze_vision_tower": _MULTIMODAL,
        "freeze_multi_modal_projector": _MULTIMODAL, "freeze_language_model": _MULTIMODAL,
        "media_dir": _MULTIMODAL, "use_unsloth": "Unsloth", "use_llama_pro": "LLaMA Pro",
        "loraplus_lr_ratio": "LoRA+", "additional_target": "extra trained modules", "flash_attn": "attention choice",
        "enable_liger_kernel": "Liger kernels", "rope_scaling": "RoPE scaling", "mix_strategy": "dataset mixing",
        "interleave_probs": "dataset mixing", "streaming": "streaming datasets", "tokenized_path": "pre-tokenized data",
        "train_on_prompt": "prompt training", "mask_history": "history masking", "reward_model": "PPO",
    }.items()},
}

@dataclass
class _Ctx:
    lf: dict
    doc: YamlDoc
    loc: tuple
    base_dir: Path
    source: str
    m: Mapping

    def problem(self, key: str, message: str, engine: bool = True) -> None:
        """``engine``: LLaMA-Factory's engine runs what the message is about (else neither does)."""
        line, where = self.doc.where(self.loc + (key,))
        (self.m.problems if engine else self.m.refused).append((line, f"{where}: {key}: {message}"))


def is_llamafactory(data: Any) -> bool:
    """A LLaMA-Factory training YAML, told by its keys."""
    return isinstance(data, dict) and "model_name_or_path" in data and (
        "stage" in data or "finetuning_type" in data)


def map_keys(lf: dict, doc: YamlDoc, base_dir: Path, loc: tuple = ()) -> Mapping:
    """Each key of ``lf`` mapped, ignored, or reported (``doc`` gives the lines; ``loc`` where
    ``lf`` sits in it). Datasets are resolved against ``dataset_info.json`` in ``dataset_dir``."""
    ctx = _Ctx(lf, doc, loc, base_dir, doc.source, Mapping())
    for key, value in lf.items():
        entry = KEYS.get(key)
        if entry is None:
            unknown = lf_key_problem(key, TRAIN_KEYS, lambda k: next(iter(difflib.get_close_matches(
                k, sorted(set(TRAIN_KEYS) | set(KEYS)), 1)), None))
            ctx.problem(key, unknown or f"not a key hpcft maps; it needs {ENGINE}", engine=unknown is None)
            ctx.m.handled[key] = "refused" if unknown else NEEDS_ENGINE
            continue
        kind, what, apply = entry
        ctx.m.handled[key] = kind
        if kind == NEEDS_ENGINE:
            ctx.problem(key, f"{what} needs {ENGINE}")
        elif kind == NATIVE and apply is not None:
            message = apply(value, ctx)
            if message:
                ctx.m.handled[key] = NEEDS_ENGINE if ENGINE in message else "refused"
                ctx.problem(key, message, engine=ENGINE in message)
    _datasets(ctx)
    return ctx.m


def _datasets(ctx: _Ctx) -> None:
    names = split_names(ctx.lf.get("dataset"))
    if ctx.lf.get("eval_dataset"):
        ctx.problem("eval_dataset", f"a separate evaluation dataset needs {ENGINE}; hpcft evaluates on each "
                                    "training dataset's held-out part")
        ctx.m.handled["eval_dataset"] = NEEDS_ENGINE
    elif not ctx.lf.get("val_size"):
        # LLaMA-Factory evaluates only when asked (val_size, eval_dataset): every row trains, as it would
        ctx.m.train["eval_split"] = "none"
    if not names:
        ctx.problem("dataset", "no dataset named (LLaMA-Factory's dataset: name1,name2)", engine=False)
        return
    folder = Path(str(ctx.lf.get("dataset_dir", "data"))).expanduser()
    folder = folder if folder.is_absolute() else ctx.base_dir / folder
    info_path = folder / "dataset_info.json"
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        ctx.problem("dataset", f"{info_path} not found (LLaMA-Factory looks up {', '.join(names)} there; "
                               "set dataset_dir to its folder)", engine=False)
        return
    except (OSError, ValueError) as exc:
        ctx.problem("dataset", f"{info_path} cannot be read: {exc}", engine=False)
        return
    task = ctx.m.train.get("task", "causal-lm")
    entries = []
    for name in names:
        spec = info.get(name) if isinstance(info, dict) else None
        if not isinstance(spec, dict):
            ctx.problem("dataset", f"{name!r} is not in {info_path}", engine=False)
            continue
        entry = dataset_entry(name, spec, folder, task, lambda msg, n=name: ctx.problem("dataset", f"{n}: {msg}"))
        if entry is not None:
            entries.append(entry)
    if entries and len(entries) == len(names):
        ctx.m.train["dataset"] = entries[0]["name"] if len(entries) == 1 and len(entries[0]) == 1 else entries
        splits = {e.pop("_split") for e in entries if "_split" in e}
        if len(splits) > 1:
            ctx.problem("dataset", f"datasets with different splits ({', '.join(sorted(splits))}) need {ENGINE}")
        elif splits:
            ctx.m.train["train_split"] = splits.pop()
        if len(entries) == 1 and set(entries[0]) == {"name"}:
            ctx.m.train["dataset"] = entries[0]["name"]


def translate(doc: YamlDoc, base_dir: Path) -> tuple[YamlDoc, Optional[LfSource]]:
    """A job document: unchanged when it is hpcft's own; a LLaMA-Factory YAML, or an hpcft job
    with ``llamafactory:``, becomes the hpcft job it maps to. Raises ConfigError (every problem)."""
    data = doc.data
    if is_llamafactory(data):
        wrapper, lf, lf_doc, loc, lf_dir, path = {}, data, doc, (), base_dir, None
        text = (Path(doc.source).read_text(encoding="utf-8") if Path(doc.source).is_file()
                else yaml.safe_dump(data, sort_keys=False))
        name = Path(doc.source).stem if Path(doc.source).is_file() else "llamafactory"
    elif isinstance(data, dict) and "llamafactory" in data:
        wrapper, value = data, data["llamafactory"]
        problems = [doc.where((k,)) + (k,) for k in data if k not in (*WRAPPER_KEYS, "llamafactory")]
        if problems:
            raise ConfigError(sorted_problems([(line, f"{where}: {k}: not beside llamafactory: (the LLaMA-Factory "
                                                      f"file says what to train); valid: {', '.join(WRAPPER_KEYS)}")
                                               for line, where, k in problems]))
        if isinstance(value, str):
            path = Path(value).expanduser()
            path = path if path.is_absolute() else base_dir / path
            if not path.is_file():
                line, where = doc.where(("llamafactory",))
                raise ConfigError([f"{where}: llamafactory: file not found: {path}"])
            lf_doc = load_yaml_file(path, empty_ok=False)
            lf, loc, lf_dir, text = lf_doc.data, (), path.parent, path.read_text(encoding="utf-8")
        elif isinstance(value, dict):
            lf, lf_doc, loc, lf_dir, path = value, doc, ("llamafactory",), base_dir, None
            text = yaml.safe_dump(value, sort_keys=False)
        else:
            line, where = doc.where(("llamafactory",))
            raise ConfigError([f"{where}: llamafactory: expected a LLaMA-Factory YAML file or its keys"])
        name = str(wrapper.get("name") or (path.stem if path else "llamafactory"))
    else:
        return doc, None
    engine_doc, engine_loc = (doc, ("engine",)) if "engine" in wrapper or "engine" not in lf else (lf_doc, loc + ("engine",))
    engine = wrapper.get("engine", lf.get("engine", "auto"))
    if engine not in ENGINES:
        line, where = engine_doc.where(engine_loc)
        raise ConfigError([f"{where}: engine: {engine!r}: one of native, llamafactory (or leave it out: hpcft runs "
                           "natively what it can and hands the rest to LLaMA-Factory)"])
    m = map_keys({k: v for k, v in lf.items() if k != "engine"}, lf_doc, lf_dir, loc)
    delegate = engine == "llamafactory" or (engine == "auto" and bool(m.problems))
    problems = m.refused + ([] if delegate else m.problems)
    if problems:
        raise ConfigError(sorted_problems(problems))
    if delegate:
        refused: list = []

        def problem(key: str, message: str) -> None:
            line, where = lf_doc.where(loc + (key,))
            refused.append((line, f"{where}: {key}: {message}"))

        train = delegated_train(lf, lf_dir, problem)
        if refused:
            raise ConfigError(sorted_problems(refused))
        why = [text.split(": ", 1)[1] for _, text in m.problems]
        m.notes[:] = [f"engine: llamafactory ({'forced' if engine == 'llamafactory' else 'chosen'}): "
                      f"llamafactory-cli train runs it in the job"
                      + (f"; natively hpcft could not run: {'; '.join(why[:3])}"
                         + (f" (+{len(why) - 3} more)" if len(why) > 3 else "") if why else "")]
    else:
        train = m.train
        kinds = list(m.handled.values())
        ignored = kinds.count("ignored")
        m.notes.insert(0, f"engine: native ({'forced' if engine == 'native' else 'chosen'}): hpcft's worker runs "
                          f"it as train.task {train.get('task', 'causal-lm')}: {kinds.count(NATIVE)} key(s) mapped"
                          + (f", {ignored} that hpcft does itself (output_dir, workers, resume, ...)" if ignored else "")
                          + ("; every row trains, nothing is evaluated (no val_size)"
                             if train.get("eval_split") == "none" else ""))
    out = {k: v for k, v in wrapper.items() if k not in ("llamafactory", "engine")}
    out["name"] = name
    out["train"] = train
    new = YamlDoc(out, {}, doc.source)
    new.problems = list(doc.problems)
    return new, LfSource(path if path else (Path(doc.source) if not wrapper else None), text, m.notes)
