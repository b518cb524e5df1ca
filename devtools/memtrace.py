"""Trace a training step's activation memory through the real transformers code, on no hardware.

The model is built from its published ``config.json`` fields under torch's ``FakeTensorMode``
(tensors with shapes and dtypes but no storage), and one forward and backward pass of a
frozen-base fine-tune (what LoRA trains through: the base weights need no gradients, the
activations do) runs with gradient checkpointing as hpcft's worker runs it (bf16, SDPA,
transformers' own loss). A dispatch mode counts every storage an operator creates and the
moment it is freed, so the peak is the activations' peak as the allocator would see it, minus
what no trace can see: the allocator's rounding, kernels' workspaces and the CUDA context (the
estimate's ``x 1.05 + 2 GiB``). The weights are excluded (they exist before the step).

The estimate's activation term (:func:`hpcft.core.memory.estimate.activations`) is held against
these traces for every family with a published config (tests/test_memory_trace.py;
``benchmarks/bench_memory.py`` prints the table). Layers are cut to :data:`LAYERS` for speed: the
estimate of the same cut config is what is compared, and both are linear in the layer count.

    .venv/bin/python -m devtools.memtrace [--seq 1024 4096] [--family qwen3]
"""

from __future__ import annotations

import argparse
import sys
import weakref
from typing import Optional

LAYERS = 4
GiB = 2 ** 30
# Families whose CPU trace is not the GPU's step beyond a length. DeepSeek's MLA has query/key
# heads of 192 and value heads of 128: on CPU, SDPA falls back to the math kernel for unequal head
# sizes and keeps heads x seq^2 scores, which CUDA's memory-efficient kernel never materialises.
# V2-Lite's 16 heads stay below its loss up to 4k tokens; V3's 128 do not even at 1k.
NOT_THE_GPUS = {"deepseek_v2": 4096, "deepseek_v3": 0}
WHY_NOT = "CPU attention falls back to the math kernel for MLA's unequal head sizes"


def cut(config: dict, layers: int = LAYERS) -> dict:
    """The config with ``layers`` layers (MoE: the dense-first layers kept within the cut)."""
    cfg = {**config, "num_hidden_layers": layers}
    if "first_k_dense_replace" in cfg:
        cfg["first_k_dense_replace"] = min(cfg["first_k_dense_replace"], layers - 1)
    if isinstance(cfg.get("layer_types"), list):
        cfg["layer_types"] = cfg["layer_types"][:layers]
    return cfg


def _counter():
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten
    from torch.utils.weak import WeakIdKeyDictionary

    class Live(TorchDispatchMode):
        """Bytes of the storages operators create, alive now and at the peak."""

        def __init__(self):
            super().__init__()
            self.seen = WeakIdKeyDictionary()
            self.now = self.peak = 0

        def known(self, tensors) -> None:   # storages made before the step (weights, buffers)
            for t in tensors:
                self.seen[t.untyped_storage()] = 0

        def _free(self, n: int) -> None:
            self.now -= n

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if not isinstance(t, torch.Tensor):
                    continue
                st = t.untyped_storage()
                if st in self.seen:       # a view of a storage already counted (or a weight)
                    continue
                n = st.nbytes()
                self.seen[st] = n
                self.now += n
                self.peak = max(self.peak, self.now)
                weakref.finalize(st, self._free, n)
            return out

    return Live()


def trace(config: dict, seq_len: int, batch_size: int = 1, checkpointing: bool = True) -> dict:
    """GiB at the forward's peak and the step's peak, for ``config`` as given (cut it first)."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = {k: v for k, v in config.items() if k != "model_type"}
    cfg = AutoConfig.for_model(config["model_type"], **fields)
    cfg.use_cache = False
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)   # the attention the worker gets
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        for p in model.parameters():
            p.requires_grad_(False)
        model.enable_input_require_grads()
        ids = torch.randint(0, int(cfg.vocab_size), (batch_size, seq_len))
        live = _counter()
        live.known(list(model.parameters()) + list(model.buffers()))
        with live:
            out = model(input_ids=ids, labels=ids)
            forward = live.peak
            out.loss.backward()
    return {"forward_gib": forward / GiB, "peak_gib": live.peak / GiB, "attention": model.config._attn_implementation}


def estimated(config: dict, seq_len: int, batch_size: int = 1, checkpointing: bool = True) -> float:
    from hpcft.core.memory.estimate import Plan, activations
    from hpcft.core.memory.shape import shape_from_config

    plan = Plan(method="lora", seq_len=seq_len, batch_size=batch_size, gradient_checkpointing=checkpointing)
    return activations(shape_from_config(config), plan) / GiB


def table(seqs: tuple[int, ...] = (1024, 4096), family: Optional[str] = None) -> list[dict]:
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent / "tests" / "data"))
    from published_configs import PUBLISHED

    rows, done = [], set()
    for repo, _, config in PUBLISHED:
        if family and config["model_type"] != family:
            continue
        if config["model_type"] in done:   # one model per family: the activations' shape is the family's
            continue
        done.add(config["model_type"])
        longest = NOT_THE_GPUS.get(config["model_type"], max(seqs))
        if not any(seq <= longest for seq in seqs):
            rows.append({"model": repo, "model_type": config["model_type"], "seq_len": 0, "error": WHY_NOT})
            continue
        small = cut(config)
        for seq in (x for x in seqs if x <= longest):
            try:
                got = trace(small, seq)
            except Exception as exc:   # noqa: BLE001 -- a family transformers cannot build or trace: say why
                rows.append({"model": repo, "model_type": config["model_type"], "seq_len": seq,
                             "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"})
                break
            est = estimated(small, seq)
            rows.append({"model": repo, "model_type": config["model_type"], "seq_len": seq, **got,
                         "estimate_gib": est, "ratio": est / got["peak_gib"]})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--family", help="one model_type")
    args = ap.parse_args()
    print(f"activations of a frozen-base step, {LAYERS} layers, bf16, SDPA, gradient checkpointing (GiB)")
    for r in table(tuple(args.seq), args.family):
        if "error" in r:
            print(f"  {r['model']:<34} not traced: {r['error']}")
        else:
            print(f"  {r['model']:<34} {r['seq_len']:>6} tokens: traced {r['peak_gib']:7.2f} "
                  f"(forward {r['forward_gib']:6.2f}), estimate {r['estimate_gib']:7.2f}, {r['ratio']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
