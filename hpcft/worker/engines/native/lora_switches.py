"""The PEFT switches users expect: ``lora: {use_dora, use_rslora, init: pissa|gaussian}`` (peft's
``LoraConfig``, :func:`hpcft.worker.engines.native.causal_lm._with_lora`) and ``train.neftune_alpha`` (the
Trainer's ``neftune_noise_alpha``), recorded in metrics.json as the built model and
arguments carry them (:func:`summary`); and PiSSA adapters that work on the staged base.

PiSSA starts the adapter from the base weights' principal singular vectors and subtracts them
from the base (peft's ``init_lora_weights="pissa"``), so the adapter it trains belongs to that
residual base, not to the staged one. As peft documents, the initial adapter is kept and the
final one saved converted (``path_initial_model_for_weight_conversion``): a plain LoRA adapter
of twice the rank whose sum with the staged base is the trained model, which ``hpcft export
--merge``, ``serve`` and a later ``init_from`` load like any other. A requeued leg computes the
same initial adapter again (the SVD of the same weights) before its checkpoint loads.
"""

from __future__ import annotations

import tempfile
from typing import Optional


def remember_init(model) -> None:
    """Save the freshly initialised adapter (marked a plain init, as peft's conversion requires)
    to a private temporary folder, named on the model for :func:`save_converted`."""
    folder = tempfile.mkdtemp(prefix="hpcft-pissa-init-")
    cfg = model.peft_config["default"]
    init = cfg.init_lora_weights
    cfg.init_lora_weights = True
    try:
        model.save_pretrained(folder)
    finally:
        cfg.init_lora_weights = init
    model.hpcft_pissa_init = folder


def save_converted(model, out) -> None:
    """The trained adapter in ``out``, converted from PiSSA to LoRA on the staged base."""
    model.save_pretrained(str(out), path_initial_model_for_weight_conversion=model.hpcft_pissa_init)


def summary(model, args) -> Optional[dict]:
    """metrics.json's ``peft``: what the built adapter and TrainingArguments carry (None: no adapter)."""
    cfg = getattr(model, "peft_config", {}).get("default")
    if cfg is None:
        return None
    init = cfg.init_lora_weights
    return {"r": cfg.r, "alpha": cfg.lora_alpha, "use_dora": bool(cfg.use_dora), "use_rslora": bool(cfg.use_rslora),
            "init": init if isinstance(init, str) else "default",
            "neftune_alpha": getattr(args, "neftune_noise_alpha", None),
            "saved_as": "lora (converted from pissa, rank x2)" if getattr(model, "hpcft_pissa_init", None) else None}
