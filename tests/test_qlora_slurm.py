"""``train.method: qlora`` end to end on the real dev Slurm (CPU: bitsandbytes' CPU kernels).

A tiny bf16 Llama trains a 4-bit NF4 QLoRA adapter on 2 gloo ranks (DDP) with falling loss;
metrics.json and the submit's memory estimate show the 4-bit base; a DPO run continues the
adapter on the quantized base; ``hpcft export --merge`` loads the base unquantized in its own
dtype and writes a plain model that loads and generates offline with bitsandbytes unimportable.
Bad input (an NPU partition, bad ``quantization:`` values, a model quantized already) is refused
in one line each, exit 2, nothing queued.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from devtools.faults import fault_env
from devtools.hub.llm_fixtures import LLAMA_ID, make_tiny_llama, write_alpaca, write_preference
from hpcft.core.progress_log import read_progress
from tests.test_qlora import need_bitsandbytes

DEAD = "http://127.0.0.1:9"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny Llama saved in bf16, so 'its own dtype' is not the fp32 the CPU trains in."""
    import torch
    from transformers import AutoModelForCausalLM

    folder = make_tiny_llama(tmp_path_factory.mktemp("qlora-slurm") / "llama", decoys=False)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.bfloat16)
    for p in folder.glob("model*.safetensors*"):
        p.unlink()
    model.save_pretrained(str(folder))
    assert json.loads((folder / "config.json").read_text()).get("dtype") == "bfloat16"
    return folder


def _stage(folder: Path, home: Path, repo: str = LLAMA_ID, alias: str = "llama3-8b-instruct") -> None:
    from hpcft.core.store import Cache
    from hpcft.stage.layout import register_local

    register_local(Cache(home / "cache"), "model", repo, folder, aliases=[alias])


def _job(tmp_path: Path, name: str, ranks: int, train: dict, **resources) -> Path:
    job = {"name": name, "executor": "slurm",
           "resources": ({"partition": "gpu", "gpus_per_node": ranks} if ranks > 1 else {})
           | {"time": "00:10:00"} | resources,
           "env": {"vars": {"HF_ENDPOINT": DEAD, "HTTPS_PROXY": DEAD, **fault_env(cpu_fallback=ranks > 1)}},
           "train": {"model": "llama3-8b-instruct", "max_seq_length": 64, "logging_steps": 1, "seed": 3,
                     "method": "qlora", **train}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _wait(run_hpcft, sub: dict) -> dict:
    proc = run_hpcft("logs", "-f", sub["job_id"], timeout=300)
    st = json.loads(run_hpcft("status", sub["job_id"], "--json", check=True).stdout)
    assert st["state"] == "COMPLETED", (st, proc.stdout[-4000:], proc.stderr[-2000:])
    return json.loads((Path(sub["run_dir"]) / "metrics.json").read_text())


def _losses(run_dir: str) -> list[float]:
    return [e["loss"] for e in read_progress(Path(run_dir) / "progress.jsonl")
            if e["event"] == "train" and isinstance(e.get("loss"), float)]


@pytest.mark.slurm
@pytest.mark.slow
def test_qlora_sft_on_2_ranks_then_dpo_then_a_plain_merged_model(slurm, tiny, hpcft_home, run_hpcft, tmp_path):
    need_bitsandbytes()
    _stage(tiny, hpcft_home)
    sft = _job(tmp_path, "qlora-sft", 2, {"task": "causal-lm", "dataset": str(write_alpaca(tmp_path / "a.jsonl", n=48)),
                                          "epochs": 3, "batch_size": 4, "learning_rate": 2e-2, "sample_prompts": 1,
                                          "max_new_tokens": 4, "quantization": {"bits": 4, "type": "nf4"}})
    sub = json.loads(run_hpcft("submit", str(sft), "--json", check=True).stdout)
    m = _wait(run_hpcft, sub)
    run_dir = Path(sub["run_dir"])
    log = (run_dir / f"job.{sub['job_id']}.out").read_text()
    assert "2 ranks, backend gloo" in log and "DeepSpeed" not in log, log[-3000:]
    assert "QLoRA base: 14 linear layers in 4-bit" in log and "QLoRA r=8" in log
    losses = _losses(sub["run_dir"])
    assert losses[-1] < 0.7 * losses[0], losses
    q = m["quantization"]
    assert q["bits"] == 4 and q["type"] == "nf4" and q["double_quant"] and q["quantized_layers"] == 14
    assert q["bytes_per_quantized_param"] == 0.5 and q["quantized_params"] == 73728
    assert m["method"] == "qlora" and m["adapter"] is True
    show = run_hpcft("show", sub["job_id"], check=True).stdout
    assert "quantized: 4-bit nf4 double-quantized, compute fp32; 14 linear layers, 73,728 weights" in show, show
    assert "(0.5 B each)" in show
    est = json.loads((run_dir / "memory-estimate.json").read_text())   # what submit estimated
    assert est["available"] and est["plan"]["method"] == "qlora" and est["plan"]["zero_stage"] is None
    out = Path(m["output_dir"])
    assert (out / "adapter_model.safetensors").is_file() and not list(out.glob("model*.safetensors"))

    dpo = _job(tmp_path, "qlora-dpo", 1, {"task": "dpo", "init_from": "qlora-sft", "epochs": 1, "batch_size": 4,
                                          "dataset": str(write_preference(tmp_path / "p.jsonl", n=16)),
                                          "learning_rate": 5e-3})
    dsub = json.loads(run_hpcft("submit", str(dpo), "--json", check=True).stdout)
    dm = _wait(run_hpcft, dsub)
    assert dm["task"] == "dpo" and dm["method"] == "qlora" and dm["quantization"]["bits"] == 4
    assert "frozen copy" in dm["reference"] and len(dm["preference"]["margins"]) == 1

    dest = tmp_path / "merged"
    proc = run_hpcft("export", sub["job_id"], "--merge", "--to", str(dest), "--json", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["merged"] is True
    cfg = json.loads((dest / "config.json").read_text())
    assert cfg.get("dtype") == "bfloat16" and "quantization_config" not in cfg
    # a bitsandbytes that cannot be imported: the merged model must not need it
    blocked = tmp_path / "no-bnb" / "bitsandbytes"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('bitsandbytes blocked by the test')\n")
    code = f"""
import sys, torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer
tensors = {{}}
for f in __import__("pathlib").Path({str(dest)!r}).glob("model*.safetensors"):
    tensors.update(load_file(str(f)))
assert tensors and all(t.dtype == torch.bfloat16 for t in tensors.values()), {{t.dtype for t in tensors.values()}}
assert not any(k.endswith(("absmax", "quant_map")) or "quant_state" in k for k in tensors), sorted(tensors)[:5]
tok = AutoTokenizer.from_pretrained({str(dest)!r})
model = AutoModelForCausalLM.from_pretrained({str(dest)!r})
assert model.dtype == torch.bfloat16, model.dtype
ids = tok.apply_chat_template([{{"role": "user", "content": "Say apple."}}], add_generation_prompt=True,
                              return_tensors="pt", return_dict=True)
gen = model.generate(**ids, max_new_tokens=6, do_sample=False)
print("GENERATED", len(gen[0]) - ids["input_ids"].shape[1], "bitsandbytes" in sys.modules)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_ENDPOINT=DEAD, HTTPS_PROXY=DEAD,
               HF_HOME=str(tmp_path / "empty-hf-home"), PYTHONPATH=str(blocked.parent))
    gen = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert gen.returncode == 0 and "GENERATED" in gen.stdout, gen.stderr[-3000:]
    n, imported = gen.stdout.split("GENERATED", 1)[1].split()
    assert int(n) >= 1 and imported == "False"


def _queue(name: str) -> list[str]:
    return subprocess.run(["squeue", "-h", "-n", name, "-o", "%i"], capture_output=True, text=True,
                          check=True).stdout.split()


def _refused(run_hpcft, path: Path, name: str) -> list[str]:
    """submit's error lines (exit 2, nothing queued, no run folder)."""
    runs = Path(os.environ["HPCFT_HOME"]) / "runs"
    before = set(runs.rglob("*")) if runs.is_dir() else set()
    proc = run_hpcft("submit", str(path))
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert _queue(name) == [] and (set(runs.rglob("*")) if runs.is_dir() else set()) == before
    return [x for x in proc.stderr.splitlines() if x.strip()]


@pytest.mark.slurm
def test_bad_qlora_jobs_are_refused_one_line_each_nothing_queued(slurm, tiny, hpcft_home, run_hpcft, tmp_path):
    _stage(tiny, hpcft_home)
    data = str(write_alpaca(tmp_path / "a.jsonl", n=8))
    env = tmp_path / "npu-env"   # an Ascend env as the pre-flight sees it: torch_npu and bitsandbytes there
    for pkg in ("torch_npu", "bitsandbytes"):
        (env / "lib" / "python3.11" / "site-packages" / pkg).mkdir(parents=True)
    npu = _job(tmp_path, "qlora-npu", 1, {"task": "causal-lm", "dataset": data}, partition="npu", npus_per_node=1)
    doc = yaml.safe_load(npu.read_text())
    doc["env"]["venv"] = str(env)
    npu.write_text(yaml.safe_dump(doc))
    lines = _refused(run_hpcft, npu, "qlora-npu")
    bad = [x for x in lines if ": qlora: " in x]
    assert len(bad) == 1 and "cannot run on the NPU partition 'npu'" in bad[0] and "source build" in bad[0], lines
    assert not [x for x in lines if ": torch_npu: " in x or ": memory: " in x and "✗" in x]

    values = _job(tmp_path, "qlora-values", 1, {"task": "causal-lm", "dataset": data,
                                                "quantization": {"bits": 2, "type": "nf4", "double_qant": True}})
    lines = [x for x in _refused(run_hpcft, values, "qlora-values") if x.startswith(str(values))]
    assert len(lines) == 2 and "train.quantization.bits: Input should be 4 or 8 (got 2)" in lines[0], lines
    assert "did you mean 'double_quant'?" in lines[1]

    gptq = tmp_path / "gptq-model"
    gptq.mkdir()
    for p in tiny.iterdir():
        (gptq / p.name).write_bytes(p.read_bytes())
    cfg = json.loads((gptq / "config.json").read_text())
    (gptq / "config.json").write_text(json.dumps({**cfg, "quantization_config": {"quant_method": "gptq", "bits": 4}}))
    _stage(gptq, hpcft_home, "test/tiny-gptq", "tiny-gptq")
    quantized = _job(tmp_path, "qlora-gptq", 1, {"task": "causal-lm", "dataset": data, "model": "tiny-gptq"})
    lines = _refused(run_hpcft, quantized, "qlora-gptq")
    bad = [x for x in lines if ": qlora: " in x]
    assert len(bad) == 1 and "model tiny-gptq is quantized already with gptq" in bad[0], lines
