"""The delegated engine's pure parts (no Slurm, no LLaMA-Factory): the launcher's environment on
node 2 of 2, the resolved YAML, the hub datasets pointed at their staged folders, which checkpoint
a requeue resumes from, and trainer_log.jsonl read while it is being written. The run itself:
tests/test_llamafactory_engine_slurm.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

from hpcft.core.llamafactory_delegate import delegated_train
from hpcft.core.offline import shim_path
from hpcft.worker.engines.llamafactory import launch, logs, resolve
from hpcft.worker.taskenv import current


def test_one_launcher_per_node_gets_the_rendezvous_from_slurm():
    slurm = {"SLURM_JOB_ID": "4321", "SLURM_PROCID": "1", "SLURM_LOCALID": "0", "SLURM_NTASKS": "2",
             "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "node[1-2]", "SLURMD_NODENAME": "node2"}
    task = current(slurm)
    base = {**slurm, "RANK": "1", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "USE_MODELSCOPE_HUB": "1",
            "PYTHONPATH": os.pathsep.join([shim_path(), "/job/own"]), "PATH": "/usr/bin"}
    env = launch.launch_env(task, 4, base)
    assert {k: env[k] for k in ("FORCE_TORCHRUN", "NNODES", "NODE_RANK", "NPROC_PER_NODE", "MASTER_ADDR",
                                "MASTER_PORT")} == {"FORCE_TORCHRUN": "1", "NNODES": "2", "NODE_RANK": "1",
                                                    "NPROC_PER_NODE": "4", "MASTER_ADDR": "node1",
                                                    "MASTER_PORT": str(20000 + 4321)}
    assert not {"RANK", "LOCAL_RANK", "WORLD_SIZE", "USE_MODELSCOPE_HUB"} & set(env)   # torchrun sets each rank's
    shim, child, own = env["PYTHONPATH"].split(os.pathsep)
    assert (shim, own) == (shim_path(), "/job/own") and child.endswith("engines/llamafactory/child")
    assert (Path(child) / "sitecustomize.py").is_file()
    assert launch.launch_env(current({}), 0, {})["NPROC_PER_NODE"] == "1"   # a CPU node: one rank


def test_the_resolved_yaml_and_a_hub_dataset_on_its_staged_folder(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dataset_info.json").write_text(json.dumps({
        "local": {"file_name": "rows.json"},
        "hub": {"hf_hub_url": "org/rows", "subset": "en", "split": "train", "formatting": "sharegpt"}}))
    problems = []
    train = delegated_train({"model_name_or_path": "org/model", "stage": "pt", "dataset": "local,hub",
                             "output_dir": "saves/x", "resume_from_checkpoint": "old", "ddp_timeout": 60,
                             "cutoff_len": 100000, "quantization_bit": 8, "quantization_method": "hqq"},
                            tmp_path, lambda k, m: problems.append((k, m)))
    assert problems == []
    assert train["dataset"] == [str(tmp_path / "data" / "rows.json"), "org/rows:en"]
    assert (train["method"], train["max_seq_length"], train["deepspeed"]) == ("lora", 32768, False)   # hqq: not bnb
    spec = train["llamafactory"]
    assert "output_dir" not in spec["args"] and "resume_from_checkpoint" not in spec["args"]
    staged = {str(tmp_path / "data" / "rows.json"): tmp_path / "data" / "rows.json",
              "org/rows:en": Path("/cache/datasets/org--rows")}
    info = resolve.dataset_info(spec, staged)
    assert info["local"] == {"file_name": str(tmp_path / "data" / "rows.json")}
    assert info["hub"] == {"subset": "en", "split": "train", "formatting": "sharegpt",
                           "script_url": "/cache/datasets/org--rows"}
    out = tmp_path / "run" / "output"
    args = resolve.resolved_args(spec, model=Path("/cache/m"), output_dir=out, data_dir=tmp_path / "run" / "d",
                                 resume=out / "checkpoint-8")
    assert args["output_dir"] == str(out) and args["resume_from_checkpoint"] == str(out / "checkpoint-8")
    assert args["ddp_timeout"] == resolve.DDP_TIMEOUT_S and args["model_name_or_path"] == "/cache/m"
    assert args["report_to"] == "none" and args["stage"] == "pt"


def test_a_requeue_resumes_from_the_last_complete_checkpoint(tmp_path):
    assert resolve.last_checkpoint(tmp_path / "none") is None
    for step, complete in ((4, True), (12, True), (16, False)):   # 16: cut short by the stop
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-x").mkdir()
    last = resolve.last_checkpoint(tmp_path)
    assert last == tmp_path / "checkpoint-12" and resolve.checkpoint_step(last) == 12


def test_trainer_log_lines_become_train_events_whole_lines_only(tmp_path):
    path = tmp_path / logs.TRAINER_LOG
    path.write_text('{"current_steps": 1, "total_steps": 4, "loss": 2.5, "lr": 0.001, "epoch": 0.25}\n')
    tail = logs.LogTail(path)   # a requeued leg: what the first leg logged is not read again
    assert tail.read() == []
    with open(path, "a") as fh:
        fh.write('{"current_steps": 2, "total_steps": 4, "loss": 2.0, "lr": 0.0009, "epoch": 0.5}\n{"current_st')
    (rec,) = tail.read()
    assert logs.train_event(rec) == {"step": 2, "max_steps": 4, "epoch": 0.5, "loss": 2.0, "learning_rate": 0.0009}
    with open(path, "a") as fh:
        fh.write('eps": 3, "total_steps": 4, "eval_loss": 1.5}\n')
    (rec,) = tail.read()
    assert rec["current_steps"] == 3 and logs.train_event(rec) is None   # an eval line has no loss
    (tmp_path / logs.ALL_RESULTS).write_text(json.dumps({"train_loss": 1.8, "epoch": 1.0, "eval_loss": 1.5,
                                                         "train_runtime": 2.0}))
    m = logs.train_metrics(tmp_path, [{"event": "train", "step": 4, "loss": 1.7}], runtime_s=3.0)
    assert (m["global_step"], m["loss"], m["epochs"]) == (4, 1.8, 1.0)
    assert logs.eval_metrics(tmp_path) == {"loss": 1.5}
