"""Issue 19, benchmarks end to end: the loopback hub serves C-Eval, CMMLU, MMLU and GSM8K in their
real layouts (repo ids, per-subject configs, splits, columns: devtools/hub/eval_fixtures.py);
`hpcft stage --eval` stages exactly the configs the harness loads; the hub is stopped. A tiny
random chat model is LoRA-trained on the dev Slurm on questions whose answer is always the same
letter, with ``train.eval_tasks`` (the job's last step), while `hpcft eval` scores the base model
on the login node's CPU; then `hpcft eval RUN --submit` scores the run with its adapter in a Slurm
job. The score files exist, the fine-tuned model beats the base, and `hpcft compare` shows a
column per task.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from devtools.hub.eval_fixtures import make_eval_fixtures, training_texts
from devtools.hub.llm_fixtures import LLAMA_ID, make_tiny_llama
from devtools.hub.server import HubServer

DEAD = "http://127.0.0.1:9"
SUBJECTS = {"ceval": ["accountant", "law"], "cmmlu": ["agronomy", "arts"], "mmlu": ["anatomy", "virology"]}
TASKS = ["ceval-valid_accountant", "cmmlu_agronomy", "mmlu_anatomy", "gsm8k"]
MC = TASKS[:3]
OFFLINE = {"HF_ENDPOINT": DEAD, "HTTPS_PROXY": DEAD, "HTTP_PROXY": DEAD}


def _cli(*args: str, timeout: float = 300) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hpcft.cli.main", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **OFFLINE})


def _scores(run_dir: str | Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (Path(run_dir) / "eval").glob("*.json")}


@pytest.mark.hub
@pytest.mark.slurm
@pytest.mark.slow
def test_fine_tuned_run_beats_the_base_model_on_staged_benchmarks_offline(slurm, hpcft_home, run_hpcft, tmp_path):
    from hpcft.core.store import Cache
    from hpcft.stage.layout import register_local

    llama = make_tiny_llama(tmp_path / "llama", decoys=False)
    register_local(Cache(hpcft_home / "cache"), "model", LLAMA_ID, llama, aliases=["llama3-8b-instruct"])
    fixtures = make_eval_fixtures(tmp_path / "bench", SUBJECTS)

    # not staged yet: refused before anything runs, one line with the stage command
    proc = run_hpcft("eval", "llama3-8b-instruct", "--tasks", "mmlu_anatomy")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "eval task mmlu_anatomy: its data is not staged (cais/mmlu:anatomy); on the login node run: "
        "hpcft stage --eval mmlu_anatomy"], proc.stderr
    assert not (hpcft_home / "runs").exists() or not any((hpcft_home / "runs").glob("*eval*"))

    with HubServer() as hub:
        for repo, folder in fixtures.items():
            hub.add_repo("dataset", repo, folder)
        Path(os.environ["HPCFT_CONFIG"]).write_text(yaml.safe_dump(
            {"sources": {"order": ["hf"], "hf_endpoint": hub.url, "retries": 0}}))
        staged = json.loads(run_hpcft("stage", "--eval", *TASKS, "--json", check=True).stdout)
        fetched = {repo: hub.log.fetched_files(repo) for repo in fixtures}
    # exactly the configs the harness loads: one subject each, gsm8k's main (not socratic)
    assert sorted((a["repo_id"], a["config"]) for a in staged["assets"]) == [
        ("cais/mmlu", "anatomy"), ("ceval/ceval-exam", "accountant"), ("haonan-li/cmmlu", "agronomy"),
        ("openai/gsm8k", "main")]
    assert {p.split("/")[0] for p in fetched["cais/mmlu"] if "/" in p} == {"anatomy"}
    assert {p.split("/")[0] for p in fetched["openai/gsm8k"] if "/" in p} == {"main"}

    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in training_texts(64)))
    job = {"name": "eval-ft", "executor": "slurm", "resources": {"time": "00:15:00"}, "env": {"vars": OFFLINE},
           "train": {"task": "causal-lm", "model": "llama3-8b-instruct", "dataset": str(data), "data_format": "text",
                     "epochs": 3, "learning_rate": 2e-2, "batch_size": 8, "max_seq_length": 96, "logging_steps": 4,
                     "sample_prompts": 0, "eval_tasks": TASKS}}
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(job))
    sub = json.loads(run_hpcft("submit", str(tmp_path / "ft.yaml"), "--json", check=True).stdout)
    base = _cli("eval", "llama3-8b-instruct", "--tasks", ",".join(TASKS), "--threads", "1")  # meanwhile, here
    follow = run_hpcft("logs", "-f", sub["job_id"], timeout=600)
    out, err = base.communicate(timeout=300)
    assert base.returncode == 0, err[-3000:]
    st = json.loads(run_hpcft("status", sub["job_id"], "--json", check=True).stdout)
    assert st["state"] == "COMPLETED", (st, follow.stdout[-4000:])
    assert "train.eval_tasks: " + ", ".join(TASKS) in follow.stdout

    base_dir = out.strip().splitlines()[-1].removeprefix("scores in ").removesuffix("/eval")
    tuned, plain = _scores(sub["run_dir"]), _scores(base_dir)
    assert set(tuned) == set(plain) == set(TASKS)
    assert list((Path(sub["run_dir"]) / "eval" / "harness").glob("results_*.json"))
    assert all(tuned[t]["adapter"] and plain[t]["adapter"] is None for t in TASKS)
    assert all(tuned[t]["samples"] == 8 for t in TASKS)
    for t in MC:  # the answer is always the same letter: learnt by the fine-tune
        assert tuned[t]["score"] > plain[t]["score"], (t, tuned[t]["score"], plain[t]["score"])

    # the run again, with its adapter, and the base model on the same job's hardware: Slurm jobs, side by side
    quick = ("--tasks", "mmlu_anatomy", "--limit", "4", "--submit", "--wait")
    jobs = [_cli("eval", sub["job_id"], *quick), _cli("eval", "llama3-8b-instruct", "--like", sub["job_id"], *quick)]
    (out_run, err_run), (out_base, err_base) = (j.communicate(timeout=300) for j in jobs)
    assert [j.returncode for j in jobs] == [0, 0], (out_run + err_run)[-3000:] + (out_base + err_base)[-3000:]
    again = json.loads((Path(sub["run_dir"]) / "eval" / "mmlu_anatomy.json").read_text())
    assert again["limit"] == 4 and again["samples"] == 4 and again["adapter"]
    assert "submitted eval job" in out_base
    like_dir = next(x.split(":", 1)[1].strip() for x in out_base.splitlines() if x.strip().startswith("scores:"))
    like = json.loads((Path(like_dir) / "mmlu_anatomy.json").read_text())
    assert like["adapter"] is None and like["samples"] == 4

    table = run_hpcft("compare", base_dir, sub["job_id"], check=True).stdout
    assert set(TASKS) <= set(table.splitlines()[0].split()), table
    show = run_hpcft("show", sub["job_id"], check=True).stdout
    assert "benchmark: ceval-valid_accountant acc" in show and "with adapter" in show
