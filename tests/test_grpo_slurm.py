"""GRPO on the dev Slurm (issue 30): the tiny Llama-architecture chat model learns small sums
in an SFT run (often wrong: half its answers are off by one), then a GRPO run continues it
(``init_from`` by job name) with the numeric-answer reward and a reward file of the user's:

* the mean reward rises over the run; a time-limit signal in the middle hands over, requeues
  and resumes at the step it stopped; the reward file's sha256 is recorded in the run's job.yaml;
* ``hpcft show`` lists each reward, ``hpcft compare`` the headline reward;
* the same reward file pinned to an older hash is refused at submit, nothing queued.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from devtools.faults import fault_env, wait_paused
from devtools.hub.grpo_fixtures import write_grpo, write_sft
from devtools.hub.llm_fixtures import LLAMA_ID, make_tiny_llama
from hpcft.core.progress_log import read_progress
from tests.test_preference_slurm import _wait  # the same wait: logs -f, COMPLETED, metrics.json

DEAD = "http://127.0.0.1:9"
BRIEF = "def brief(completions, completion_ids, **kw):\n    return [1.0 if len(c) <= 2 else 0.0 for c in completion_ids]\n"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("grpo-slurm") / "llama", decoys=False)


def _job(tmp_path, name: str, train: dict, **faults) -> Path:
    job = {"name": name, "executor": "slurm", "resources": {"time": "00:15:00"},
           "env": {"vars": {"HF_ENDPOINT": DEAD, "HTTPS_PROXY": DEAD, **fault_env(**faults)}},
           "train": {"model": "llama3-8b-instruct", "max_seq_length": 64, "logging_steps": 1, "seed": 3, **train}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _submit(run_hpcft, path: Path) -> dict:
    return json.loads(run_hpcft("submit", str(path), "--json", check=True).stdout)


@pytest.mark.slurm
@pytest.mark.slow
def test_grpo_continues_an_sft_run_the_reward_rises_and_a_requeue_resumes(slurm, tiny, hpcft_home, run_hpcft,
                                                                          tmp_path):
    from hpcft.core.store import Cache
    from hpcft.stage.layout import register_local

    register_local(Cache(hpcft_home / "cache"), "model", LLAMA_ID, tiny, aliases=["llama3-8b-instruct"])
    sft = _submit(run_hpcft, _job(tmp_path, "grpo-sft", {
        "task": "causal-lm", "dataset": str(write_sft(tmp_path / "sft.jsonl", n=48)), "epochs": 10, "batch_size": 8,
        "learning_rate": 2e-2, "sample_prompts": 0}))
    _wait(run_hpcft, sft)

    brief = tmp_path / "my_rewards.py"
    brief.write_text(BRIEF)
    digest = hashlib.sha256(brief.read_bytes()).hexdigest()
    train = {"task": "grpo", "dataset": str(write_grpo(tmp_path / "grpo.jsonl", n=32)), "init_from": "grpo-sft",
             "max_steps": 20, "batch_size": 32, "learning_rate": 3e-3, "eval_subset": 8, "checkpoint_steps": 50,
             "grpo": {"num_generations": 4, "max_completion_length": 4, "temperature": 0.7},
             "rewards": ["answer_numeric", {"function": "my_rewards.py:brief", "weight": 0.1}]}
    sub = _submit(run_hpcft, _job(tmp_path, "grpo-math", train, pause_at=10))
    wait_paused(sub["run_dir"], timeout=300, what=f"GRPO job {sub['job_id']} to pause at train step 10",
                describe=lambda _: "not paused yet; the job's log: " + run_hpcft("logs", sub["job_id"]).stdout[-3000:])
    subprocess.run(["scancel", "--signal=USR2", sub["job_id"]], check=True)

    # meanwhile: the reward file pinned to a hash it no longer has is refused, nothing queued
    stale = {**train, "rewards": ["answer_numeric", {"function": "my_rewards.py:brief", "sha256": "0" * 64}]}
    runs_before = sorted((hpcft_home / "runs").iterdir())
    proc = run_hpcft("submit", str(_job(tmp_path, "grpo-stale", stale)))
    assert proc.returncode == 2 and f"changed since it was pinned (sha256 {digest}" in proc.stderr, proc.stderr
    assert len([ln for ln in proc.stderr.splitlines() if "my_rewards.py:brief" in ln]) == 1
    assert sorted((hpcft_home / "runs").iterdir()) == runs_before

    m = _wait(run_hpcft, sub, timeout=500)
    run_dir = Path(sub["run_dir"])
    job = yaml.safe_load((run_dir / "job.yaml").read_text())
    assert job["train"]["init_from"] == str(Path(sft["run_dir"]).resolve())
    assert job["train"]["rewards"][1]["sha256"] == digest
    assert job["train"]["rewards"][1]["function"] == f"{brief.resolve()}:brief"
    ev = read_progress(run_dir / "progress.jsonl")
    stop = next(e for e in ev if e["event"] == "signal")["step"]
    resume = next(e for e in ev if e["event"] == "resume")
    assert resume["step"] == stop and 10 <= stop < 20 and resume["restart"] == 1
    assert m["restarts"] == 1 and m["resumes"] == 1 and m["train"]["global_step"] == 20

    g = m["grpo"]
    assert g["steps"] == list(range(1, 21))   # every step's log, the first leg's kept in its checkpoint
    right = g["reward_components"]["answer_numeric"]
    first, last = sum(right[:5]) / 5, sum(right[-5:]) / 5
    assert last > first + 0.1, right
    assert all(0 <= x <= 1 for x in g["reward_components"]["brief"]) and all(k is None for k in g["kl"])
    assert m["task"] == "grpo" and m["headline"] == "reward" and m["reference"] == "none (beta 0: no KL term)"

    show = run_hpcft("show", sub["job_id"], check=True).stdout
    assert "rewards:   step 1 -> 20: reward" in show and "answer_numeric x1 " in show and "brief x0.1 " in show
    assert "rewards/answer_numeric/mean" in show and "init_from:" in show
    assert "grpo:      4 generations of up to 4 tokens, beta 0, loss dapo, temperature 0.7" in show
    table = run_hpcft("compare", sft["job_id"], sub["job_id"], check=True).stdout
    assert f"reward {m['eval']['reward']:.4f}" in table
    out = json.loads(run_hpcft("export", sub["job_id"], "--merge", "--json", check=True).stdout)
    assert out["merged"] and (Path(out["dest"]) / "config.json").is_file()   # the GRPO adapter merges like SFT's
