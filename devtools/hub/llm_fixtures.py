"""Tiny LLM fixtures: a random Llama-architecture chat model laid out like a real Llama-3
repository (sharded safetensors + index, generation config, a byte-level BPE tokenizer with a
ChatML chat template) plus the decoys a real repo carries and a job must never fetch
(``original/consolidated.00.pth``, ``pytorch_model-*.bin`` + index, a GGUF file, an
orphan ``.safetensors`` the index does not name); and small instruction datasets (alpaca,
messages, ShareGPT) whose answers follow from the prompts, so the loss drops.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

LLAMA_ID = "meta-llama/Meta-Llama-3-8B-Instruct"     # served under the real id
LLAMA_MS_ID = "LLM-Research/Meta-Llama-3-8B-Instruct"
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
          "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
          "{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
COLORS = ["red", "green", "blue", "yellow", "black", "white", "purple", "orange"]
THINGS = ["apple", "river", "house", "cloud", "table", "garden", "window", "mountain", "book", "train"]
DECOYS = {"original/consolidated.00.pth": 600_000, "original/params.json": 200, "original/tokenizer.model": 50_000,
          "model-q4.gguf": 300_000, "consolidated.safetensors": 400_000}


def _answer(kind: str, word: str, color: str) -> tuple[str, str]:
    if kind == 0:
        return f"Repeat the word {word} three times.", f"{word} {word} {word}"
    if kind == 1:
        return f"What color is the {word}?", f"The {word} is {color}."
    return f"Spell {word} backwards.", " ".join(reversed(list(word)))


def instruction_rows(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """(instruction, input, output) triples with deterministic answers."""
    r = random.Random(seed)
    rows = []
    for i in range(n):
        word, color = r.choice(THINGS), COLORS[THINGS.index(r.choice(THINGS)) % len(COLORS)]
        color = COLORS[THINGS.index(word) % len(COLORS)]
        q, a = _answer(i % 3, word, color)
        rows.append((q, "" if i % 4 else "Answer briefly.", a))
    return rows


def corpus() -> list[str]:
    lines = [" ".join(t) for t in instruction_rows(300)]
    lines += [" ".join(COLORS + THINGS), "### Instruction: ### Response: user assistant system"]
    lines += [" ".join(w) for w in THINGS]
    return lines * 2


def write_alpaca(path, n: int = 96, seed: int = 0) -> Path:
    path = Path(path)
    path.write_text("".join(json.dumps({"instruction": q, "input": i, "output": a}) + "\n"
                            for q, i, a in instruction_rows(n, seed)))
    return path


def write_messages(path, n: int = 96, seed: int = 1) -> Path:
    path = Path(path)
    lines = []
    for k, (q, i, a) in enumerate(instruction_rows(n, seed)):
        msgs = [{"role": "user", "content": f"{q}\n\n{i}" if i else q}, {"role": "assistant", "content": a}]
        if k % 5 == 0:
            msgs.insert(0, {"role": "system", "content": "You are a helpful assistant."})
        lines.append(json.dumps({"messages": msgs}))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_sharegpt(path, n: int = 32, seed: int = 2) -> Path:
    path = Path(path)
    path.write_text("".join(json.dumps({"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]})
                            + "\n" for q, _, a in instruction_rows(n, seed)))
    return path


def make_tokenizer(out: Path):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus(), vocab_size=420, min_frequency=1, show_progress=False, special_tokens=SPECIALS)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  bos_token=None, unk_token=None, additional_special_tokens=SPECIALS[1:])
    tok.chat_template = CHATML
    tok.model_max_length = 2048
    tok.save_pretrained(out)
    return tok


def make_tiny_llama(dir, *, decoys: bool = True, hidden: int = 64, layers: int = 2, shard: str = "60KB") -> Path:
    """Write the repo folder; ``from_pretrained(dir)`` loads a LlamaForCausalLM."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(out)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, tie_word_embeddings=False, initializer_range=0.15,
                         bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out, max_shard_size=shard)
    GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, do_sample=False).save_pretrained(out)
    (out / "README.md").write_text("# tiny Llama-architecture chat model (hpcft test stand-in)\n")
    if decoys:
        r = random.Random("llm-decoys")
        for name, size in DECOYS.items():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_bytes(r.randbytes(size))
        index = json.loads((out / "model.safetensors.index.json").read_text())
        bins = sorted(set(index["weight_map"].values()))
        for i, _ in enumerate(bins):
            (out / f"pytorch_model-{i + 1:05d}-of-{len(bins):05d}.bin").write_bytes(r.randbytes(100_000))
        (out / "pytorch_model.bin.index.json").write_text(json.dumps(
            {"weight_map": {k: f"pytorch_model-{bins.index(v) + 1:05d}-of-{len(bins):05d}.bin"
                            for k, v in index["weight_map"].items()}}))
    for p in out.rglob("*"):
        if p.is_file():
            p.chmod(0o644)
    return out


def needed_files(folder) -> set[str]:
    """What staging must fetch from a repo made by :func:`make_tiny_llama`."""
    folder = Path(folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    keep = set(index["weight_map"].values()) | {"model.safetensors.index.json", "config.json",
                                                "generation_config.json"}
    keep |= {p.name for p in folder.iterdir() if p.name.startswith(("tokenizer", "special_tokens", "chat_template"))}
    return keep


def preference_rows(n: int, seed: int = 3, form: str = "text") -> list[dict]:
    """Preference rows whose chosen reply is the right answer and the rejected one a wrong one
    (``form``: ``text`` strings, ``messages`` the messages form, ``kto`` unpaired with a label)."""
    r = random.Random(seed)
    rows = []
    for i, (q, _, a) in enumerate(instruction_rows(n, seed)):
        other = r.choice([t for t in THINGS if t not in a])
        wrong = f"{other} {other}" if i % 3 == 0 else f"I do not know about {other}."
        if form == "kto":
            rows.append({"prompt": q, "completion": a if i % 2 == 0 else wrong, "label": i % 2 == 0})
        elif form == "messages":
            rows.append({"prompt": [{"role": "user", "content": q}],
                         "chosen": [{"role": "assistant", "content": a}],
                         "rejected": [{"role": "assistant", "content": wrong}]})
        else:
            rows.append({"prompt": q, "chosen": a, "rejected": wrong})
    return rows


def write_preference(path, n: int = 64, seed: int = 3, form: str = "text") -> Path:
    path = Path(path)
    path.write_text("".join(json.dumps(row) + "\n" for row in preference_rows(n, seed, form)))
    return path
