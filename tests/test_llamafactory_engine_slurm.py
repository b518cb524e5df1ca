"""``engine: llamafactory`` on the dev Slurm (issue 27, item 4): LLaMA-Factory 0.9.5 itself (the LF lane,
.venv-lf, is the job's env) runs a 4-bit QLoRA SFT of a tiny Llama (bitsandbytes' CPU kernels) as the
delegated engine, the one trained run of this module:

* one Slurm task, whose ``llamafactory-cli train`` starts 2 gloo ranks (FORCE_TORCHRUN, NPROC_PER_NODE);
* a time-limit signal in the middle (the ranks paused at step 6 by tests/lf_pause): the job requeues,
  the new leg resumes from the last checkpoint in output_dir (step 4) and ends at max_steps;
* the resolved YAML is in the run folder (staged model, output_dir there, ddp_timeout, the resume),
  the user's file untouched; ``hpcft show`` and ``compare`` read the metrics.json it wrote.

One trained run (a module fixture) serves the read-only tests. Bad input, each one line, exit 2,
nothing queued: llamafactory missing from the job's env, ``engine: bogus``, a key neither engine runs.
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
from tests.test_preference_slurm import _wait

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parent.parent
LF_VENV = Path(os.environ.get("HPCFT_LF_VENV", ROOT / ".venv-lf"))
PAUSE = Path(__file__).resolve().parent / "lf_pause"
DEAD = "http://127.0.0.1:9"
LF_YAML = f"""\
### model
model_name_or_path: {LLAMA_ID}
### method
stage: sft
do_train: true
finetuning_type: lora
quantization_bit: 4
quantization_method: bnb
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
save_steps: 4
report_to: none
### train
per_device_train_batch_size: 2
gradient_accumulation_steps: 1
learning_rate: 1.0e-3
max_steps: 12
seed: 3
"""


@pytest.fixture(scope="module")
def lf_venv():
    if not (LF_VENV / "bin" / "llamafactory-cli").is_file():
        msg = f"no LLaMA-Factory lane ({LF_VENV}): HPCFT_LF=1 scripts/setup builds it"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg + " (CI=true: the LF lane is required)")
        pytest.skip(msg)
    return LF_VENV


def _write(folder: Path, lf_text: str, venv: Path, **job) -> Path:
    (folder / "data").mkdir(parents=True, exist_ok=True)
    write_alpaca(folder / "data" / "mini.jsonl", n=32)
    (folder / "data" / "dataset_info.json").write_text(json.dumps({"mini": {"file_name": "mini.jsonl"}}))
    (folder / "lf.yaml").write_text(lf_text)
    spec = {"name": "lf-delegated", "executor": "slurm", "engine": "llamafactory", "llamafactory": "lf.yaml",
            "resources": {"partition": "gpu", "gpus_per_node": 2, "time": "00:15:00"},
            "env": {"venv": str(venv), "vars": {"HF_ENDPOINT": DEAD, "HTTPS_PROXY": DEAD}}} | job
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("lf-engine-model") / "llama", decoys=False)


def _stage(home: Path, folder: Path) -> None:
    from hpcft.core.store import Cache
    from hpcft.stage.layout import register_local

    register_local(Cache(home / "cache"), "model", LLAMA_ID, folder)


@pytest.fixture(scope="module")
def delegated(lf_venv, slurm_conf, tiny, tmp_path_factory):
    """The one trained run: submitted, paused at step 6, signalled, requeued, completed."""
    from tests.conftest import hpcft

    root = tmp_path_factory.mktemp("lf-engine")
    home = root / "home"
    env = {"HPCFT_HOME": str(home), "HPCFT_CACHE": str(home / "cache"),
           "HPCFT_CONFIG": str(home / "no-cluster-config.yaml"), "XDG_CONFIG_HOME": str(home / "xdg"),
           "SLURM_CONF": slurm_conf}
    _stage(home, tiny)
    marker = root / "paused"
    job = _write(root / "job", LF_YAML, lf_venv)
    spec = yaml.safe_load(job.read_text())
    spec["env"]["vars"] |= {"PYTHONPATH": str(PAUSE), "HPCFT_TEST_LF_PAUSE": "6", "HPCFT_TEST_LF_MARKER": str(marker)}
    job.write_text(yaml.safe_dump(spec, sort_keys=False))

    def run(*args, **kw):
        return hpcft(*args, env=env, **kw)

    sub = json.loads(run("submit", str(job), "--json", check=True).stdout)
    wait_for(marker.exists, timeout=300, interval=0.2, what=f"LLaMA-Factory job {sub['job_id']} to pause at step 6",
             describe=lambda _: "not paused yet; its log: " + run("logs", sub["job_id"]).stdout[-3000:])
    subprocess.run(["scancel", "--signal=USR2", sub["job_id"]], check=True, env={**os.environ, "SLURM_CONF": slurm_conf})
    metrics = _wait(run, sub, timeout=500)
    return {"run": run, "sub": sub, "run_dir": Path(sub["run_dir"]), "metrics": metrics, "job": job, "root": root}


def test_two_ranks_from_one_task_and_a_requeue_resumes_from_the_checkpoint(delegated):
    run_dir, m, sub = delegated["run_dir"], delegated["metrics"], delegated["sub"]
    script = next(run_dir.glob("*.sbatch"), None) or next(run_dir.rglob("*.sh"))
    text = script.read_text()
    assert "#SBATCH --ntasks-per-node=1" in text and "#SBATCH --gres=gpu:2" in text, text
    log = (run_dir / f"job.{sub['job_id']}.out").read_text()
    assert "Initializing 2 distributed tasks" in log and "world size: 2" in log, log[-3000:]
    ev = read_progress(run_dir / "progress.jsonl")
    signal = next(e for e in ev if e["event"] == "signal")
    requeue = next(e for e in ev if e["event"] == "requeue")
    resume = next(e for e in ev if e["event"] == "resume")
    assert signal["step"] == 6 and requeue["step"] == 4 and (resume["step"], resume["restart"]) == (4, 1)
    steps = sorted({e["step"] for e in ev if e["event"] == "train"})
    assert steps == list(range(1, 13)), steps   # every step logged, steps 5-6 in both legs
    assert m["completed"] and m["engine"] == "llamafactory" and m["restarts"] == 1 and m["resumes"] == 1
    assert m["train"]["global_step"] == 12 and m["headline"] == "train_loss"
    assert m["hardware"]["world_size"] == 2 and m["hardware"]["device"] == "cpu" and m["wall"]["legs"] == 2
    assert m["llamafactory"]["version"] == "0.9.5" and m["llamafactory"]["stage"] == "sft"
    assert (run_dir / "output" / "adapter_model.safetensors").is_file() and (run_dir / "curves.png").is_file()
    # 4-bit: LLaMA-Factory quantized the base; the submit's memory estimate planned a QLoRA run
    assert "Quantizing model to 4 bit with bitsandbytes" in log and m["method"] == "qlora", log[-3000:]
    est = json.loads((run_dir / "memory-estimate.json").read_text())
    assert est["available"] and est["plan"]["method"] == "qlora", est


def test_the_resolved_yaml_is_in_the_run_folder_and_the_users_file_untouched(delegated):
    run_dir, job = delegated["run_dir"], delegated["job"]
    lf = yaml.safe_load((run_dir / "llamafactory" / "train.yaml").read_text())
    assert lf["output_dir"] == str(run_dir / "output") and lf["ddp_timeout"] >= 10800
    assert lf["resume_from_checkpoint"] == str(run_dir / "output" / "checkpoint-4")   # the last leg's
    assert Path(lf["model_name_or_path"]).is_dir() and lf["model_name_or_path"] != LLAMA_ID   # the staged copy
    info = json.loads((run_dir / "llamafactory" / "data" / "dataset_info.json").read_text())
    assert info == {"mini": {"file_name": str(job.parent / "data" / "mini.jsonl")}}
    assert (job.parent / "lf.yaml").read_text() == LF_YAML == (run_dir / "llamafactory.yaml").read_text()
    assert not (job.parent / "saves").exists()   # the YAML's own output_dir is the run folder's
    assert yaml.safe_load((run_dir / "job.yaml").read_text())["train"]["task"] == "llamafactory"


def test_show_and_compare_read_the_delegated_run(delegated):
    run, sub, m = delegated["run"], delegated["sub"], delegated["metrics"]
    show = run("show", sub["job_id"], check=True).stdout
    assert "llamafactory" in show and "train:     12 steps" in show and "restarts:  1 (resumed 1x)" in show, show
    assert f"result:    train_loss {m['eval']['train_loss']:.4f}" in show, show
    assert "hardware:  2x cpu on 1 node(s), world size 2" in show, show
    table = run("compare", sub["job_id"], "--json", check=True).stdout
    row = json.loads(table)["runs"][0]
    assert row["headline"] == "train_loss" and abs(row["headline_value"] - m["eval"]["train_loss"]) < 1e-9, row


@pytest.mark.parametrize("case", ["no-llamafactory", "bogus-engine", "unknown-key"])
def test_bad_input_one_line_nothing_queued(case, lf_venv, tiny, slurm, hpcft_home, run_hpcft, tmp_path):
    _stage(hpcft_home, tiny)
    lf_text, venv, job = LF_YAML, lf_venv, {}
    if case == "no-llamafactory":
        venv = ROOT / ".venv"   # hpcft's own lane: no llamafactory there
    elif case == "bogus-engine":
        job = {"engine": "bogus"}
    else:
        lf_text += "lora_rnak: 8\n"
    path = _write(tmp_path, lf_text, venv, **job)
    proc = run_hpcft("submit", str(path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    if case == "no-llamafactory":
        assert line == (f"{path}: environment: engine: llamafactory (the delegated engine runs llamafactory-cli train "
                        f"in the job) needs llamafactory but venv {venv} has none; install it there: {venv}/bin/python "
                        "-m pip install 'llamafactory>=0.9.5' (or 'hpcft[llamafactory]')")
    elif case == "bogus-engine":
        assert line == (
            f"{path}:3: engine: 'bogus': one of native, llamafactory (or leave it out: hpcft runs natively what it "
            "can and hands the rest to LLaMA-Factory)"), proc.stderr
    else:
        assert line == (
            f"{tmp_path / 'lf.yaml'}:28: lora_rnak: not a LLaMA-Factory key (0.9.5); neither engine runs it "
            "(did you mean 'lora_rank'?)"), proc.stderr
    assert not (hpcft_home / "runs").exists() or not any((hpcft_home / "runs").iterdir())
