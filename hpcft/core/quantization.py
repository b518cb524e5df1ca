"""``train.method: qlora``: the ``quantization:`` block of a job, and what the login side knows
about bitsandbytes and about models that are quantized already. Pure data, no torch.

QLoRA (Dettmers et al. 2023) loads the frozen base quantized by bitsandbytes while it loads
(4-bit NF4 or FP4, optionally with the quantisation constants quantised again, or 8-bit
LLM.int8) and trains a LoRA adapter over it in ``compute_dtype``. The worker's side is
:mod:`hpcft.worker.engines.native.qlora`; the pre-flight's is :mod:`hpcft.preflight.quantization`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, model_validator

# the distribution and import name, and the floor of the optional extra hpcft[qlora]
PACKAGE = "bitsandbytes"
FLOOR = "0.45"
INSTALL = f"pip install 'hpcft[qlora]' (or '{PACKAGE}>={FLOOR}')"
# why an NPU partition is refused, and what a site would need instead
NPU_REASON = ("bitsandbytes' released wheels have no Ascend NPU backend (its NPU backend is a source build "
              "against the node's CANN and torch_npu, which LLaMA-Factory documents with double_quantization: "
              "false; a site that builds it can run QLoRA as its own script: job); use method: lora on the NPU, "
              "or a GPU or CPU partition for qlora")


class QuantizationSpec(BaseModel):
    """How ``method: qlora`` quantizes the frozen base (transformers' ``BitsAndBytesConfig``)."""

    model_config = ConfigDict(extra="forbid")

    bits: Literal[4, 8] = 4
    type: Literal["nf4", "fp4"] = "nf4"           # bnb_4bit_quant_type (4-bit only)
    double_quant: bool = True                     # bnb_4bit_use_double_quant (4-bit only)
    compute_dtype: Optional[Literal["bf16", "fp16", "fp32"]] = None  # default: the training precision

    @model_validator(mode="after")
    def _eight_bit(self) -> "QuantizationSpec":
        if self.bits == 8:
            four = [f for f in ("type", "double_quant", "compute_dtype") if f in self.model_fields_set]
            if four:
                raise ValueError(f"{', '.join(four)}: only for bits: 4 (bits: 8 is LLM.int8, which has none of "
                                 "them); remove them or use bits: 4")
        return self

    def describe(self, compute: str) -> str:
        if self.bits == 8:
            return "8-bit LLM.int8"
        return f"4-bit {self.type}{' double-quantized' if self.double_quant else ''}, compute {compute}"


def compute_dtype(spec: QuantizationSpec, precision: str) -> str:
    """bf16/fp16/fp32: what the 4-bit layers compute in; by default the training precision."""
    if spec.compute_dtype:
        return spec.compute_dtype
    return precision if precision in ("bf16", "fp16", "fp32") else "bf16"


def model_quantization(model_dir: Path) -> Optional[dict]:
    """A model folder's ``quantization_config`` (config.json, or its text_config), or None."""
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(cfg, dict):
        return None
    for src in (cfg, cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else {}):
        q = src.get("quantization_config")
        if isinstance(q, dict):
            return q
    return None


def quantized_problem(model_dir: Path, model_name: str) -> Optional[str]:
    """Why ``method: qlora`` cannot start from this model folder, or None. A model quantized
    already (GPTQ, AWQ, FP8, ..., or a pre-quantized bitsandbytes upload) cannot be quantized
    again, and ``hpcft export --merge`` needs the unquantized weights to merge into."""
    q = model_quantization(model_dir)
    if q is None:
        return None
    method = str(q.get("quant_method") or "unknown")
    if method == PACKAGE:
        bits = "4-bit" if q.get("load_in_4bit") else "8-bit" if q.get("load_in_8bit") else "quantized"
        return (f"model {model_name} is a {bits} bitsandbytes upload (config.json quantization_config); "
                "method: qlora quantizes the unquantized model while it loads, and export --merge merges into "
                "it: name the original model instead")
    return (f"model {model_name} is quantized already with {method} (config.json quantization_config); "
            "bitsandbytes cannot quantize it again: name the unquantized model it was made from")
