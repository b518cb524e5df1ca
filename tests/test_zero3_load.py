"""ZeRO-3 at size: a full fine-tune on 2 ranks (gloo, CPU) through the dev Slurm loads the model
inside ``zero.Init``, so each rank holds its shard of the weights, not the whole model.

The model is a random Llama-architecture one of ~114M parameters saved in bf16 (as real
checkpoints are; full fine-tuning loads fp32 master weights), big enough that a whole fp32 copy
(~435 MiB) stands well clear of the process's own noise. Each rank records its host RSS
around loading (``telemetry/load-rank<N>.json``, VmRSS before, VmHWM after). Without zero.Init
every rank would hold the whole fp32 model plus the checkpoint it was read from (measured by
``benchmarks/bench_llm.py``: +~790 MiB per rank for this model).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from devtools.hub.llm_fixtures import make_tiny_llama, write_alpaca

DEAD = "http://127.0.0.1:9"


@pytest.fixture(scope="module")
def big_repo(tmp_path_factory):
    import torch
    from transformers import AutoModelForCausalLM

    out = make_tiny_llama(tmp_path_factory.mktemp("z3") / "llama-114m", decoys=False, hidden=1024, layers=12,
                          shard="100MB")
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
    for p in out.glob("model*.safetensors*"):
        p.unlink()
    model.save_pretrained(out, max_shard_size="100MB")
    return out


@pytest.mark.slurm
@pytest.mark.slow
def test_zero3_full_fine_tune_loads_a_shard_per_rank(slurm, big_repo, hpcft_home, run_hpcft, tmp_path):
    from devtools.faults import fault_env
    from hpcft.core.store import Cache
    from hpcft.stage.layout import register_local

    register_local(Cache(hpcft_home / "cache"), "model", "tiny/llama-114m", big_repo, aliases=["llama-114m"])
    data = write_alpaca(tmp_path / "alpaca.jsonl", n=16)
    job = {"name": "z3-load", "executor": "slurm",
           "resources": {"partition": "gpu", "gpus_per_node": 2, "time": "00:15:00"},
           # fault_env: CPU ranks, and the session's one DeepSpeed op build folder (tests/conftest.py)
           "env": {"vars": {"HF_ENDPOINT": DEAD, "HTTPS_PROXY": DEAD, **fault_env(cpu_fallback=True)}},
           "train": {"task": "causal-lm", "model": "llama-114m", "dataset": str(data), "method": "full",
                     "deepspeed": 3, "max_steps": 1, "batch_size": 1, "max_seq_length": 32, "logging_steps": 1,
                     "sample_prompts": 0, "eval_subset": 2, "learning_rate": 1e-5}}
    path = tmp_path / "z3.yaml"
    path.write_text(yaml.safe_dump(job))
    sub = json.loads(run_hpcft("submit", str(path), "--json", check=True).stdout)
    run_hpcft("logs", "-f", sub["job_id"], timeout=600)  # follows the job to its end
    st = json.loads(run_hpcft("status", sub["job_id"], "--json", check=True).stdout)
    run = Path(sub["run_dir"])
    logs = "".join(p.read_text(errors="replace")[-3000:] for p in sorted(run.glob("**/job.*.out")))
    assert st["state"] == "COMPLETED", (st, logs)
    loads = [json.loads((run / "telemetry" / f"load-rank{r}.json").read_text()) for r in (0, 1)]
    params = 114_129_920
    whole_mib = params * 4 / 2**20         # the fp32 model one rank would hold without zero.Init
    shard_mib = whole_mib / 2
    for rec in loads:
        assert rec["zero3"] is True and rec["model_class"] == "LlamaForCausalLM"
    # rank 1 reads no checkpoint values (transformers gives them to rank 0): its shard, one gathered
    # layer at a time, and the lazily imported DeepSpeed parts
    assert loads[1]["load_peak_delta_mb"] < shard_mib + 0.35 * whole_mib, loads[1]
    assert loads[1]["rss_mb"] - loads[1]["before_mb"] < shard_mib + 0.25 * whole_mib, loads[1]
    # rank 0 also holds the bf16 checkpoint while it loads (half the fp32 size), never a whole fp32 copy on top
    assert loads[0]["load_peak_delta_mb"] < whole_mib + 0.25 * whole_mib, loads[0]
    log = (run / f"job.{sub['job_id']}.out").read_text()
    assert "DeepSpeed ZeRO stage 3 on 2 ranks" in log and "loaded under zero.Init" in log
