"""Which files of an LLM repo are staged: exactly the shards the safetensors index names, plus
config, generation config, tokenizer and chat template; never original/, .pth, .bin next to
safetensors, GGUF, or a safetensors file the index does not name. Pure selection (no hub);
the same against the loopback hub: tests/test_llm_slurm.py."""

from __future__ import annotations

import json

from hpcft.stage.select import select_model, shards_of

LLAMA3_REPO = [
    ".gitattributes", "LICENSE", "README.md", "USE_POLICY.md", "config.json", "generation_config.json",
    "model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors", "model-00003-of-00004.safetensors",
    "model-00004-of-00004.safetensors", "model.safetensors.index.json", "original/consolidated.00.pth",
    "original/params.json", "original/tokenizer.model", "special_tokens_map.json", "tokenizer.json",
    "tokenizer_config.json",
]
INDEX = json.dumps({"metadata": {"total_size": 16060522496}, "weight_map": {
    "lm_head.weight": "model-00004-of-00004.safetensors", "model.embed_tokens.weight": "model-00001-of-00004.safetensors",
    "model.layers.10.mlp.up_proj.weight": "model-00002-of-00004.safetensors",
    "model.layers.20.mlp.up_proj.weight": "model-00003-of-00004.safetensors"}})


def test_llama3_repo_stages_shards_config_and_tokenizer_only():
    keep = select_model(LLAMA3_REPO, shards_of(INDEX))
    assert keep == {"config.json", "generation_config.json", "model.safetensors.index.json",
                    "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json",
                    *(f"model-0000{i}-of-00004.safetensors" for i in range(1, 5))}


def test_only_indexed_shards_no_bins_gguf_or_orphans():
    repo = [*LLAMA3_REPO, "consolidated.safetensors", "model-q4_k_m.gguf", "pytorch_model-00001-of-00002.bin",
            "pytorch_model.bin.index.json", "chat_template.jinja", "merges.txt", "vocab.json"]
    keep = select_model(repo, shards_of(INDEX))
    assert "consolidated.safetensors" not in keep and not any(p.endswith((".bin", ".gguf", ".pth")) for p in keep)
    assert not any(p.startswith("original/") for p in keep)
    assert {"chat_template.jinja", "merges.txt", "vocab.json"} <= keep
    # an index naming shards the repo does not have is not trusted: every safetensors file is kept
    broken = shards_of(json.dumps({"weight_map": {"a": "model-00009-of-00009.safetensors"}}))
    assert "consolidated.safetensors" in select_model(repo, broken)
    assert shards_of("not json") == set() and shards_of("[]") == set()
