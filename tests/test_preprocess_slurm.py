"""Preprocessing off the GPU (issue 28) on the dev Slurm: ``train.preprocess: cpu-job`` queues a
CPU job that tokenizes into the data cache and a training job that waits on it (afterok) and
trains from the cache without tokenizing; ``hpcft show`` says where and how long; a second
submit of the same data queues no preprocess job; a preprocess job that fails cancels its
training job, and status says why in one line; one whose training job Slurm refuses is cancelled."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from devtools.hub.llm_fixtures import LLAMA_ID, make_tiny_llama, write_alpaca
from devtools.wait import wait_for
from tests.test_preference_slurm import _wait  # logs -f, COMPLETED, metrics.json

DEAD = "http://127.0.0.1:9"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("pre-slurm") / "llama", decoys=False)


def _setup(tiny, home: Path) -> None:
    from hpcft.core.store import Cache
    from hpcft.stage.layout import register_local

    register_local(Cache(home / "cache"), "model", LLAMA_ID, tiny, aliases=["llama3-8b-instruct"])
    # the CPU job's size: the dev node has 2 CPUs (the default, 4, would not fit)
    (home / "no-cluster-config.yaml").write_text(yaml.safe_dump({"preprocess": {"cpus": 2, "mem": "2G",
                                                                               "time": "00:10:00"}}))


def _job(tmp_path, name: str, data: Path, **train) -> Path:
    job = {"name": name, "executor": "slurm", "resources": {"time": "00:15:00"},
           "env": {"vars": {"HF_ENDPOINT": DEAD, "HTTPS_PROXY": DEAD, "HOSTILE": 'a"; touch /tmp/pwned; "'}},
           "train": {"task": "causal-lm", "model": "llama3-8b-instruct", "dataset": str(data), "max_steps": 2,
                     "batch_size": 4, "max_seq_length": 64, "sample_prompts": 0, "logging_steps": 1,
                     "preprocess": "cpu-job", **train}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _submit(run_hpcft, path: Path) -> dict:
    return json.loads(run_hpcft("submit", str(path), "--json", check=True).stdout)


def _kv(line: str) -> dict:
    from hpcft.cluster.slurm import parse_key_values

    return parse_key_values(line)


def _scontrol(job_id: str) -> dict:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=True)
    return _kv(out.stdout)


@pytest.mark.slurm
@pytest.mark.slow
def test_a_cpu_job_tokenizes_first_and_the_training_job_trains_from_its_cache(slurm, tiny, hpcft_home, run_hpcft,
                                                                              tmp_path):
    _setup(tiny, hpcft_home)
    data = write_alpaca(tmp_path / "a.jsonl", n=40)
    job = _job(tmp_path, "pre-train", data)
    sub = _submit(run_hpcft, job)
    pre = sub["preprocess"]
    assert not pre["hit"] and pre["job_id"], sub
    train = _scontrol(sub["job_id"])
    assert train["Dependency"].startswith(f"afterok:{pre['job_id']}"), train
    assert _scontrol(pre["job_id"])["Partition"] == "cpu"
    script = (Path(sub["run_dir"]) / "preprocess.sh").read_text()
    assert "#SBATCH --cpus-per-task=2" in script and "--gres" not in script
    assert "export HOSTILE='a\"; touch /tmp/pwned; \"'" in script, script   # quoted, as in the training script
    assert "#SBATCH --kill-on-invalid-dep=yes" in (Path(sub["run_dir"]) / "job.sh").read_text()

    m = _wait(run_hpcft, sub)
    rec = json.loads((Path(sub["run_dir"]) / "preprocess.json").read_text())
    assert rec["state"] == "done" and rec["cache"] == "built" and rec["num_proc"] == 2, rec
    assert rec["key"] == rec["predicted_key"] == pre["key"]          # the login node's key is the worker's
    assert rec["job_id"] == pre["job_id"] and rec["node"]
    # the GPU allocation trained at once: a hit, no tokenizing in the training job's log
    log = run_hpcft("logs", sub["job_id"], check=True).stdout
    assert m["data"]["cache"] == "hit" and m["data"]["cache_key"] == pre["key"], m["data"]
    assert f"tokenized data from cache {pre['key']}" in log and "-> cache" not in log, log[-3000:]
    show = run_hpcft("show", sub["run_id"], check=True).stdout
    assert (f"preprocess: job {pre['job_id']} on {rec['node']}, 2 processes: tokenized; "
            f"{rec['examples']} examples, {rec['tokens']} tokens in {rec['tokenize_s']} s") in show, show

    # the same data again: no preprocess job at all, and it says so (the job itself is not needed)
    again = _submit(run_hpcft, job)
    assert again["preprocess"]["hit"] and again["preprocess"]["job_id"] is None, again
    assert "Dependency" not in _scontrol(again["job_id"]) or _scontrol(again["job_id"])["Dependency"] == "(null)"
    run_hpcft("cancel", again["run_id"], check=True)
    assert "already built" in run_hpcft("show", again["run_id"], check=True).stdout

    # hpcft preprocess alone: builds the cache of other data in a CPU job and exits; a later submit hits
    other = _job(tmp_path, "pre-alone", write_alpaca(tmp_path / "b.jsonl", n=20, seed=1))
    alone = json.loads(run_hpcft("preprocess", str(other), "--json", check=True).stdout)
    assert not alone["hit"] and alone["job_id"], alone
    done = Path(alone["folder"]) / "preprocess.json"
    wait_for(lambda: done.is_file() and json.loads(done.read_text())["state"] == "done", timeout=180, interval=0.5,
             what=f"preprocess job {alone['job_id']} to build cache {alone['key']}")
    proc = run_hpcft("submit", str(other), "--dry-run", check=True)
    dry = proc.stdout + proc.stderr
    assert f"preprocess: data cache {alone['key']} already built: no preprocess job" in dry, dry


@pytest.mark.slurm
def test_a_failed_preprocess_job_cancels_the_training_job_with_one_readable_line(slurm, tiny, hpcft_home,
                                                                                 run_hpcft, tmp_path):
    _setup(tiny, hpcft_home)
    # every reply lies past max_seq_length: the pre-flight cannot tell without tokenizing, the CPU job fails
    rows = [{"instruction": " ".join(["word"] * 80), "input": "", "output": "yes"} for _ in range(12)]
    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # --wait follows the training job until Slurm cancels it, and its last line says why
    proc = run_hpcft("submit", str(_job(tmp_path, "pre-fails", data, max_seq_length=16)), "--json", "--wait",
                     timeout=300)
    sub = json.loads(proc.stdout)
    pre = sub["preprocess"]["job_id"]
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and last.startswith(f"hpcft: job {sub['job_id']} CANCELLED: its preprocess job {pre} "
                                                    "failed (DataFormatError: "), proc.stderr[-3000:]
    st = json.loads(run_hpcft("status", sub["job_id"], "--json", check=True).stdout)
    assert st["state"] == "CANCELLED" and st["reason"].startswith(f"its preprocess job {pre} failed ("), st
    assert st["reason"].endswith("training never started") and "\n" not in st["reason"]
    assert "max_seq_length" in st["reason"]
    text = run_hpcft("status", sub["job_id"], check=True).stdout
    assert len([ln for ln in text.splitlines() if "its preprocess job" in ln]) == 1, text
    show = run_hpcft("show", sub["run_id"], check=True).stdout
    assert f"preprocess: job {pre} on " in show and "failed: DataFormatError" in show, show

    # a training job that Slurm refuses after its preprocess job was queued: that one is cancelled, no run left
    runs = sorted((hpcft_home / "runs").iterdir())
    bad = _job(tmp_path, "pre-refused", write_alpaca(tmp_path / "c.jsonl", n=8, seed=2), max_seq_length=64)
    doc = yaml.safe_load(bad.read_text())
    doc["resources"]["sbatch"] = ["--gres=gpu:9"]          # no node has 9; the CPU job does not ask for it
    bad.write_text(yaml.safe_dump(doc))
    proc = run_hpcft("submit", str(bad))
    assert proc.returncode == 2 and "slurm accepts: " in proc.stderr, proc.stderr
    out = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True, check=True).stdout
    states = [kv.get("JobState") for kv in map(_kv, out.splitlines())   # this session's (Slurm keeps old jobs)
              if kv.get("JobName") == "pre-refused-preprocess" and kv.get("Command", "").startswith(str(hpcft_home))]
    assert states == ["CANCELLED"], out
    assert sorted((hpcft_home / "runs").iterdir()) == runs

    # hpcft cancel of a run whose preprocess job has not ended cancels that job too
    sub = _submit(run_hpcft, _job(tmp_path, "pre-cancel", write_alpaca(tmp_path / "d.jsonl", n=8, seed=3)))
    run_hpcft("cancel", sub["run_id"], check=True)
    wait_for(lambda: _scontrol(sub["preprocess"]["job_id"])["JobState"] == "CANCELLED", timeout=30, interval=0.5,
             what=f"preprocess job {sub['preprocess']['job_id']} cancelled with its run")
