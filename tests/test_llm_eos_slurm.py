"""Issue 17 end to end on the dev Slurm: a base model (EOS ``<|endoftext|>``) with a ChatML chat
template, LoRA SFT on two datasets in their own formats mixed by weight and packed, then
``hpcft export --merge``: the run and the merged model carry ``<|im_end|>`` as EOS (tokenizer and
generation_config.json), so generation stops at the end of a reply; with the base model's own
generation config the same reply runs on to max_new_tokens.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from devtools.hub.llm_fixtures import make_tiny_llama, write_alpaca, write_sharegpt

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# generate with <|im_end|> forced as the 3rd new token: where generation stops says what its EOS is
GENERATE = """
import json, sys
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
path, base_eos = sys.argv[1], int(sys.argv[2])
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path)
im_end = tok.convert_tokens_to_ids("<|im_end|>")
ids = tok(tok.apply_chat_template([{"role": "user", "content": "Repeat the word apple three times."}],
                                  tokenize=False, add_generation_prompt=True), return_tensors="pt",
          add_special_tokens=False)
n = ids["input_ids"].shape[1]
force = lambda _b, seq: [im_end] if len(seq) == n + 2 else list(range(len(tok)))
out = {}
for name, cfg in (("saved", None), ("base", GenerationConfig(eos_token_id=base_eos, pad_token_id=base_eos))):
    kw = {"generation_config": cfg} if cfg is not None else {}
    gen = model.generate(**ids, max_new_tokens=8, do_sample=False, prefix_allowed_tokens_fn=force, **kw)
    out[name] = len(gen[0]) - n
print("RESULT", json.dumps({**out, "eos": tok.eos_token}))
"""


def test_base_model_sft_on_a_mix_then_merge_stops_at_im_end(slurm, hpcft_home, run_hpcft, tmp_path):
    model = make_tiny_llama(tmp_path / "base", decoys=False)
    cfg = json.loads((model / "tokenizer_config.json").read_text())
    cfg["eos_token"] = "<|endoftext|>"                       # a base checkpoint: its EOS is <|endoftext|>
    (model / "tokenizer_config.json").write_text(json.dumps(cfg))
    gen = json.loads((model / "generation_config.json").read_text())
    endoftext = gen["pad_token_id"]
    gen["eos_token_id"] = endoftext
    (model / "generation_config.json").write_text(json.dumps(gen))
    write_alpaca(tmp_path / "a.jsonl", n=40)
    write_sharegpt(tmp_path / "s.jsonl", n=20)
    job = {"name": "eos-mix", "executor": "slurm", "resources": {"time": "00:15:00"},
           "train": {"task": "causal-lm", "model": str(model), "method": "lora", "packing": True,
                     "dataset": [str(tmp_path / "a.jsonl"), {"name": str(tmp_path / "s.jsonl"), "weight": 2}],
                     "max_steps": 4, "batch_size": 4, "max_seq_length": 128, "learning_rate": 1e-3,
                     "logging_steps": 2, "sample_prompts": 1, "max_new_tokens": 4, "seed": 5}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    sub = json.loads(run_hpcft("submit", str(tmp_path / "job.yaml"), "--json", check=True).stdout)
    logs = run_hpcft("logs", "-f", sub["job_id"], timeout=600)
    st = json.loads(run_hpcft("status", sub["job_id"], "--json", check=True).stdout)
    assert st["state"] == "COMPLETED", (logs.stdout[-4000:], logs.stderr[-2000:])
    run = Path(sub["run_dir"])
    assert "end of turn <|im_end|>: tokenizer EOS <|endoftext|> -> <|im_end|>" in logs.stdout
    m = json.loads((run / "metrics.json").read_text())
    mix = m["data"]["mix"]
    assert [(x["format"], x["mixed"]) for x in mix] == [("alpaca", 18), ("sharegpt", 36)]  # 36 + 18 rows, 1:2
    assert m["data"]["packing"] is True and m["dataset"].endswith("s.jsonl (weight 2)")
    out = Path(m["output_dir"])
    im_end = next(t["id"] for t in json.loads((out / "tokenizer.json").read_text())["added_tokens"]
                  if t["content"] == "<|im_end|>")
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == [im_end, endoftext]
    assert json.loads((out / "tokenizer_config.json").read_text())["eos_token"] == "<|im_end|>"

    dest = tmp_path / "merged"
    proc = run_hpcft("export", sub["job_id"], "--merge", "--to", str(dest), "--json", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((dest / "generation_config.json").read_text())["eos_token_id"][0] == im_end
    res = subprocess.run([sys.executable, "-c", GENERATE, str(dest), str(endoftext)], capture_output=True, text=True,
                         timeout=180)
    assert res.returncode == 0 and "RESULT" in res.stdout, res.stderr[-3000:]
    got = json.loads(res.stdout.split("RESULT", 1)[1])
    assert got == {"saved": 3, "base": 8, "eos": "<|im_end|>"}  # stops at <|im_end|>; the base's config runs on
