"""``train.method: qlora`` in the worker: the frozen base loaded quantized by bitsandbytes
(transformers' ``BitsAndBytesConfig``), prepared with peft's ``prepare_model_for_kbit_training``,
then the LoRA adapter on top, the way the bitsandbytes, peft and TRL docs have a user do it.

* :func:`require` -- bitsandbytes importable, else a worker error naming the extra to install.
* :func:`bnb_config` -- the job's ``quantization:`` as a ``BitsAndBytesConfig``.
* :func:`device_map` -- the rank's own device: a quantized model is placed while it loads (the
  Trainer does not move it afterwards), one whole copy per rank under DDP.
* :func:`prepare` -- peft's k-bit preparation (norms and head in fp32, input grads for
  gradient checkpointing) before the adapter is added.
* :func:`summary` -- what metrics.json says about the quantized weights.

torch, transformers, peft and bitsandbytes are imported inside the functions.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from hpcft.core.quantization import FLOOR, INSTALL, PACKAGE, QuantizationSpec, compute_dtype
from hpcft.worker.errors import QuantizationMissing

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def require() -> None:
    """bitsandbytes in this environment, else stop before the model loads, naming the fix."""
    import sys

    if importlib.util.find_spec(PACKAGE) is None:
        raise QuantizationMissing(f"train.method: qlora needs {PACKAGE}>={FLOOR}, which {sys.executable} cannot import; "
                          f"install it into the job's environment: {INSTALL}")


def bnb_config(spec: QuantizationSpec, precision: str):
    """``BitsAndBytesConfig`` for the job: 4-bit (quant type, double quantization, compute dtype)
    or 8-bit LLM.int8."""
    import torch
    from transformers import BitsAndBytesConfig

    if spec.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=spec.type,
                              bnb_4bit_use_double_quant=spec.double_quant,
                              bnb_4bit_compute_dtype=getattr(torch, DTYPES[compute_dtype(spec, precision)]))


def device_map(args: Any) -> dict:
    """The whole model on this rank's device (TrainingArguments' ``device``: cuda:LOCAL_RANK,
    or the CPU)."""
    dev = args.device
    return {"": dev.index if dev.type == "cuda" and dev.index is not None else str(dev)}


def prepare(model, gradient_checkpointing: bool):
    """peft's ``prepare_model_for_kbit_training``: the layers bitsandbytes did not quantize in
    fp32, the input embeddings' output requiring grad, checkpointing as the job asks."""
    from peft import prepare_model_for_kbit_training

    kw = {"gradient_checkpointing_kwargs": {"use_reentrant": False}} if gradient_checkpointing else {}
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing, **kw)


def summary(model, spec: QuantizationSpec, precision: str) -> dict:
    """The quantized layers and weights: how many, their bytes, and the model's whole footprint."""
    import bitsandbytes as bnb

    kinds = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    layers = [m for m in model.modules() if isinstance(m, kinds)]
    packed = sum(m.weight.numel() * m.weight.element_size() for m in layers)
    params = sum(m.in_features * m.out_features for m in layers)
    out = {"bits": spec.bits, "quantized_layers": len(layers), "quantized_params": params,
           "quantized_weights_mb": round(packed / 2 ** 20, 3),
           "bytes_per_quantized_param": round(packed / max(params, 1), 3),
           "model_footprint_mb": round(model.get_memory_footprint() / 2 ** 20, 3)}
    if spec.bits == 4:
        out.update(type=spec.type, double_quant=spec.double_quant, compute_dtype=compute_dtype(spec, precision))
    return out
