"""``engine: llamafactory`` on the dev Slurm (issue 27, item 4): LLaMA-Factory 0.9.5 itself (the LF lane,
.venv-lf, is the job's env) runs a 4-bit QLoRA SFT of a tiny Llama (bitsandbytes' CPU kernels) as the
delegated engine, the one trained run of this module:

* one Slurm task, whose ``llamafactory-cli train`` starts 2 gloo ranks (FORCE_TORCHRUN, NPROC_PER_NODE);
* a time-limit signal in the middle (the ranks paused after step 5 by tests/lf_stop_fault, until the stop
  reaches them): every rank saves checkpoint-6 at the end of step 6, the job requeues, the new leg
  resumes there (not at the last save_steps checkpoint, 4) and ends at max_steps;
* the resolved YAML is in the run folder (staged model, output_dir there, ddp_timeout, the resume),
  the user's file untouched; ``hpcft show`` and ``compare`` read the metrics.json it wrote.

One trained run (a module fixture) serves the read-only tests, among them ``hpcft export`` (the
adapter as trained, and merged into the base), ``hpcft eval`` (lm-eval, the adapter on the base, on
a task staged from the loopback hub) and ``hpcft serve --api --submit`` (the adapter on the 4-bit base
as trained; one chat completion, then scancel), as on a native run. Bad input, each one line, exit 2,
nothing queued: llamafactory missing from the job's env, ``engine: bogus``, a key neither engine runs;
export, eval and serve of a run whose LLaMA-Factory stage made no causal LM (``stage: rm``) or no model.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from devtools.faults import fault_env
from devtools.hub.llm_fixtures import LLAMA_ID, make_tiny_llama, write_alpaca
from devtools.wait import wait_for
from hpcft.core.progress_log import read_progress
from tests.test_preference_slurm import _wait

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parent.parent
LF_VENV = Path(os.environ.get("HPCFT_LF_VENV", ROOT / ".venv-lf"))
PAUSE = Path(__file__).resolve().parent / "lf_stop_fault"   # shared with the 2-node test
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
    """The one trained run: submitted, paused after step 5, signalled, checkpointed at 6, requeued, completed."""
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
    # the dev cluster's GPUs are fake gres: the serve job falls back to the CPU (devtools/faults, chained after
    # lf_stop_fault), as LLaMA-Factory's ranks train there
    faults = fault_env(cpu_fallback=True)
    spec["env"]["vars"] |= {"PYTHONPATH": os.pathsep.join([str(PAUSE), faults["PYTHONPATH"]]),
                            "HPCFT_TEST_FAULTS": faults["HPCFT_TEST_FAULTS"],
                            "HPCFT_TEST_LF_PAUSE": "5", "HPCFT_TEST_LF_MARKER": str(marker)}
    job.write_text(yaml.safe_dump(spec, sort_keys=False))

    def run(*args, **kw):
        return hpcft(*args, env=env, **kw)

    sub = json.loads(run("submit", str(job), "--json", check=True).stdout)
    wait_for(marker.exists, timeout=300, interval=0.2, what=f"LLaMA-Factory job {sub['job_id']} to pause after step 5",
             describe=lambda _: "not paused yet; its log: " + run("logs", sub["job_id"]).stdout[-3000:])
    subprocess.run(["scancel", "--signal=USR2", sub["job_id"]], check=True, env={**os.environ, "SLURM_CONF": slurm_conf})
    metrics = _wait(run, sub, timeout=500)
    return {"run": run, "sub": sub, "run_dir": Path(sub["run_dir"]), "metrics": metrics, "job": job, "root": root,
            "env": env, "home": home}


@pytest.fixture(scope="module")
def mmlu_staged(delegated):
    """mmlu_anatomy staged into the run's home from the loopback hub (its real layout), the hub then gone."""
    from devtools.hub.eval_fixtures import MMLU_ID, make_mmlu
    from devtools.hub.server import HubServer

    config = Path(delegated["env"]["HPCFT_CONFIG"])
    folder = make_mmlu(delegated["root"] / "mmlu", ["anatomy"], 8)
    with HubServer() as hub:
        hub.add_repo("dataset", MMLU_ID, folder)
        config.write_text(yaml.safe_dump({"sources": {"order": ["hf"], "hf_endpoint": hub.url, "retries": 0}}))
        try:
            delegated["run"]("stage", "--eval", "mmlu_anatomy", check=True)
        finally:
            config.unlink()
    return "mmlu_anatomy"


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
    assert signal["step"] == 6 and requeue["step"] == 6 and (resume["step"], resume["restart"]) == (6, 1)
    assert requeue["saved"] is True   # checkpoint-6 was written at the signal, not found from an earlier leg
    steps = [e["step"] for e in ev if e["event"] == "train"]
    assert steps == list(range(1, 13)), steps   # every step trained once: the second leg starts at 7
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
    assert lf["resume_from_checkpoint"] == str(run_dir / "output" / "checkpoint-6")   # saved at the signal
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


def _popen(delegated, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hpcft.cli.main", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **delegated["env"]})


def test_export_eval_and_serve_take_the_delegated_run_as_a_native_one(delegated, mmlu_staged, tmp_path):
    import openai
    from safetensors.numpy import load_file

    run, sub, m, run_dir = delegated["run"], delegated["sub"], delegated["metrics"], delegated["run_dir"]
    lf = yaml.safe_load((run_dir / "llamafactory" / "train.yaml").read_text())
    # metrics.json says what a native QLoRA run's says: a causal LM, its adapter on the staged base
    assert (m["task"], m["adapter"], m["base_model"], m["method"]) == (
        "causal-lm", True, lf["model_name_or_path"], "qlora")
    base, out = Path(m["base_model"]), Path(m["output_dir"])

    # the server's job and the benchmark start together; the exports run here meanwhile
    serve = _popen(delegated, "serve", sub["job_id"], "--api", "--submit", "--time", "00:05:00", "--timeout", "240")
    bench = _popen(delegated, "eval", sub["job_id"], "--tasks", mmlu_staged, "--limit", "2", "--threads", "1")
    try:
        adapter = json.loads(run("export", sub["job_id"], "--to", str(tmp_path / "adapter"), "--json",
                                 check=True).stdout)
        assert adapter["merged"] is False and Path(adapter["base_model"]) == base
        # the adapter as LLaMA-Factory saved it, without its checkpoints and records
        assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == sorted(
            p.name for p in out.iterdir() if p.is_file() and p.name in (
                "adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json",
                "chat_template.jinja", "special_tokens_map.json"))
        merged = json.loads(run("export", sub["job_id"], "--merge", "--json", check=True, timeout=300).stdout)
        dest = Path(merged["dest"])
        assert merged["merged"] is True and dest == run_dir / "export"
        assert (dest / "config.json").is_file() and (dest / "tokenizer_config.json").is_file()
        assert not (dest / "adapter_config.json").exists() and not list(dest.glob("checkpoint-*"))
        # folded into the full-precision base (never the 4-bit one): LoRA's layers moved, the embeddings did not
        new, old = load_file(str(dest / "model.safetensors")), {}
        for f in base.glob("*.safetensors"):
            old |= load_file(str(f))
        q = next(k for k in new if k.endswith("self_attn.q_proj.weight"))
        assert new[q].shape == old[q].shape and abs(new[q].astype("float32") - old[q].astype("float32")).max() > 0
        emb = "model.embed_tokens.weight"
        assert (new[emb].astype("float32") == old[emb].astype("float32")).all()
        assert json.loads((dest / "config.json").read_text()).get("quantization_config") is None

        out_s, err_s = serve.communicate(timeout=300)
        assert serve.returncode == 0, (out_s + err_s)[-3000:]
        info = json.loads((run_dir / "serve.json").read_text())
        try:
            assert info["backend"] == "transformers" and info["quantized_base"] is True, info  # the base as trained
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{info['port']}/v1", api_key=info["api_key"],
                                   max_retries=0)
            assert [x.id for x in client.models.list()] == ["lf-delegated"]
            chat = client.chat.completions.create(model="lf-delegated", max_tokens=4,
                                                  messages=[{"role": "user", "content": "What color is the apple?"}])
            assert chat.choices[0].finish_reason in ("stop", "length") and chat.usage.completion_tokens >= 1
        finally:
            subprocess.run(["scancel", info["job_id"]], env={**os.environ, **delegated["env"]}, check=True)
        wait_for(lambda: not (run_dir / "serve.json").exists(), timeout=60, interval=0.3,
                 what=f"the API server (job {info['job_id']}) to stop on scancel", describe=lambda _: "serve.json left")

        out_e, err_e = bench.communicate(timeout=300)
        assert bench.returncode == 0, (out_e + err_e)[-3000:]
    finally:
        for proc in (serve, bench):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    score = json.loads((run_dir / "eval" / f"{mmlu_staged}.json").read_text())
    assert (score["model"], score["adapter"], score["samples"], score["backend"]) == (str(base), str(out), 2, "hf")
    assert isinstance(score["score"], float)


@pytest.mark.parametrize("case", ["rm", "no-model"])
def test_export_eval_serve_refuse_what_made_no_causal_lm(case, delegated, mmlu_staged, tmp_path):
    """A delegated run of stage: rm (a value head), or one that saved no model (do_train: false): one
    line each naming why, exit 2, nothing written or queued. (The run folder is the trained one's
    records, its metrics as those runs write them.)"""
    src, run = delegated["run_dir"], delegated["run"]
    folder = tmp_path / f"lf-{case}"
    (folder / "output").mkdir(parents=True)
    for name in ("job.yaml", "launch.json", "status.json"):
        shutil.copy2(src / name, folder / name)
    record = json.loads((src / "run.json").read_text()) | {"run_id": folder.name, "run_dir": str(folder),
                                                             "job_id": None}
    (folder / "run.json").write_text(json.dumps(record))
    metrics = dict(delegated["metrics"], output_dir=str(folder / "output"))
    if case == "rm":
        metrics |= {"task": "reward-model", "llamafactory": dict(metrics["llamafactory"], stage="rm")}
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copy2(src / "output" / name, folder / "output" / name)
        why = (f"run {folder.name} is LLaMA-Factory's stage: rm, a reward model (a value head that scores answers), "
               "not a causal LM: hpcft export, eval and serve take a run that generates (stage: pt, sft, dpo, kto "
               "or ppo)")
    else:
        (folder / "output" / "generated_predictions.jsonl").write_text("{}\n")
        why = (f"run {folder.name}: LLaMA-Factory saved no model in {folder / 'output'} (neither config.json nor "
               "adapter_config.json; a YAML with do_train: false only predicts or evaluates)")
    (folder / "metrics.json").write_text(json.dumps(metrics))
    before = sorted(p.name for p in folder.iterdir())
    for args, prefix in ((["export", "--merge"], ""), (["eval", "--tasks", mmlu_staged], "hpcft eval: "),
                         (["serve", "--api", "--submit"], "")):
        proc = run(args[0], str(folder), *args[1:])
        assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [prefix + why], (args, proc.stderr)
    assert sorted(p.name for p in folder.iterdir()) == before   # no export/, eval/ or serve/ folder


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
