"""The job file: schema, layering and validation.

Layers, lowest first: cluster config ``job_defaults`` < user config ``job_defaults``
< the job file < ``--set key=value``. Every problem is reported at once, one line each,
as ``file:line: field: message``.
"""

from __future__ import annotations

import difflib
from typing import Any, ClassVar, Literal, Optional, Union

from pydantic import Field, ValidationError, field_validator, model_validator

from . import grpo as grpo_rules
from . import streaming as streaming_rules
from .grpo import GrpoSpec, RewardSpec
from .pref_rows import PREFERENCE_TASKS
from .preprocess import PreprocessMode
from .quantization import QuantizationSpec
from .resources import EnvSpec, Resources, _one_line, _Strict


class DeepSpeedSpec(_Strict):
    stage: int = Field(0, ge=0, le=3)
    offload: bool = False          # ZeRO-Offload of optimizer (and params at stage 3) to CPU
    config: Optional[str] = None   # a user's DeepSpeed JSON; overrides stage/offload


class LoraSpec(_Strict):
    """LoRA adapter settings (peft) for ``task: causal-lm, method: lora``."""

    r: int = Field(8, ge=1, le=1024)
    alpha: float = Field(16, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)  # LLaMA-Factory's and peft's default; 0.05 costs 15-40 % per step on CPU
    target_modules: Union[Literal["all-linear"], list[str]] = "all-linear"  # every linear layer but the head
    use_dora: bool = False      # peft's DoRA: magnitude and direction trained apart
    use_rslora: bool = False    # rank-stabilised scaling alpha/sqrt(r) instead of alpha/r
    init: Optional[Literal["pissa", "gaussian"]] = None  # peft's init_lora_weights (default: B zero, A Kaiming)


# fields that only the causal-lm task reads; set on another task, each is reported
LLM_FIELDS = ("method", "lora", "quantization", "data_format", "packing", "gradient_checkpointing", "system_prompt",
              "sample_prompts", "max_new_tokens", "train_on", "enable_thinking", "trust_remote_code", "neftune_alpha",
              "data_cache", "preprocess", "streaming")
# the LLM tasks: supervised fine-tuning and preference tuning (TRL's trainers; see docs/llm.md)
LLM_TASKS = ("causal-lm", *PREFERENCE_TASKS, "grpo", "llamafactory")
# of LLM_FIELDS, those preference tuning does not read (its rows are its own format, unpacked)
SFT_ONLY_FIELDS = ("data_format", "packing", "sample_prompts", "max_new_tokens", "train_on", "neftune_alpha",
                   "data_cache", "preprocess", "streaming")
# fields that only the preference tasks read
PREFERENCE_FIELDS = ("init_from", "preference")


class PreferenceSpec(_Strict):
    """Preference tuning settings (``task: dpo``, ``orpo``, ``simpo``, ``kto``), TRL's names."""

    beta: Optional[float] = Field(None, gt=0)   # default per task: dpo/kto/orpo 0.1, simpo 2.0
    loss_type: Optional[str] = None             # dpo: sigmoid (default), ipo, hinge, robust, ...; kto: kto, apo_zero_unpaired
    max_prompt_length: Optional[int] = Field(None, ge=1)  # default: half of max_seq_length; longer prompts keep their end
    simpo_gamma: Optional[float] = Field(None, ge=0)      # simpo's target reward margin (default 0.5)

    DPO_LOSSES: ClassVar[tuple] = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair",
                                   "sppo_hard", "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop",
                                   "sigmoid_norm")
    KTO_LOSSES: ClassVar[tuple] = ("kto", "apo_zero_unpaired")


class DatasetEntry(_Strict):
    """One dataset of a mix (``train.dataset: [{name, weight}, ...]``): its name as for a single
    dataset (hub name, ``org/name:config`` or a data file), its share of the training examples
    (no weight anywhere in the list: the datasets are concatenated), and optionally its own format."""

    name: str = Field(min_length=1)
    weight: Optional[float] = None
    data_format: Optional[Literal["auto", "alpaca", "messages", "sharegpt", "text"]] = None
    # alpaca rows: what joins instruction and input into the user's turn (default two newlines;
    # a LLaMA-Factory dataset_info.json entry maps to its one newline)
    alpaca_join: Optional[Literal["\n", "\n\n", " "]] = None

    _single = field_validator("name")(_one_line)

    @field_validator("weight")
    @classmethod
    def _weight(cls, v: Optional[float]) -> Optional[float]:
        if v is not None and not v > 0:
            raise ValueError(f"weight {v:g} must be above 0 (leave the dataset out instead)")
        return v


NO_EVAL = "none"   # train.eval_split: none: every row trains, nothing is held out or evaluated


class TrainSpec(_Strict):
    """Built-in fine-tuning (the worker implements it)."""

    # causal-lm defaults where the classification ones would mislead (LLaMA-Factory/torchtune-like)
    LLM_MAX_SEQ_LENGTH: ClassVar[int] = 1024
    LLM_LEARNING_RATE: ClassVar[dict] = {"lora": 1e-4, "qlora": 1e-4, "full": 1e-5}
    PREFERENCE_LEARNING_RATE: ClassVar[dict] = {"lora": 5e-6, "qlora": 5e-6, "full": 5e-7}  # LLaMA-Factory's DPO examples
    GRPO_LEARNING_RATE: ClassVar[dict] = {"lora": 1e-5, "qlora": 1e-5, "full": 1e-6}  # TRL's 1e-6 (full), x10 LoRA

    task: Literal["sequence-classification", "causal-lm", "dpo", "orpo", "simpo", "kto", "grpo", "llamafactory"] = \
        "sequence-classification"   # llamafactory: LLaMA-Factory's engine runs it (hpcft.core.llamafactory_delegate)
    model: str
    # glue/mrpc, yelp_review_full, org/name[:config], path, file.csv; causal-lm also takes a mix:
    # a list of names and/or {name, weight, data_format} entries
    dataset: Union[str, list[DatasetEntry]]
    dataset_config: Optional[str] = None
    text_columns: Optional[list[str]] = Field(None, min_length=1, max_length=2)
    label_column: Optional[str] = None
    num_labels: Optional[int] = Field(None, ge=1)
    metric: Optional[str] = None            # e.g. glue (with the dataset's config), accuracy, f1
    train_split: str = "train"
    eval_split: Optional[str] = None         # default: validation, else test, else a held-out slice; none: no eval
    epochs: float = Field(3, gt=0)
    max_steps: Optional[int] = Field(None, ge=1)
    learning_rate: float = Field(None, gt=0)   # default per task: 2e-5; causal-lm 1e-4 (LoRA), 1e-5 (full)
    batch_size: int = Field(16, ge=1)       # per device
    eval_batch_size: Optional[int] = Field(None, ge=1)
    gradient_accumulation: int = Field(1, ge=1)
    warmup_ratio: float = Field(0.0, ge=0, le=1)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts",
                          "polynomial"] = "linear"   # transformers' lr_scheduler_type
    weight_decay: float = Field(0.0, ge=0)
    max_seq_length: int = Field(None, ge=8, le=32768)  # default per task: 128; causal-lm 1024
    seed: int = 42
    train_subset: Optional[int] = Field(None, ge=1)
    eval_subset: Optional[int] = Field(None, ge=1)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    save_best: bool = False
    logging_steps: int = Field(10, ge=1)
    checkpoint_steps: Optional[int] = Field(None, ge=1)  # besides the per-epoch and on-signal checkpoints
    deepspeed: Union[bool, DeepSpeedSpec, Literal["auto"], None] = None  # None: the default for the device count
    report_to: list[Literal["tensorboard", "swanlab"]] = []  # offline trackers, logs in the run folder

    @field_validator("report_to", mode="before")
    @classmethod
    def _report_to(cls, v: Any) -> Any:
        if v is None or v == "none":
            return []
        return [v] if isinstance(v, str) else v

    # benchmarks scored after training, the job's last step (lm-eval; hpcft stage --eval): ceval, mmlu, ...
    eval_tasks: list[str] = []

    @field_validator("eval_tasks", mode="before")
    @classmethod
    def _eval_tasks(cls, v: Any, info) -> Any:
        from .eval_tasks import problem, split_names

        names = split_names([v] if isinstance(v, str) else (v or []))
        bad = [p for p in (problem(n) for n in names) if p]
        if bad:
            raise ValueError("; ".join(bad))
        if names and info.data.get("task", "sequence-classification") == "sequence-classification":
            raise ValueError("benchmarks score generative models: only for LLM tasks (task: causal-lm)")
        return names

    # ---- causal-lm (supervised fine-tuning of an LLM); see docs/llm.md
    method: Optional[Literal["lora", "qlora", "full"]] = None  # default lora; qlora: LoRA over a 4/8-bit base
    lora: Optional[LoraSpec] = None
    quantization: Optional[QuantizationSpec] = None            # method: qlora (default 4-bit nf4, double_quant)
    data_format: Optional[Literal["auto", "alpaca", "messages", "sharegpt", "text"]] = None  # default auto
    packing: Optional[bool] = None                               # default false
    gradient_checkpointing: Optional[bool] = None                # default on for causal-lm
    system_prompt: Optional[str] = None
    sample_prompts: Optional[int] = Field(None, ge=0, le=100)    # held-out prompts answered into samples.jsonl
    max_new_tokens: Optional[int] = Field(None, ge=1, le=8192)
    train_on: Optional[Literal["all", "last"]] = None            # assistant turns trained; default all
    text_last_block: Optional[Literal["keep", "drop"]] = None    # data_format text: its last, short block (keep)
    enable_thinking: Optional[bool] = None                       # passed to the chat template (Qwen3)
    trust_remote_code: Optional[bool] = None   # run the model's own *.py (GLM-4, InternLM2.5); never implied
    neftune_alpha: Optional[float] = Field(None, gt=0)  # NEFTune: noise on the embeddings (the Trainer's; e.g. 5)
    data_cache: Optional[bool] = None          # tokenized data cached in $HPCFT_HOME/runtime/data (default true)
    preprocess: Optional[PreprocessMode] = None  # cpu-job: tokenized first by a CPU job (hpcft.core.preprocess)
    streaming: Optional[bool] = None           # data_format text read as a stream (hpcft.core.streaming)
    # ---- preference tuning (dpo, orpo, simpo, kto); see docs/llm.md
    init_from: Optional[str] = None            # an hpcft SFT run (resolved to its folder at submit)
    preference: Optional[PreferenceSpec] = None
    # ---- task: grpo (hpcft.core.grpo): TRL's GRPO settings and the rewards
    grpo: Optional[GrpoSpec] = None
    rewards: Optional[list[RewardSpec]] = None
    # ---- task: llamafactory (written by hpcft.core.llamafactory_delegate from a LLaMA-Factory YAML):
    # {args: the YAML's keys, dataset_info: its entries, datasets: LLaMA-Factory name -> train.dataset name}
    llamafactory: Optional[dict[str, Any]] = None

    @field_validator("dataset", mode="before")
    @classmethod
    def _dataset(cls, v: Any) -> Any:
        """A name, or a list of names / {name, weight, data_format}: each problem in one line."""
        if isinstance(v, str):
            return _one_line(v)
        if not isinstance(v, list):
            raise ValueError("expected a dataset name or a list of them (each a name or {name, weight})")
        if not v:
            raise ValueError("an empty list; give a dataset name or a list of them")
        out = []
        for i, x in enumerate(v):
            if isinstance(x, str):
                x = {"name": x}
            if not isinstance(x, dict):
                raise ValueError(f"entry {i + 1}: expected a name or {{name, weight}}, got {x!r}")
            unknown = sorted(set(x) - set(DatasetEntry.model_fields))
            if unknown:
                near = difflib.get_close_matches(unknown[0], list(DatasetEntry.model_fields), 1)
                raise ValueError(f"entry {i + 1}: unknown key {unknown[0]!r}"
                                 f"{f' (did you mean {near[0]!r}?)' if near else ''}; "
                                 f"valid: {', '.join(DatasetEntry.model_fields)}")
            try:
                out.append(DatasetEntry.model_validate(x))
            except ValidationError as exc:
                err = exc.errors()[0]
                where = ".".join(str(p) for p in err["loc"])
                msg = err["msg"].removeprefix("Value error, ")
                raise ValueError(f"entry {i + 1} ({x.get('name', '?')}): "
                                 f"{msg if msg.startswith(where) else f'{where}: {msg}'}") from None
        return out

    @model_validator(mode="after")
    def _per_task(self) -> "TrainSpec":
        # per-task defaults, resolved here so the run folder's job.yaml records the value used
        if self.max_seq_length is None:
            self.max_seq_length = self.LLM_MAX_SEQ_LENGTH if self.is_llm else 128
        if self.learning_rate is None:
            rates = (self.PREFERENCE_LEARNING_RATE if self.is_preference else
                     self.GRPO_LEARNING_RATE if self.task == "grpo" else self.LLM_LEARNING_RATE)
            self.learning_rate = rates[self.method or "lora"] if self.is_llm else 2e-5
        if not self.is_llm:
            wrong = [f for f in LLM_FIELDS if getattr(self, f) is not None]
            if wrong:
                raise ValueError(f"{', '.join(wrong)}: only for task: causal-lm (this job's task is {self.task})")
        else:
            wrong = [f for f in ("text_columns", "label_column", "num_labels", "metric", "save_best")
                     if getattr(self, f) not in (None, False)]
            if wrong:
                raise ValueError(f"{', '.join(wrong)}: only for task: sequence-classification "
                                 f"(task: {self.task} trains on the whole prompt/response)")
            if self.lora is not None and self.method == "full":
                raise ValueError("lora: is set but method is full; remove lora: or use method: lora")
            if self.lora is not None and self.lora.init == "pissa" and self.method == "qlora":
                raise ValueError("lora.init: pissa rewrites the base weights, which method: qlora holds quantized; "
                                 "use method: lora, or lora.init: gaussian")
            self._check_qlora()
        if self.eval_split == NO_EVAL and self.task not in ("causal-lm", "dpo", "orpo", "simpo", "kto"):
            raise ValueError(f"eval_split: none (train on every row, evaluate nothing) is for causal-lm and the "
                             f"preference tasks; task {self.task} evaluates on a held-out split")
        grpo_rules.check(self)
        streaming_rules.check(self)
        if (self.task == "llamafactory") != (self.llamafactory is not None):
            raise ValueError("task: llamafactory and llamafactory: come together (hpcft writes both from a "
                             "LLaMA-Factory YAML; submit that file, or an hpcft job with llamafactory: lf.yaml)")
        if self.task == "grpo":
            wrong = [f for f in (*SFT_ONLY_FIELDS, "preference") if getattr(self, f) is not None]
            if wrong:
                raise ValueError(f"{', '.join(wrong)}: not for task: grpo (it generates its own replies)")
            _one_line(self.init_from)
        elif not self.is_preference:
            wrong = [f for f in PREFERENCE_FIELDS if getattr(self, f) is not None]
            if wrong:
                raise ValueError(f"{', '.join(wrong)}: only for the preference tasks (dpo, orpo, simpo, kto); "
                                 f"this job's task is {self.task}")
        else:
            self._check_preference()
        if isinstance(self.dataset, list):
            if not self.is_llm and len(self.dataset) > 1:
                raise ValueError(f"dataset: a list (a mix of datasets) is only for the LLM tasks (causal-lm); "
                                 f"this job's task is {self.task}")
            if self.dataset_config:
                raise ValueError("dataset_config: with a list of datasets, name each one's config in its name "
                                 "(org/name:config)")
        return self

    @property
    def dataset_entries(self) -> list[DatasetEntry]:
        """Every dataset of the job as an entry (a single name is one entry without a weight)."""
        items = self.dataset if isinstance(self.dataset, list) else [self.dataset]
        return [DatasetEntry(name=x) if isinstance(x, str) else x for x in items]

    @property
    def dataset_label(self) -> str:
        """The dataset(s) in one line, for messages and metrics."""
        return " + ".join(e.name if e.weight is None else f"{e.name} (weight {e.weight:g})"
                          for e in self.dataset_entries)

    def _check_preference(self) -> None:
        wrong = [f for f in SFT_ONLY_FIELDS if getattr(self, f) is not None]
        if wrong:
            raise ValueError(f"{', '.join(wrong)}: only for task: causal-lm (task: {self.task} reads preference rows)")
        p = self.preference
        if p is not None and p.loss_type is not None:
            allowed = {"dpo": p.DPO_LOSSES, "kto": p.KTO_LOSSES}.get(self.task, ())
            if p.loss_type not in allowed:
                what = f"one of {', '.join(allowed)}" if allowed else f"not a setting of task: {self.task}"
                raise ValueError(f"preference.loss_type {p.loss_type!r}: {what}")
        if p is not None and p.simpo_gamma is not None and self.task != "simpo":
            raise ValueError(f"preference.simpo_gamma: only for task: simpo (this job's task is {self.task})")
        if p is not None and p.max_prompt_length is not None and p.max_prompt_length >= self.max_seq_length:
            raise ValueError(f"preference.max_prompt_length {p.max_prompt_length} leaves no room for the reply "
                             f"within max_seq_length {self.max_seq_length}")
        if self.task == "kto" and self.batch_size < 2:
            raise ValueError("task: kto needs batch_size 2 or more (its KL term pairs each prompt with another "
                             "example's completion in the batch)")
        _one_line(self.init_from)

    def _check_qlora(self) -> None:
        if self.quantization is not None and self.method != "qlora":
            raise ValueError(f"quantization: is set but method is {self.method or 'lora (the default)'}; "
                             "use method: qlora or remove quantization:")
        if self.method == "qlora" and self.deepspeed not in (None, False):
            raise ValueError("deepspeed: with method: qlora is not supported (bitsandbytes' packed weights are not "
                             "sharded by hpcft's ZeRO configs); leave deepspeed unset: several devices train with DDP")
        if self.method == "qlora" and self.quantization is None:
            self.quantization = QuantizationSpec()   # the run folder's job.yaml records the defaults used

    @property
    def quant(self) -> QuantizationSpec:
        """The job's quantization (defaults when method: qlora gives no quantization: block)."""
        return self.quantization or QuantizationSpec()

    @property
    def adapter_method(self) -> bool:
        """LoRA or QLoRA: a frozen base and a trained adapter."""
        return self.llm_method in ("lora", "qlora")

    @property
    def is_llm(self) -> bool:
        return self.task in LLM_TASKS

    @property
    def is_preference(self) -> bool:
        return self.task in PREFERENCE_TASKS

    @property
    def llm_method(self) -> str:
        return self.method or "lora"


    @field_validator("deepspeed", mode="before")
    @classmethod
    def _ds(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            return {"stage": v}
        if isinstance(v, str) and v != "auto":
            return {"config": v}
        return v


class Assets(_Strict):
    """What a script job needs staged (train jobs derive it from ``train:``)."""

    models: list[str] = []
    datasets: list[str] = []
    metrics: list[str] = []


class SweepSpec(_Strict):
    """A hyperparameter sweep: one Slurm array task per point (expanded by hpcft.submit.sweep)."""

    grid: dict[str, list[Any]] = {}         # every combination, e.g. {"train.learning_rate": [1e-5, 2e-5]}
    points: list[dict[str, Any]] = []       # or explicit points, e.g. [{"train.seed": 1}, ...]
    max_parallel: Optional[int] = Field(None, ge=1)  # the %K of --array
    metric: Optional[str] = None            # rank points by this eval metric (default: the headline)
    goal: Literal["max", "min"] = "max"

    @model_validator(mode="after")
    def _shape(self) -> "SweepSpec":
        if bool(self.grid) == bool(self.points):
            raise ValueError("a sweep needs grid: (every combination) or points: (a list), exactly one of them")
        empty = [k for k, v in self.grid.items() if not v]
        if empty:
            raise ValueError(f"grid key {empty[0]!r} has no values")
        return self


class Job(_Strict):
    name: str = Field(min_length=1, max_length=128)
    train: Optional[TrainSpec] = None
    script: Optional[str] = None
    args: list[str] = []
    workdir: Optional[str] = None
    assets: Assets = Assets()
    resources: Resources = Resources()
    env: EnvSpec = EnvSpec()
    output_dir: Optional[str] = None
    executor: Literal["auto", "slurm", "local"] = "auto"
    max_requeues: int = Field(3, ge=0, le=100)
    sweep: Optional[SweepSpec] = None

    _single = field_validator("name", "script", "workdir", "output_dir")(_one_line)

    @field_validator("args", mode="before")
    @classmethod
    def _args(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [str(x).lower() if isinstance(x, bool) else str(x) if isinstance(x, (int, float)) else x
                    for x in v]
        return v

    @model_validator(mode="after")
    def _what(self) -> "Job":
        if self.train is None and self.script is None:
            raise ValueError("nothing to run: give either train: (built-in fine-tuning) or script: (your own script)")
        if self.train is not None and self.script is not None:
            raise ValueError("train: and script: are both set; a job runs one of them")
        if self.args and self.script is None:
            raise ValueError("args: only applies to script: jobs")
        return self

    @property
    def kind(self) -> str:
        return "train" if self.train else "script"

    def all_assets(self) -> Assets:
        if self.train is None:
            return self.assets
        t = self.train
        metrics = [t.metric] if t.metric else []
        datasets = [e.name for e in t.dataset_entries]
        dataset = datasets[0]
        if t.dataset_config and ":" not in dataset and not dataset.endswith("/" + t.dataset_config):
            datasets[0] = f"{dataset}:{t.dataset_config}"  # a bare "glue" is staged per config
        return Assets(models=[t.model, *self.assets.models],
                      datasets=[*datasets, *self.assets.datasets],
                      metrics=metrics + self.assets.metrics)

