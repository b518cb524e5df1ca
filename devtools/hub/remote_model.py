"""A tiny GLM-4-style model whose code ships in the repo: ``configuration_tinyglm.py`` and
``modeling_tinyglm.py`` beside the weights, named by ``auto_map`` in ``config.json`` (as
THUDM/glm-4-9b-chat, internlm2_5-7b-chat and Baichuan2 do). transformers loads it only with
``trust_remote_code=True``. The classes are Llama's under new names, so the weights are a
random tiny Llama's; the model class records that its own code ran (``hpcft_remote_code``).
"""

from __future__ import annotations

import json
from pathlib import Path

CONFIGURATION = '''\
from transformers import LlamaConfig


class TinyGLMConfig(LlamaConfig):
    model_type = "tinyglm"
'''

MODELING = '''\
from transformers import LlamaForCausalLM

from .configuration_tinyglm import TinyGLMConfig


class TinyGLMForCausalLM(LlamaForCausalLM):
    config_class = TinyGLMConfig
    hpcft_remote_code = True
'''

AUTO_MAP = {"AutoConfig": "configuration_tinyglm.TinyGLMConfig",
            "AutoModelForCausalLM": "modeling_tinyglm.TinyGLMForCausalLM"}


def make_tiny_remote_code_model(dir, *, hidden: int = 64, layers: int = 2, dtype: str = "float32") -> Path:
    """The folder; ``from_pretrained(dir, trust_remote_code=True)`` loads a TinyGLMForCausalLM."""
    import torch

    from devtools.hub.llm_fixtures import make_tiny_llama

    out = make_tiny_llama(dir, decoys=False, hidden=hidden, layers=layers, shard="50MB")
    if dtype != "float32":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(out, dtype=getattr(torch, dtype))
        for p in out.glob("model*.safetensors*"):
            p.unlink()
        model.save_pretrained(out)
    (out / "configuration_tinyglm.py").write_text(CONFIGURATION)
    (out / "modeling_tinyglm.py").write_text(MODELING)
    cfg = json.loads((out / "config.json").read_text())
    cfg.update(model_type="tinyglm", architectures=["TinyGLMForCausalLM"], auto_map=AUTO_MAP)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    (out / "README.md").write_text("# tiny GLM-4-style remote-code model (hpcft test stand-in)\n")
    for p in out.rglob("*"):
        if p.is_file():
            p.chmod(0o644)
    return out
