"""Memory pre-flight for LLM fine-tuning: per-device memory from a model's ``config.json``.

Pure arithmetic, no torch. Per device, in GiB::

    weights + gradients + optimizer state + activations, then x1.1 (allocator fragmentation)
    + 1.5 GiB (CUDA/CANN context and workspace)

* **full**, one process or DDP (the HF Trainer's mixed precision): fp32 weights 4 B/param,
  fp32 gradients 4, AdamW moments 8, and autocast's bf16 copy of the weights 2: 18 B/param.
  Under DeepSpeed (bf16 mode): bf16 weights 2, bf16 gradients 2, fp32 master + moments 12,
  sharded by ZeRO: stage 1 the 12 over the ranks, stage 2 also the gradients, stage 3 all of it;
  ``offload`` moves the optimizer (and at stage 3 the weights) to host memory.
* **lora**: frozen weights in the training precision (2 B/param in bf16/fp16, 4 in fp32)
  plus the adapters at 16 B/param (fp32 weights, gradients, moments); ZeRO-3 shards the base.
* **qlora** / **freeze** exist for the calibration against LLaMA-Factory's table only
  (4-bit weights at 0.55 B/param; the last 2 layers trained at 16 B/param).
* activations: with gradient checkpointing each layer keeps its input (batch x seq x hidden,
  2 B) and one layer is recomputed at a time (about 34 x batch x seq x hidden B with
  flash/SDPA attention), plus fp32 logits and their gradient (3 x batch x seq x vocab x 4 B);
  without it every layer keeps its 34 x batch x seq x hidden B.

Calibrated against the hardware table in LLaMA-Factory's README (7B/13B/70B x full AMP /
freeze / LoRA / QLoRA-4bit at batch 1, sequence 1024): see :data:`LLAMA_FACTORY_TABLE` and
docs/llm.md for the per-case error (within 20 %, most within 10 %).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

GiB = 2 ** 30
FRAGMENTATION = 1.10
CONTEXT_GIB = 1.5

# LLaMA-Factory README, "Hardware Requirement" (GB, estimated): method -> {size: GB}
LLAMA_FACTORY_TABLE = {
    "full": {"7B": 120, "13B": 240, "70B": 1200},
    "freeze": {"7B": 20, "13B": 40, "70B": 200},
    "lora": {"7B": 16, "13B": 32, "70B": 160},
    "qlora": {"7B": 6, "13B": 12, "70B": 48},
}
# The Llama-2 configs the table was measured on (hidden, layers, intermediate, vocab, heads, kv heads)
LLAMA2_CONFIGS = {
    "7B": {"hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 11008, "vocab_size": 32000,
           "num_attention_heads": 32, "num_key_value_heads": 32},
    "13B": {"hidden_size": 5120, "num_hidden_layers": 40, "intermediate_size": 13824, "vocab_size": 32000,
            "num_attention_heads": 40, "num_key_value_heads": 40},
    "70B": {"hidden_size": 8192, "num_hidden_layers": 80, "intermediate_size": 28672, "vocab_size": 32000,
            "num_attention_heads": 64, "num_key_value_heads": 8},
}
# Device memory of common accelerators (GiB), used when the site does not say (gres type or
# node feature names them). Ambiguous names (a100 has 40 and 80 GB models) are not guessed.
KNOWN_DEVICES = {"h100": 80, "h800": 80, "h200": 141, "h20": 96, "a800": 80, "a100-80g": 80, "a100-40g": 40,
                 "a100_80g": 80, "a100_40g": 40, "v100-32g": 32, "v100-16g": 16, "l40s": 48, "l40": 48,
                 "a6000": 48, "a40": 48, "4090": 24, "3090": 24, "910b": 64, "910b1": 64, "910b2": 64,
                 "910b3": 64, "910b4": 32, "910a": 32, "910": 32}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)
_FEATURE_MEM = re.compile(r"(?:^|[^0-9])([0-9]+)g(?:b|ib)?$", re.IGNORECASE)


class ModelShapeError(ValueError):
    pass


@dataclass
class Shape:
    hidden: int
    layers: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool
    experts: int = 1

    @classmethod
    def from_config(cls, cfg: dict) -> "Shape":
        cfg = {**cfg.get("text_config", {}), **cfg} if isinstance(cfg.get("text_config"), dict) else cfg
        try:
            h = int(cfg.get("hidden_size") or cfg.get("n_embd") or cfg["d_model"])
            layers = int(cfg.get("num_hidden_layers") or cfg.get("n_layer") or cfg["num_layers"])
            heads = int(cfg.get("num_attention_heads") or cfg.get("n_head") or 1)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelShapeError(f"config.json lacks the model's size ({exc})") from None
        inter = int(cfg.get("intermediate_size") or cfg.get("n_inner") or cfg.get("ffn_dim") or 4 * h)
        kv = int(cfg.get("num_key_value_heads") or heads)
        head_dim = int(cfg.get("head_dim") or h // max(heads, 1))
        experts = int(cfg.get("num_local_experts") or cfg.get("num_experts") or 1)
        if experts > 1 and cfg.get("moe_intermediate_size"):
            inter = int(cfg["moe_intermediate_size"])
        return cls(h, layers, inter, int(cfg.get("vocab_size") or 32000), heads, kv, head_dim,
                   bool(cfg.get("tie_word_embeddings", False)), experts)

    @property
    def layer_params(self) -> int:
        attn = self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)
        mlp = 3 * self.hidden * self.intermediate * self.experts
        return attn + mlp + 2 * self.hidden

    @property
    def params(self) -> int:
        emb = self.vocab * self.hidden * (1 if self.tied else 2)
        return self.layers * self.layer_params + emb + self.hidden

    def lora_params(self, r: int, targets="all-linear") -> int:
        h, d, inter = self.hidden, self.head_dim, self.intermediate
        mods = {"q_proj": h + self.heads * d, "k_proj": h + self.kv_heads * d, "v_proj": h + self.kv_heads * d,
                "o_proj": self.heads * d + h, "gate_proj": (h + inter) * self.experts,
                "up_proj": (h + inter) * self.experts, "down_proj": (inter + h) * self.experts}
        if targets != "all-linear":
            chosen = [m for m in mods if any(t == m or m.endswith(str(t)) for t in targets)]
            mods = {m: mods[m] for m in chosen} or mods
        return r * sum(mods.values()) * self.layers


@dataclass
class Plan:
    """What decides memory: the method and how the job is spread."""

    method: str = "lora"              # lora | full (| qlora | freeze: calibration only)
    precision: str = "bf16"           # bf16 | fp16 | fp32
    zero_stage: Optional[int] = None  # None: no DeepSpeed (one process, or DDP)
    offload: bool = False
    world_size: int = 1
    batch_size: int = 1
    seq_len: int = 1024
    gradient_checkpointing: bool = True
    lora_r: int = 8
    lora_targets: object = "all-linear"

    def describe(self) -> str:
        zero = f"ZeRO-{self.zero_stage}{'+offload' if self.offload else ''}" if self.zero_stage is not None \
            else "ZeRO-0"
        return f"{self.method} {self.precision}, {zero}, {self.world_size} device(s), batch {self.batch_size} x {self.seq_len}"


@dataclass
class Estimate:
    params: int
    trainable: int
    weights: float            # GiB per device
    gradients: float
    optimizer: float
    activations: float
    plan: Plan = field(default_factory=Plan)

    @property
    def total(self) -> float:
        return (self.weights + self.gradients + self.optimizer + self.activations) * FRAGMENTATION + CONTEXT_GIB

    def summary(self) -> str:
        return (f"~{self.total:.0f} GiB per device for {self.params / 1e9:.2g}B parameters "
                f"({self.plan.describe()}: weights {self.weights:.1f}, gradients {self.gradients:.1f}, "
                f"optimizer {self.optimizer:.1f}, activations {self.activations:.1f} GiB)")


def estimate(shape: Shape, plan: Plan) -> Estimate:
    p = shape.params
    n = max(1, plan.world_size)
    half = 4 if plan.precision == "fp32" else 2
    stage = plan.zero_stage
    if plan.method == "full":
        trainable = p
        if stage is None:       # HF Trainer AMP: fp32 weights + grads + moments, autocast's 16-bit copy
            w, g, o = (4 + (0 if half == 4 else 2)) * p, 4 * p, 8 * p
        else:                   # DeepSpeed: 16-bit weights and grads, fp32 master + moments
            w, g, o = half * p, half * p, (12 if half == 2 else 8) * p
            o = 0 if plan.offload else (o / n if stage >= 1 else o)
            g = g / n if stage >= 2 else g
            w = (0 if plan.offload else w / n) if stage >= 3 else w
    else:
        if plan.method == "lora":
            trainable = shape.lora_params(plan.lora_r, plan.lora_targets)
        elif plan.method == "freeze":
            trainable = 2 * shape.layer_params
        elif plan.method == "qlora":
            trainable = shape.lora_params(plan.lora_r, plan.lora_targets)
        else:
            raise ValueError(f"unknown method {plan.method}")
        base = 0.55 * p if plan.method == "qlora" else half * (p - (trainable if plan.method == "freeze" else 0))
        if stage == 3 and plan.method != "qlora":
            base = 0 if plan.offload else base / n
        w, g, o = base + 4 * trainable, 4 * trainable, 8 * trainable
        if stage is not None and stage >= 1:
            o = 0 if plan.offload else o / n
    b, s, h = plan.batch_size, plan.seq_len, shape.hidden
    if plan.gradient_checkpointing:
        act = shape.layers * b * s * h * 2 + 34 * b * s * h
    else:
        act = shape.layers * 34 * b * s * h
    act += 3 * b * s * shape.vocab * 4
    return Estimate(p, trainable, w / GiB, g / GiB, o / GiB, act / GiB, plan)


def read_shape(model_dir: Path) -> Shape:
    path = Path(model_dir) / "config.json"
    try:
        return Shape.from_config(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise ModelShapeError(f"{path}: {exc}") from None


def parse_size_gib(text: str) -> float:
    """'80G', '64GB', '81920M', '80' (GiB) -> GiB."""
    m = _SIZE.match(str(text))
    if not m:
        raise ValueError(f"{text!r}: expected a size such as 80G, 64GB or 81920M")
    value, unit = float(m.group(1)), (m.group(2) or "G").upper()
    return value * {"K": 2 ** -20, "M": 2 ** -10, "G": 1, "T": 1024}[unit]


def device_memory(table: dict, partition: Optional[str], gres_types: list[str], features: list[str]
                  ) -> tuple[Optional[float], str]:
    """(GiB, where it came from): the cluster config's ``device_memory`` by partition, then by gres
    type, then node features that state it (``gpumem80g``, ``mem-64g``) or name a known device."""
    low = {str(k).lower(): v for k, v in (table or {}).items()}
    for key, what in [(partition, "partition"), *((g, "gres type") for g in gres_types)]:
        if key and key.lower() in low:
            return parse_size_gib(low[key.lower()]), f"device_memory[{key}] ({what})"
    for f in features:
        if f.lower() in low:
            return parse_size_gib(low[f.lower()]), f"device_memory[{f}] (node feature)"
    for f in features:
        m = _FEATURE_MEM.search(f)
        if m and any(w in f.lower() for w in ("gpu", "npu", "mem", "hbm")):
            return float(m.group(1)), f"node feature {f}"
    for name in [*gres_types, *features]:
        if name and name.lower() in KNOWN_DEVICES:
            return float(KNOWN_DEVICES[name.lower()]), f"{name} (known device)"
    return None, ""
