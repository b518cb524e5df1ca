"""Measured peak device memory of LLM fine-tuning, from published tables. Each row: the
source, the model's shape (config.json fields), how it was trained (hpcft.preflight.estimate.Plan
fields) and the measured peak per device in GiB. The estimate is held against this table in
tests/test_memory.py and benchmarks/bench_memory.py; docs/memory.md shows each ratio.

Units: Qwen's table writes "G"; it is read as GB (1e9 bytes; the 7B full row at 1024 tokens,
162.0G on 2 x A100-80G, fits only so) and converted. Multi-GPU rows are the table's total
over its GPUs, divided per device. Unsloth's rows are the longest context Hugging Face + FA2
fits in a card of that size: the card's GiB is an upper bound of the peak.
``measured_as`` says what the figure is, so that like is held against like (Estimate.as_measured):
"allocated" (torch.cuda.max_memory_allocated: tensors only), "reserved" (max_memory_reserved: with
the caching allocator's slack) or "device" (the default: nvidia-smi, or the card a run fills,
CUDA context included).
Left out, on purpose: torchtune's README table (torch.compile, packed batches of 2 and
recipe-specific optimizers such as 8-bit paged AdamW and optimizer-in-backward that hpcft's HF
Trainer path does not use), Qwen's "LoRA (emb)" rows (trained embeddings), and LLaMA-Factory's
README table (a rule of thumb, "estimated", not a measurement)."""

GB = 1e9 / 2 ** 30  # GiB per GB

QWEN_README = "https://github.com/QwenLM/Qwen README.md, 'Profiling of Memory and Speed' (A100-SXM4-80G, FA2, bs 1)"
UNSLOTH = ("https://unsloth.ai/blog/llama3-3 and https://docs.unsloth.ai/basics/unsloth-benchmarks, "
           "'max. context length', Hugging Face + FA2 column (4-bit QLoRA, r 32, all linear, bs 1)")
SWIFT = ("https://github.com/modelscope/ms-swift docs/source_en/LLM/Benchmark.md, 'Quantization' "
         "(qwen-7b-chat, LoRA bf16, max_length 2048, A100)")

# Qwen (v1) shapes: intermediate_size in its config.json is twice the MLP width (w1/w2 each half)
QWEN1 = {
    "1.8B": {"model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 24, "intermediate_size": 5504,
             "num_attention_heads": 16, "vocab_size": 151936, "attention_bias": True},
    "7B": {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 11008,
           "num_attention_heads": 32, "vocab_size": 151936, "attention_bias": True},
    "14B": {"model_type": "llama", "hidden_size": 5120, "num_hidden_layers": 40, "intermediate_size": 13696,
            "num_attention_heads": 40, "vocab_size": 152064, "attention_bias": True},
    "72B": {"model_type": "llama", "hidden_size": 8192, "num_hidden_layers": 80, "intermediate_size": 24576,
            "num_attention_heads": 64, "vocab_size": 152064, "attention_bias": True},
}
LLAMA31_8B = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
              "num_hidden_layers": 32, "num_key_value_heads": 8, "vocab_size": 128256}
LLAMA33_70B = {"model_type": "llama", "hidden_size": 8192, "intermediate_size": 28672, "num_attention_heads": 64,
               "num_hidden_layers": 80, "num_key_value_heads": 8, "vocab_size": 128256}

# Qwen (v1)'s remote modeling code computes the loss on the 16-bit logits (a shifted copy, no fp32
# upcast): 12 B per token and vocabulary entry where transformers' own loss takes 16
QWEN1_LOGIT_BYTES = 12
LENGTHS = (256, 512, 1024, 2048, 4096, 8192)
# size, method label, plan fields, total GB over the GPUs at each length (None: not reported)
_QWEN_ROWS = [
    ("1.8B", "LoRA", {"method": "lora", "lora_r": 64}, 1, (6.7, 7.4, 8.4, 11.0, 16.2, 21.8)),
    ("1.8B", "Q-LoRA", {"method": "qlora", "lora_r": 64, "precision": "fp16", "zero_stage": 2}, 1,
     (5.8, 6.0, 6.6, 7.8, 10.2, 15.8)),
    ("1.8B", "Full-parameter", {"method": "full", "zero_stage": 3}, 1, (43.5, 43.5, 43.5, 43.5, 47.1, 48.3)),
    ("7B", "LoRA", {"method": "lora", "lora_r": 64}, 1, (20.1, 20.4, 21.5, 23.8, 29.7, 36.6)),
    ("7B", "Q-LoRA", {"method": "qlora", "lora_r": 64, "precision": "fp16", "zero_stage": 2}, 1,
     (11.5, 11.5, 12.3, 13.9, 16.9, 23.5)),
    ("7B", "Full-parameter", {"method": "full", "zero_stage": 3}, 2, (139.2, 148.0, 162.0, None, None, None)),
    ("7B", "LoRA (multinode, 2 nodes x 2)", {"method": "lora", "lora_r": 64, "zero_stage": 2}, 4,
     (74.7, 77.6, 84.9, 95.1, 121.1, 155.5)),
    ("14B", "LoRA", {"method": "lora", "lora_r": 64}, 1, (34.6, 35.1, 35.3, 37.4, 42.5, 55.2)),
    ("14B", "Q-LoRA", {"method": "qlora", "lora_r": 64, "precision": "fp16", "zero_stage": 2}, 1,
     (18.7, 18.4, 18.9, 19.9, 23.0, 27.9)),
    ("72B", "LoRA + ZeRO-3", {"method": "lora", "lora_r": 64, "zero_stage": 3}, 4,
     (215.4, 217.7, 222.6, 228.8, 249.0, 289.2)),
    ("72B", "Q-LoRA", {"method": "qlora", "lora_r": 64, "precision": "fp16", "zero_stage": 2}, 1,
     (61.4, 61.4, 62.9, 64.1, 68.0, 75.6)),
]


def _rows():
    rows = []
    for size, label, plan, gpus, values in _QWEN_ROWS:
        for seq, gb in zip(LENGTHS, values):
            if gb is None:
                continue
            rows.append({"source": QWEN_README, "case": f"Qwen-{size} {label}, {seq} tokens, {gpus} GPU(s)",
                         "config": QWEN1[size],
                         "plan": {**plan, "seq_len": seq, "batch_size": 1, "world_size": gpus, "per_node": gpus,
                                  "logit_bytes": QWEN1_LOGIT_BYTES},
                         "measured_gib": round(gb / gpus * GB, 2)})
    for card, tokens in ((12, 932), (16, 2551), (24, 5789), (40, 12264), (48, 15502), (80, 28454)):
        rows.append({"source": UNSLOTH, "case": f"Llama-3.1-8B QLoRA, {tokens} tokens fill a {card} GB card",
                     "config": LLAMA31_8B,
                     "plan": {"method": "qlora", "lora_r": 32, "seq_len": tokens, "batch_size": 1},
                     "measured_gib": float(card)})
    rows.append({"source": UNSLOTH, "case": "Llama-3.3-70B QLoRA, 6916 tokens fill an 80 GB A100",
                 "config": LLAMA33_70B, "plan": {"method": "qlora", "lora_r": 32, "seq_len": 6916, "batch_size": 1},
                 "measured_gib": 80.0})
    rows.append({"source": SWIFT, "case": "qwen-7b-chat LoRA r 8 (c_attn), bf16, 2048 tokens",
                 "config": QWEN1["7B"],
                 "plan": {"method": "lora", "lora_r": 8, "lora_targets": ["q_proj", "k_proj", "v_proj"],
                          "seq_len": 2048, "batch_size": 1, "logit_bytes": QWEN1_LOGIT_BYTES},
                 "measured_gib": 27.74, "measured_as": "reserved"})
    return rows


MEASURED = _rows()
