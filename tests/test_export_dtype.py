"""Exports keep the model's dtype, and remote-code models train and export with their flag.

One LoRA run (module fixture, the worker on a run folder made as `hpcft submit` makes it) on a
tiny GLM-4-style model whose code ships in the repo and whose weights are bf16, with
``train.trust_remote_code: true``. Then:

* ``hpcft export --merge`` writes bf16 (config, and the bytes of the bf16 base), with the
  model's own ``.py`` files, and the merged model loads and generates with no hub at all;
* ``hpcft export --merge --dtype fp32 --submit --wait`` merges as a Slurm job, in fp32: twice
  the bytes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.hub.llm_fixtures import write_alpaca
from devtools.hub.remote_model import make_tiny_remote_code_model
from tests.conftest import hpcft

DEAD = "http://127.0.0.1:9"
pytestmark = pytest.mark.worker


def _env(home: Path) -> dict:
    return {"HPCFT_HOME": str(home), "HPCFT_CACHE": str(home / "cache"),
            "HPCFT_CONFIG": str(home / "no-cluster-config.yaml")}


@pytest.fixture(scope="module")
def _run(tmp_path_factory):
    from devtools.runs import make_run, run_worker
    from hpcft.core.store import Cache
    from hpcft.stage.layout import register_local

    home = tmp_path_factory.mktemp("export-home")
    repo = make_tiny_remote_code_model(home / "tiny-glm4", hidden=64, layers=2, dtype="bfloat16")
    data = write_alpaca(home / "alpaca.jsonl", n=24)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in _env(home).items():
            mp.setenv(k, v)
        register_local(Cache(home / "cache"), "model", "tiny/glm-4-chat", repo, aliases=["tiny-glm4"])
        paths = make_run({"name": "glm-lora", "executor": "local", "train": {
            "task": "causal-lm", "model": "tiny-glm4", "dataset": str(data), "max_steps": 3, "batch_size": 4,
            "max_seq_length": 64, "learning_rate": 1e-2, "sample_prompts": 1, "max_new_tokens": 4,
            "trust_remote_code": True}})
        proc = run_worker(paths, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return home, paths, repo, proc.stdout + proc.stderr


@pytest.fixture
def trained(_run, monkeypatch):
    """The module's run, with this test's hpcft commands pointed at its home."""
    home = _run[0]
    for k, v in _env(home).items():
        monkeypatch.setenv(k, v)
    return _run


def _weights(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def _dtype(folder: Path) -> str:
    cfg = json.loads((folder / "config.json").read_text())
    return cfg.get("dtype") or cfg.get("torch_dtype")


def test_the_remote_code_model_trained_with_its_own_classes(trained):
    home, paths, repo, log = trained
    m = json.loads(paths.metrics.read_text())
    assert m["completed"] and m["adapter"]
    assert (Path(m["output_dir"]) / "adapter_model.safetensors").is_file()
    load = json.loads((paths.dir / "telemetry" / "load-rank0.json").read_text())
    assert load["model_class"] == "TinyGLMForCausalLM"  # the repo's own code, not transformers' Llama
    assert load["peak_mb"] >= load["before_mb"] > 0 and load["zero3"] is False
    assert "model TinyGLMForCausalLM loaded: host RSS" in log


def test_merged_export_keeps_bf16_and_generates_with_no_hub(trained, tmp_path):
    home, paths, repo, _ = trained
    bf16 = tmp_path / "bf16"
    out = json.loads(hpcft("export", paths.run_id, "--merge", "--to", str(bf16), "--json", check=True,
                           timeout=300).stdout)
    assert out["merged"] is True
    assert (_dtype(repo), _dtype(bf16)) == ("bfloat16", "bfloat16")
    assert abs(_weights(bf16) - _weights(repo)) < 0.05 * _weights(repo)  # the bf16 base model's size again
    assert {"modeling_tinyglm.py", "configuration_tinyglm.py", "tokenizer.json"} <= {p.name for p in bf16.iterdir()}
    from safetensors import safe_open

    for f in bf16.glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            assert {str(st.get_tensor(k).dtype) for k in st.keys()} == {"torch.bfloat16"}, f
    code = f"""
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained({str(bf16)!r})
model = AutoModelForCausalLM.from_pretrained({str(bf16)!r}, trust_remote_code=True)
assert type(model).__name__ == "TinyGLMForCausalLM" and model.hpcft_remote_code, type(model)
ids = tok.apply_chat_template([{{"role": "user", "content": "Repeat the word apple."}}], add_generation_prompt=True,
                              return_tensors="pt", return_dict=True)
ids.pop("token_type_ids", None)  # the fixture's generic fast tokenizer names them (transformers 4.x returns them)
out = model.generate(**ids, max_new_tokens=4, do_sample=False)
print("GENERATED", out.shape[1] - ids["input_ids"].shape[1])
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_ENDPOINT=DEAD, HTTPS_PROXY=DEAD, HTTP_PROXY=DEAD,
               HF_HOME=str(tmp_path / "empty-hf-home"))
    gen = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert gen.returncode == 0 and "GENERATED" in gen.stdout, gen.stderr[-3000:]
    assert int(gen.stdout.split("GENERATED", 1)[1].split()[0]) >= 1


@pytest.mark.slurm
def test_merge_as_a_slurm_job_in_another_dtype(trained, slurm, tmp_path):
    home, paths, repo, _ = trained
    dest = tmp_path / "merged-on-node"
    out = json.loads(hpcft("export", paths.run_id, "--merge", "--dtype", "fp32", "--submit", "--wait", "--to",
                           str(dest), "--json", check=True, timeout=400).stdout)
    assert out["merged"] is True and out["job_id"]
    assert _dtype(dest) == "float32" and (dest / "modeling_tinyglm.py").is_file()
    ratio = _weights(repo) / _weights(dest)
    assert 0.45 < ratio < 0.55, (_weights(repo), _weights(dest))    # bf16 is half the bytes of fp32
    assert Path(out["log"]).is_file() and Path(out["log"]).parent == paths.dir / "export-logs"
