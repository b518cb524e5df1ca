"""Preference tuning on the dev Slurm (issue 17, deliverable 6), on the tiny Llama-architecture
chat model: a LoRA SFT run, then

* DPO with LoRA continuing it (``init_from`` by job name) on 2 ranks (gloo): the chosen/rejected
  reward margin grows from 0 (the reference is the SFT adapter itself), and a time-limit signal
  in the middle hands over, requeues and resumes at the step it stopped;
* full-weight DPO on 2 ranks under ZeRO-3 (the reference a frozen copy, sharded like the model).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from devtools.faults import fault_env
from devtools.hub.llm_fixtures import LLAMA_ID, make_tiny_llama, write_alpaca, write_preference
from devtools.wait import wait_for
from hpcft.core.progress_log import read_progress

DEAD = "http://127.0.0.1:9"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("pref-slurm") / "llama", decoys=False)


def _submit(run_hpcft, tmp_path, name: str, ranks: int, train: dict, **faults) -> dict:
    job = {"name": name, "executor": "slurm",
           "resources": ({"partition": "gpu", "gpus_per_node": ranks} if ranks > 1 else {}) | {"time": "00:15:00"},
           "env": {"vars": {"HF_ENDPOINT": DEAD, "HTTPS_PROXY": DEAD, **fault_env(cpu_fallback=ranks > 1, **faults)}},
           "train": {"model": "llama3-8b-instruct", "max_seq_length": 64, "logging_steps": 1, "seed": 3, **train}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job))
    return json.loads(run_hpcft("submit", str(path), "--json", check=True).stdout)


def _wait(run_hpcft, sub: dict, timeout: float = 400) -> dict:
    proc = run_hpcft("logs", "-f", sub["job_id"], timeout=timeout)
    st = json.loads(run_hpcft("status", sub["job_id"], "--json", check=True).stdout)
    assert st["state"] == "COMPLETED", (st, proc.stdout[-4000:], proc.stderr[-2000:])
    return json.loads((Path(sub["run_dir"]) / "metrics.json").read_text())


def _events(run_dir: str) -> list[dict]:
    return read_progress(Path(run_dir) / "progress.jsonl")


def _stage(tiny, home: Path) -> None:
    from hpcft.core.store import Cache
    from hpcft.stage.layout import register_local

    register_local(Cache(home / "cache"), "model", LLAMA_ID, tiny, aliases=["llama3-8b-instruct"])


@pytest.mark.slurm
@pytest.mark.slow
def test_dpo_continues_an_sft_adapter_on_2_ranks_and_resumes_after_a_requeue(slurm, tiny, hpcft_home, run_hpcft,
                                                                              tmp_path):
    _stage(tiny, hpcft_home)
    sft = _submit(run_hpcft, tmp_path, "pref-sft", 1, {
        "task": "causal-lm", "dataset": str(write_alpaca(tmp_path / "sft.jsonl", n=32)), "epochs": 1,
        "batch_size": 8, "learning_rate": 2e-2, "sample_prompts": 0})
    _wait(run_hpcft, sft)

    lora = _submit(run_hpcft, tmp_path, "pref-dpo-lora", 2, {
        "task": "dpo", "dataset": str(write_preference(tmp_path / "pref.jsonl", n=48)), "init_from": "pref-sft",
        "epochs": 3, "batch_size": 4, "learning_rate": 5e-3, "deepspeed": False}, step_sleep=0.3)
    progress = Path(lora["run_dir"]) / "progress.jsonl"
    wait_for(lambda: progress.exists() and any(e["event"] == "train" and e.get("step", 0) >= 7
                                               for e in _events(lora["run_dir"])),
             timeout=300, interval=0.3, what=f"DPO job {lora['job_id']} to reach train step 7",
             describe=lambda _: "no train step >= 7 yet; the job's log: "
                                + run_hpcft("logs", lora["job_id"]).stdout[-3000:])
    subprocess.run(["scancel", "--signal=USR2", lora["job_id"]], check=True)

    m = _wait(run_hpcft, lora)
    run_dir = Path(lora["run_dir"])
    log = (run_dir / f"job.{lora['job_id']}.out").read_text()
    assert "2 ranks, backend gloo" in log and "continuing run" in log and "pref-sft" in log
    job = yaml.safe_load((run_dir / "job.yaml").read_text())
    assert job["train"]["init_from"] == str(Path(sft["run_dir"]).resolve())  # resolved at submit, recorded
    ev = _events(lora["run_dir"])
    stop = next(e for e in ev if e["event"] == "signal")["step"]
    resume = next(e for e in ev if e["event"] == "resume")
    assert resume["step"] == stop and resume["restart"] == 1
    steps = [e["step"] for e in ev if e["event"] == "train"]
    assert steps == sorted(set(steps))
    assert m["restarts"] == 1 and m["resumes"] == 1 and m["train"]["global_step"] == 18  # 43 rows / 8 x 3 epochs
    margins = m["preference"]["margins"]
    assert len(margins) == 3 and 0 < margins[0] < margins[-1], margins  # 0 at the start: policy == reference
    assert m["eval"]["rewards/margins"] == margins[-1] and m["eval"]["rewards/accuracies"] >= 0.75
    assert m["task"] == "dpo" and m["adapter"] and "frozen copy" in m["reference"]
    out = Path(m["output_dir"])
    assert (out / "adapter_model.safetensors").is_file() and not (out / "ref").exists()
    show = run_hpcft("show", lora["job_id"], check=True).stdout
    assert "rewards:   step 6: margin" in show and "init_from:" in show
    table = run_hpcft("compare", sft["job_id"], lora["job_id"], check=True).stdout
    assert f"rewards/accuracies {m['eval']['rewards/accuracies']:.4f}, margin {margins[-1]:.4f}" in table


@pytest.mark.slurm
@pytest.mark.slow
def test_full_weight_dpo_on_2_ranks_under_zero3(slurm, tiny, hpcft_home, run_hpcft, tmp_path):
    """The reference is a frozen copy of the model, which TRL wraps in its own DeepSpeed engine
    (the first DeepSpeed job of a fresh ops cache also builds DeepSpeed's CPU comm op)."""
    _stage(tiny, hpcft_home)
    full = _submit(run_hpcft, tmp_path, "pref-dpo-zero3", 2, {
        "task": "dpo", "method": "full", "dataset": str(write_preference(tmp_path / "pref.jsonl", n=48)),
        "epochs": 1, "batch_size": 4, "learning_rate": 1e-3, "deepspeed": 3})
    m = _wait(run_hpcft, full, timeout=900)
    log = (Path(full["run_dir"]) / f"job.{full['job_id']}.out").read_text()
    assert "DeepSpeed ZeRO stage 3 on 2 ranks" in log
    assert m["reference"] == "a frozen copy of the model" and m["preference"]["margins"][-1] > 0
    assert m["train"]["global_step"] == 6 and list(Path(m["output_dir"]).glob("model*.safetensors"))
