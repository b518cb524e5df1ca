"""A model's shape from its ``config.json``: the sizes the memory estimate needs, and the
parameter count, for the families hpcft can back with a number (:data:`FAMILIES`).

Pure arithmetic, no torch. Every size must be present and a positive whole number: a missing
or wrong field is a :class:`ModelShapeError` naming it (the pre-flight then says "no estimate"
and why), never a silent default. Each family's count is held within 2 % of its published
parameter count in tests/test_memory.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional


class ModelShapeError(ValueError):
    """The config cannot be sized: not a JSON object, a field missing or not a positive number,
    or an architecture hpcft does not know."""


# model_type -> family. "llama" covers the llama-like decoders: gated MLP, GQA attention.
FAMILIES = {
    "llama": "llama", "mistral": "llama", "qwen2": "llama", "qwen3": "llama", "internlm2": "llama",
    "phi3": "llama", "gemma": "llama", "gemma2": "llama", "gemma3": "llama",
    "gemma3_text": "llama", "glm": "llama", "glm4": "llama",
    "qwen2_moe": "moe", "qwen3_moe": "moe", "mixtral": "moe",
    "deepseek_v2": "deepseek", "deepseek_v3": "deepseek",
    "chatglm": "chatglm",
}
_BIASED = {"qwen2": True, "qwen2_moe": True}   # q/k/v projections carry a bias (glm4/chatglm: attention_bias)
# Families whose attention materialises the seq x seq scores in the code hpcft's worker runs (no
# attn_implementation is passed): transformers 5 has no SDPA path for Gemma 2 (its soft-capping),
# and InternLM2's own code is eager unless its config asks for flash-attention 2
EAGER_ATTENTION = {"gemma2", "internlm2"}


@dataclass
class Shape:
    """What the estimate reads. ``intermediate`` is one dense MLP's width; a mixture of experts
    adds ``experts`` routed MLPs of ``moe_intermediate`` (``active`` of them per token) and
    ``shared_intermediate`` of always-on MLP, on its ``moe_layers`` layers."""

    model_type: str
    hidden: int
    layers: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool
    experts: int = 1
    active: int = 1
    moe_intermediate: int = 0
    shared_intermediate: int = 0
    moe_layers: int = 0
    attn_params: int = 0          # per layer; 0: computed from heads (deepseek's MLA sets it)
    qkv_bias: bool = False
    vision_params: int = 0        # a multimodal model's vision tower and projector (loaded, not adapted)
    logit_softcap: bool = False   # final_logit_softcapping (Gemma 2): the loss keeps one more copy of the logits
    eager_attention: bool = False  # the attention keeps heads x seq x seq scores (EAGER_ATTENTION)

    # ---- the counts
    @property
    def attention_params(self) -> int:
        if self.attn_params:
            return self.attn_params
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        bias = (q + 2 * kv) if self.qkv_bias else 0
        return self.hidden * (2 * q + 2 * kv) + bias

    @property
    def dense_mlp_params(self) -> int:
        return 3 * self.hidden * self.intermediate

    @property
    def moe_mlp_params(self) -> int:
        router = self.hidden * self.experts
        shared = 3 * self.hidden * self.shared_intermediate + (self.hidden if self.model_type == "qwen2_moe" else 0)
        return 3 * self.hidden * self.moe_intermediate * self.experts + shared + router

    @property
    def layer_params(self) -> int:
        """The largest layer (a MoE layer where there is one)."""
        mlp = self.moe_mlp_params if self.moe_layers else self.dense_mlp_params
        return self.attention_params + mlp + 2 * self.hidden

    @property
    def params(self) -> int:
        dense = self.layers - self.moe_layers
        body = (dense * (self.attention_params + self.dense_mlp_params + 2 * self.hidden)
                + self.moe_layers * (self.attention_params + self.moe_mlp_params + 2 * self.hidden))
        return body + self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden + self.vision_params

    @property
    def largest_module_params(self) -> int:
        """DeepSpeed's ``largest_layer_params``: the biggest single module (the embedding, usually)."""
        return max(self.vocab * self.hidden, self.hidden * self.moe_intermediate * self.experts,
                   self.hidden * self.intermediate)

    @property
    def active_intermediate(self) -> int:
        """The MLP width a token goes through (activations): dense, or active experts + shared."""
        if self.moe_layers:
            return max(self.intermediate, self.active * self.moe_intermediate + self.shared_intermediate)
        return self.intermediate

    def lora_params(self, r: int, targets: Any = "all-linear") -> int:
        """peft's adapter size: r x (in + out) per targeted linear (MoE experts included)."""
        h, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        mlp_in = self.intermediate * (self.layers - self.moe_layers) + (
            self.moe_intermediate * self.experts + self.shared_intermediate) * self.moe_layers
        mods = {"q_proj": (h + q) * self.layers, "k_proj": (h + kv) * self.layers,
                "v_proj": (h + kv) * self.layers, "o_proj": (q + h) * self.layers,
                "gate_proj": h * self.count_mlps() + mlp_in, "up_proj": h * self.count_mlps() + mlp_in,
                "down_proj": h * self.count_mlps() + mlp_in}
        if targets != "all-linear":
            chosen = [m for m in mods if any(t == m or m.endswith(str(t)) for t in targets)]
            mods = {m: mods[m] for m in chosen} or mods
        return r * sum(mods.values())

    def count_mlps(self) -> int:
        shared = 1 if self.shared_intermediate else 0
        return (self.layers - self.moe_layers) + self.moe_layers * (self.experts + shared)


def _get(cfg: dict, *names: str, required: bool = True, allow_zero: bool = False) -> Optional[int]:
    """The first of ``names`` that is set, as a positive int; ModelShapeError naming it otherwise."""
    for name in names:
        if name in cfg and cfg[name] is not None:
            value = cfg[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
                raise ModelShapeError(f"config.json: {name} is {value!r}, expected a whole number")
            if value < 0 or (value == 0 and not allow_zero):
                raise ModelShapeError(f"config.json: {name} is {value}, expected a positive number")
            return int(value)
    if required:
        raise ModelShapeError(f"config.json lacks {' / '.join(names)}")
    return None


def shape_from_config(cfg: Any) -> Shape:
    if not isinstance(cfg, dict):
        raise ModelShapeError(f"config.json is a JSON {type(cfg).__name__}, not an object")
    text = cfg.get("text_config")
    vision = cfg.get("vision_config")
    if isinstance(text, dict):  # a multimodal model's language half (gemma3)
        cfg = {**cfg, **text}
    mtype = cfg.get("model_type")
    if not isinstance(mtype, str) or mtype not in FAMILIES:
        known = ", ".join(sorted(FAMILIES))
        raise ModelShapeError(f"model_type {mtype!r} is not one hpcft can size (it sizes {known})")
    family = FAMILIES[mtype]
    if family == "chatglm":
        return _chatglm(cfg)
    h = _get(cfg, "hidden_size")
    layers = _get(cfg, "num_hidden_layers")
    heads = _get(cfg, "num_attention_heads")
    kv = _get(cfg, "num_key_value_heads", required=False) or heads
    head_dim = _get(cfg, "head_dim", required=False) or h // heads
    vocab = _get(cfg, "vocab_size")
    tied = cfg.get("tie_word_embeddings", mtype.startswith("gemma"))
    bias = bool(_BIASED.get(mtype) or cfg.get("attention_bias") or cfg.get("qkv_bias"))
    shape = Shape(mtype, h, layers, 0, vocab, heads, kv, head_dim, bool(tied), qkv_bias=bias,
                  logit_softcap=bool(cfg.get("final_logit_softcapping")),
                  eager_attention=mtype in EAGER_ATTENTION and cfg.get("attn_implementation") != "flash_attention_2")
    if family == "llama":
        shape.intermediate = _get(cfg, "intermediate_size")
    elif family == "moe":
        shape.experts = _get(cfg, "num_experts", "num_local_experts")
        shape.active = _get(cfg, "num_experts_per_tok")
        shape.moe_intermediate = _get(cfg, "moe_intermediate_size", required=mtype != "mixtral") or \
            _get(cfg, "intermediate_size")
        shape.shared_intermediate = _get(cfg, "shared_expert_intermediate_size", required=False) or 0
        every = _get(cfg, "decoder_sparse_step", required=False) or 1
        dense = cfg.get("mlp_only_layers") or []
        if not isinstance(dense, list):
            raise ModelShapeError("config.json: mlp_only_layers is not a list")
        shape.moe_layers = sum(1 for i in range(layers) if (i + 1) % every == 0 and i not in dense)
        shape.intermediate = _get(cfg, "intermediate_size", required=shape.moe_layers < layers) or 0
    else:
        _deepseek(cfg, shape)
    if isinstance(vision, dict):
        shape.vision_params = _vision_tower(vision, h)
    return shape


def _vision_tower(vision: dict, text_hidden: int) -> int:
    """A SigLIP-style vision encoder (Gemma 3's): pre-norm layers with biased attention and a
    two-matrix MLP, patch and position embeddings, then the projector into the text width."""
    vh, layers = _get(vision, "hidden_size"), _get(vision, "num_hidden_layers")
    inter = _get(vision, "intermediate_size")
    patch = _get(vision, "patch_size", required=False) or 14
    image = _get(vision, "image_size", required=False) or 0
    channels = _get(vision, "num_channels", required=False) or 3
    layer = 4 * vh * vh + 4 * vh + 2 * vh * inter + inter + vh + 4 * vh
    embed = patch * patch * channels * vh + vh + (image // patch) ** 2 * vh
    return layers * layer + embed + 2 * vh + vh * text_hidden + vh


def _deepseek(cfg: dict, shape: Shape) -> None:
    """DeepSeek-V2/V3: multi-head latent attention, ``n_routed_experts`` + ``n_shared_experts``,
    the first ``first_k_dense_replace`` layers dense."""
    h, heads = shape.hidden, shape.heads
    nope, rope = _get(cfg, "qk_nope_head_dim"), _get(cfg, "qk_rope_head_dim")
    v_dim, kv_rank = _get(cfg, "v_head_dim"), _get(cfg, "kv_lora_rank")
    q_rank = _get(cfg, "q_lora_rank", required=False)
    q = heads * (nope + rope)
    q_params = (h * q_rank + q_rank + q_rank * q) if q_rank else h * q
    kv_params = h * (kv_rank + rope) + kv_rank + kv_rank * heads * (nope + v_dim)
    shape.attn_params = q_params + kv_params + heads * v_dim * h
    shape.head_dim = nope + rope
    shape.intermediate = _get(cfg, "intermediate_size")
    shape.experts = _get(cfg, "n_routed_experts")
    shape.active = _get(cfg, "num_experts_per_tok")
    shape.moe_intermediate = _get(cfg, "moe_intermediate_size")
    shape.shared_intermediate = (_get(cfg, "n_shared_experts", required=False, allow_zero=True) or 0) * \
        shape.moe_intermediate
    first_dense = _get(cfg, "first_k_dense_replace", required=False, allow_zero=True) or 0
    every = _get(cfg, "moe_layer_freq", required=False) or 1
    shape.moe_layers = sum(1 for i in range(first_dense, shape.layers) if i % every == 0)


def _chatglm(cfg: dict) -> Shape:
    """THUDM's remote-code ChatGLM/GLM-4 (``model_type: chatglm``): its own field names."""
    h = _get(cfg, "hidden_size")
    layers = _get(cfg, "num_layers", "num_hidden_layers")
    heads = _get(cfg, "num_attention_heads")
    kv = _get(cfg, "multi_query_group_num") if cfg.get("multi_query_attention") else heads
    head_dim = _get(cfg, "kv_channels", required=False) or h // heads
    return Shape("chatglm", h, layers, _get(cfg, "ffn_hidden_size"), _get(cfg, "padded_vocab_size", "vocab_size"),
                 heads, kv, head_dim, False, qkv_bias=bool(cfg.get("add_qkv_bias")))


def read_shape(model_dir: Path) -> Shape:
    path = Path(model_dir) / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelShapeError(f"{path}: {exc}") from None
    try:
        return shape_from_config(data)
    except ModelShapeError as exc:
        raise ModelShapeError(f"{path}: {exc}") from None
