"""``engine: llamafactory`` across the 2-node dev cluster (devtools/cluster/dev-slurm-mn; issue 27,
Tests, "End to end, delegated"): a tiny Llama's LoRA SFT from a LLaMA-Factory YAML, LLaMA-Factory
0.9.5 itself (the LF lane, .venv-lf, on the same filesystem as the nodes) as the engine:

* ``nodes: 2``, one Slurm task per node, each running ``llamafactory-cli train`` with one gloo rank
  (FORCE_TORCHRUN, NNODES=2, NODE_RANK, MASTER_ADDR node1): one world of 2 ranks across the nodes;
* the time-limit signal in the middle (``scancel --signal=USR2`` while step 4 runs, held there by
  tests/lf_stop_fault until the stop reached the ranks): every rank saves checkpoint-4 at the end
  of that step and stops, the job requeues, and the next leg resumes at step 4 (not at the last
  ``save_steps`` checkpoint, 3), so no step is trained twice; ``save_steps`` checkpoints are kept;
* ``hpcft show`` and ``hpcft compare`` (its curves png) read the run.

One trained run (a module fixture) serves the tests; about 100 s on 2 cores (its job waits in the
queue while tests/test_multinode.py holds the nodes: the waits allow for that).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from devtools.hub.llm_fixtures import LLAMA_ID, make_tiny_llama, write_alpaca
from devtools.wait import wait_for
from hpcft.core.progress_log import read_progress
from tests.conftest import IN_CI, ROOT, hpcft
from tests.test_multinode import mn_conf  # noqa: F401  (the 2-node cluster, brought up once a session)

LF_VENV = Path(os.environ.get("HPCFT_LF_VENV", ROOT / ".venv-lf"))
FAULT = Path(__file__).resolve().parent / "lf_stop_fault"
DEAD = "http://127.0.0.1:9"
SIGNAL_STEP = 4   # the step the signal arrives in; save_steps (3) is not a divisor of it
LF_YAML = f"""\
### model
model_name_or_path: {LLAMA_ID}
### method
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 8
lora_target: all
### dataset
dataset: mini
dataset_dir: data
template: chatml
cutoff_len: 64
overwrite_cache: true
### output
output_dir: saves/tiny/lora/sft
logging_steps: 1
save_steps: 3
report_to: none
### train
per_device_train_batch_size: 2
gradient_accumulation_steps: 1
learning_rate: 1.0e-3
max_steps: 8
seed: 3
"""


@pytest.fixture(scope="module")
def lf_venv():
    if not (LF_VENV / "bin" / "llamafactory-cli").is_file():
        msg = f"no LLaMA-Factory lane ({LF_VENV}): HPCFT_LF=1 scripts/setup builds it"
        if IN_CI:
            pytest.fail(msg + " (CI=true: the LF lane is required)")
        pytest.skip(msg)
    return LF_VENV


@pytest.fixture(scope="module")
def delegated(lf_venv, mn_conf, tmp_path_factory):  # noqa: F811
    """The one trained run: submitted on 2 nodes, signalled in step 4, requeued, completed."""
    from hpcft.core.store import Cache
    from hpcft.stage.layout import register_local

    root = tmp_path_factory.mktemp("lf-mn")   # under /tmp: the nodes see it
    home = root / "home"
    env = {"HPCFT_HOME": str(home), "HPCFT_CACHE": str(home / "cache"),
           "HPCFT_CONFIG": str(home / "no-cluster-config.yaml"), "XDG_CONFIG_HOME": str(home / "xdg"),
           "SLURM_CONF": mn_conf}
    register_local(Cache(home / "cache"), "model", LLAMA_ID, make_tiny_llama(root / "llama", decoys=False))
    folder, marker = root / "job", root / "paused"
    (folder / "data").mkdir(parents=True)
    write_alpaca(folder / "data" / "mini.jsonl", n=32)
    (folder / "data" / "dataset_info.json").write_text(json.dumps({"mini": {"file_name": "mini.jsonl"}}))
    (folder / "lf.yaml").write_text(LF_YAML)
    fault = {"PYTHONPATH": str(FAULT), "HPCFT_TEST_LF_PAUSE": str(SIGNAL_STEP - 1),
             "HPCFT_TEST_LF_MARKER": str(marker)}
    job = {"name": "lf-mn", "executor": "slurm", "engine": "llamafactory", "llamafactory": "lf.yaml",
           "resources": {"nodes": 2, "partition": "gpu", "gpus_per_node": 1, "time": "00:15:00"},
           "env": {"venv": str(lf_venv), "vars": {"HF_ENDPOINT": DEAD, "HTTPS_PROXY": DEAD, **fault}}}
    (folder / "job.yaml").write_text(yaml.safe_dump(job, sort_keys=False))

    def run(*args, **kw):
        return hpcft(*args, env=env, **kw)

    sub = json.loads(run("submit", str(folder / "job.yaml"), "--json", check=True).stdout)
    wait_for(marker.exists, timeout=600, interval=0.2, what=f"LLaMA-Factory job {sub['job_id']} to reach step 4",
             describe=lambda _: "not there yet; its log: " + run("logs", sub["job_id"]).stdout[-3000:])
    subprocess.run(["scancel", "--signal=USR2", sub["job_id"]], check=True, env={**os.environ, "SLURM_CONF": mn_conf})
    logs = run("logs", "-f", sub["job_id"], timeout=600)
    st = json.loads(run("status", sub["job_id"], "--json", check=True).stdout)
    assert st["state"] == "COMPLETED", (st, logs.stdout[-4000:], logs.stderr[-2000:])
    run_dir = Path(sub["run_dir"])
    return {"run": run, "sub": sub, "run_dir": run_dir, "root": root,
            "metrics": json.loads((run_dir / "metrics.json").read_text())}


@pytest.mark.slurm
@pytest.mark.slow
def test_one_launcher_per_node_and_the_requeue_resumes_at_the_signals_step(delegated):
    run_dir, m, sub = delegated["run_dir"], delegated["metrics"], delegated["sub"]
    text = next(run_dir.glob("*.sbatch"), None) or next(run_dir.rglob("*.sh"))
    text = text.read_text()
    assert "#SBATCH --nodes=2" in text and "#SBATCH --ntasks-per-node=1" in text, text
    log = (run_dir / f"job.{sub['job_id']}.out").read_text()
    node2 = (run_dir / "logs" / f"job.{sub['job_id']}.rank1.out").read_text()   # the second node's task
    for node, text in ((0, log), (1, node2)):
        assert f"llamafactory-cli train on node {node} of 2: 1 rank(s) per node, rendezvous node1:" in text, text[-4000:]
    assert "Multi-node training enabled: num nodes: 2, node rank: 1" in node2, node2[-4000:]
    assert "world size: 2" in log, log[-4000:]
    assert f"time-limit signal: saving checkpoint-{SIGNAL_STEP}" in log, log[-4000:]
    ev = read_progress(run_dir / "progress.jsonl")
    signal = next(e for e in ev if e["event"] == "signal")
    requeue = next(e for e in ev if e["event"] == "requeue")
    resume = next(e for e in ev if e["event"] == "resume")
    assert signal["step"] == requeue["step"] == SIGNAL_STEP, (signal, requeue)
    assert (resume["step"], resume["restart"]) == (SIGNAL_STEP, 1), resume
    # each step trained once: the first leg 1-4, the requeued leg 5-8
    assert [e["step"] for e in ev if e["event"] == "train"] == list(range(1, 9))
    out = run_dir / "output"
    # save_steps' (3, 6; the Trainer's own at the last step, 8) beside the signal's
    assert {p.name for p in out.glob("checkpoint-*")} == {f"checkpoint-{n}" for n in (3, SIGNAL_STEP, 6, 8)}
    lf = yaml.safe_load((run_dir / "llamafactory" / "train.yaml").read_text())
    assert lf["resume_from_checkpoint"] == str(out / f"checkpoint-{SIGNAL_STEP}")   # the last leg's
    assert m["completed"] and m["engine"] == "llamafactory" and m["restarts"] == 1 and m["resumes"] == 1
    assert m["train"]["global_step"] == 8 and m["headline"] == "train_loss" and m["wall"]["legs"] == 2
    assert m["hardware"]["world_size"] == 2 and m["hardware"]["nodes"] == 2, m["hardware"]
    assert (out / "adapter_model.safetensors").is_file() and (run_dir / "curves.png").is_file()


@pytest.mark.slurm
@pytest.mark.slow
def test_show_and_compare_read_the_two_node_run(delegated):
    run, sub, m = delegated["run"], delegated["sub"], delegated["metrics"]
    show = run("show", sub["job_id"], check=True).stdout
    assert "llamafactory" in show and "train:     8 steps" in show and "restarts:  1 (resumed 1x)" in show, show
    assert f"result:    train_loss {m['eval']['train_loss']:.4f}" in show, show
    assert "on 2 node(s), world size 2" in show, show
    png = delegated["root"] / "compare.png"
    table = json.loads(run("compare", sub["job_id"], "--json", "--png", str(png), check=True).stdout)
    row = table["runs"][0]
    assert row["headline"] == "train_loss" and abs(row["headline_value"] - m["eval"]["train_loss"]) < 1e-9, row
    assert png.stat().st_size > 10_000, png


def test_the_grace_after_the_signal_lasts_until_shortly_before_the_jobs_end():
    """How long the worker waits for LLaMA-Factory's own save-and-stop (pure; no Slurm)."""
    import datetime as dt

    from hpcft.worker.engines.llamafactory import launch

    now = dt.datetime(2026, 12, 8, 1, 0, 0)
    text = "JobId=7 JobName=lf\n   RunTime=00:08:00 TimeLimit=00:10:00\n   StartTime=2026-12-08T00:52:00 EndTime=2026-12-08T01:02:00\n"
    asked = []

    def scontrol(job_id):
        asked.append(job_id)
        return text

    assert launch.grace_s({"SLURM_JOB_ID": "7"}, scontrol, now) == 120 - launch.END_MARGIN_S and asked == ["7"]
    assert launch.grace_s({"SLURM_JOB_ID": "7"}, scontrol, now + dt.timedelta(minutes=5)) == 5.0   # past it: 5 s
    assert launch.grace_s({"SLURM_JOB_ID": "7"}, lambda _: "EndTime=Unknown", now) == launch.DEFAULT_GRACE_S
    assert launch.grace_s({}, scontrol, now) == launch.DEFAULT_GRACE_S and asked == ["7", "7"]   # outside Slurm: not asked
