"""Issue 9 end to end: a tiny random Llama-architecture chat model, laid out like the real
``meta-llama/Meta-Llama-3-8B-Instruct`` (sharded safetensors + index, with ``original/``,
``.bin``, GGUF and orphan-safetensors decoys), gated behind a token on the loopback hub.

`hpcft stage llama3-8b-instruct --token-file` fetches exactly the files a job needs; the hub
is stopped; LoRA SFT on an alpaca and a messages JSONL runs through the real dev Slurm; the
loss drops, the adapter is saved with the tokenizer, samples.jsonl holds answers; `hpcft
export --merge` writes a model that loads and generates offline. The token appears nowhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from devtools.hub.llm_fixtures import DECOYS, LLAMA_ID, make_tiny_llama, needed_files, write_alpaca, write_messages
from devtools.hub.server import HubServer
from devtools.wait import wait_for
from hpcft.core.progress_log import read_progress

DEAD = "http://127.0.0.1:9"
TOKEN = "hf_hpcftTestTokenDoNotLeak42"


@pytest.fixture(scope="module")
def llama_repo(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("llm") / "llama")


def _stage_llama(llama_repo, hpcft_home, run_hpcft, tmp_path) -> dict:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    with HubServer() as hub:
        hub.add_repo("model", LLAMA_ID, llama_repo)
        hub.gated[("model", LLAMA_ID)] = TOKEN
        Path(os.environ["HPCFT_CONFIG"]).write_text(yaml.safe_dump(
            {"sources": {"order": ["hf"], "hf_endpoint": hub.url, "retries": 0}}))
        denied = run_hpcft("stage", "llama3-8b-instruct", "--json")  # no token: the gated repo refuses
        assert denied.returncode != 0 and "GatedRepo" in denied.stderr, denied.stderr[-2000:]
        proc = run_hpcft("stage", "llama3-8b-instruct", "--token-file", str(token_file), "--json", timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        fetched = hub.log.fetched_files(LLAMA_ID)
    out = json.loads(proc.stdout)
    for text in (proc.stdout, proc.stderr, denied.stdout, denied.stderr):
        assert TOKEN not in text
    return {"out": out, "fetched": fetched}


def _no_token_under(*roots: Path) -> None:
    for root in roots:
        for p in root.rglob("*"):
            if p.is_file() and not p.is_symlink():
                assert TOKEN.encode() not in p.read_bytes(), p


@pytest.mark.hub
def test_stage_fetches_exactly_the_indexed_shards_and_never_the_token(llama_repo, hpcft_home, run_hpcft,
                                                                      tmp_path):
    got = _stage_llama(llama_repo, hpcft_home, run_hpcft, tmp_path)
    asset = got["out"]["assets"][0]
    want = needed_files(llama_repo)
    assert got["fetched"] == want, (sorted(got["fetched"] - want), sorted(want - got["fetched"]))
    staged = {str(p.relative_to(asset["path"])) for p in Path(asset["path"]).rglob("*") if p.is_file()}
    assert staged == want
    skipped = {s["path"] for s in asset["skipped"]}
    assert set(DECOYS) <= skipped and any(p.endswith(".bin") for p in skipped)
    decoy_bytes = sum((llama_repo / d).stat().st_size for d in skipped)
    assert asset["saved_bytes"] == decoy_bytes and asset["fetched"] == sum(
        (llama_repo / f).stat().st_size for f in want)
    _no_token_under(hpcft_home)


def _submit(run_hpcft, tmp_path, name: str, data: Path, **train) -> dict:
    job = {"name": name, "executor": "slurm", "resources": {"time": "00:15:00"},
           "env": {"vars": {"HF_ENDPOINT": DEAD, "HTTPS_PROXY": DEAD}},
           "train": {"task": "causal-lm", "model": "llama3-8b-instruct", "dataset": str(data), "epochs": 4,
                     "learning_rate": 2e-2, "batch_size": 8, "max_seq_length": 64, "logging_steps": 2,
                     "sample_prompts": 3, "max_new_tokens": 12, **train}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job))
    # a token in the submitting shell must not reach any file of the run either
    return json.loads(run_hpcft("submit", str(path), "--json", check=True, env={"HF_TOKEN": TOKEN}).stdout)


def _losses(run_dir: str) -> list[float]:
    ev = read_progress(Path(run_dir) / "progress.jsonl")
    return [e["loss"] for e in ev if e["event"] == "train" and isinstance(e.get("loss"), float)]


@pytest.mark.hub
@pytest.mark.slurm
@pytest.mark.slow
def test_lora_sft_on_slurm_then_merged_export_generates_offline(slurm, llama_repo, hpcft_home, run_hpcft,
                                                                tmp_path):
    _stage_llama(llama_repo, hpcft_home, run_hpcft, tmp_path)  # the hub is stopped from here on
    alpaca, messages = write_alpaca(tmp_path / "alpaca.jsonl"), write_messages(tmp_path / "messages.jsonl")
    subs = [_submit(run_hpcft, tmp_path, "sft-alpaca", alpaca), _submit(run_hpcft, tmp_path, "sft-messages", messages)]
    for sub in subs:
        proc = run_hpcft("logs", "-f", sub["job_id"], timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
        st = json.loads(run_hpcft("status", sub["job_id"], "--json", check=True).stdout)
        assert st["state"] == "COMPLETED", proc.stdout[-3000:]
        m = json.loads((Path(sub["run_dir"]) / "metrics.json").read_text())
        losses = _losses(sub["run_dir"])
        assert losses[-1] < 0.6 * losses[0], losses        # the loss drops clearly
        hist = [h["perplexity"] for h in m["eval_history"]]
        assert len(hist) == 4 and hist[-1] < hist[0]       # eval loss and perplexity per epoch
        assert m["eval"]["perplexity"] == pytest.approx(2.718281828 ** m["eval"]["loss"], rel=1e-6)
        ckpt = m["gradient_checkpointing"]   # left to hpcft: the tiny model's activations fit the node
        assert ckpt["on"] is False and ckpt["why"].startswith("off: without it the estimate is"), ckpt
        out = Path(m["output_dir"])
        assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json",
                "chat_template.jinja"} <= {p.name for p in out.iterdir()}
        assert not list(out.glob("model*.safetensors"))    # an adapter, not a second copy of the model
        samples = [json.loads(x) for x in (Path(sub["run_dir"]) / "samples.jsonl").read_text().splitlines()]
        assert len(samples) == 3 and all(s["prompt"].endswith("<|im_start|>assistant\n") for s in samples)
        show = run_hpcft("show", sub["job_id"], check=True).stdout
        assert "sample 1:" in show and "sample 2:" in show and "sample 3:" not in show
        assert "; gradient checkpointing off: without it the estimate is" in show, show
        est = json.loads((Path(sub["run_dir"]) / "memory-estimate.json").read_text())  # submit's estimate
        assert est["available"] and est["plan"]["method"] == "lora" and est["node_gib"] > 0
        assert "GiB per node at peak against ~" in show, show   # ... held against the measured peak
        assert m["data"]["format"] == ("alpaca" if "alpaca" in sub["run_dir"] else "messages")

    dest = tmp_path / "merged"
    proc = run_hpcft("export", subs[1]["job_id"], "--merge", "--to", str(dest), "--json", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["merged"] is True
    code = f"""
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained({str(dest)!r})
model = AutoModelForCausalLM.from_pretrained({str(dest)!r})
msgs = [{{"role": "user", "content": "Repeat the word apple three times."}}]
ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
out = model.generate(**ids, max_new_tokens=8, do_sample=False)
print("GENERATED", len(out[0]) - ids["input_ids"].shape[1], repr(tok.decode(out[0][ids["input_ids"].shape[1]:])))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_ENDPOINT=DEAD, HTTPS_PROXY=DEAD, HTTP_PROXY=DEAD,
               HF_HOME=str(tmp_path / "empty-hf-home"))
    gen = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert gen.returncode == 0 and "GENERATED" in gen.stdout, gen.stderr[-3000:]
    assert int(gen.stdout.split("GENERATED", 1)[1].split()[0]) >= 1
    _no_token_under(hpcft_home, dest)


# --------------------------------------------------------------------------- ranks, ZeRO-3, requeue

def _stage_local(llama_repo, hpcft_home) -> None:
    """The model as `hpcft stage` records it (the hub path is tested above; these tests are about training)."""
    from hpcft.core.store import Cache
    from hpcft.stage.layout import register_local

    register_local(Cache(hpcft_home / "cache"), "model", LLAMA_ID, llama_repo, aliases=["llama3-8b-instruct"])


def _events(run_dir: str) -> list[dict]:
    return read_progress(Path(run_dir) / "progress.jsonl")


def _submit_ranks(run_hpcft, tmp_path, name: str, data: Path, ranks: int, faults: dict, **train) -> dict:
    from devtools.faults import fault_env

    job = {"name": name, "executor": "slurm",
           "resources": {"partition": "gpu", "gpus_per_node": ranks, "time": "00:15:00"} if ranks > 1
           else {"time": "00:15:00"},
           "env": {"vars": {"HF_ENDPOINT": DEAD, "HTTPS_PROXY": DEAD,
                            **fault_env(cpu_fallback=ranks > 1, **faults)}},
           "train": {"task": "causal-lm", "model": "llama3-8b-instruct", "dataset": str(data), "epochs": 2,
                     "learning_rate": 2e-2, "batch_size": 4, "max_seq_length": 64, "logging_steps": 2,
                     "sample_prompts": 2, "max_new_tokens": 6, "seed": 3, **train}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job))
    return json.loads(run_hpcft("submit", str(path), "--json", check=True).stdout)


def _wait(run_hpcft, sub: dict, timeout: float = 600) -> dict:
    proc = run_hpcft("logs", "-f", sub["job_id"], timeout=timeout)
    st = json.loads(run_hpcft("status", sub["job_id"], "--json", check=True).stdout)
    assert st["state"] == "COMPLETED", (st, proc.stdout[-4000:], proc.stderr[-2000:])
    return json.loads((Path(sub["run_dir"]) / "metrics.json").read_text())


@pytest.mark.slurm
@pytest.mark.slow
def test_two_rank_lora_and_zero3_full_fine_tune_save_loadable_models(slurm, llama_repo, hpcft_home, run_hpcft,
                                                                      tmp_path):
    _stage_local(llama_repo, hpcft_home)
    data = write_alpaca(tmp_path / "alpaca.jsonl", n=64)
    # rank 0 tokenizes and holds the data cache's lock 5 s: rank 1 waits on the file lock, not a collective
    lora = _submit_ranks(run_hpcft, tmp_path, "lora-2rank", data, 2, {"tokenize_sleep": 5}, deepspeed=False)
    m = _wait(run_hpcft, lora)
    log = (Path(lora["run_dir"]) / f"job.{lora['job_id']}.out").read_text()
    assert "2 ranks, backend gloo" in log
    key = m["data"]["cache_key"]
    rank1 = (Path(lora["run_dir"]) / "logs" / f"job.{lora['job_id']}.rank1.out").read_text()
    assert m["data"]["cache"] == "built" and f"-> cache {key}" in log and "[test fault] tokenized" in log
    assert "rank 1 waited" in rank1 and f"tokenized data from cache {key}" in rank1, rank1[-3000:]
    assert "[test fault] tokenized" not in rank1                         # rank 1 never tokenized
    losses = [e["loss"] for e in _events(lora["run_dir"]) if e["event"] == "train"]
    assert losses[-1] < losses[0] and (Path(m["output_dir"]) / "adapter_model.safetensors").is_file()

    full = _submit_ranks(run_hpcft, tmp_path, "full-zero3", data, 2, {}, method="full", deepspeed=3,
                         learning_rate=1e-3)
    m = _wait(run_hpcft, full)
    log = (Path(full["run_dir"]) / f"job.{full['job_id']}.out").read_text()
    assert "DeepSpeed ZeRO stage 3 on 2 ranks" in log
    assert (m["data"]["cache"], m["data"]["cache_key"]) == ("hit", key)  # the same data: another run reuses it
    out = Path(m["output_dir"])
    code = f"""
import json, torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained({str(out)!r})
ref = AutoModelForCausalLM.from_pretrained({str(llama_repo)!r})
shapes = all(a.shape == b.shape for a, b in zip(m.state_dict().values(), ref.state_dict().values()))
moved = any(not torch.equal(a, b) for a, b in zip(m.state_dict().values(), ref.state_dict().values()))
print("LOADED", sum(p.numel() for p in m.parameters()), shapes, moved)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    n, shapes, moved = proc.stdout.split("LOADED", 1)[1].split()
    assert int(n) > 100_000 and shapes == "True" and moved == "True"   # consolidated, complete, trained
    assert len((Path(full["run_dir"]) / "samples.jsonl").read_text().splitlines()) == 2


@pytest.mark.slurm
@pytest.mark.slow
def test_requeue_mid_lora_run_resumes_at_the_same_step(slurm, llama_repo, hpcft_home, run_hpcft, tmp_path):
    _stage_local(llama_repo, hpcft_home)
    data = write_messages(tmp_path / "messages.jsonl", n=96)
    sub = _submit_ranks(run_hpcft, tmp_path, "lora-requeue", data, 1, {"step_sleep": 0.3}, epochs=3)

    def train_step() -> int | None:  # the last train step logged so far
        if not (Path(sub["run_dir"]) / "progress.jsonl").exists():
            return None
        return max((e.get("step", 0) for e in _events(sub["run_dir"]) if e["event"] == "train"), default=None)

    wait_for(train_step, until=lambda step: step is not None and step >= 8, timeout=240, interval=0.3,
             what=f"job {sub['job_id']} to reach train step 8",
             describe=lambda step: f"train step {step}; the job's log: "
                                   + run_hpcft("logs", sub["job_id"]).stdout[-2000:])
    subprocess.run(["scancel", "--signal=USR2", sub["job_id"]], check=True)
    m = _wait(run_hpcft, sub, timeout=400)
    ev = _events(sub["run_dir"])
    stop = next(e for e in ev if e["event"] == "signal")["step"]
    resume = next(e for e in ev if e["event"] == "resume")
    assert resume["step"] == stop and resume["restart"] == 1
    steps = [e["step"] for e in ev if e["event"] == "train"]
    assert steps == sorted(set(steps))
    assert m["restarts"] == 1 and m["resumes"] == 1 and m["train"]["global_step"] == 3 * 22
    assert (Path(m["output_dir"]) / "adapter_model.safetensors").is_file()


@pytest.mark.hub
@pytest.mark.slurm
@pytest.mark.slow
def test_users_own_peft_script_runs_unmodified_offline(slurm, llama_repo, hpcft_home, run_hpcft, tmp_path):
    """Deliverable 5: a peft + Trainer script that loads the model by its hub id, staged by name."""
    _stage_llama(llama_repo, hpcft_home, run_hpcft, tmp_path)  # through the (gated) hub, then stopped
    script = Path(__file__).resolve().parent / "tutorial" / "sft_peft.py"
    data = write_alpaca(tmp_path / "alpaca.jsonl", n=32)
    out = tmp_path / "adapter"
    job = {"name": "own-sft", "executor": "slurm", "script": str(script), "args": [str(data), str(out)],
           "assets": {"models": ["llama3-8b-instruct"]}, "resources": {"time": "00:10:00"},
           "env": {"vars": {"HF_ENDPOINT": DEAD, "HTTPS_PROXY": DEAD, "HTTP_PROXY": DEAD}}}
    path = tmp_path / "own.yaml"
    path.write_text(yaml.safe_dump(job))
    assert "✓ assets staged" in run_hpcft("check", str(path), check=True).stdout
    sub = json.loads(run_hpcft("submit", str(path), "--json", check=True).stdout)
    proc = run_hpcft("logs", "-f", sub["job_id"], timeout=400)
    assert "SFT-DONE loss" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert (out / "adapter_model.safetensors").is_file()
    _no_token_under(hpcft_home)
