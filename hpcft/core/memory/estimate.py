"""Memory estimate for LLM fine-tuning: per device and per node (host), from a model's shape
(:mod:`hpcft.core.memory.shape`) and how the job trains (:class:`Plan`). Pure arithmetic, no torch.

Per device, in bytes, then ``x FRAGMENTATION + CONTEXT_GIB`` (allocator and CUDA/CANN context)::

    weights + gradients + optimizer state + activations (+ a frozen reference model)

* **model states** follow DeepSpeed's own ``estimate_zero2/3_model_states_mem_needs``: ZeRO-2 keeps
  16-bit weights on every rank and shards 18 B/param (16-bit and fp32 gradients, fp32 master
  weights, Adam moments); ZeRO-3 shards all of it and keeps the largest module (4 B/param)
  gathered; ``offload`` moves the optimizer (and at ZeRO-3 ``offload_params`` the weights) to
  host memory. ZeRO-1 shards only the fp32 states. The HF Trainer without DeepSpeed holds fp32
  weights, gradients and moments, and autocast's 16-bit copies: 18 B/param.
* **LoRA**: the frozen base in the training precision; QLoRA: 4-bit (0.55 B/param with its
  quantisation constants) except the embeddings and the head, which stay 16-bit; the adapters
  at 16 B/param (fp32 weights, gradients, moments).
* **preference tuning** (dpo, kto, orpo, simpo): chosen and rejected go through the model
  together (2x the batch); full DPO/KTO hold a frozen reference model (weights only, sharded at
  ZeRO-3); LoRA DPO/KTO use the base with the adapter disabled as the reference (no copy).
* **GRPO**: the rollouts, generated before each step without gradients (so the larger of them
  and the step's activations counts): ``batch_size x gradient_accumulation`` completions per device
  (TRL's generation batch), each prompt + ``max_completion_length`` tokens of KV cache
  (2 x layers x kv_heads x head_dim, 16-bit) and fp32 logits of the last position; the step
  trains on ``batch_size`` completions of ``seq_len``; with ``beta > 0`` full weights hold a
  frozen reference (LoRA: the adapter disabled, or TRL's copy of the adapter it continues).
* **activations**, per token: with gradient checkpointing each layer's input (2 B x hidden) stays
  for the backward, and on top of them the larger of two phases that never overlap: one layer
  recomputed and back-propagated (:data:`WORK_H` x hidden + :data:`WORK_I` x the MLP width a token
  passes through, + :data:`ROUTE_H` x hidden per routed expert of a MoE) and the loss
  (:data:`LOGIT_BYTES` per vocabulary entry: the 16-bit logits, transformers' fp32 copy, the
  log-softmax it keeps and the gradients; +2 with Gemma 2's final soft-capping). An eager
  attention (Gemma 2, InternLM2) adds its heads x seq x seq scores to the layer
  (:data:`SCORES_WORK` B each). Without checkpointing every layer keeps what its backward needs
  (:data:`SAVED_H`, :data:`SAVED_I`, :data:`SCORES_SAVED`), and the loss comes on top.

The activation constants are fitted, with a margin, to traces of the real transformers code
(devtools/memtrace.py: one training step under FakeTensorMode, every storage counted;
tests/test_memory_trace.py holds the estimate to them for each family); the whole estimate is
held against measured peaks in tests/data/memory_measured.py (docs/memory.md lists each case,
its source and the ratio).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from .shape import ModelShapeError, Shape, read_shape, shape_from_config  # noqa: F401 (re-exported)

GiB = 2 ** 30
FRAGMENTATION = 1.05
CONTEXT_GIB = 2.0
# activations, bytes per token (traced: devtools/memtrace.py, transformers 5, bf16, SDPA)
WORK_H, WORK_I = 16, 18   # a checkpointed layer recomputed and back-propagated: x hidden, x MLP width
                          # (traced 15-22 x the MLP width for the dense families)
ROUTE_H = 8               # a MoE layer, per routed expert: the gathered inputs and outputs, x hidden
SAVED_H, SAVED_I = 16, 8  # a layer without checkpointing keeps for its backward (traced 0.85-0.97x of it)
TAIL_H = 8                # the final norm and the hidden states the head reads
SCORES_WORK = 16          # eager attention (shape.eager_attention), per head x seq x seq of each sequence:
                          # a recomputed layer's scores, soft-capped, softmaxed and back (traced 13.2 at 16k)
SCORES_SAVED = 8          # ... kept by every layer without checkpointing (traced 7.9)
LOGIT_BYTES = 15          # the loss, per vocabulary entry (traced 14.0-14.7)
QLORA_BYTES = 0.60    # 4-bit NF4 weights with double-quantised constants, B/param
PREFERENCE_TASKS = ("dpo", "kto", "orpo", "simpo")
REFERENCE_TASKS = ("dpo", "kto")   # the two that hold a reference model
# host memory per rank beyond the model: Python, torch, the CUDA/CANN host side, the tokenizer,
# the tokenized dataset and a dataloader worker
RANK_HOST_GIB = 4.0
HOST_BUFFER = 1.5     # DeepSpeed's additional_buffer_factor for host memory


@dataclass
class Plan:
    """What decides memory: the method and how the job is spread."""

    method: str = "lora"              # lora | qlora | full | freeze
    task: str = "sft"                 # sft | dpo | kto | orpo | simpo
    precision: str = "bf16"           # bf16 | fp16 | fp32 (mixed precision); bf16-true: everything 16-bit
    zero_stage: Optional[int] = None  # None: no DeepSpeed (one process, or DDP)
    offload: bool = False             # the optimizer (DeepSpeed offload_optimizer)
    offload_params: bool = False      # the weights too (ZeRO-3 offload_param)
    world_size: int = 1
    per_node: int = 1                 # ranks (devices) per node
    batch_size: int = 1
    seq_len: int = 1024
    gradient_checkpointing: bool = True
    lora_r: int = 8
    lora_targets: Any = "all-linear"
    zero_init: bool = True            # ZeRO-3 loads with deepspeed.zero.Init (each rank its shard)
    logit_bytes: int = LOGIT_BYTES    # transformers' loss upcasts the logits to fp32 (remote code may not)
    optimizer: str = "fused"          # fused AdamW (CUDA, CPU) | foreach: torch's multi-tensor AdamW (NPU)
    rollouts: int = 0                 # grpo: completions generated per device before a step (0: not grpo)
    beta: float = 0.0                 # grpo: the KL coefficient (> 0: a reference model)

    def describe(self) -> str:
        zero = "ZeRO-0" if self.zero_stage is None else f"ZeRO-{self.zero_stage}"
        if self.offload or self.offload_params:
            zero += "+offload"
        task = "" if self.task == "sft" else f"{self.task} "
        return (f"{task}{self.method} {self.precision}, {zero}, {self.world_size} device(s), "
                f"batch {self.batch_size} x {self.seq_len}")


@dataclass
class Estimate:
    params: int
    trainable: int
    weights: float            # GiB per device
    gradients: float
    optimizer: float
    activations: float
    reference: float = 0.0    # a frozen reference model (full DPO/KTO)
    step: float = 0.0         # the optimizer step's temporaries (foreach AdamW), after the activations are freed
    rollout: float = 0.0      # grpo: the generation batch's KV cache and logits, before the step (no gradients)
    host: dict = field(default_factory=dict)   # GiB per node: loading, offload, ranks, total
    plan: Plan = field(default_factory=Plan)

    @property
    def allocated(self) -> float:
        """GiB of tensors at the peak: what ``torch.cuda.max_memory_allocated`` reports."""
        return (self.weights + self.gradients + self.optimizer + self.reference
                + max(self.activations, self.step, self.rollout))

    @property
    def total(self) -> float:
        """GiB the device must have: the tensors, the allocator's slack, the CUDA/CANN context."""
        return self.allocated * FRAGMENTATION + CONTEXT_GIB

    def as_measured(self, kind: str) -> float:
        """The figure a measurement of ``kind`` would show: ``allocated`` (max_memory_allocated),
        ``reserved`` (max_memory_reserved: with the allocator's slack) or ``device`` (nvidia-smi,
        or the card a run fills: with the context too)."""
        return {"allocated": self.allocated, "reserved": self.allocated * FRAGMENTATION, "device": self.total}[kind]

    @property
    def host_total(self) -> float:
        return float(self.host.get("total", 0.0))

    def summary(self) -> str:
        ref = f", reference {self.reference:.1f}" if self.reference else ""
        step = f", optimizer step {self.step:.1f}" if self.step > self.activations else ""
        step += f", rollouts {self.rollout:.1f}" if self.rollout else ""
        return (f"~{self.total:.0f} GiB per device for {self.params / 1e9:.2g}B parameters "
                f"({self.plan.describe()}: weights {self.weights:.1f}, gradients {self.gradients:.1f}, "
                f"optimizer {self.optimizer:.1f}, activations {self.activations:.1f}{ref}{step} GiB)")

    def as_dict(self) -> dict:
        """The shape ``hpcft check --json`` prints (tests/schemas/check.schema.json)."""
        return {"params": self.params, "trainable": self.trainable, "plan": asdict(self.plan),
                "device_gib": round(self.total, 2),
                "device_parts_gib": {k: round(getattr(self, k), 2) for k in
                                     ("weights", "gradients", "optimizer", "activations", "reference", "step",
                                      *(("rollout",) if self.plan.rollouts else ()))},
                "fragmentation": FRAGMENTATION, "context_gib": CONTEXT_GIB,
                "node_gib": round(self.host_total, 2),
                "node_parts_gib": {k: round(v, 2) for k, v in self.host.items() if k != "total"}}


def model_states(shape: Shape, plan: Plan) -> tuple[float, float, float, int]:
    """(weights, gradients, optimizer) bytes per device and the trainable parameter count."""
    p, n = shape.params, max(1, plan.world_size)
    half = 4 if plan.precision == "fp32" else 2
    stage = plan.zero_stage
    live = 4 * shape.largest_module_params  # ZeRO-3: the module being computed, gathered
    if plan.precision == "bf16-true" and stage is None:   # pure 16-bit (no fp32 master): Adam's moments too
        if plan.method == "full":
            return 2 * p, 2 * p, 4 * p, p
        trainable = shape.lora_params(plan.lora_r, plan.lora_targets) if plan.method in ("lora", "qlora") else 0
        if plan.method == "qlora":
            emb = shape.vocab * shape.hidden * (1 if shape.tied else 2)
            return QLORA_BYTES * (p - emb) + 2 * emb + 2 * trainable, 2 * trainable, 8 * trainable, trainable
        return 2 * p, 2 * trainable, 4 * trainable, trainable
    if plan.method == "full":
        if stage is None:
            return 6 * p, 4 * p, 8 * p, p
        if stage <= 1:   # 16-bit weights and gradients everywhere, the fp32 states sharded (not at 0)
            n = 1 if stage == 0 else n
            w, g, o = half * p, half * p + 4 * p / n, 12 * p / n
        elif stage == 2:
            w, g, o = half * p, (half + 4) * p / n, 12 * p / n
        else:            # DeepSpeed's 18 B/param over the ranks + the module being computed, gathered;
            # on one device the 16-bit gradients are not reduced away: 20 (Qwen-1.8B full ZeRO-3 on one A100)
            w, g, o = half * p / n + live, (4 + (half if n == 1 else 0)) * p / n, 12 * p / n
        if plan.offload:          # DeepSpeed: the gradients and the states go to the host
            g, o = 0.0, 0.0
            if stage >= 3 and plan.offload_params:
                w = live
        return w, g, o, p
    if plan.method in ("lora", "qlora"):
        trainable = shape.lora_params(plan.lora_r, plan.lora_targets)
    elif plan.method == "freeze":
        trainable = 2 * shape.layer_params
    else:
        raise ValueError(f"unknown method {plan.method}")
    if plan.method == "qlora":
        emb = shape.vocab * shape.hidden * (1 if shape.tied else 2)
        base = QLORA_BYTES * (p - emb) + 2 * emb
    else:
        base = half * (p - (trainable if plan.method == "freeze" else 0))
    if stage == 3:   # QLoRA too: peft's ZeRO-3 recipe stores the 4-bit weights in a 16-bit dtype to shard them
        base = live if plan.offload_params else base / n + live
    w, g, o = base + 4 * trainable, 4 * trainable, 8 * trainable
    if stage is not None and stage >= 1:
        o = 0 if plan.offload else o / n
    return w, g, o, trainable


def activations(shape: Shape, plan: Plan) -> float:
    b = plan.batch_size * (2 if plan.task in PREFERENCE_TASKS else 1)
    tokens = b * plan.seq_len
    h, width = shape.hidden, shape.active_intermediate
    route = ROUTE_H * shape.active * h if shape.moe_layers else 0
    loss = shape.vocab * (plan.logit_bytes + (2 if shape.logit_softcap else 0))
    # eager attention: heads x seq^2 scores per sequence, i.e. heads x seq per token
    scores = shape.heads * plan.seq_len if shape.eager_attention else 0
    if plan.gradient_checkpointing:
        per_token = shape.layers * 2 * h + max(WORK_H * h + WORK_I * width + route + SCORES_WORK * scores, loss)
    else:
        per_token = shape.layers * (SAVED_H * h + SAVED_I * width + route + SCORES_SAVED * scores) + loss
    return tokens * (per_token + TAIL_H * h)


def host_memory(shape: Shape, plan: Plan) -> dict:
    """GiB per node: what the ranks hold while loading, the offloaded states, and each rank's own."""
    p, ranks = shape.params, max(1, plan.per_node)
    half = 4 if plan.precision == "fp32" else 2
    nodes = max(1, plan.world_size // ranks)
    stage = plan.zero_stage
    largest = shape.largest_module_params
    if stage == 3 and plan.zero_init:   # DeepSpeed: each rank materialises one module at a time
        loading = largest * 4 * ranks * HOST_BUFFER
    elif stage is not None:             # every rank loads the whole model before DeepSpeed shards it
        loading = p * max(half, 4 if plan.method == "full" else half) * ranks * HOST_BUFFER
    else:
        loading = p * (4 if plan.method == "full" else half) * ranks
    if plan.method == "qlora":
        loading = p * half * ranks      # bitsandbytes quantises while loading: the 16-bit shards pass through
    offload = 0.0
    trainable = p if plan.method == "full" else model_states(shape, plan)[3]
    if plan.offload and stage is not None:
        world = max(1, plan.world_size)
        if stage >= 3:   # DeepSpeed's estimate_zero3_model_states_mem_needs, per node
            per = (18 if plan.offload_params else 16) / nodes
            offload = trainable * (per if plan.zero_init else max(4 * ranks, per)) * HOST_BUFFER
        else:            # estimate_zero2_model_states_mem_needs: its figure is not divided by the nodes
            offload = trainable * max(4 * world, 16) * HOST_BUFFER
    own = RANK_HOST_GIB * GiB * ranks
    total = max(loading, offload) + own
    return {"loading": loading / GiB, "offload": offload / GiB, "ranks": own / GiB, "total": total / GiB}


def estimate(shape: Shape, plan: Plan) -> Estimate:
    w, g, o, trainable = model_states(shape, plan)
    ref = 0.0
    if (plan.task in REFERENCE_TASKS or (plan.task == "grpo" and plan.beta > 0)) and plan.method == "full":
        half = 4 if plan.precision == "fp32" else 2
        ref = half * shape.params / (max(1, plan.world_size) if plan.zero_stage == 3 else 1)
    step = 0.0
    if plan.optimizer == "foreach" and plan.zero_stage is None:
        # torch's multi-tensor AdamW: _foreach_sqrt of the second moments is one temporary of their size
        step = (2 if plan.precision == "bf16-true" else 4) * trainable
    return Estimate(shape.params, trainable, w / GiB, g / GiB, o / GiB, activations(shape, plan) / GiB,
                    reference=ref / GiB, step=step / GiB, rollout=rollouts(shape, plan) / GiB,
                    host=host_memory(shape, plan), plan=plan)


def rollouts(shape: Shape, plan: Plan) -> float:
    """Bytes of a GRPO generation batch on one device: the KV cache of every sequence at full
    length (16-bit; fp32 in an fp32 job) and the fp32 logits of one position each."""
    if not plan.rollouts:
        return 0.0
    half = 4 if plan.precision == "fp32" else 2
    kv = 2 * shape.layers * shape.kv_heads * shape.head_dim * half
    return plan.rollouts * (plan.seq_len * kv + 4 * shape.vocab)
